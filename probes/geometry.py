"""Embedding geometry: what are a word's nearest neighbours in each model's input-embedding space?

    python -m probes.geometry --checkpoints CKPT [CKPT ...] --out results/.../geometry.json [--k 10] [--no_codec]

For probe words in families (run, compute, nation, code, act, build), take each single-token form of the word
(" run", "run", " Run", ...), find its top-k neighbours among the real GPT-2 vocabulary by centered cosine
(the mean embedding is subtracted first; the token itself is excluded), and classify every neighbour:
  typographic    the same word up to case, a leading space or punctuation  (" Run" for " run")
  morphological  another word of the family: shares the family root        (" running", " runner")
  other          anything else
Reported as typographic@k and morph@k (share of the k neighbours), per model, and (unless --no_codec) for the
untrained codec itself (the z-normalised byte vectors x(t), before any learned projection).
"""
import re

from probes._common import ProbeError, load_models, probe_parser, run_main, write_outputs

import torch
import torch.nn.functional as F

from kronecker import byte_rows, codec_dense
from tokenizer import N_VOCAB, get_encoding, token_bytes

FAMILIES = {
    "run": ["run", "runs", "running", "runner", "ran"],
    "compute": ["compute", "computer", "computing", "computation", "computed"],
    "nation": ["nation", "national", "nations", "nationality", "nationwide"],
    "code": ["code", "codes", "coding", "coded", "coder"],
    "act": ["act", "action", "actor", "active", "acting"],
    "build": ["build", "building", "builder", "built", "builds"],
}
ROOTS = {"run": ("run", "ran"), "compute": ("comput",), "nation": ("nation",), "code": ("cod",),
         "act": ("act",), "build": ("build", "built")}


def norm_word(s):
    return re.sub(r"[^0-9a-z]", "", s.lower())


def queries(enc):
    """[(family, surface form, token id)] for every form that is a single GPT-2 token."""
    out = []
    for fam, words in FAMILIES.items():
        for w in words:
            for form in (w, " " + w, w.capitalize(), " " + w.capitalize()):
                ids = enc.encode_ordinary(form)
                if len(ids) == 1:
                    out.append((fam, form, ids[0]))
    return out


def classify(query_form, family, neighbour):
    q, n = norm_word(query_form), norm_word(neighbour)
    if n and n == q:
        return "typographic"
    if n and any(n.startswith(r) for r in ROOTS[family]):
        return "morphological"
    return "other"


def neighbours(table, qids, k):
    """Top-k ids by centered cosine (self excluded) for each query id; `table` is (V, dim)."""
    centred = F.normalize(table - table.mean(dim=0, keepdim=True), dim=1)
    sims = centred[qids] @ centred.T
    sims[torch.arange(len(qids)), qids] = -2.0
    return sims.topk(k, dim=1).indices.tolist()


@torch.no_grad()
def codec_table(P):
    """The untrained codec x(t) for the real vocabulary, (V, 256 P) float32."""
    return codec_dense(*byte_rows(token_bytes(N_VOCAB), P))


def score(table, enc, k):
    qs = queries(enc)
    nbrs = neighbours(table, [q[2] for q in qs], k)
    rows, typo, morph = [], 0, 0
    for (fam, form, qid), ns in zip(qs, nbrs):
        words = [enc.decode([n]) for n in ns]
        kinds = [classify(form, fam, w) for w in words]
        typo += kinds.count("typographic")
        morph += kinds.count("morphological")
        rows.append({"family": fam, "query": form, "neighbours": words, "kinds": kinds})
    n = len(qs) * k
    return {"typographic_at_k": typo / n, "morph_at_k": morph / n, "queries": rows}


@torch.no_grad()
def run(checkpoints, k=10, with_codec=True, codec_P=16, device="cpu"):
    enc = get_encoding()
    res = {"k": k, "models": {}}
    if with_codec:
        res["models"][f"untrained codec (P={codec_P})"] = {"arm": "codec", **score(codec_table(codec_P), enc, k)}
    for label, model, ckpt, path in load_models(checkpoints, device):
        table = model.input_table()
        res["models"][label] = {"checkpoint": path, "arm": model.config.input_embedding, "step": ckpt["step"],
                                **score(table[:N_VOCAB].float(), enc, k)}
    return res


def markdown(res):
    k = res["k"]
    L = [f"# Input-embedding geometry (top-{k} neighbours, centered cosine)", "",
         f"| model | typographic@{k} | morph@{k} |", "|---|---|---|"]
    for label, m in res["models"].items():
        L.append(f"| {label} | {100 * m['typographic_at_k']:.1f} % | {100 * m['morph_at_k']:.1f} % |")
    L += ["", "Neighbours of ' run' and ' building':", ""]
    for label, m in res["models"].items():
        for q in m["queries"]:
            if q["query"] in (" run", " building"):
                L.append(f"- {label} — {q['query']!r}: " + ", ".join(repr(w) for w in q["neighbours"][:8]))
    return "\n".join(L) + "\n"


def main(argv=None):
    ap = probe_parser(__doc__)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--no_codec", action="store_true", help="skip the untrained-codec row")
    ap.add_argument("--codec_pos_dim", type=int, default=16)
    args = ap.parse_args(argv)
    if args.k < 1:
        raise ProbeError(f"--k {args.k} is invalid: the number of neighbours must be >= 1")
    res = run(args.checkpoints, args.k, not args.no_codec, args.codec_pos_dim, args.device)
    write_outputs(res, markdown(res), args.out)
    return res


if __name__ == "__main__":
    run_main(main)
