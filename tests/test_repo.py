"""Repo-level promises: a new arm needs only the registry in model.py; the repo refers to nothing outside itself."""
import re
import subprocess
import sys

import pytest

import model
from conftest import ROOT, run_train

sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "scripts"))
import make_tables  # noqa: E402
import train_step  # noqa: E402


@pytest.mark.slow
def test_a_fifth_arm_is_one_registry_entry(sample_dir, tmp_path, monkeypatch):
    """Registered here and nowhere else, a toy arm trains, benchmarks and gets its comparison row. It is built like
    bpe_tied, so at one seed it must reproduce bpe_tied's run exactly: arms are what the registry says."""
    monkeypatch.setitem(model.ARMS, "toy_tied", model.Arm(codec=False, tied=True, about="a copy of bpe_tied"))
    runs = tmp_path / "runs"
    metrics = {arm: run_train(runs / f"{arm}_s1", sample_dir, f"--input_embedding={arm}", "--seed=1",
                              "--max_steps=4", "--eval_interval=2") for arm in ("bpe_tied", "toy_tied")}
    def numbers(rows):
        return [(r["step"], r.get("train_loss"), r.get("grad_norm"), r.get("val_loss")) for r in rows]
    assert numbers(metrics["toy_tied"]) == numbers(metrics["bpe_tied"])
    rows = train_step.main([str(ROOT / "configs/smoke.py"), "--arms", "bpe_tied,toy_tied", "--steps", "1",
                            "--warmup", "0", "--fused", "on"])
    assert [r["arm"] for r in rows] == ["bpe_tied", "toy_tied"]
    summary = make_tables.main([str(runs), "--out", str(tmp_path / "tables"), "--no_plots"])
    toy = next(c for c in summary["comparisons"] if c["arm"] == "toy_tied")
    assert toy["ref"] == "bpe_tied" and toy["delta"]["mean"] == 0.0


TEXT = (".py", ".md", ".sh", ".sbatch", ".toml", ".txt", ".json", ".jsonl", ".yaml", ".yml", ".cfg", ".log",
        ".csv", "")
SYSTEM = ("/dev/null", "/usr/bin/env", "/bin/bash", "/proc/", "/dev/")


def tracked_text_files():
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not names:
        pytest.skip("not a git checkout")
    for name in names:
        path = ROOT / name
        if path.suffix in TEXT and path.is_file() and path.stat().st_size < 5_000_000:
            try:
                yield name, path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue


def test_no_absolute_paths_and_no_documents_from_outside():
    abs_path = re.compile(r"(?<![\w.:/~\]\)>\\-])(/(?:home|root|tmp|work|Users|mnt|opt|var|srv|scratch|mirror|data|"
                          r"shared|usr|etc|private)(?:/[\w.+-]+)+)")
    outside = re.compile(r"DESIGN(?:\.md)?\s*§|\bDESIGN\.md\b|§\s*\d|\.\./shared|\bissues? #?\d+\b", re.I)
    found = []
    for name, text in tracked_text_files():
        if name in ("tests/test_repo.py", ".gitignore"):  # (gitignore patterns start with / by design)
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if line.startswith("#!"):
                continue
            for m in abs_path.finditer(line):
                if not m.group(1).startswith(SYSTEM):
                    found.append(f"{name}:{n}: absolute path {m.group(1)}")
            for m in outside.finditer(line):
                found.append(f"{name}:{n}: refers to {m.group(0)!r}, which is not in the repo")
    assert not found, "\n".join(found[:40])


def test_inference_code_never_loads_the_trainer():
    """Generating, probing and exporting need model.py + checkpoint.py (and the stdlib-only config.py that
    checkpoint.py reads resume rules from): no trainer, runtime, data loader, wandb or datasets, and no
    torch.distributed module beyond what `import torch` itself loads."""
    code = ("import sys; sys.path.insert(0, 'probes'); import torch; before = set(sys.modules); "
            "import sample, export_hf, generation, geometry, robustness, param_accounting; "
            "new = set(sys.modules) - before; "
            "print(sorted(m for m in new if m.split('.')[0] in "
            "('train', 'runtime', 'data', 'prepare_fineweb', 'wandb', 'datasets') "
            "or m.startswith('torch.distributed')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout
