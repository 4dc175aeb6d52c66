import json
import os
import subprocess
import sys

import pytest
import torch

import checkpoint
import config
import train
from conftest import ROOT, run_train
from model import ARMS


def rows(metrics, key):
    return {r["step"]: r[key] for r in metrics if key in r}


@pytest.mark.parametrize("arm", ARMS)
def test_every_arm_trains_and_logs(smoke_runs, arm):
    out, metrics = smoke_runs[arm]
    train_loss, val_loss = rows(metrics, "train_loss"), rows(metrics, "val_loss")
    assert sorted(train_loss) == list(range(1, 21))
    assert sorted(val_loss) == [0, 10, 20]
    assert val_loss[20] < val_loss[0] - 1.0  # loss falls
    assert sum(train_loss[s] for s in range(16, 21)) < sum(train_loss[s] for s in range(1, 6)) - 5
    norms = [r for r in metrics if any(k.startswith("norm/") for k in r)]
    assert [r["step"] for r in norms] == [0, 10, 20]
    assert {"norm/input_row", "norm/input_emb", "norm/head_row"} <= set(norms[0])
    if arm.startswith("kronecker"):
        assert abs(norms[0]["norm/input_row"] - 1.0) < 0.05  # proj rows start at unit norm
    step_row = next(r for r in metrics if r.get("step") == 5 and "train_loss" in r)
    assert {"lr", "grad_norm", "tokens", "tok_per_s", "mfu"} <= set(step_row) and step_row["tokens"] == 5 * 256
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["input_embedding"] == arm and cfg["max_steps"] == 20
    ckpts = sorted(out.glob("ckpt_*.pt"))
    assert [c.name for c in ckpts] == ["ckpt_0000010.pt", "ckpt_0000020.pt"]
    model, ckpt = checkpoint.load_checkpoint(ckpts[-1])
    assert model.config.input_embedding == arm and ckpt["step"] == 20 and len(ckpt["loader"]) == 1
    assert ckpt["tokenizer_sha256"].startswith("306cd27f")


@pytest.mark.parametrize("arm", ARMS)
def test_resume_10_then_20_equals_20_straight(smoke_runs, sample_dir, tmp_path, arm):
    _, straight = smoke_runs[arm]
    out = tmp_path / "resumed"
    run_train(out, sample_dir, f"--input_embedding={arm}", "--max_steps=10", "--lr_decay_steps=20")
    resumed = run_train(out, sample_dir, f"--input_embedding={arm}", "--max_steps=20", "--lr_decay_steps=20")
    for key in ("train_loss", "val_loss"):
        a, b = rows(straight, key), rows(resumed, key)
        assert sorted(a) == sorted(b)
        assert max(abs(a[s] - b[s]) for s in a) <= 1e-4
    # re-running a finished run changes nothing
    before = (out / "metrics.jsonl").read_text()
    run_train(out, sample_dir, f"--input_embedding={arm}", "--max_steps=20", "--lr_decay_steps=20")
    assert (out / "metrics.jsonl").read_text() == before


@pytest.mark.slow
def test_accumulation_equals_one_big_batch(sample_dir, tmp_path):
    big = run_train(tmp_path / "big", sample_dir, "--batch_size=4", "--max_steps=3", "--eval_interval=3")
    acc = run_train(tmp_path / "acc", sample_dir, "--batch_size=2", "--max_steps=3", "--eval_interval=3")
    for key in ("train_loss", "val_loss"):
        a, b = rows(big, key), rows(acc, key)
        assert max(abs(a[s] - b[s]) for s in a) < 1e-5
    pa = torch.load(tmp_path / "big/ckpt_0000003.pt", weights_only=True)["model"]
    pb = torch.load(tmp_path / "acc/ckpt_0000003.pt", weights_only=True)["model"]
    # Adam divides by sqrt(v): float-rounding differences in near-zero gradient entries (the fused head sums its
    # chunks in another order than one big batch) move those weights by ~1e-5 after 3 steps at lr 3e-3
    assert max((pa[k] - pb[k]).abs().max().item() for k in pa) < 5e-5


@pytest.mark.slow
@pytest.mark.parametrize("arm", ["kronecker", "kronecker_tied"])
def test_torchrun_two_ranks_on_gloo(sample_dir, tmp_path, arm):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "train.py"), str(ROOT / "configs/smoke.py"), f"--data_dir={sample_dir}", f"--out_dir={out}",
           f"--input_embedding={arm}", "--batch_size=2", "--max_steps=3", "--eval_interval=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows(metrics, "ddp_param_spread") == {3: 0.0}  # ranks hold identical parameters
    ckpt = torch.load(out / "ckpt_0000003.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["loader"]) == 2
    # 2 ranks x batch 2 sees the same tokens as 1 rank x batch 4: same update
    single = run_train(tmp_path / "one", sample_dir, f"--input_embedding={arm}", "--batch_size=4",
                       "--max_steps=3", "--eval_interval=3")
    a, b = rows(metrics, "train_loss"), rows(single, "train_loss")
    assert max(abs(a[s] - b[s]) for s in a) < 1e-4
    assert abs(rows(metrics, "val_loss")[3] - rows(single, "val_loss")[3]) < 1e-4


@pytest.mark.slow
def test_wandb_offline_writes_a_run(sample_dir, tmp_path):
    """In its own process, as a user runs it: wandb's service writes the run file out when the process that owns
    it exits, so an in-process run (the service living on inside pytest) may find the file not yet written."""
    out = tmp_path / "wb"
    cmd = [sys.executable, "train.py", "configs/smoke.py", f"--data_dir={sample_dir}", f"--out_dir={out}",
           "--wandb_mode=offline", "--max_steps=2", "--eval_interval=2", "--norm_interval=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    blob = runs[0].read_bytes()
    for key in (b"train_loss", b"val_loss", b"norm/input_row", b"tok_per_s"):
        assert key in blob
    assert (out / "wandb_id.txt").read_text().strip() in runs[0].name


def test_lr_schedule():
    cfg = config.TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert train.get_lr(0, cfg) == pytest.approx(0.1)
    assert train.get_lr(9, cfg) == pytest.approx(1.0)
    assert train.get_lr(60, cfg) == pytest.approx(0.55)
    assert train.get_lr(110, cfg) == pytest.approx(0.1) and train.get_lr(500, cfg) == 0.1
    cfg.lr_decay_steps = 210  # schedule length independent of where the run stops
    assert train.get_lr(110, cfg) == pytest.approx(0.55)


@pytest.mark.slow
def test_the_seed_picks_the_data_order_for_every_arm(sample_dir, tmp_path, monkeypatch):
    """Same across arms at one seed, different across seeds, and the same after a resume."""
    import data
    seen = []
    real = data.ShardLoader.next_batch

    def recording(self):
        x, y = real(self)
        if self.split == "train":
            seen.append(int(x[0, :8].sum()) * 1000003 + int(x[-1, -8:].sum()))
        return x, y
    monkeypatch.setattr(data.ShardLoader, "next_batch", recording)

    def order(arm, seed, out, *extra):
        seen.clear()
        run_train(tmp_path / out, sample_dir, f"--input_embedding={arm}", f"--seed={seed}", "--eval_interval=100",
                  "--ckpt_interval=3", *extra)
        return list(seen)
    a = order("bpe_tied", 1, "a", "--max_steps=6")
    assert len(a) == 6 and order("kronecker", 1, "b", "--max_steps=6") == a
    assert order("bpe_tied", 2, "c", "--max_steps=6") != a
    first = order("kronecker_tied", 1, "d", "--max_steps=3", "--lr_decay_steps=6")
    rest = order("kronecker_tied", 1, "d", "--max_steps=6", "--lr_decay_steps=6")
    assert first + rest == a


def test_wandb_online_without_a_key_is_one_line_before_any_training(sample_dir, tmp_path):
    """A fresh machine (empty HOME: no ~/.netrc from `wandb login`, no WANDB_API_KEY): one error line naming the
    fix, exit 2, within 30 s, and no run folder."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(home), NETRC=str(home / ".netrc"))
    out = tmp_path / "run"
    cmd = [sys.executable, "train.py", "configs/smoke.py", f"--data_dir={sample_dir}", f"--out_dir={out}",
           "--wandb_mode=online"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=30)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "no wandb API key" in err[0] and "wandb login" in err[0] and "--wandb_mode=offline" in err[0]
    assert "wandb sync" in err[0] and not out.exists()
