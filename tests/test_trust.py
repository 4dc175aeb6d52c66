"""What nanokron trusts and what it never overwrites: the run folder a fresh start finds, the data folder two
prepares share, the metrics a resume rewrites, the checkpoint rotation keeps after a spike, and the bad input that
must be one `error:` line (exit 2) rather than a traceback. (Checkpoint integrity and pickle payloads:
test_checkpoint.py; damaged shards: test_reliability.py.)"""
import resource
import shutil
import subprocess
import sys

import numpy as np
import pytest

import checkpoint
import prepare_fineweb
import sample
import train
import util
from conftest import ROOT, run_train
from data import ShardLoader, write_shard


def error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def files(folder):
    return {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# -- rotation after a spike ----------------------------------------------------------------------------------------

def test_an_unhealthy_step_clears_the_pending_good_checkpoint():
    """keep_checkpoints=1, a spike right after a checkpoint: that checkpoint must never be promoted to 'good' (the
    next healthy step used to promote it, and rotation then deleted the newest truly good one)."""
    h = checkpoint.Health()
    for _ in range(12):
        assert h.check(5.0, 1.0, True, 50304) is None
    h.saved("ckpt_0000010.pt")
    assert h.check(5.0, 1.0, True, 50304) is None and h.last_good == "ckpt_0000010.pt"
    h.saved("ckpt_0000026.pt")
    assert h.check(12.36, 1.0, True, 50304) is not None  # step 27: loss above the start + 1 nat
    assert h.check(5.0, 1.0, True, 50304) is None  # step 28 is healthy again
    assert h.last_good == "ckpt_0000010.pt" and h.pending is None


# -- a fresh start never overwrites someone else's files -----------------------------------------------------------

def test_a_fresh_start_refuses_a_copied_run_and_an_export_folder(sample_dir, tmp_path, capsys):
    copied = tmp_path / "copied"
    shutil.copytree(ROOT / "results/cpu_tiny/runs/kronecker_s1337", copied)
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text('{"model_type": "gpt2"}')
    (export / "model.safetensors").write_bytes(b"weights")
    for folder in (copied, export):
        before = files(folder)
        with pytest.raises(SystemExit) as e:
            train.main([str(ROOT / "configs/smoke.py"), f"--data_dir={sample_dir}", f"--out_dir={folder}"])
        line = error_line(capsys)
        assert e.value.code == 2 and "holds config.json" in line and "--force=true" in line, line
        assert files(folder) == before and not (folder / ".lock").exists()
    run_train(export, sample_dir, "--max_steps=1", "--force=true")  # asked for: it starts over there
    assert (export / "ckpt_0000001.pt").exists()


def test_a_run_killed_before_its_first_checkpoint_restarts_without_force(sample_dir, tmp_path):
    out = tmp_path / "run"
    run_train(out, sample_dir, "--max_steps=1")
    for p in out.glob("ckpt_*.pt"):
        p.unlink()  # as if killed before the first checkpoint: config.json, metrics.jsonl and .lock remain
    assert [r["step"] for r in run_train(out, sample_dir, "--max_steps=1") if "train_loss" in r] == [1]


# -- metrics rows a resume cannot parse are kept ---------------------------------------------------------------------

def test_a_broken_middle_metrics_row_is_kept_in_a_side_file(sample_dir, tmp_path, capsys):
    out = tmp_path / "run"
    run_train(out, sample_dir, "--max_steps=4", "--ckpt_interval=4")
    lines = (out / "metrics.jsonl").read_text().splitlines()
    lines[3] = lines[3][:-7]  # a damaged row in the middle
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    run_train(out, sample_dir, "--max_steps=6", "--ckpt_interval=4")
    assert (out / "metrics.jsonl.bad").read_text() == lines[3] + "\n"
    assert "1 unreadable row(s) in the middle of" in capsys.readouterr().err


# -- two prepares, one folder; training reads what meta.json lists -------------------------------------------------

def test_a_second_prepare_on_a_folder_in_use_is_refused(tmp_path, capsys):
    out = tmp_path / "d"
    out.mkdir()
    with util.FolderLock(out, "prepare_fineweb.py run"):
        with pytest.raises(SystemExit) as e:
            prepare_fineweb.main(["--source", "sample", "--out_dir", str(out), "--quiet"])
        assert e.value.code == 2 and "in use by another prepare_fineweb.py run" in error_line(capsys)
    assert not list(out.glob("*.bin"))


def test_training_reads_only_the_shards_meta_json_lists(sample_dir, tmp_path):
    data = tmp_path / "d"
    shutil.copytree(sample_dir, data)
    stray = data / "sample_train_000002.bin"  # e.g. left by a prepare with other settings
    write_shard(stray, np.full(5000, 50256))
    assert [f.name for f in ShardLoader(data, "train", 2, 16).files] == ["sample_train_000001.bin"]


def test_prepare_rewrites_a_damaged_shard_instead_of_calling_the_folder_complete(sample_dir, tmp_path, capsys):
    data = tmp_path / "d"
    shutil.copytree(sample_dir, data)
    shard = data / "sample_train_000001.bin"
    good = shard.read_bytes()
    raw = bytearray(good)
    raw[1_500_000] ^= 1
    raw[1_700_000] ^= 1
    shard.write_bytes(bytes(raw))
    prepare_fineweb.main(["--source", "sample", "--out_dir", str(data), "--quiet"])
    assert capsys.readouterr().out.count("changed or missing since they were written") == 1  # said once
    assert shard.read_bytes() == good


# -- bad input: one line, exit 2 ---------------------------------------------------------------------------------

BAD_VALUES = {
    "--seed=-1": "bad value -1 for seed: must be >= 0",
    "--dropout=2.0": "dropout must be in [0, 1)",
    "--learning_rate=-1": "bad value -1.0 for learning_rate: must be > 0",
    "--learning_rate=nan": "bad value nan for learning_rate: must be a finite number",
    "--learning_rate=inf": "bad value inf for learning_rate: must be a finite number",
    "--out_dir=": "out_dir is empty",
    "--val_tokens=0": "bad value 0 for val_tokens: must be >= 1",
    "--beta2=1.5": "bad value 1.5 for beta2: must be >= 0 and < 1",
}


@pytest.mark.parametrize("arg", sorted(BAD_VALUES))
def test_bad_values_are_one_line(arg, sample_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train.main([str(ROOT / "configs/smoke.py"), f"--data_dir={sample_dir}", f"--out_dir={tmp_path / 'o'}", arg])
    assert e.value.code == 2 and BAD_VALUES[arg] in error_line(capsys)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("body", ["seed = " + "-" * 200_000 + "1\n", "seed = [" + "1," * 2_000_000 + "]\n",
                                  "seed = [" + "1," * 20_000 + "]\n"])
def test_hostile_config_files_are_one_short_line(body, tmp_path, capsys):
    path = tmp_path / "c.py"
    path.write_text(body)
    with pytest.raises(SystemExit) as e:
        train.main([str(path), "--dry_run"])
    line = error_line(capsys)
    assert e.value.code == 2 and len(line) < 300, line[:300]


def test_disk_full_while_appending_metrics_is_one_line(sample_dir, tmp_path, monkeypatch, capsys):
    real_open = open

    def full(path, mode="r", *a, **k):  # metrics.jsonl appends meet a real ENOSPC (/dev/full)
        return real_open("/dev/full" if str(path).endswith("metrics.jsonl") and "a" in mode else path, mode, *a, **k)
    monkeypatch.setattr(train, "open", full, raising=False)
    with pytest.raises(SystemExit) as e:
        run_train(tmp_path / "run", sample_dir, "--max_steps=2")
    assert e.value.code == 2 and "no space left on the device writing" in error_line(capsys)


@pytest.mark.slow
def test_a_file_size_limit_is_one_line_and_the_run_resumes(sample_dir, tmp_path):
    """`ulimit -f`: the kernel refuses the checkpoint write (EFBIG; Python ignores SIGXFSZ)."""
    out = tmp_path / "run"
    cmd = [sys.executable, "train.py", "configs/smoke.py", f"--data_dir={sample_dir}", f"--out_dir={out}",
           "--max_steps=2", "--progress=false"]

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # 1 MiB: a smoke checkpoint is ~40 MB
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, preexec_fn=limit, timeout=300)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and "file size limit (ulimit -f)" in err[0], proc.stderr[-2000:]
    assert not list(out.glob("ckpt_*")) and not list(out.glob(".*.tmp"))
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and (out / "ckpt_0000002.pt").exists(), proc.stderr[-2000:]


@pytest.mark.slow
def test_sample_py_bad_input_is_one_line_and_memory_does_not_grow(smoke_ckpts, monkeypatch, capsys):
    ckpt = str(smoke_ckpts["bpe_tied"])
    for argv, message in [(["--prompt", ""], "--prompt is empty"),
                          (["--device", "cuda:7"], "--device cuda:7 cannot be used here")]:
        with pytest.raises(SystemExit) as e:
            sample.main([ckpt, *argv])
        assert e.value.code == 2 and message in error_line(capsys)
    from model import GPT
    real, batches = GPT.generate, []

    def recording(self, x, *a, **k):
        batches.append(len(x))
        return real(self, x, *a, **k)
    monkeypatch.setattr(GPT, "generate", recording)
    texts = sample.main([ckpt, "--num_samples", "40", "--max_new_tokens", "1"])
    assert len(texts) == 40 and max(batches) == sample.BATCH


@pytest.mark.slow
def test_probe_and_export_outputs_that_cannot_be_written_are_one_line(smoke_ckpts, tmp_path, monkeypatch, capsys):
    from probes import geometry
    from probes._common import run_main
    import export_hf
    ckpt = str(smoke_ckpts["kronecker"])
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for argv, message in [(["--checkpoints", ckpt, "--out", str(tmp_path / "g.json"), "--k", "0"], "--k 0 is invalid"),
                          (["--checkpoints", ckpt, "--out", str(a_file / "g.json"), "--no_codec"],
                           "a part of that path is a file")]:
        monkeypatch.setattr(sys, "argv", ["geometry", *argv])
        with pytest.raises(SystemExit) as e:
            run_main(lambda: geometry.main(argv))
        assert e.value.code == 2 and message in error_line(capsys)
    with pytest.raises(SystemExit):
        export_hf.main([ckpt, "--out", str(a_file / "export")])
    assert "a part of that path is a file" in error_line(capsys)
    # a read-only folder (simulated: this suite may run as root, which write permissions do not stop)
    monkeypatch.setattr(util.os, "access", lambda path, mode: False)
    with pytest.raises(SystemExit):
        export_hf.main([ckpt, "--out", str(tmp_path / "ro")])
    assert "no write permission" in error_line(capsys)
    with pytest.raises(SystemExit):
        prepare_fineweb.main(["--source", "sample", "--out_dir", str(tmp_path / "ro_data"), "--quiet"])
    assert "no write permission" in error_line(capsys)


def test_make_tables_out_under_a_file_is_one_line(tmp_path, capsys):
    from scripts import make_tables
    (tmp_path / "f").write_text("x")
    with pytest.raises(SystemExit) as e:
        make_tables.main([str(ROOT / "results/cpu_tiny/runs"), "--out", str(tmp_path / "f" / "t"), "--no_plots"])
    assert e.value.code == 2 and "a part of that path is a file" in error_line(capsys)

