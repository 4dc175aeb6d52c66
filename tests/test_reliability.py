"""Crash safety (kill -9, SIGTERM, non-finite loss) and the bad-input matrix of train.py."""
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import checkpoint
import train
import util
from conftest import ROOT, run_train
from data import write_shard

from scripts import kill_test


def rows(metrics, key):
    return {r["step"]: r[key] for r in metrics if key in r}


# -- kill -9 and SIGTERM ---------------------------------------------------------------------------------------

@pytest.mark.slow
# (one arm per rank count: the kill/resume machinery is the same for every arm, and test_train checks that every
# arm resumes bit-exactly in-process)
@pytest.mark.parametrize("arm,nproc", [("bpe_tied", 1), ("kronecker", 2)])
def test_sigkill_then_resume_matches_uninterrupted(smoke_runs, sample_dir, tmp_path, arm, nproc):
    _, straight = smoke_runs[arm]  # configs/smoke.py, 1 rank x batch 4: the same tokens as 2 ranks x batch 2
    overrides = [f"--data_dir={sample_dir}", f"--input_embedding={arm}", "--ckpt_interval=2",
                 f"--batch_size={4 // nproc}"]
    kill_steps = [5] if nproc == 1 else [7]
    resumed = kill_test.killed_run(ROOT / "configs/smoke.py", tmp_path / "run", overrides, nproc, kill_steps)
    same, diff = kill_test.compare((rows(straight, "train_loss"), rows(straight, "val_loss")), resumed)
    assert same and diff <= 1e-4
    assert not list((tmp_path / "run").glob("*.tmp"))


@pytest.mark.slow
def test_sigterm_checkpoints_and_resumes(smoke_runs, sample_dir, tmp_path):
    out = tmp_path / "term"
    cmd = [sys.executable, str(ROOT / "train.py"), str(ROOT / "configs/smoke.py"), f"--data_dir={sample_dir}",
           f"--out_dir={out}", "--input_embedding=kronecker", "--ckpt_interval=1000"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    while kill_test.last_step(out) < 3:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "checkpoint written at step" in stdout
    ckpts = sorted(out.glob("ckpt_*.pt"))
    assert len(ckpts) == 1 and 3 <= int(ckpts[0].stem.split("_")[1]) < 20  # mid-run, not at the end
    resumed = run_train(out, sample_dir, "--input_embedding=kronecker", "--ckpt_interval=1000")
    _, straight = smoke_runs["kronecker"]
    assert max(abs(rows(straight, "val_loss")[s] - rows(resumed, "val_loss")[s]) for s in (0, 10, 20)) <= 1e-4


def test_corrupt_latest_checkpoint_falls_back(smoke_runs, sample_dir, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(smoke_runs["bpe_tied"][0], out)
    (out / "ckpt_0000020.pt").write_bytes(b"garbage")
    path, ckpt = checkpoint.latest_checkpoint(out)
    assert path.name == "ckpt_0000010.pt" and ckpt["step"] == 10
    assert "using an earlier checkpoint" in capsys.readouterr().err
    assert (out / "ckpt_0000020.pt").exists()  # a reader never moves files


# -- non-finite loss -------------------------------------------------------------------------------------------

def _poison(monkeypatch, at_call):
    real, calls = train.forward_backward, []

    def poisoned(*args):
        calls.append(1)
        loss = real(*args)
        return loss * float("nan") if len(calls) == at_call else loss
    monkeypatch.setattr(train, "forward_backward", poisoned)


@pytest.mark.slow
def test_nonfinite_loss_stops_without_touching_the_last_checkpoint(sample_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "nan"
    run_train(out, sample_dir, "--max_steps=6", "--ckpt_interval=3")
    digest = hashlib.sha256((out / "ckpt_0000006.pt").read_bytes()).hexdigest()
    _poison(monkeypatch, at_call=2)
    with pytest.raises(SystemExit) as e:
        run_train(out, sample_dir, "--max_steps=12", "--ckpt_interval=3")
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "diverged at step 8 (non-finite loss or gradient norm)" in err[0], err
    assert "resume from ckpt_0000006.pt" in err[0]
    assert sorted(p.name for p in out.glob("ckpt_*.pt")) == ["ckpt_0000003.pt", "ckpt_0000006.pt"]
    assert hashlib.sha256((out / "ckpt_0000006.pt").read_bytes()).hexdigest() == digest


@pytest.mark.slow
def test_nonfinite_loss_can_skip_the_step(sample_dir, tmp_path, monkeypatch):
    _poison(monkeypatch, at_call=3)
    metrics = run_train(tmp_path / "skip", sample_dir, "--max_steps=6", "--nonfinite=skip")
    assert rows(metrics, "skipped_steps") == {3: 1}
    assert sorted(rows(metrics, "train_loss")) == [1, 2, 4, 5, 6]
    assert all(np.isfinite(v) for v in rows(metrics, "val_loss").values())


# -- bad input: one line, exit 2, no traceback, nothing changed -------------------------------------------------

def snapshot(*dirs):
    out = {}
    for d in dirs:
        for p in sorted(Path(d).rglob("*")) if Path(d).exists() else []:
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def bad_data(sample_dir, tmp_path):
    """Copies of the sample shards with one defect each. Without meta.json (shards made elsewhere, like the public
    pre-tokenized ones), except 'changed', where meta.json's hashes are what catches a byte changed late in a shard."""
    def make(defect):
        d = tmp_path / f"data_{defect}"
        shutil.copytree(sample_dir, d)
        if defect != "changed":
            (d / "meta.json").unlink()
        train_shard = next(d.glob("*train*.bin"))
        raw = bytearray(train_shard.read_bytes())
        toks = np.frombuffer(bytes(raw[1024:]), dtype=np.uint16).copy()
        if defect in ("vocab", "padding", "no_eot"):
            toks[{"vocab": 10, "padding": 500_000, "no_eot": 0}[defect]] = {"vocab": 60000, "padding": 50300,
                                                                              "no_eot": 464}[defect]
            write_shard(train_shard, toks)
            return d
        if defect == "uint32":  # 32-bit ids behind a header that counts them as 16-bit ones
            raw = raw[:1024] + toks.astype("<u4").tobytes()
            raw[8:12] = np.int32(2 * len(toks)).tobytes()
        elif defect == "changed":  # two bytes changed after the first MiB
            raw[1_500_000] ^= 1
            raw[1_600_001] ^= 2
        if defect == "magic":
            raw[0:4] = np.int32(1234).tobytes()
        elif defect == "version":
            raw[4:8] = np.int32(2).tobytes()
        elif defect == "truncated":
            raw = raw[: len(raw) // 2]
        train_shard.write_bytes(bytes(raw))
        return d
    return make


CASES = {
    "unknown key": (["--learnig_rate=1"], "unknown config key 'learnig_rate'; did you mean 'learning_rate'?"),
    "bad value": (["--max_steps=abc"], "bad value 'abc' for max_steps: expected int"),
    "bad bool": (["--shuffle=maybe"], "bad value 'maybe' for shuffle: expected true or false"),
    "unknown arm": (["--input_embedding=kron"], "valid: bpe_tied, kronecker, bpe_untied"),
    "removed key": (["--kron_mode=fast"], "unknown config key 'kron_mode'"),
    "batch not divisible": (["--total_batch_size=300"], "not divisible by block_size x world"),
    "val too small": (["--batch_size=64", "--block_size=1024", "--total_batch_size=65536"], "'val' shards"),
    "missing data dir": (["--data_dir=/nonexistent/nanokron"], "does not exist"),
    "bad shape": (["--n_head=5"], "not divisible by n_head"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_arguments(case, sample_dir, tmp_path, capsys):
    argv, message = CASES[case]
    out = tmp_path / "out"
    before = snapshot(sample_dir)
    with pytest.raises(SystemExit) as e:
        train.main([str(ROOT / "configs/smoke.py"), f"--data_dir={sample_dir}", f"--out_dir={out}", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert snapshot(sample_dir) == before and snapshot(out) == {}


@pytest.mark.parametrize("defect,message", [("magic", "has magic 1234"), ("version", "has version 2"),
                                            ("truncated", "truncated or corrupt"), ("vocab", "token id 60000"),
                                            ("padding", "token id 50300 >= 50257"),
                                            ("no_eot", "does not start with <|endoftext|>"),
                                            ("uint32", "every second token is 0"),
                                            ("changed", "has changed since prepare_fineweb.py wrote it")])
def test_bad_shards(bad_data, tmp_path, capsys, defect, message):
    data = bad_data(defect)
    before = snapshot(data)
    with pytest.raises(SystemExit):
        train.main([str(ROOT / "configs/smoke.py"), f"--data_dir={data}", f"--out_dir={tmp_path / 'o'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "prepare_fineweb.py" in err[0], err
    assert snapshot(data) == before


def test_empty_data_dir_and_missing_config(tmp_path, sample_dir, capsys):
    (tmp_path / "empty").mkdir()
    for argv, message in [([str(ROOT / "configs/smoke.py"), f"--data_dir={tmp_path / 'empty'}"], "no 'train' shards"),
                          (["configs/nope.py"], "config file configs/nope.py not found; available in configs/: "),
                          ([str(ROOT / "configs/smoke.py"), f"--data_dir={sample_dir}",
                            f"--out_dir={ROOT / 'train.py'}/x"], "cannot be created")]:
        with pytest.raises(SystemExit):
            train.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_all_checkpoints_corrupt_is_an_error(smoke_runs, sample_dir, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(smoke_runs["bpe_tied"][0], out)
    for p in out.glob("ckpt_*.pt"):
        p.write_bytes(b"not a checkpoint")
    before = snapshot(out)
    with pytest.raises(SystemExit):
        train.main([str(ROOT / "configs/smoke.py"), f"--data_dir={sample_dir}", f"--out_dir={out}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert "no usable checkpoint" in err[-1] and "move them away" in err[-1]
    assert snapshot(out) == before


@pytest.mark.slow
def test_cli_error_has_no_traceback_and_debug_shows_it(tmp_path):
    cmd = [sys.executable, str(ROOT / "train.py"), str(ROOT / "configs/smoke.py"), "--warmup_step=3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "error: unknown config key 'warmup_step'; did you mean 'warmup_steps'?"
    proc = subprocess.run(cmd + ["--debug"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


# -- one writer per run folder, rotation, divergence, resume rules -------------------------------------------------

def _smoke_cmd(sample_dir, out, *extra):
    return [sys.executable, str(ROOT / "train.py"), str(ROOT / "configs/smoke.py"), f"--data_dir={sample_dir}",
            f"--out_dir={out}", *extra]


@pytest.mark.slow
def test_a_second_run_on_the_same_out_dir_is_refused(sample_dir, tmp_path, capsys):
    out = tmp_path / "run"
    first = subprocess.Popen(_smoke_cmd(sample_dir, out, "--max_steps=400", "--ckpt_interval=1000"), cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        while kill_test.last_step(out) < 2:
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.05)
        config_before = (out / "config.json").read_bytes()
        with pytest.raises(SystemExit) as e:
            train.main([str(ROOT / "configs/smoke.py"), f"--data_dir={sample_dir}", f"--out_dir={out}"])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1, err
        assert f"in use by another training run (pid {first.pid} on host " in err[0]
        assert (out / "config.json").read_bytes() == config_before and not list(out.glob("*.tmp"))
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 0 and len(list(out.glob("ckpt_*.pt"))) == 1  # its own checkpoint, intact


def test_rotation_keeps_good_checkpoints_when_the_newest_is_unreadable(smoke_runs, sample_dir, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(smoke_runs["bpe_tied"][0], out)
    (out / "ckpt_0000020.pt").write_bytes(b"torn")
    run_train(out, sample_dir, "--keep_checkpoints=1", "--max_steps=15", "--ckpt_interval=5", "--lr_decay_steps=20")
    names = sorted(p.name for p in out.iterdir() if p.name.startswith("ckpt_"))
    # ckpt_10 (the resume point, followed by a healthy step) is the last good one and stays; 15 is the newest
    assert names == ["ckpt_0000010.pt", "ckpt_0000015.pt", "ckpt_0000020.pt.corrupt"], names
    assert "ckpt_0000020.pt cannot be used: moved aside" in capsys.readouterr().err


@pytest.mark.slow
def test_divergence_is_never_saved_as_good_and_a_lower_lr_recovers(sample_dir, tmp_path, capsys):
    out = tmp_path / "run"
    run_train(out, sample_dir, "--max_steps=10", "--ckpt_interval=2")
    with pytest.raises(SystemExit) as e:
        run_train(out, sample_dir, "--max_steps=40", "--ckpt_interval=1", "--learning_rate=1e3", "--min_lr=1e2")
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and "training diverged at step" in err[-1], err
    named = err[-1].split("resume from ")[1].split(",")[0]
    assert named == "ckpt_0000010.pt" and (out / named).exists()
    assert not [p for p in out.glob("ckpt_*.pt") if p.name > named]  # later ones moved aside as .suspect
    resumed = run_train(out, sample_dir, "--max_steps=20", "--learning_rate=3e-4", "--min_lr=3e-5")
    losses = [r["train_loss"] for r in resumed if "train_loss" in r and r["step"] > 10]
    assert len(losses) == 10 and all(np.isfinite(losses)) and losses[-1] < rows(resumed, "val_loss")[0]
    val = rows(resumed, "val_loss")
    assert val[20] < val[10]


@pytest.mark.slow
def test_a_transient_spike_warns_and_defers_the_checkpoint(sample_dir, tmp_path, monkeypatch, capsys):
    real = train.optimizer_step

    def spiky(raw, opt, lr, clip, loss, vote=None):
        loss_f, norm, finite, vote_f = real(raw, opt, lr, clip, loss, vote)
        return loss_f, (1e4 if len(opt.state) and spiky.calls == 11 else norm), finite, vote_f
    spiky.calls = 0

    def counting(*a):
        spiky.calls += 1
        return spiky(*a)
    monkeypatch.setattr(train, "optimizer_step", counting)
    metrics = run_train(tmp_path / "run", sample_dir, "--max_steps=14", "--ckpt_interval=11", "--log_interval=5")
    out = capsys.readouterr().out
    assert "warning: step 11: grad norm 1e+04 > 20 x the recent median" in out and "step 14/14" in out
    assert sorted(p.name for p in (tmp_path / "run").glob("ckpt_*.pt")) == ["ckpt_0000012.pt", "ckpt_0000014.pt"]
    assert sorted(rows(metrics, "train_loss")) == list(range(1, 15))


@pytest.mark.parametrize("override,field", [("--seed=7", "seed: checkpoint 1337 vs now 7"),
                                            ("--total_batch_size=512", "total_batch_size: checkpoint 256 vs now 512"),
                                            ("--shuffle=false", "shuffle"), ("--val_tokens=512", "val_tokens"),
                                            ("--input_embedding=bpe_tied", "input_embedding"),
                                            ("--kron_pos_dim=8", "kron_pos_dim"), ("--vocab_size=50320", "vocab_size"),
                                            ("--n_layer=3", "n_layer")])
def test_resume_refuses_what_changes_the_run(smoke_runs, sample_dir, tmp_path, capsys, override, field):
    out = tmp_path / "run"
    shutil.copytree(smoke_runs["kronecker"][0], out)
    before = snapshot(out)
    with pytest.raises(SystemExit) as e:
        train.main([str(ROOT / "configs/smoke.py"), f"--data_dir={sample_dir}", f"--out_dir={out}",
                    "--input_embedding=kronecker", "--max_steps=30", override])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "cannot resume" in err[0] and field in err[0], err
    assert snapshot(out) == before  # config.json untouched


def test_resume_on_other_data_is_refused(smoke_runs, sample_dir, tmp_path, capsys):
    out, data = tmp_path / "run", tmp_path / "data"
    shutil.copytree(smoke_runs["bpe_tied"][0], out)
    shutil.copytree(sample_dir, data)
    (data / "meta.json").unlink()  # other shards of the same names, made elsewhere
    shard = next(data.glob("*train*.bin"))
    toks = np.fromfile(shard, dtype="<u2", offset=1024)
    write_shard(shard, np.concatenate([toks[:1], toks[:0:-1]]))
    with pytest.raises(SystemExit):
        train.main([str(ROOT / "configs/smoke.py"), f"--data_dir={data}", f"--out_dir={out}", "--max_steps=30"])
    assert "are not the ones" in capsys.readouterr().err


@pytest.mark.slow
def test_full_disk_during_training_is_one_line_and_keeps_the_last_checkpoint(sample_dir, tmp_path, monkeypatch,
                                                                             capsys):
    out = tmp_path / "run"
    run_train(out, sample_dir, "--max_steps=4", "--ckpt_interval=2")
    good = hashlib.sha256((out / "ckpt_0000004.pt").read_bytes()).hexdigest()

    real_open = open

    def full(path, mode="r", *a, **k):  # a checkpoint's temp file meets a real ENOSPC (/dev/full)
        return real_open("/dev/full" if ".ckpt_" in str(path) else path, mode, *a, **k)
    monkeypatch.setattr(util, "open", full, raising=False)
    with pytest.raises(SystemExit) as e:
        run_train(out, sample_dir, "--max_steps=8", "--ckpt_interval=2")
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "no space left on the device" in err[0], err
    assert not list(out.glob(".*.tmp")) and hashlib.sha256((out / "ckpt_0000004.pt").read_bytes()).hexdigest() == good


@pytest.mark.slow
def test_sigterm_to_the_workers_of_torchrun_checkpoints_and_exits_0(sample_dir, tmp_path):
    """The documented way to stop a torchrun job: signal its workers (SIGTERM to torchrun itself also gets the
    checkpoint written, but torchrun then exits 1 with its own SignalException traceback)."""
    out = tmp_path / "ddp"
    cmd = ["torchrun", "--standalone", "--nproc_per_node=2", str(ROOT / "train.py"), str(ROOT / "configs/smoke.py"),
           f"--data_dir={sample_dir}", f"--out_dir={out}", "--batch_size=2", "--max_steps=400",
           "--ckpt_interval=1000"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    while kill_test.last_step(out) < 3:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2
    for w in workers:
        os.kill(int(w), signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr[-2000:]
    assert "checkpoint written at step" in stdout and len(list(out.glob("ckpt_*.pt"))) == 1


# -- DDP: ranks agree on resume and on a failed save -------------------------------------------------------------

def _agree_worker(rank, port, steps, result_dir):
    import torch.distributed as dist
    import runtime
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    rt = runtime.Runtime(rank, rank, 2, torch.device("cpu"), "cpu", torch.float32, False)
    state = {"epoch": 0, "shard_cursor": 0, "block_cursor": steps[rank], "micro": 0}
    try:
        train.agree_on_resume(steps[rank], state, rt, "runs/x")
        outcome = "ok"
    except train.UserError as e:
        outcome = str(e)
    finally:
        dist.destroy_process_group()
    (Path(result_dir) / f"rank{rank}").write_text(outcome)


@pytest.mark.parametrize("steps,agree", [((20, 20), True), ((20, 10), False)])
def test_ranks_refuse_to_resume_from_different_steps(tmp_path, steps, agree):
    import torch.multiprocessing as tmp_mp
    tmp_mp.start_processes(_agree_worker, args=(29000 + os.getpid() % 500 + steps[1], steps, tmp_path), nprocs=2,
                           start_method="spawn")
    outcomes = [(tmp_path / f"rank{r}").read_text() for r in range(2)]
    if agree:
        assert outcomes == ["ok", "ok"]
    else:
        assert all("ranks would resume from different points (steps 10 to 20" in o for o in outcomes), outcomes


@pytest.mark.slow
def test_a_failed_save_on_rank_0_stops_every_rank_with_one_line(sample_dir, tmp_path):
    """2 ranks on gloo; rank 0 cannot write its checkpoint (a 1 MiB file-size limit; rank 1 writes no file). Both
    ranks learn it through the save's all-reduce and exit 2 with the error line: no rank waits for the other."""
    import resource
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
           "configs/smoke.py", f"--data_dir={sample_dir}", f"--out_dir={out}", "--max_steps=2", "--batch_size=2",
           "--progress=false"]

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, preexec_fn=limit, timeout=180,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert time.time() - t0 < 60 + 30  # + interpreter and process-group start
    # (the two ranks share one stderr, so their lines may interleave: count the error lines' starts)
    assert proc.returncode != 0 and proc.stderr.count("error: ") == 2, proc.stderr[-3000:]
    assert "error: the file size limit (ulimit -f) was hit" in proc.stderr
    assert "error: rank 0 could not write" in proc.stderr  # (the traceback after them is torchrun's own)
    assert proc.stderr.count("exitcode  : 2") + proc.stderr.count("exitcode: 2") >= 1 or "exit code 2" in proc.stderr
    assert not list(out.glob("ckpt_*.pt"))
