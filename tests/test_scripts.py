"""The shell entry points, end to end at smoke size: quickstart, compare.sh (+ make_tables), gpu_check (CPU)."""
import json
import os
import subprocess

from conftest import ROOT

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_quickstart_script(tmp_path):
    out = tmp_path / "qs"
    proc = subprocess.run(["bash", "scripts/quickstart.sh"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**ENV, "STEPS": "4", "OUT": str(out)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| bpe_tied |" in proc.stdout and "| kronecker |" in proc.stdout and "kronecker vs bpe_tied" in proc.stdout
    assert (out / "val_loss.png").stat().st_size > 10_000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["arms"]["kronecker"]["input_params"] == 4096 * 128


def test_compare_script_runs_every_arm_and_seed_then_tables(sample_dir, tmp_path):
    cmd = ["bash", "scripts/compare.sh", "configs/smoke.py", "--seeds", "1 2", "--arms", "bpe_tied kronecker",
           "--exp", "t", "--runs_dir", str(tmp_path), f"--data_dir={sample_dir}", "--max_steps=3",
           "--eval_interval=3"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = sorted(p.name for p in (tmp_path / "t").iterdir() if p.is_dir() and p.name != "tables")
    assert runs == ["bpe_tied_s1", "bpe_tied_s2", "kronecker_s1", "kronecker_s2"]
    summary = json.loads((tmp_path / "t/tables/summary.json").read_text())
    assert summary["arms"]["kronecker"]["seeds"] == [1, 2]
    # finished runs are skipped on a rerun: nothing is retrained
    before = (tmp_path / "t/kronecker_s1/metrics.jsonl").read_text()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0 and proc.stdout.count("already finished") == 4
    assert (tmp_path / "t/kronecker_s1/metrics.jsonl").read_text() == before


def test_gpu_check_pipeline_on_cpu(tmp_path):
    proc = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**ENV, "SMOKE": "1", "OUT": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout[-3000:]
    summary = (tmp_path / "summary.md").read_text()
    assert "gpu check: PASS" in summary and summary.count(" falls") == 4
    rows = json.loads((tmp_path / "train_step.json").read_text())["rows"]
    assert {r["arm"] for r in rows} == {"bpe_tied", "kronecker", "bpe_untied", "kronecker_tied"}
    assert all(r["ok"] for r in json.loads((tmp_path / "modes.json").read_text()))
