import json
import subprocess
import sys

import pytest

from conftest import ROOT

from probes import generation, geometry, param_accounting, robustness
from probes._common import run_main

from model import ARMS  # noqa: E402


def _lev(a, b):
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def test_default_pairs_are_small_edits_of_one_word():
    rows = robustness.read_pairs(robustness.DEFAULT_PAIRS)
    assert len(rows) >= 110 and len({r["category"] for r in rows}) == 11
    for r in rows:
        a, b = r["clean"].split(), r["typo"].split()
        diff = [(x, y) for x, y in zip(a, b) if x != y]
        assert len(a) == len(b) and len(diff) == 1, r
        assert 1 <= _lev(*diff[0]) <= 2, r


def test_robustness_on_every_arm(smoke_ckpts, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    src = robustness.read_pairs(robustness.DEFAULT_PAIRS)[:12]
    rows = [{k: r[k] for k in ("category", "clean", "typo")} for r in src]
    rows.append({"category": "dup", "clean": "The same text", "typo": "The same text"})
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.warns(UserWarning, match="identical"):
        res = robustness.main(["--checkpoints", *map(str, smoke_ckpts.values()), "--pairs", str(pairs),
                               "--out", str(tmp_path / "rob.json")])
    assert res["n_pairs"] == 12 and res["excluded"] == [{"line": 13, "category": "dup", "text": "The same text"}]
    assert {m["arm"] for m in res["models"].values()} == set(ARMS)
    for m in res["models"].values():
        o = m["overall"]
        assert o["kl"] >= 0 and 0 <= o["top1_kept"] <= 1 and -1 <= o["cosine"] <= 1
        assert len(m["pairs"]) == 12 and "dup" not in m["per_category"]
    assert len(res["comparisons"]) == len(ARMS) * (len(ARMS) - 1) // 2  # every pair of models
    saved = json.loads((tmp_path / "rob.json").read_text())
    assert saved["n_pairs"] == 12 and (tmp_path / "rob.md").read_text().startswith("# Spelling robustness")


def test_kl_is_zero_for_identical_inputs(smoke_ckpts):
    from checkpoint import load_checkpoint
    from tokenizer import get_encoding
    model, _ = load_checkpoint(smoke_ckpts["kronecker"])
    p = {"category": "x", "clean": "It is a truth universally", "typo": "It is a truth universally"}
    r = robustness.score_pairs(model, get_encoding(), [p, {**p, "typo": "It is a truht universally"}])
    assert abs(r[0]["kl"]) < 1e-9 and r[0]["top1_kept"] == 1.0 and r[0]["cosine"] == pytest.approx(1.0)
    assert r[1]["kl"] > 0 and r[1]["inflation"] >= 1


def test_mcnemar_and_bootstrap():
    assert robustness.mcnemar_exact([0] * 10, [1] * 10)["p_value"] == pytest.approx(2 / 1024)
    assert robustness.mcnemar_exact([1, 0, 1], [1, 0, 1])["p_value"] == 1.0
    ci = robustness.bootstrap_mean_ci([1.0, 2.0, 3.0, 4.0])
    assert ci["mean"] == 2.5 and ci["ci95"][0] < 2.5 < ci["ci95"][1]


def one_error_line(capsys, call):
    """Run an entry point in-process (no interpreter start-up) and return its single `error:` line; exit code 2."""
    with pytest.raises(SystemExit) as e:
        call()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    return err


@pytest.mark.parametrize("content,match", [
    ('{"category": "a", "clean": "x"}\n', "needs non-empty string fields"),
    ("not json\n", "is not valid JSON"),
    ("", "holds no rows"),
    (b'{"category": "a", "clean": "caf\xe9", "typo": "cafe"}\n', "is not UTF-8 text"),
])
@pytest.mark.slow
def test_malformed_pairs_file_is_one_clear_error(smoke_ckpts, tmp_path, capsys, content, match):
    pairs = tmp_path / "bad.jsonl"
    pairs.write_bytes(content if isinstance(content, bytes) else content.encode())
    argv = ["--checkpoints", str(smoke_ckpts["bpe_tied"]), "--pairs", str(pairs), "--out", str(tmp_path / "o.json")]
    assert match in one_error_line(capsys, lambda: run_main(lambda: robustness.main(argv)))
    assert not (tmp_path / "o.json").exists()


def test_generation_with_forced_oov(smoke_ckpts, tmp_path):
    res = generation.main(["--checkpoints", *map(str, smoke_ckpts.values()), "--out", str(tmp_path / "g.json"),
                           "--max_new_tokens", "3"])
    for m in res["models"].values():
        assert set(m["echo_rate"]) == {f"{c}/{d}" for c in ("normal", "misspelled", "forced_oov")
                                       for d in ("greedy", "sampled")}
        oov = [c for c in m["completions"] if c["condition"] == "forced_oov"]
        assert len(oov) == 2 * len(generation.ITEMS)
        assert all(c["codec_input"] == m["arm"].startswith("kronecker") for c in oov)
    # the forced-OOV position really is the codec vector of the word's bytes
    from checkpoint import load_checkpoint
    from tokenizer import get_encoding
    model, _ = load_checkpoint(smoke_ckpts["kronecker"])
    enc = get_encoding()
    wte = model.transformer.wte
    ids, oov, word = generation.build_prompt(enc, generation.ITEMS[0], "forced_oov", True)
    assert len(oov) == 2 and all(ids[p] == 0 for p in oov)
    one_token = enc.encode_ordinary(" Elizabeth")
    assert len(one_token) == 1  # a word that IS one token gets exactly its table row through embed_bytes
    import torch
    assert torch.allclose(wte.embed_bytes(b" Elizabeth"), wte(torch.tensor(one_token))[0], atol=1e-5)


def test_geometry_on_every_arm_and_the_codec(smoke_ckpts, tmp_path):
    res = geometry.main(["--checkpoints", *map(str, smoke_ckpts.values()), "--out", str(tmp_path / "geo.json"),
                         "--k", "5", "--codec_pos_dim", "4"])
    assert len(res["models"]) == len(ARMS) + 1  # every arm and the untrained codec
    codec = res["models"]["untrained codec (P=4)"]
    assert codec["typographic_at_k"] + codec["morph_at_k"] > 0.2  # bytes alone put spelling variants together
    for m in res["models"].values():
        assert 0 <= m["typographic_at_k"] <= 1 and all(len(q["neighbours"]) == 5 for q in m["queries"])
        assert all(q["query"] not in q["neighbours"] for q in m["queries"])  # self excluded
    assert geometry.classify(" run", "run", " Run") == "typographic"
    assert geometry.classify(" run", "run", " running") == "morphological"
    assert geometry.classify(" run", "run", " table") == "other"


@pytest.mark.slow
def test_param_accounting_table(capsys):
    res = param_accounting.main([])
    g = res["input_params"][0]
    assert (g["model"], g["V"], g["dense"], g["kron_p16"]) == ("GPT-2 124M", 50304, 38_633_472, 3_145_728)
    assert g["removed_p16"] == pytest.approx(1 - 4096 / 50304)
    out = capsys.readouterr().out
    assert "38,633,472" in out and "3,145,728" in out
    rt = {(r["V"], r["P"]): r for r in res["runtime_memory"]}[131072, 32]
    assert rt["byte_buffer_bytes"] == 131072 * 33  # V x P bytes + V lengths: 4.3 MB (paper: 4.5 MB, int16 lengths)
    assert round(rt["table_2byte_bytes"] / 1e9, 2) == 2.15


@pytest.mark.slow
def test_sample_and_probes_refuse_bad_input_in_one_line(smoke_ckpts, tmp_path, capsys):
    import torch
    import sample
    bad = tmp_path / "ckpt_0000001.pt"
    torch.save({"model": {}, "step": 1}, bad)  # a dict, but not a nanokron checkpoint
    cases = [(lambda: sample.main([str(smoke_ckpts["kronecker"]), "--num_samples", "0"]), "--num_samples 0 is invalid"),
             (lambda: sample.main([str(smoke_ckpts["kronecker"]), "--temperature", "-1"]),
              "--temperature -1.0 is invalid"),
             (lambda: sample.main([str(bad)]), "not a nanokron checkpoint"),
             (lambda: run_main(lambda: geometry.main(["--checkpoints", str(bad), "--out", str(tmp_path / "g.json")])),
              "not a nanokron checkpoint")]
    for call, match in cases:
        assert match in one_error_line(capsys, call)
    # and once through the real command line: exit code 2, one line, no traceback
    proc = subprocess.run([sys.executable, "-m", "probes.geometry", "--checkpoints", str(bad), "--out",
                           str(tmp_path / "g.json")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "not a nanokron checkpoint" in proc.stderr
