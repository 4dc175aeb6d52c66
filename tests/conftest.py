import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory):
    """The bundled sample, tokenized once per test session (real GPT-2 tokens, real shards)."""
    import prepare_fineweb
    out = tmp_path_factory.mktemp("sample")
    prepare_fineweb.prepare(prepare_fineweb.parse_args(["--source", "sample", "--out_dir", str(out), "--workers",
                                                        "1", "--quiet"]))
    return out


def run_train(out_dir, data_dir, *overrides, config="configs/smoke.py"):
    """Train in-process (fast: no interpreter start) and return metrics rows."""
    import json
    import train
    train.main([str(ROOT / config), f"--data_dir={data_dir}", f"--out_dir={out_dir}", *overrides])
    return [json.loads(l) for l in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def smoke_runs(sample_dir, tmp_path_factory):
    """Every arm trained with configs/smoke.py (20 steps) once per session: {arm: (out_dir, metrics rows)}.
    Probe and sample tests load the checkpoints these runs wrote."""
    from model import ARMS
    base = tmp_path_factory.mktemp("smoke")
    return {arm: (base / arm, run_train(base / arm, sample_dir, f"--input_embedding={arm}")) for arm in ARMS}


@pytest.fixture(scope="session")
def smoke_ckpts(smoke_runs):
    return {arm: sorted(out.glob("ckpt_*.pt"))[-1] for arm, (out, _) in smoke_runs.items()}


def pytest_collection_modifyitems(items):
    """Tests that need the trained smoke runs are `slow` too: `pytest -m "not slow"` is the quick edit-test loop."""
    for item in items:
        if set(getattr(item, "fixturenames", ())) & {"smoke_runs", "smoke_ckpts"}:
            item.add_marker(pytest.mark.slow)
