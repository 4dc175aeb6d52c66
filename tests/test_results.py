"""Every committed result folder regenerates from its committed raw runs, byte for byte."""
import json

import pytest

from conftest import ROOT

from scripts import make_tables

FOLDERS = sorted(p.parent for p in (ROOT / "results").rglob("runs") if p.is_dir())


def test_there_are_committed_runs():
    assert FOLDERS, "no results/<exp>/runs folder"


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: str(p.relative_to(ROOT / "results")))
def test_tables_regenerate_byte_for_byte(folder, tmp_path):
    runs = sorted((folder / "runs").iterdir())
    assert runs and all((r / "metrics.jsonl").is_file() and (r / "config.json").is_file() for r in runs)
    assert not list((folder / "runs").rglob("*.pt"))  # raw metrics only, never checkpoints
    make_tables.main([str(folder / "runs"), "--out", str(tmp_path), "--no_plots"])
    for name in ("loss_table.md", "summary.json"):
        assert (tmp_path / name).read_bytes() == (folder / name).read_bytes(), name


@pytest.mark.slow
def test_cost_table_regenerates_byte_for_byte():
    """results/costs.md, which the README's cost table quotes, comes from committed files by a committed command."""
    from scripts import costs
    assert costs.costs("configs/gpt2_124m.py") == (ROOT / "results/costs.md").read_text()


def test_every_committed_run_records_its_provenance_as_data():
    """Commit, torch version, threads and device are data in each run's config.json, not claims in prose."""
    configs = sorted((ROOT / "results").rglob("runs/*/config.json"))
    assert configs
    for path in configs:
        prov = json.loads(path.read_text()).get("provenance") or {}
        assert {"commit", "torch", "threads", "device"} <= set(prov), path.relative_to(ROOT)
        assert len(prov["commit"].removesuffix("-dirty")) == 40
