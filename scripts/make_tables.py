"""Regenerate the comparison tables and curves from the runs' metrics.jsonl files.

    python -m scripts.make_tables RUNS_DIR --out OUT [--eval DIR]

RUNS_DIR holds one folder per run named <arm>_s<seed>/ with the metrics.jsonl that train.py wrote. Writes
OUT/loss_table.md, OUT/summary.json, OUT/val_loss.png, OUT/train_loss.png, OUT/norms.png, OUT/delta.png; with
downstream evaluations (scripts/eval_lm.sh writes EVAL/<arm>_s<seed>.json; default: RUNS_DIR/eval, else RUNS_DIR/../eval) also an
evaluation table.

Definitions. Final val loss = the run's `final_val_loss` (the last eval on a larger val set, train.py
--final_val_tokens) when it has one, else its last val_loss. Spikes, per run, from its logged steps: the largest
grad norm, the unhealthy steps by checkpoint.Health's rule (loss more than 1 nat above the start, or grad norm above 20 x
the median of the last healthy steps), the largest one-step rise of the train loss, and the share of steps whose
grad norm exceeded grad_clip (clipped). Every comparison is paired by seed (at one seed the arms
start from the same trunk and see the same data): Δ = arm - reference in nats (negative: the arm reaches lower
loss), with n, mean ± sample std, a 95 % paired-t confidence interval, the paired t-test's two-sided p, and the
exact sign-flip permutation p (all 2^n sign patterns; at n = 5 it cannot go below 2/32 = 0.0625).
Steps-to-target, symmetric: L* = the worse (higher) of the two final val losses of a seed; ratio = reference's
first (interpolated) step reaching L* / the arm's first step reaching L* (> 1: the arm gets there faster). Both
runs reach L*, so every seed counts. The paper's definition (reference's final step / the arm's first step
reaching the reference's final loss) is a second column, defined only for the seeds where the arm gets there.
The paper's numbers sit in their own table, never mixed with ours.
"""
import argparse
import json
import math
import re
import statistics
import sys
from itertools import product
from pathlib import Path

from model import ARMS
from checkpoint import Health
from util import UserError, make_dir

NORM_KEYS = ["norm/input_row", "norm/input_emb", "norm/head_row"]
# Reported by the paper (arXiv 2605.29459, GPT-2 124M, 2.5B FineWeb-Edu tokens, 3 seeds). Not ours.
PAPER = {"bpe_tied_val_loss": 3.32, "kronecker_val_loss": 3.24, "gap_nats": "0.083 ± 0.007",
         "gap_pct": "2.5 ± 0.2", "steps_to_target_ratio": 1.43, "input_params": "38.6M -> 3.1M"}


BASELINE = "bpe_tied"  # GPT-2 as published: every arm is compared with it


def comparisons(arms) -> list:
    """The paired comparisons of a study, as (arm, reference): every arm against BASELINE, then each arm against
    the references its registry entry names (Arm.contrasts) -- in registry order, arms not in ARMS last."""
    arms = [a for a in ARMS if a in arms] + [a for a in arms if a not in ARMS]
    out = [(a, BASELINE) for a in arms if a != BASELINE] if BASELINE in arms else []
    for a in arms:
        out += [(a, ref) for ref in (ARMS[a].contrasts if a in ARMS else ()) if ref in arms and ref != BASELINE]
    return out


class TablesError(UserError):
    pass


# -- reading -------------------------------------------------------------------------------------------------------

def read_runs(runs_dir):
    """{arm: {seed: [metric rows]}} from RUNS_DIR/<arm>_s<seed>/metrics.jsonl. The run's config.json, when there
    is one, comes first as a row with step -1 and key 'config'."""
    runs = {}
    for path in sorted(Path(runs_dir).glob("*/metrics.jsonl")):
        m = re.fullmatch(r"(.+)_s(\d+)", path.parent.name)
        if not m:
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        cfg = path.parent / "config.json"
        if cfg.is_file():
            rows.insert(0, {"step": -1, "config": json.loads(cfg.read_text())})
        runs.setdefault(m.group(1), {})[int(m.group(2))] = rows
    if not runs:
        raise TablesError(f"no <arm>_s<seed>/metrics.jsonl under {runs_dir}; run scripts/compare.sh first")
    order = list(ARMS)
    return dict(sorted(runs.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0])))


def series(rows, key):
    """[(step, value)] of one metric, in step order."""
    return sorted((r["step"], r[key]) for r in rows if r.get(key) is not None)


def first_value(rows, key):
    return next((r[key] for r in rows if key in r), None)


def endpoint(rows):
    """(step, loss) a comparison uses: the final_val_loss eval if the run has one, else its last val_loss."""
    final = series(rows, "final_val_loss")
    return final[-1] if final else series(rows, "val_loss")[-1]


def spikes(rows):
    """What the optimisation went through, from the logged training steps (see the module doc)."""
    cfg = first_value(rows, "config") or {}
    train = [r for r in rows if r.get("train_loss") is not None and r.get("grad_norm") is not None]
    health, unhealthy = Health(), 0
    for r in train:
        unhealthy += health.check(r["train_loss"], r["grad_norm"], True, cfg.get("vocab_size", 50304)) is not None
    losses = [r["train_loss"] for r in train]
    clip = cfg.get("grad_clip", 1.0)
    return {"max_grad_norm": max((r["grad_norm"] for r in train), default=None), "unhealthy_steps": unhealthy,
            "max_loss_rise": max((b - a for a, b in zip(losses, losses[1:])), default=None),
            "clipped_frac": sum(r["grad_norm"] > clip for r in train) / len(train) if train and clip > 0 else None}


# -- statistics ----------------------------------------------------------------------------------------------------

def mean_std(values):
    values = list(values)
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _betacf(a, b, x):
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + num * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return h


def betainc(a, b, x):
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1 - x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def t_two_sided_p(t, df):
    """P(|T| >= |t|) for Student's t with df degrees of freedom."""
    return betainc(df / 2, 0.5, df / (df + t * t))


def t_quantile(q, df):
    """The t value with P(T <= t) = q (0.5 < q < 1), by bisection on the two-sided tail."""
    lo, hi = 0.0, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_two_sided_p(mid, df) > 2 * (1 - q) else (lo, mid)
    return (lo + hi) / 2


def paired_stats(deltas):
    """n, mean, sample std, 95 % paired-t CI, t-test p, exact sign-flip p of paired differences."""
    n = len(deltas)
    mean, sd = mean_std(deltas)
    out = {"n": n, "mean": mean, "std": sd, "ci95": None, "p_t": None, "p_signflip": None}
    if n < 2:
        return out
    half = t_quantile(0.975, n - 1) * sd / math.sqrt(n)
    out["ci95"] = [mean - half, mean + half]
    out["p_t"] = 1.0 if sd == 0 and mean == 0 else (0.0 if sd == 0 else t_two_sided_p(mean / (sd / math.sqrt(n)),
                                                                                       n - 1))
    observed = abs(mean) - 1e-12
    flips = [abs(statistics.fmean(s * d for s, d in zip(signs, deltas))) for signs in product((1, -1), repeat=n)]
    out["p_signflip"] = sum(f >= observed for f in flips) / len(flips)
    return out


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
        delta = endpoint(runs[arm][s])[1] - endpoint(runs[ref][s])[1]
        worse = max(a[-1][1], r[-1][1])
        sym = steps_to_target(r, worse) / max(steps_to_target(a, worse), 1e-9)
        hit = steps_to_target(a, r[-1][1])
        per_seed[s] = {"delta": delta, "delta_pct": 100 * delta / endpoint(runs[ref][s])[1], "ppl_ratio": math.exp(delta),
                       "steps_ratio_sym": sym, "steps_ratio_paper": (r[-1][0] / hit) if hit else None,
                       "step_at_target": hit}
    out = {"arm": arm, "ref": ref, "seeds": seeds, "per_seed": per_seed,
           "delta": paired_stats([v["delta"] for v in per_seed.values()])}
    for key in ("delta_pct", "ppl_ratio", "steps_ratio_sym", "steps_ratio_paper"):
        vals = [v[key] for v in per_seed.values() if v[key] is not None]
        out[key] = mean_std(vals)
        out[key + "_n"] = len(vals)
    out["seeds_arm_lower"] = sum(1 for v in per_seed.values() if v["delta"] < 0)
    out["spiked_seeds"] = {k: [s for s in seeds if spikes(runs[name][s])["unhealthy_steps"] > 0]
                           for k, name in (("arm", arm), ("ref", ref))}
    return out


def delta_curves(runs, arm, ref):
    """[(tokens, mean, ci_low, ci_high)] of the paired val-loss difference at every eval step all seeds share."""
    seeds = sorted(set(runs[arm]) & set(runs[ref]))
    a = {s: dict(series(runs[arm][s], "val_loss")) for s in seeds}
    r = {s: dict(series(runs[ref][s], "val_loss")) for s in seeds}
    steps = sorted(set.intersection(*(set(a[s]) & set(r[s]) for s in seeds))) if seeds else []
    tok = _tokens_per_step(next(iter(runs[arm].values())))
    out = []
    for step in steps:
        st = paired_stats([a[s][step] - r[s][step] for s in seeds])
        lo, hi = st["ci95"] or (st["mean"], st["mean"])
        out.append((step * tok, st["mean"], lo, hi))
    return out


def summarize(runs):
    arms = {}
    for arm, by_seed in runs.items():
        finals = {s: endpoint(rows) for s, rows in by_seed.items()}
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
            "endpoint": sorted({"final_val_loss" if series(rows, "final_val_loss") else "val_loss"
                                for rows in by_seed.values()}),
            "spikes": {str(s): spikes(rows) for s, rows in sorted(by_seed.items())},
        }
    return {"arms": arms, "comparisons": [compare(runs, a, r) for a, r in comparisons(list(runs))], "paper": PAPER}


# -- downstream evaluations (scripts/eval_lm.sh) --------------------------------------------------------------------

def read_evals(folder):
    """{arm: {seed: {task: {metric: value}}}} from FOLDER/<arm>_s<seed>.json, or {} if there are none."""
    out = {}
    for path in sorted(Path(folder).glob("*_s*.json")) if Path(folder).is_dir() else []:
        m = re.fullmatch(r"(.+)_s(\d+)", path.stem)
        if m:
            out.setdefault(m.group(1), {})[int(m.group(2))] = json.loads(path.read_text())["tasks"]
    return out


def main_metric(metrics):
    """The number a task is reported by: acc_norm where lm-eval gives it (HellaSwag, ARC), else acc."""
    return next(((k, metrics[k]) for k in ("acc_norm", "acc") if k in metrics), (None, None))


def summarize_evals(evals):
    tasks = sorted({t for by_seed in evals.values() for res in by_seed.values() for t in res})
    table = {arm: {t: mean_std([main_metric(res[t])[1] for res in by_seed.values() if t in res]) for t in tasks}
             for arm, by_seed in evals.items()}
    pairs = []
    for arm, ref in comparisons(list(evals)):
        seeds = sorted(set(evals[arm]) & set(evals[ref]))
        pairs.append({"arm": arm, "ref": ref, "per_task": {
            t: paired_stats([main_metric(evals[arm][s][t])[1] - main_metric(evals[ref][s][t])[1]
                             for s in seeds if t in evals[arm][s] and t in evals[ref][s]]) for t in tasks}})
    metric = {t: next(main_metric(res[t])[0] for by in evals.values() for res in by.values() if t in res)
              for t in tasks}
    return {"tasks": tasks, "metric": metric, "arms": table, "comparisons": pairs}


def eval_markdown(ev):
    lines = ["", "## Downstream evaluation (ours; lm-evaluation-harness on exported models, zero-shot)", "",
             "| arm | " + " | ".join(f"{t} ({ev['metric'][t]})" for t in ev["tasks"]) + " |",
             "|---|" + "---|" * len(ev["tasks"])]
    for arm, row in ev["arms"].items():
        lines.append(f"| {arm} | " + " | ".join(_pm(row[t]) for t in ev["tasks"]) + " |")
    lines += ["", "| arm vs reference | " + " | ".join(f"Δ {t} (mean, 95 % CI)" for t in ev["tasks"]) + " |",
              "|---|" + "---|" * len(ev["tasks"])]
    for c in ev["comparisons"]:
        cells = []
        for t in ev["tasks"]:
            st = c["per_task"][t]
            cells.append("n/a" if st["mean"] is None else f"{st['mean']:+.4f}" + (
                f" [{st['ci95'][0]:+.4f}, {st['ci95'][1]:+.4f}]" if st["ci95"] else ""))
        lines.append(f"| {c['arm']} vs {c['ref']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# -- writing -------------------------------------------------------------------------------------------------------

def _pm(ms, fmt="{:.4f}"):
    m, s = ms
    if m is None:
        return "n/a"
    return f"{fmt.format(m)} ± " + ("n/a" if s is None else fmt.replace("+", "").format(s))


def _p(p):
    return "n/a" if p is None else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def markdown(summary, title):
    A, lines = summary["arms"], []
    lines += [f"# {title}", "", "## Final validation loss (ours)", "",
              "| arm | seeds | val loss (mean ± std) | per seed | perplexity | params | input-side params |",
              "|---|---|---|---|---|---|---|"]
    for arm, a in A.items():
        per = ", ".join(f"{s}: {v:.4f}" for s, v in a["final_val_loss"].items())
        lines.append(f"| {arm} | {len(a['seeds'])} | {_pm((a['val_loss_mean'], a['val_loss_std']))} | {per} | "
                     f"{a['ppl_mean']:.2f} | {a['params'] or 0:,} | {a['input_params'] or 0:,} |")
    lines += ["", "## Paired comparisons (ours; by seed)", "",
              "Δ = arm − reference in nats (negative: the arm reaches lower loss); 95 % CI from the paired t "
              "distribution; p: paired t-test, two-sided, and the exact sign-flip permutation test. Steps-to-target "
              "(symmetric) = reference's first step reaching L* ÷ the arm's, L* = the worse of the two final "
              "losses (> 1: the arm is faster; every seed counts). Paper's definition = reference's final step ÷ the "
              "arm's first step reaching the reference's final loss, over the seeds where it does.", "",
              "| arm vs reference | n | Δ nats (mean ± std) | 95 % CI | p (t) | p (sign-flip) | Δ % | "
              "steps-to-target (symmetric) | steps-to-target (paper's) | seeds where arm is lower | "
              "seeds with unhealthy steps: arm / reference |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in summary["comparisons"]:
        d, n = c["delta"], len(c["seeds"])
        ci = f"[{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]" if d["ci95"] else "n/a"
        paper = (_pm(c["steps_ratio_paper"], "{:.2f}") + f" ({c['steps_ratio_paper_n']}/{n} seeds reached)"
                 if c["steps_ratio_paper_n"] else f"not reached (0/{n})")
        lines.append(f"| {c['arm']} vs {c['ref']} | {n} | {_pm((d['mean'], d['std']))} | {ci} | {_p(d['p_t'])} | "
                     f"{_p(d['p_signflip'])} | {_pm(c['delta_pct'], '{:+.2f}')} | "
                     f"{_pm(c['steps_ratio_sym'], '{:.2f}')} | {paper} | {c['seeds_arm_lower']}/{n} | "
                     f"{len(c['spiked_seeds']['arm'])}/{n} / {len(c['spiked_seeds']['ref'])}/{n} |")
    lines += ["", "## Embedding norms (ours; mean over seeds, first → last logged step)", "",
              "| arm | input-matrix row norm | effective input embedding norm | output-head row norm |",
              "|---|---|---|---|"]
    for arm, a in A.items():
        cells = [f"{a['norms'][k]['start']:.3f} → {a['norms'][k]['end']:.3f}"
                 if a["norms"][k]["start"] is not None else "n/a" for k in NORM_KEYS]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", "## Spikes (ours; per arm over seeds)", "",
              "Unhealthy step: loss > 1 nat above the start or grad norm > 20 × the median of the last healthy steps "
              "(the rule that defers checkpoints in train.py). Loss rise: the largest one-step increase of the train "
              "loss. Clipped: share of steps with grad norm above grad_clip.", "",
              "| arm | runs with unhealthy steps | unhealthy steps (total) | max grad norm (median over runs; max) | "
              "largest loss rise (max) | clipped steps (mean) |", "|---|---|---|---|---|---|"]
    for arm, a in A.items():
        sp = list(a["spikes"].values())
        norms = [s["max_grad_norm"] for s in sp if s["max_grad_norm"] is not None]
        rises = [s["max_loss_rise"] for s in sp if s["max_loss_rise"] is not None]
        clipped = [s["clipped_frac"] for s in sp if s["clipped_frac"] is not None]
        lines.append(f"| {arm} | {sum(s['unhealthy_steps'] > 0 for s in sp)}/{len(sp)} | "
                     f"{sum(s['unhealthy_steps'] for s in sp)} | "
                     + (f"{statistics.median(norms):.3g}; {max(norms):.3g} | " if norms else "n/a | ")
                     + (f"{max(rises):+.3f} | " if rises else "n/a | ")
                     + (f"{100 * statistics.fmean(clipped):.0f} % |" if clipped else "n/a |"))
    lines += ["", "Per run (seed: unhealthy steps, max grad norm, largest loss rise, clipped):", ""]
    for arm, a in A.items():
        cells = [f"{s}: {v['unhealthy_steps']}, {v['max_grad_norm']:.3g}, {v['max_loss_rise']:+.2f}, "
                 f"{100 * v['clipped_frac']:.0f} %" for s, v in a["spikes"].items() if v["max_grad_norm"] is not None]
        lines.append(f"- {arm}: " + "; ".join(cells))
    P = summary["paper"]
    lines += ["", "## The paper's reported numbers (arXiv 2605.29459; GPT-2 124M, 2.5B FineWeb-Edu tokens) — not ours",
              "", "| quantity | paper |", "|---|---|",
              f"| bpe_tied val loss | ≈ {P['bpe_tied_val_loss']} |", f"| kronecker val loss | ≈ {P['kronecker_val_loss']} |",
              f"| gap (bpe_tied − kronecker) | {P['gap_nats']} nats ({P['gap_pct']} %) |",
              f"| steps-to-target ratio | ~{P['steps_to_target_ratio']}× |",
              f"| input-side params | {P['input_params']} |", ""]
    return "\n".join(lines)


def plots(runs, out, comparisons_done):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    palette = ["tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:gray"]
    colors = {arm: palette[i % len(palette)] for i, arm in enumerate(list(ARMS) + [a for a in runs if a not in ARMS])}

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

    fig, ax = plt.subplots(figsize=(8, 5))
    for arm, by_seed in runs.items():  # every seed raw: a spike in any run stays visible
        for i, rows in enumerate(by_seed.values()):
            steps, vals = zip(*series(rows, "train_loss")) if series(rows, "train_loss") else ((), ())
            ax.plot(steps, vals, color=colors.get(arm), lw=0.7, alpha=0.6,
                    label=f"{arm} (n={len(by_seed)})" if i == 0 else None)
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.set_xlabel("step")
    ax.set_title("train loss, every seed, unsmoothed (log scale: spikes are not clipped)")
    ax.set_ylabel("train loss (nats)")
    ax.legend(fontsize=8)
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

    pairs = [(c["arm"], c["ref"]) for c in comparisons_done]
    if not pairs:  # one arm: nothing to compare
        return
    ncols = min(3, len(pairs))  # wrap: a grid's 9 contrasts in one row are unreadable
    nrows = -(-len(pairs) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(pairs):]:
        ax.set_visible(False)
    for ax, (arm, ref), done in zip(axes.flat, pairs, comparisons_done):
        curve = delta_curves(runs, arm, ref)
        x = [t / 1e6 for t, *_ in curve]
        ax.plot(x, [m for _, m, _, _ in curve], color=colors.get(arm))
        ax.fill_between(x, [lo for *_, lo, _ in curve], [hi for *_, hi in curve], color=colors.get(arm), alpha=0.25)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_title(f"{arm} − {ref}", fontsize=10)
        spiked = done["spiked_seeds"]["ref"]
        if spiked:
            ax.text(0.02, 0.02, f"{ref} had unhealthy steps in seeds {', '.join(map(str, spiked))}",
                    transform=ax.transAxes, fontsize=7, color="darkred")
        ax.set_xlabel("tokens (M)")
        ax.grid(alpha=0.3)
        skip = next((i for i, (_, m, _, _) in enumerate(curve) if abs(m) < 1.0), 0)  # the first evals dwarf the rest
        if curve[skip:]:
            vals = [v for row in curve[skip:] for v in row[1:]]
            pad = 0.1 * (max(vals) - min(vals) or 1)
            ax.set_ylim(min(vals) - pad, max(vals) + pad)
    for row in axes:
        row[0].set_ylabel("paired Δ val loss (nats),\nmean and 95 % CI")
    fig.tight_layout()
    fig.savefig(out / "delta.png", dpi=110)
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


def eval_folder(runs_dir) -> Path:
    """Where a study's evaluations are: RUNS_DIR/eval (scripts/eval_all.sh on a compare.sh study), else the eval/
    beside a committed results/<exp>/runs folder."""
    inside = Path(runs_dir) / "eval"
    return inside if inside.is_dir() else Path(runs_dir).parent / "eval"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs_dir")
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default=None)
    ap.add_argument("--no_plots", action="store_true")
    ap.add_argument("--eval", default=None,
                    help="folder of eval_lm.sh results (default: RUNS_DIR/eval, else RUNS_DIR/../eval)")
    args = ap.parse_args(argv)
    try:
        runs = read_runs(args.runs_dir)
        out = make_dir(args.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    summary = summarize(runs)
    evals = read_evals(Path(args.eval) if args.eval else eval_folder(args.runs_dir))
    if evals:
        summary["eval"] = summarize_evals(evals)
    where = Path(args.runs_dir).resolve()
    title = args.title or f"Comparison: {where.parent.name if where.name == 'runs' else where.name}"
    (out / "loss_table.md").write_text(markdown(summary, title) + (eval_markdown(summary["eval"]) if evals else ""))
    (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    if not args.no_plots:
        plots(runs, out, summary["comparisons"])
    print((out / "loss_table.md").read_text())
    return summary


if __name__ == "__main__":
    main()
