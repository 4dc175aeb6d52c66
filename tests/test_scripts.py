"""The shell entry points, end to end at smoke size: quickstart, compare.sh (+ make_tables), gpu_check (CPU)."""
import json
import os
import sys
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT
from model import ARMS

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def no_python(tmp_path_factory):
    """An environment whose PATH has every command except `python` (GPU images often only promise python3)."""
    bindir = tmp_path_factory.mktemp("bin")
    # python3 runs this very interpreter. A wrapper, not a symlink: a virtualenv's Python finds its packages through
    # the pyvenv.cfg beside the path it is started from, which a symlink in another folder would lose.
    (bindir / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bindir / "python3").chmod(0o755)
    for d in os.environ["PATH"].split(os.pathsep):
        for f in (Path(d).iterdir() if Path(d).is_dir() else []):
            if f.name != "python" and not (bindir / f.name).exists() and os.access(f, os.X_OK):
                os.symlink(f, bindir / f.name)
    env = {**ENV, "PATH": str(bindir)}
    assert subprocess.run(["bash", "-c", "command -v python"], env=env, capture_output=True).returncode != 0
    return env


@pytest.mark.slow
def test_quickstart_script(tmp_path):
    out = tmp_path / "qs"
    proc = subprocess.run(["bash", "scripts/quickstart.sh"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**ENV, "STEPS": "2", "OUT": str(out)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| bpe_tied |" in proc.stdout and "| kronecker |" in proc.stdout and "kronecker vs bpe_tied" in proc.stdout
    assert (out / "val_loss.png").stat().st_size > 10_000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["arms"]["kronecker"]["input_params"] == 4096 * 128


@pytest.mark.slow
def test_compare_script_runs_every_arm_and_seed_then_tables(sample_dir, tmp_path, no_python):
    cmd = ["bash", "scripts/compare.sh", "configs/smoke.py", "--seeds", "1 2", "--arms", "bpe_tied kronecker",
           "--exp", "t", "--runs_dir", str(tmp_path), f"--data_dir={sample_dir}", "--max_steps=3",
           "--eval_interval=3"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=no_python)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = sorted(p.name for p in (tmp_path / "t").iterdir() if p.is_dir() and p.name != "tables")
    assert runs == ["bpe_tied_s1", "bpe_tied_s2", "kronecker_s1", "kronecker_s2"]
    summary = json.loads((tmp_path / "t/tables/summary.json").read_text())
    assert summary["arms"]["kronecker"]["seeds"] == [1, 2]
    # finished runs are skipped on a rerun: nothing is retrained
    before = (tmp_path / "t/kronecker_s1/metrics.jsonl").read_text()
    rerun = [a if a != "1 2" else "1" for a in cmd]  # one seed is enough to see the skip
    proc = subprocess.run(rerun, cwd=ROOT, capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0 and proc.stdout.count("already finished") == 2
    assert (tmp_path / "t/kronecker_s1/metrics.jsonl").read_text() == before


BLOCKER = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("datasets", "wandb"):
            raise ImportError(f"{name} is blocked: the GPU image does not have it")
sys.meta_path.insert(0, _Block())
"""


def _gpu_check(tmp_path, env, data, *args):
    """scripts/gpu_check.sh at smoke size on the CPU, as on a bare GPU image: a Python that cannot import datasets
    or wandb, and no `python` on PATH."""
    block = tmp_path / "block"
    block.mkdir(exist_ok=True)
    (block / "sitecustomize.py").write_text(BLOCKER)
    env = {**env, "PYTHONPATH": str(block)}
    check = subprocess.run(["python3", "-c", "import datasets"], env=env, capture_output=True, text=True)
    assert check.returncode != 0 and "blocked" in check.stderr  # the shim works
    out = tmp_path / "out"
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--smoke", "--data", str(data), "--out", str(out), *args],
                          cwd=ROOT,
                          capture_output=True, text=True, timeout=900, env=env)
    return proc, out


@pytest.mark.slow
def test_gpu_check_rehearsal_without_datasets_or_wandb(tmp_path, sample_dir, no_python):
    proc, out = _gpu_check(tmp_path, no_python, tmp_path / "shards")  # no shards there: tokenized without datasets
    for f in sorted(sample_dir.glob("*.bin")):
        assert (tmp_path / "shards" / f.name).read_bytes() == f.read_bytes()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    result = json.loads((out / "gpu_check.json").read_text())
    steps = result["steps"]
    assert {k[0] for k in steps} == set("abcdefghij")
    assert all(s["status"] == "ok" for k, s in steps.items() if k[0] != "j")
    assert steps["j 2-rank NCCL"]["status"] == "skipped" and "needs 2" in steps["j 2-rank NCCL"]["text"]
    study = sum(not a.control for a in ARMS.values())
    # the production micro-batch (64 on a GPU; 4 at smoke size) first, then the first check's (16; 2)
    assert sum(k.startswith("b train") and k.endswith("B4") for k in steps) == study
    assert sum(k.startswith("g train") and k.endswith("B2") for k in steps) == study
    for k, s in steps.items():  # each arm's losses are its training steps only, none of later steps' timing runs
        if k[0] in "bg":
            assert len(s["data"]["losses"]) == 10, (k, len(s["data"]["losses"]))
    assert len(steps["d profile"]["data"]) == 2 and (out / "profile_bpe_tied.txt").is_file()
    backends = {r["backend"] for r in steps["f attention backends"]["data"]}
    assert backends == {"default", "flash", "cudnn", "efficient", "math"}
    summary = (out / "summary.md").read_text()
    assert "gpu check: PASS" in summary and summary.count("(falls)") == 2 * study
    # the folder is meant to be committed: its logs name no scratch folder, checkout or install path
    import tempfile
    for f in out.iterdir():
        text = f.read_text()
        for path in (tempfile.gettempdir() + "/", str(ROOT), "site-packages/"):
            assert path not in text, f"{f.name} names {path}"


@pytest.mark.slow
def test_gpu_check_budget_skips_what_does_not_fit(tmp_path, sample_dir, no_python):
    proc, out = _gpu_check(tmp_path, no_python, sample_dir, "--budget_s", "16")
    steps = json.loads((out / "gpu_check.json").read_text())["steps"]
    skipped = {k: s for k, s in steps.items() if s["status"] == "skipped"}
    assert steps["a modes agree"]["status"] == "ok" and skipped  # the first step fits, later ones do not
    assert all("of the budget left" in s["text"] or "needs 2" in s["text"] for s in skipped.values())
    assert "gpu check:" in (out / "summary.md").read_text() and proc.returncode == 0


@pytest.mark.parametrize("flag, n, recipes, first_block, seeds", [
    ((), 90, {"lr3e-3", "lr1e-3"}, 1341, 1344),
    (("--ladder",), 120, {"w128", "w256", "w384"}, 1341, 1344),
    (("--lr_sweep",), 24, {"lr3e-3_w40", "lr6e-3_w40"}, 1339, 1342)])
def test_attribution_plans_are_balanced_registry_arms(flag, n, recipes, first_block, seeds):
    """Each grid lists its runs: every arm a registry entry, every recipe with the same runs, and the first block of
    seeds before any later seed, so a partial grid stays balanced."""
    from model import ARMS
    out = subprocess.run(["bash", "scripts/attribution.sh", *flag, "--plan"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    runs = [line.split() for line in out.stdout.splitlines() if len(line.split()) == 2 and "_s" in line]
    assert len(runs) == n and f"{n} runs" in out.stdout
    by_recipe = {r: sorted(run for rr, run in runs if rr == r) for r in recipes}
    assert set(r for r, _ in runs) == recipes and len({tuple(v) for v in by_recipe.values()}) == 1
    assert all(run.rsplit("_s", 1)[0] in ARMS for _, run in runs)
    order = [int(run.rsplit("_s", 1)[1]) for _, run in runs]
    assert max(order[: order.index(first_block + 1)]) == first_block and set(order) == set(range(1337, seeds + 1))
