"""Regenerate the comparison tables and curves from the runs' metrics.jsonl files.

    python scripts/make_tables.py RUNS_DIR --out OUT

RUNS_DIR holds one folder per run named <arm>_s<seed>/ with the metrics.jsonl that train.py wrote.
Writes OUT/loss_table.md, OUT/summary.json, OUT/val_loss.png, OUT/train_loss.png, OUT/norms.png.

Definitions (DESIGN §6): final val loss = the last val_loss of a run. Every comparison is paired by seed:
delta = arm - reference (nats; negative means the arm reaches lower loss), in % of the reference;
steps-to-target = reference's final step / the first step at which the arm's val loss <= the reference's final
val loss (linear interpolation between evals). The paper's numbers sit in their own table, never mixed with ours.
"""
import argparse
import json
import math
import re
import statistics
from pathlib import Path

ARM_ORDER = ["bpe_tied", "kronecker", "bpe_untied", "kronecker_tied"]
BASELINE = "bpe_tied"
NORM_KEYS = ["norm/input_row", "norm/input_emb", "norm/head_row"]
# Reported by the paper (arXiv 2605.29459, GPT-2 124M, 2.5B FineWeb-Edu tokens, 3 seeds). Not ours.
PAPER = {"bpe_tied_val_loss": 3.32, "kronecker_val_loss": 3.24, "gap_nats": "0.083 ± 0.007",
         "gap_pct": "2.5 ± 0.2", "steps_to_target_ratio": 1.43, "input_params": "38.6M -> 3.1M"}


# -- reading -------------------------------------------------------------------------------------------------------

def read_runs(runs_dir):
    """{arm: {seed: [metric rows]}} from RUNS_DIR/<arm>_s<seed>/metrics.jsonl."""
    runs = {}
    for path in sorted(Path(runs_dir).glob("*/metrics.jsonl")):
        m = re.fullmatch(r"(.+)_s(\d+)", path.parent.name)
        if not m:
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        runs.setdefault(m.group(1), {})[int(m.group(2))] = rows
    if not runs:
        raise SystemExit(f"error: no <arm>_s<seed>/metrics.jsonl under {runs_dir}; run scripts/compare.sh first")
    return dict(sorted(runs.items(), key=lambda kv: (ARM_ORDER + [kv[0]]).index(kv[0])))


def series(rows, key):
    """[(step, value)] of one metric, in step order."""
    return sorted((r["step"], r[key]) for r in rows if r.get(key) is not None)


def first_value(rows, key):
    return next((r[key] for r in rows if key in r), None)


# -- statistics ----------------------------------------------------------------------------------------------------

def mean_std(values):
    values = list(values)
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def steps_to_target(curve, target):
    """First step at which the curve is <= target, interpolating linearly between evals; None if never."""
    prev = None
    for step, loss in curve:
        if loss <= target:
            if prev is None or prev[1] == loss:
                return float(step)
            s0, l0 = prev
            return s0 + (l0 - target) / (l0 - loss) * (step - s0)
        prev = (step, loss)
    return None


def compare(runs, arm, ref):
    """Paired-by-seed comparison of arm against ref."""
    seeds = sorted(set(runs[arm]) & set(runs[ref]))
    per_seed = {}
    for s in seeds:
        a, r = series(runs[arm][s], "val_loss"), series(runs[ref][s], "val_loss")
        delta = a[-1][1] - r[-1][1]
        hit = steps_to_target(a, r[-1][1])
        per_seed[s] = {"delta": delta, "delta_pct": 100 * delta / r[-1][1], "ppl_ratio": math.exp(delta),
                       "steps_ratio": (r[-1][0] / hit) if hit else None, "step_at_target": hit}
    out = {"arm": arm, "ref": ref, "seeds": seeds, "per_seed": per_seed}
    for key in ("delta", "delta_pct", "ppl_ratio", "steps_ratio"):
        vals = [v[key] for v in per_seed.values() if v[key] is not None]
        out[key] = mean_std(vals)
        out[key + "_n"] = len(vals)
    wins = sum(1 for v in per_seed.values() if v["delta"] < 0)
    out["seeds_arm_lower"] = wins
    return out


def summarize(runs):
    arms = {}
    for arm, by_seed in runs.items():
        finals = {s: series(rows, "val_loss")[-1] for s, rows in by_seed.items()}
        losses = [v for _, v in finals.values()]
        norms = {}
        for key in NORM_KEYS:
            starts = [series(rows, key)[0][1] for rows in by_seed.values() if series(rows, key)]
            ends = [series(rows, key)[-1][1] for rows in by_seed.values() if series(rows, key)]
            norms[key] = {"start": mean_std(starts)[0], "end": mean_std(ends)[0]}
        any_rows = next(iter(by_seed.values()))
        arms[arm] = {
            "seeds": sorted(by_seed), "final_val_loss": {str(s): v for s, (_, v) in sorted(finals.items())},
            "final_step": {str(s): st for s, (st, _) in sorted(finals.items())},
            "val_loss_mean": mean_std(losses)[0], "val_loss_std": mean_std(losses)[1],
            "ppl_mean": statistics.fmean(math.exp(v) for v in losses),
            "params": first_value(any_rows, "params"), "input_params": first_value(any_rows, "input_params"),
            "tokens": max((r.get("tokens") or 0) for r in any_rows),
            "norms": norms,
        }
    pairs = [(a, BASELINE) for a in runs if a != BASELINE and BASELINE in runs]
    if "kronecker" in runs and "bpe_untied" in runs:
        pairs.append(("kronecker", "bpe_untied"))
    if "kronecker_tied" in runs and "kronecker" in runs:
        pairs.append(("kronecker_tied", "kronecker"))
    return {"arms": arms, "comparisons": [compare(runs, a, r) for a, r in pairs], "paper": PAPER}


# -- writing -------------------------------------------------------------------------------------------------------

def _pm(ms, fmt="{:.4f}"):
    m, s = ms
    return "n/a" if m is None else f"{fmt.format(m)} ± {fmt.replace('+', '').format(s)}"


def markdown(summary, title):
    A, lines = summary["arms"], []
    lines += [f"# {title}", "", "## Final validation loss (ours)", "",
              "| arm | seeds | val loss (mean ± std) | per seed | perplexity | params | input-side params |",
              "|---|---|---|---|---|---|---|"]
    for arm, a in A.items():
        per = ", ".join(f"{s}: {v:.4f}" for s, v in a["final_val_loss"].items())
        lines.append(f"| {arm} | {len(a['seeds'])} | {a['val_loss_mean']:.4f} ± {a['val_loss_std']:.4f} | {per} | "
                     f"{a['ppl_mean']:.2f} | {a['params'] or 0:,} | {a['input_params'] or 0:,} |")
    lines += ["", "## Paired comparisons (ours; by seed)", "",
              "Δ = arm − reference in nats (negative: the arm reaches lower loss). Steps-to-target = reference's "
              "final step ÷ the first (interpolated) step at which the arm reaches the reference's final val loss; "
              "'not reached' when it never does.", "",
              "| arm vs reference | Δ nats (mean ± std) | Δ % | perplexity ratio | steps-to-target ratio | "
              "seeds where arm is lower |", "|---|---|---|---|---|---|"]
    for c in summary["comparisons"]:
        steps = (_pm(c["steps_ratio"], "{:.2f}") + (f" ({c['steps_ratio_n']}/{len(c['seeds'])} seeds)"
                 if c["steps_ratio_n"] < len(c["seeds"]) else "")) if c["steps_ratio_n"] else "not reached"
        lines.append(f"| {c['arm']} vs {c['ref']} | {_pm(c['delta'])} | {_pm(c['delta_pct'], '{:+.2f}')} | "
                     f"{_pm(c['ppl_ratio'])} | {steps} | {c['seeds_arm_lower']}/{len(c['seeds'])} |")
    lines += ["", "## Embedding norms (ours; mean over seeds, first → last logged step)", "",
              "| arm | input-matrix row norm | effective input embedding norm | output-head row norm |",
              "|---|---|---|---|"]
    for arm, a in A.items():
        cells = [f"{a['norms'][k]['start']:.3f} → {a['norms'][k]['end']:.3f}"
                 if a["norms"][k]["start"] is not None else "n/a" for k in NORM_KEYS]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    P = summary["paper"]
    lines += ["", "## The paper's reported numbers (arXiv 2605.29459; GPT-2 124M, 2.5B FineWeb-Edu tokens) — not ours",
              "", "| quantity | paper |", "|---|---|",
              f"| bpe_tied val loss | ≈ {P['bpe_tied_val_loss']} |", f"| kronecker val loss | ≈ {P['kronecker_val_loss']} |",
              f"| gap (bpe_tied − kronecker) | {P['gap_nats']} nats ({P['gap_pct']} %) |",
              f"| steps-to-target ratio | ~{P['steps_to_target_ratio']}× |",
              f"| input-side params | {P['input_params']} |", ""]
    return "\n".join(lines)


def plots(runs, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colors = dict(zip(ARM_ORDER, ["tab:blue", "tab:red", "tab:green", "tab:purple"]))

    def band(ax, key, xkey="tokens", smooth=0):
        for arm, by_seed in runs.items():
            curves = [series(rows, key) for rows in by_seed.values()]
            steps = sorted(set.intersection(*(set(s for s, _ in c) for c in curves)))
            if not steps:
                continue
            vals = [[dict(c)[s] for s in steps] for c in curves]
            if smooth:
                vals = [_ema(v, smooth) for v in vals]
            tok_per_step = _tokens_per_step(next(iter(by_seed.values())))
            x = [s * tok_per_step / 1e6 if xkey == "tokens" else s for s in steps]
            mean = [statistics.fmean(col) for col in zip(*vals)]
            c = colors.get(arm)
            ax.plot(x, mean, label=f"{arm} (n={len(curves)})", color=c)
            ax.fill_between(x, [min(col) for col in zip(*vals)], [max(col) for col in zip(*vals)], color=c, alpha=0.2)
        ax.grid(alpha=0.3)
        ax.set_xlabel("tokens (M)" if xkey == "tokens" else "step")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    band(axes[0], "val_loss")
    axes[0].set_title("val loss (mean, min–max band over seeds)")
    axes[0].set_ylabel("val loss (nats)")
    axes[0].legend()
    band(axes[1], "val_loss")
    means = sorted(statistics.fmean(series(rows, "val_loss")[-1][1] for rows in by.values()) for by in runs.values())
    top, note = means[-1] + 0.3, ""
    if len(means) >= 3 and means[-1] > means[-2] + 1.0:  # one arm far above the rest: keep the others readable
        top, note = means[-2] + 0.5, " (the highest arm is off-scale)"
    axes[1].set_ylim(means[0] - 0.15, top)
    axes[1].set_xlim(left=max(0.0, axes[1].get_xlim()[1] * 0.4))
    axes[1].set_title("val loss, zoom on the end" + note)
    fig.tight_layout()
    fig.savefig(out / "val_loss.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    band(ax, "train_loss", smooth=0.8)
    ax.set_title("train loss (EMA 0.8; mean, min–max band over seeds)")
    ax.set_ylabel("train loss (nats)")
    ax.set_ylim(top=min(8.0, ax.get_ylim()[1]))
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "train_loss.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    titles = {"norm/input_row": "learned input-matrix row norm\n(wte rows; Linear(D,d).weight rows for Kronecker)",
              "norm/input_emb": "effective input embedding norm\n(real vocab)",
              "norm/head_row": "output-head row norm"}
    for ax, key in zip(axes, NORM_KEYS):
        band(ax, key)
        ax.set_title(titles[key], fontsize=10)
        ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "norms.png", dpi=110)
    plt.close(fig)


def _ema(values, beta):
    out, acc = [], None
    for v in values:
        acc = v if acc is None else beta * acc + (1 - beta) * v
        out.append(acc)
    return out


def _tokens_per_step(rows):
    r = next((r for r in rows if r.get("step") and r.get("tokens")), None)
    return r["tokens"] / r["step"] if r else 1.0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs_dir")
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default=None)
    ap.add_argument("--no_plots", action="store_true")
    args = ap.parse_args(argv)
    runs = read_runs(args.runs_dir)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(runs)
    where = Path(args.runs_dir).resolve()
    title = args.title or f"Comparison: {where.parent.name if where.name == 'runs' else where.name}"
    (out / "loss_table.md").write_text(markdown(summary, title))
    (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    if not args.no_plots:
        plots(runs, out)
    print((out / "loss_table.md").read_text())
    return summary


if __name__ == "__main__":
    main()
