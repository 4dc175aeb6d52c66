"""Spelling robustness: how much does a 1-2 character typo move each model's next-token prediction?

    python -m probes.robustness --checkpoints runs/cpu_tiny/bpe_tied_s1337 runs/cpu_tiny/kronecker_s1337 \
        --out results/cpu_tiny/probes/robustness.json [--pairs FILE.jsonl]

For every (clean, typo) prompt pair and checkpoint, at the last position:
  kl          KL(p_clean || p_typo) in nats over the GPT-2 vocabulary
  top1_kept   argmax unchanged
  cosine      cosine of the final hidden states (after ln_f)
  logp_drop   log p_clean(top1_clean) - log p_typo(top1_clean)
  inflation   typo tokens - clean tokens (BPE splits a misspelled word into more pieces)
Averages overall and per category; for every pair of checkpoints, an exact McNemar test on top-1 kept and the paired
mean KL difference with a 95 % bootstrap CI. --pairs takes JSONL rows {"category", "clean", "typo"}; the default
set (probes/data/typo_pairs.jsonl, 110 pairs in 11 categories) was written for nanokron. A pair whose two texts
are identical is reported as excluded, not scored.
"""
import itertools
import json
import math
import warnings
from pathlib import Path

from probes._common import probe_parser, ProbeError, load_models, repo_relative, run_main, write_outputs

import torch
import torch.nn.functional as F

from tokenizer import N_VOCAB, get_encoding

DEFAULT_PAIRS = Path(__file__).resolve().parent / "data" / "typo_pairs.jsonl"
METRICS = ("kl", "top1_kept", "cosine", "logp_drop", "inflation")


def read_pairs(path):
    """Rows {"category", "clean", "typo"}; a malformed row is one clear error naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise ProbeError(f"pairs file {path} does not exist; pass a JSONL file of {{category, clean, typo}} rows")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProbeError(f"pairs file {path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ProbeError(f"{path}:{n} is not valid JSON ({e.msg}); each line must be "
                             f'{{"category": ..., "clean": ..., "typo": ...}}') from None
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) and row.get(k)
                                                for k in ("category", "clean", "typo")):
            raise ProbeError(f"{path}:{n} needs non-empty string fields category, clean and typo; got "
                             f"{line.strip()[:80]}")
        rows.append({"category": row["category"], "clean": row["clean"], "typo": row["typo"], "line": n})
    if not rows:
        raise ProbeError(f"pairs file {path} holds no rows")
    return rows


@torch.no_grad()
def last_positions(model, seqs):
    """Log-probs over the GPT-2 vocab and final hidden state at each sequence's last token, one batched forward.
    Right padding is safe: causal attention never lets a position see the padding after it."""
    seqs = [s[-model.config.block_size:] for s in seqs]
    T = max(map(len, seqs))
    x = torch.tensor([s + [0] * (T - len(s)) for s in seqs])
    h, table = model.body(x)
    h = h[torch.arange(len(seqs)), torch.tensor([len(s) - 1 for s in seqs])]
    logits = model.head(h, table)[:, :N_VOCAB]
    return F.log_softmax(logits.double(), dim=-1), h.double()


def score_pairs(model, enc, pairs):
    clean = [enc.encode_ordinary(p["clean"]) for p in pairs]
    typo = [enc.encode_ordinary(p["typo"]) for p in pairs]
    lp_c, h_c = last_positions(model, clean)
    lp_t, h_t = last_positions(model, typo)
    top = lp_c.argmax(dim=-1)
    kl = (lp_c.exp() * (lp_c - lp_t)).sum(dim=-1)
    kept = top == lp_t.argmax(dim=-1)
    cos = F.cosine_similarity(h_c, h_t, dim=-1)
    rows_ = torch.arange(len(pairs))
    drop = lp_c[rows_, top] - lp_t[rows_, top]
    return [{**p, "kl": float(kl[i]), "top1_kept": float(kept[i]), "cosine": float(cos[i]),
             "logp_drop": float(drop[i]), "inflation": float(len(typo[i]) - len(clean[i])),
             "top1_clean": enc.decode([int(top[i])])} for i, p in enumerate(pairs)]


def mcnemar_exact(a, b):
    """Two-sided exact McNemar p-value on paired booleans a, b."""
    n01 = sum(1 for x, y in zip(a, b) if x and not y)
    n10 = sum(1 for x, y in zip(a, b) if y and not x)
    n = n01 + n10
    if n == 0:
        return {"a_only": 0, "b_only": 0, "p_value": 1.0}
    k = min(n01, n10)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return {"a_only": n01, "b_only": n10, "p_value": min(1.0, 2 * tail)}


def bootstrap_mean_ci(diffs, n_boot=10000, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = torch.tensor(diffs, dtype=torch.float64)
    idx = torch.randint(len(d), (n_boot, len(d)), generator=g)
    means = d[idx].mean(dim=1).sort().values
    return {"mean": float(d.mean()), "ci95": [float(means[int(0.025 * n_boot)]), float(means[int(0.975 * n_boot)])]}


def mean(xs):
    return sum(xs) / len(xs) if xs else None


def run(checkpoints, pairs_path=DEFAULT_PAIRS, device="cpu"):
    pairs = read_pairs(pairs_path)
    scored = [p for p in pairs if p["clean"] != p["typo"]]
    excluded = [p for p in pairs if p["clean"] == p["typo"]]
    for p in excluded:
        warnings.warn(f"{pairs_path}:{p['line']}: clean and typo texts are identical; excluded from the averages")
    if not scored:
        raise ProbeError(f"every pair in {pairs_path} has identical clean and typo texts; nothing to score")
    enc = get_encoding()
    models = load_models(checkpoints, device)
    per_model = {}
    for label, model, ckpt, path in models:
        rows = score_pairs(model, enc, scored)
        cats = sorted({r["category"] for r in rows})
        per_model[label] = {
            "checkpoint": path, "arm": model.config.input_embedding, "step": ckpt["step"],
            "overall": {m: mean([r[m] for r in rows]) for m in METRICS},
            "per_category": {c: {m: mean([r[m] for r in rows if r["category"] == c]) for m in METRICS}
                             for c in cats},
            "pairs": rows,
        }
    comparisons = []
    for a, b in itertools.combinations(per_model, 2):
        ra, rb = per_model[a]["pairs"], per_model[b]["pairs"]
        comparisons.append({"a": a, "b": b,
                            "mcnemar_top1_kept": mcnemar_exact([r["top1_kept"] for r in ra],
                                                               [r["top1_kept"] for r in rb]),
                            "kl_diff_a_minus_b": bootstrap_mean_ci([x["kl"] - y["kl"] for x, y in zip(ra, rb)])})
    return {"pairs_file": repo_relative(pairs_path), "n_pairs": len(scored),
            "excluded": [{"line": p["line"], "category": p["category"], "text": p["clean"]} for p in excluded],
            "models": per_model, "comparisons": comparisons}


def markdown(res):
    L = [f"# Spelling robustness ({res['n_pairs']} pairs from {Path(res['pairs_file']).name})", "",
         "| model | step | top-1 kept | mean KL (nats) | cosine | log-p drop | token inflation |",
         "|---|---|---|---|---|---|---|"]
    for label, m in res["models"].items():
        o = m["overall"]
        L.append(f"| {label} | {m['step']} | {100 * o['top1_kept']:.1f} % | {o['kl']:.3f} | {o['cosine']:.3f} | "
                 f"{o['logp_drop']:.3f} | {o['inflation']:.2f} |")
    cats = sorted(next(iter(res["models"].values()))["per_category"])
    L += ["", "Per category: top-1 kept % / mean KL", "", "| category | " + " | ".join(res["models"]) + " |",
          "|---|" + "---|" * len(res["models"])]
    for c in cats:
        cells = [f"{100 * m['per_category'][c]['top1_kept']:.0f} / {m['per_category'][c]['kl']:.3f}"
                 for m in res["models"].values()]
        L.append(f"| {c} | " + " | ".join(cells) + " |")
    L += ["", "Paired comparisons: exact McNemar on top-1 kept; mean KL(a) − KL(b) with 95 % bootstrap CI", "",
          "| a | b | kept only by a | kept only by b | McNemar p | mean KL diff [95 % CI] |", "|---|---|---|---|---|---|"]
    for c in res["comparisons"]:
        mc, kd = c["mcnemar_top1_kept"], c["kl_diff_a_minus_b"]
        L.append(f"| {c['a']} | {c['b']} | {mc['a_only']} | {mc['b_only']} | {mc['p_value']:.3f} | "
                 f"{kd['mean']:+.3f} [{kd['ci95'][0]:+.3f}, {kd['ci95'][1]:+.3f}] |")
    if res["excluded"]:
        L += ["", f"Excluded (identical clean and typo): lines {', '.join(str(e['line']) for e in res['excluded'])}"]
    return "\n".join(L) + "\n"


def main(argv=None):
    ap = probe_parser(__doc__)
    ap.add_argument("--pairs", default=str(DEFAULT_PAIRS))
    args = ap.parse_args(argv)
    res = run(args.checkpoints, args.pairs, args.device)
    write_outputs(res, markdown(res), args.out)
    return res


if __name__ == "__main__":
    run_main(main)
