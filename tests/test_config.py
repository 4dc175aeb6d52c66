"""config.py: config files are data (parsed, never run), typed overrides, resume field rules; runtime devices."""
import pytest

import runtime
from config import RESUMABLE, TrainConfig, UserError, load_config, read_config_file, resume_mismatches
from conftest import ROOT


def test_files_overrides_and_base_chain():
    cfg = load_config([str(ROOT / "configs/gpt2_124m.py"), "--input_embedding=kronecker", "--max_steps=1e3",
                       "--compile=false", "--learning_rate=1e-3", "--shuffle=false"])
    assert (cfg.model.input_embedding, cfg.model.block_size, cfg.max_steps, cfg.shuffle) == ("kronecker", 1024,
                                                                                             1000, False)
    big = load_config([str(ROOT / "configs/gpt2_350m.py")])  # base = "gpt2_124m.py", then its own keys
    assert (big.model.n_layer, big.model.n_embd, big.warmup_steps) == (24, 1024, 715)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("text,match", [
    ("n_layer = (", r"c\.py:1: syntax error"),
    ("n_layer = 1/0", r"c\.py:1: the value of n_layer must be a literal"),
    ("base = 5", r"c\.py:1: base must be a config file name in quotes"),
    ("import os\nos.system('touch PWNED')", r"c\.py:1: only `key = value` lines"),
    ("raise SystemExit(0)", r"c\.py:1: only `key = value` lines"),
    ("n_layer = 2\nn_layr = 3", r"c\.py:2: unknown config key 'n_layr'; did you mean 'n_layer'\?"),
    ("max_steps = 'ten'", r"c\.py:1: bad value 'ten' for max_steps: expected int"),
])
def test_config_files_are_parsed_not_executed(tmp_path, monkeypatch, text, match):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.py").write_text(text + "\n")
    with pytest.raises(UserError, match=match):
        read_config_file(tmp_path / "c.py")
    assert not (tmp_path / "PWNED").exists()


def test_non_utf8_config_and_docstring(tmp_path):
    (tmp_path / "bad.py").write_bytes(b"n_layer = 2  # caf\xe9\n")
    with pytest.raises(UserError, match="not UTF-8"):
        read_config_file(tmp_path / "bad.py")
    (tmp_path / "ok.py").write_text('"""What this config is for."""\n# a comment\nn_layer = 3\nbase = "b.py"\n')
    (tmp_path / "b.py").write_text("n_layer = 2\nn_head = 1\n")
    assert read_config_file(tmp_path / "ok.py") == {"n_layer": 3, "n_head": 1}


def test_float16_is_refused_with_the_reason():
    with pytest.raises(UserError, match="float16 is not supported.*loss scaling.*bfloat16"):
        load_config(["--dtype=float16"])


def test_resume_rules():
    a = load_config([str(ROOT / "configs/smoke.py")])
    saved = a.to_dict()
    ok = a.replace(max_steps=99, learning_rate=1e-4, batch_size=2, eval_interval=3, wandb_mode="offline")
    assert resume_mismatches(saved, ok) == []
    bad = a.replace(seed=7, total_batch_size=512, n_layer=3)
    diff = resume_mismatches(saved, bad)
    assert len(diff) == 3 and "seed: checkpoint 1337 vs now 7" in diff
    assert {"max_steps", "learning_rate", "keep_checkpoints"} <= set(RESUMABLE)
    assert not {"seed", "shuffle", "total_batch_size", "input_embedding", "n_layer", "val_tokens"} & set(RESUMABLE)


@pytest.mark.parametrize("device,match", [("foo", "unknown device 'foo'; choose auto, cpu, cuda, cuda:N or mps"),
                                          ("cuda:0", "CUDA is not available here; use --device=cpu"),
                                          ("mps", "no Apple-silicon GPU")])
def test_devices_are_validated(device, match, monkeypatch):
    monkeypatch.setattr(runtime.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime.torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(runtime.DeviceError, match=match):
        runtime.resolve_device(device)
    assert runtime.resolve_device("auto").type == "cpu"
