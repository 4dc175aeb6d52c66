import json
import math
import statistics
import subprocess
import sys

import pytest

from conftest import ROOT

from scripts import make_tables


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


@pytest.mark.slow
def test_known_answers(synthetic, tmp_path):
    out = tmp_path / "tables"
    summary = make_tables.main([str(synthetic), "--out", str(out)])
    arms = summary["arms"]
    assert arms["bpe_tied"]["val_loss_mean"] == pytest.approx(3.1)
    assert arms["bpe_tied"]["val_loss_std"] == pytest.approx(0.1)  # sample std over seeds
    kv = {(c["arm"], c["ref"]): c for c in summary["comparisons"]}
    k = kv["kronecker", "bpe_tied"]
    d = k["delta"]
    assert d["n"] == 3 and d["mean"] == pytest.approx(-0.35 / 3)
    assert d["std"] == pytest.approx(statistics.stdev([-0.1, -0.1, -0.15]))
    # t = mean / (sd / sqrt 3) = -7 on 2 df: p = 1 - 7 / sqrt(51) (closed form for 2 df); t_0.975,2 = 4.302653
    assert d["p_t"] == pytest.approx(1 - 7 / math.sqrt(51), rel=1e-9)
    half = 4.302653 * d["std"] / math.sqrt(3)
    assert d["ci95"] == pytest.approx([d["mean"] - half, d["mean"] + half], rel=1e-5)
    assert d["p_signflip"] == pytest.approx(2 / 8)  # only the all-negative and all-positive sign patterns
    assert k["delta_pct"][0] == pytest.approx(statistics.fmean([-0.1 / 3.0 * 100, -0.1 / 3.1 * 100, -0.15 / 3.2 * 100]))
    # target 3.0 is crossed between (10, 3.2) and (20, 2.9): step 16.67 -> ratio 20 / 16.67 = 1.2
    assert k["per_seed"][1]["step_at_target"] == pytest.approx(10 + 10 * 0.2 / 0.3)
    assert k["per_seed"][1]["steps_ratio_paper"] == pytest.approx(1.2)
    assert k["per_seed"][1]["steps_ratio_sym"] == pytest.approx(1.2)  # L* = 3.0, the reference's own final
    assert k["seeds_arm_lower"] == 3
    u = kv["bpe_untied", "bpe_tied"]
    assert u["steps_ratio_paper_n"] == 0 and u["delta"]["mean"] == pytest.approx(0.5)  # never reaches the target
    # symmetric: L* = 3.5 (the arm's final); the reference gets there at step 15, the arm at 20 -> 0.75, every seed
    assert u["steps_ratio_sym_n"] == 3 and u["per_seed"][1]["steps_ratio_sym"] == pytest.approx(15 / 20)
    assert ("kronecker", "bpe_untied") in kv
    table = (out / "loss_table.md").read_text()
    assert "not reached (0/3)" in table and "not ours" in table and "3.1000 ± 0.1000" in table
    for png in ("val_loss.png", "train_loss.png", "norms.png", "delta.png"):
        assert (out / png).stat().st_size > 10_000
    # deterministic: a rerun regenerates the same table and summary
    again = tmp_path / "again"
    subprocess.run([sys.executable, "-m", "scripts.make_tables", str(synthetic), "--out", str(again),
                    "--no_plots", "--title", f"Comparison: {synthetic.name}"], check=True, capture_output=True, cwd=ROOT)
    assert (again / "loss_table.md").read_text() == table
    assert (again / "summary.json").read_text() == (out / "summary.json").read_text()


def test_steps_to_target_edge_cases():
    f = make_tables.steps_to_target
    assert f([(0, 5.0), (10, 3.0)], 4.0) == pytest.approx(5.0)
    assert f([(0, 2.0), (10, 1.0)], 4.0) == 0.0
    assert f([(0, 5.0), (10, 4.5)], 4.0) is None
    assert math.isclose(f([(0, 5.0), (10, 4.0), (20, 4.0)], 4.0), 10.0)


def test_single_seed_prints_na_and_missing_runs_exit_2(tmp_path, capsys):
    write_run(tmp_path / "r", "bpe_tied", 1, [(0, 10.0), (10, 4.0)])
    write_run(tmp_path / "r", "kronecker", 1, [(0, 10.0), (10, 3.0)])
    make_tables.main([str(tmp_path / "r"), "--out", str(tmp_path / "o"), "--no_plots"])
    table = (tmp_path / "o" / "loss_table.md").read_text()
    assert "4.0000 ± n/a" in table and "± 0.0000" not in table
    with pytest.raises(SystemExit) as e:
        make_tables.main([str(tmp_path / "empty"), "--out", str(tmp_path / "o2")])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("error: no <arm>_s<seed>")


def test_t_distribution_against_known_values():
    assert make_tables.t_quantile(0.975, 4) == pytest.approx(2.776445, abs=1e-5)
    assert make_tables.t_quantile(0.975, 30) == pytest.approx(2.042272, abs=1e-5)
    assert make_tables.t_two_sided_p(2.776445, 4) == pytest.approx(0.05, abs=1e-6)
    assert make_tables.t_two_sided_p(0.0, 3) == pytest.approx(1.0)


def test_eval_table_from_eval_lm_results(synthetic, tmp_path):
    ev = tmp_path / "eval"
    ev.mkdir()
    for arm, base in (("bpe_tied", 0.30), ("kronecker", 0.32)):
        for s in (1, 2, 3):
            res = {"arm": arm, "seed": s, "tasks": {"hellaswag": {"acc": base - 0.05, "acc_norm": base + s / 100},
                                                     "piqa": {"acc": 0.6}}}
            (ev / f"{arm}_s{s}.json").write_text(json.dumps(res))
    summary = make_tables.main([str(synthetic), "--out", str(tmp_path / "t"), "--no_plots", "--eval", str(ev)])
    e = summary["eval"]
    assert e["metric"] == {"hellaswag": "acc_norm", "piqa": "acc"}
    assert e["arms"]["kronecker"]["hellaswag"][0] == pytest.approx(0.34)
    k = next(c for c in e["comparisons"] if (c["arm"], c["ref"]) == ("kronecker", "bpe_tied"))
    assert k["per_task"]["hellaswag"]["mean"] == pytest.approx(0.02) and k["per_task"]["piqa"]["mean"] == 0
    assert "## Downstream evaluation" in (tmp_path / "t" / "loss_table.md").read_text()
