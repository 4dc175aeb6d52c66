"""export_hf.py: every arm as a standard GPT2LMHeadModel -- same logits, same greedy text, same token ids -- and
downstream evaluation through lm-evaluation-harness, offline, on the repo's own tiny task."""
import gzip
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from model import ARMS
from tokenizer import get_encoding

transformers = pytest.importorskip("transformers", reason="pip install -r requirements-hf.txt")
import export_hf  # noqa: E402
from checkpoint import load_checkpoint  # noqa: E402

TEXT = ("Héllo wörld!  \t\n\n  naïve café 你好 🙂🚀 12345 3.14159 ' 's 'll don't\r\n  end   "
        "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want "
        "of a wife.")


@pytest.fixture(scope="module")
def exports(smoke_ckpts, tmp_path_factory):
    base = tmp_path_factory.mktemp("hf")
    return {arm: export_hf.export(path, base / arm)[1] for arm, path in smoke_ckpts.items()}


@pytest.mark.parametrize("arm", ARMS)
def test_exported_logits_and_greedy_text_equal_nanokrons(exports, smoke_ckpts, arm):
    model, _ = load_checkpoint(smoke_ckpts[arm])
    ids = get_encoding().encode_ordinary(TEXT * 4)[:300]
    assert export_hf.max_logit_diff(model, exports[arm], ids) <= 1e-4
    hf = transformers.AutoModelForCausalLM.from_pretrained(exports[arm]).float().eval()
    x = torch.tensor([ids[:12]])
    ours = model.generate(x, 20, temperature=0)  # sample.py's greedy path
    theirs = hf.generate(x, max_new_tokens=20, do_sample=False)
    assert theirs[0].tolist() == ours[0].tolist()
    meta = json.loads((exports[arm] / "nanokron.json").read_text())
    assert meta["arm"] == arm and meta["tokenizer_sha256"].startswith("306cd27f") and meta["step"] == 20
    assert meta["source_checkpoint"] == f"{arm}/ckpt_0000020.pt"  # run folder/file: no machine path in an export
    cfg = json.loads((exports[arm] / "config.json").read_text())
    assert cfg["vocab_size"] == 50304 and cfg["tie_word_embeddings"] == (arm == "bpe_tied")


def test_exported_tokenizer_encodes_like_tiktoken(exports):
    tok = transformers.AutoTokenizer.from_pretrained(exports["kronecker"])
    enc = get_encoding()
    assert tok(TEXT)["input_ids"] == enc.encode_ordinary(TEXT)
    assert tok("a<|endoftext|>b")["input_ids"] == enc.encode("a<|endoftext|>b", allowed_special="all")
    with gzip.open(ROOT / "data/sample/austen.jsonl.gz", "rt") as f:
        lines = [line for doc in f for line in json.loads(doc)["text"].splitlines() if line.strip()][:1000]
    assert len(lines) == 1000
    assert [tok(x)["input_ids"] for x in lines] == [enc.encode_ordinary(x) for x in lines]


def test_merges_rebuilt_from_the_ranks_file():
    ranks = get_encoding()._mergeable_ranks
    assert export_hf.merge_of(b" the", ranks) == (b" t", b"he")
    u = export_hf.byte_to_unicode()
    assert len(set(u.values())) == 256 and u[ord(" ")] == "\u0120" and u[ord("a")] == "a"


@pytest.mark.slow
def test_lm_eval_runs_offline_on_an_export(exports, tmp_path):
    out = tmp_path / "eval.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", "scripts/eval_lm.sh", str(exports["kronecker"]), "nanokron_tiny_mc", "--out",
                           str(out), "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert {k: res[k] for k in ("arm", "step")} == {"arm": "kronecker", "step": 20}
    assert 0 <= res["tasks"]["nanokron_tiny_mc"]["acc"] <= 1
    assert res["n_samples"]["nanokron_tiny_mc"]["effective"] == 8


def test_training_never_imports_transformers():
    code = "import sys, train, sample, checkpoint; print(any(m.split('.')[0] in ('transformers', 'lm_eval', " \
           "'safetensors') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_export_refuses_a_missing_checkpoint(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "export_hf.py"), str(tmp_path / "nope"), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1


@pytest.mark.slow
def test_eval_all_on_a_smoke_study_feeds_the_tables(sample_dir, tmp_path):
    """compare.sh (2 arms x 1 seed) -> eval_all.sh on the offline tiny task -> the study's tables show the eval rows,
    with no --out anywhere: every piece finds the others' files by the study folder alone."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", "scripts/compare.sh", "configs/smoke.py", "--arms", "bpe_tied kronecker", "--seeds",
                           "1", "--exp", "study", "--runs_dir", str(tmp_path), f"--data_dir={sample_dir}",
                           "--max_steps=4", "--eval_interval=2", "--ckpt_interval=2"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    study = tmp_path / "study"
    proc = subprocess.run(["bash", "scripts/eval_all.sh", str(study), "nanokron_tiny_mc", "--device", "cpu"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for run in ("bpe_tied_s1", "kronecker_s1"):
        res = json.loads((study / "eval" / f"{run}.json").read_text())
        assert res["step"] == 4 and 0 <= res["tasks"]["nanokron_tiny_mc"]["acc"] <= 1
        meta = json.loads((study / "exports" / run / "nanokron.json").read_text())
        assert (meta["experiment"], meta["run"]) == ("study", run)
    table = (study / "tables" / "loss_table.md").read_text()
    assert "## Downstream evaluation" in table and "| kronecker |" in table.split("## Downstream evaluation")[1]
