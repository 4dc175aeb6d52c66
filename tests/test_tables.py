import json
import math
import statistics
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import make_tables  # noqa: E402


def write_run(base, arm, seed, curve, params=100, input_params=10):
    d = base / f"{arm}_s{seed}"
    d.mkdir(parents=True)
    rows = [{"step": 0, "params": params, "input_params": input_params, "tokens": 0}]
    for step, loss in curve:
        rows.append({"step": step, "val_loss": loss, "tokens": step * 1000})
        if step:
            rows.append({"step": step, "train_loss": loss + 0.1, "tokens": step * 1000})
        rows.append({"step": step, "norm/input_row": 1.0 + step / 100, "norm/input_emb": 2.0, "norm/head_row": 3.0})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def synthetic(tmp_path):
    base_final = {1: 3.0, 2: 3.1, 3: 3.2}
    kron_final = {1: 2.9, 2: 3.0, 3: 3.05}
    for s in (1, 2, 3):
        write_run(tmp_path, "bpe_tied", s, [(0, 10.0), (10, 4.0), (20, base_final[s])])
        write_run(tmp_path, "kronecker", s, [(0, 10.0), (10, base_final[s] + 0.2), (20, kron_final[s])])
        write_run(tmp_path, "bpe_untied", s, [(0, 10.0), (10, 5.0), (20, base_final[s] + 0.5)])
    return tmp_path


def test_known_answers(synthetic, tmp_path):
    out = tmp_path / "tables"
    summary = make_tables.main([str(synthetic), "--out", str(out)])
    arms = summary["arms"]
    assert arms["bpe_tied"]["val_loss_mean"] == pytest.approx(3.1)
    assert arms["bpe_tied"]["val_loss_std"] == pytest.approx(0.1)  # sample std over seeds
    kv = {(c["arm"], c["ref"]): c for c in summary["comparisons"]}
    k = kv["kronecker", "bpe_tied"]
    assert k["delta"][0] == pytest.approx(-0.35 / 3)
    assert k["delta"][1] == pytest.approx(statistics.stdev([-0.1, -0.1, -0.15]))
    assert k["delta_pct"][0] == pytest.approx(statistics.fmean([-0.1 / 3.0 * 100, -0.1 / 3.1 * 100, -0.15 / 3.2 * 100]))
    # target 3.0 is crossed between (10, 3.2) and (20, 2.9): step 16.67 -> ratio 20 / 16.67 = 1.2
    assert k["per_seed"][1]["step_at_target"] == pytest.approx(10 + 10 * 0.2 / 0.3)
    assert k["per_seed"][1]["steps_ratio"] == pytest.approx(1.2)
    assert k["seeds_arm_lower"] == 3
    u = kv["bpe_untied", "bpe_tied"]
    assert u["steps_ratio_n"] == 0 and u["delta"][0] == pytest.approx(0.5)  # never reaches the target
    assert ("kronecker", "bpe_untied") in kv
    table = (out / "loss_table.md").read_text()
    assert "not reached" in table and "not ours" in table and "3.1000 ± 0.1000" in table
    for png in ("val_loss.png", "train_loss.png", "norms.png"):
        assert (out / png).stat().st_size > 10_000
    # deterministic: a rerun regenerates the same table and summary
    again = tmp_path / "again"
    subprocess.run([sys.executable, str(ROOT / "scripts/make_tables.py"), str(synthetic), "--out", str(again),
                    "--no_plots", "--title", f"Comparison: {synthetic.name}"], check=True, capture_output=True)
    assert (again / "loss_table.md").read_text() == table
    assert (again / "summary.json").read_text() == (out / "summary.json").read_text()


def test_steps_to_target_edge_cases():
    f = make_tables.steps_to_target
    assert f([(0, 5.0), (10, 3.0)], 4.0) == pytest.approx(5.0)
    assert f([(0, 2.0), (10, 1.0)], 4.0) == 0.0
    assert f([(0, 5.0), (10, 4.5)], 4.0) is None
    assert math.isclose(f([(0, 5.0), (10, 4.0), (20, 4.0)], 4.0), 10.0)
