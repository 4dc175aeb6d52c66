"""The attribution table: the codec against each of its controls, at every recipe of a grid.

    python -m scripts.contrasts results/attribution [--out FILE]

Reads GRID/<recipe>/summary.json (written by scripts/make_tables.py from GRID/<recipe>/runs/) and writes
GRID/contrasts.md: one row per contrast x recipe with Δ = kronecker - reference (paired by seed, nats), its 95 %
paired-t CI, the exact sign-flip p and the t-test p (both two-sided), the seeds where kronecker is lower, and how
many runs of each arm had unhealthy steps; then each arm's final loss and spikes per recipe. A contrast is called
clear when its CI excludes zero and its sign-flip p < 0.05, the rule results/attribution/PLAN.md fixed before the
first run. No correction for the number of contrasts is applied; the table says so.
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

from model import ARMS
from scripts.make_tables import _p, _pm
from util import UserError, atomic_write

# The arm the controls were built for: the one whose registry entry is contrasted with attribution controls.
ARM = next(name for name, arm in ARMS.items() if any(ARMS[ref].control for ref in arm.contrasts if ref in ARMS))


def isolates(ref):
    """What the contrast with `ref` isolates, from the registry's own words."""
    about = ARMS[ref].about if ref in ARMS else ""
    if about.startswith("control for "):
        return about.removeprefix("control for ").split(":")[0]
    return "codec vs learned table (all of it)"


def clear(d):
    return d["ci95"] is not None and (d["ci95"][0] > 0 or d["ci95"][1] < 0) and d["p_signflip"] < 0.05


def read(grid):
    grid = Path(grid)
    recipes = {p.parent.name: json.loads(p.read_text()) for p in sorted(grid.glob("*/summary.json"))}
    if not recipes:
        raise UserError(f"no <recipe>/summary.json under {grid}; run bash scripts/attribution.sh --collect first")
    return recipes


def table(recipes, title):
    lines = [f"# {title}", "",
             f"Δ = {ARM} − reference, final val loss in nats, paired by seed (negative: {ARM} is lower). 95 % CI "
             "from the paired t distribution; p: exact sign-flip permutation test and paired t-test, both two-sided. "
             "Clear: the CI excludes zero and the sign-flip p < 0.05 (the rule fixed before the grid ran); "
             f"{sum(len(_contrasts(s)) for s in recipes.values())} contrasts are tested without correction, so "
             "about one in twenty contrasts without any real effect would still be called clear. Unhealthy runs: "
             "runs with at least one unhealthy step (loss > 1 nat above the start, or grad norm > 20 × the recent "
             "median).", "",
             f"| contrast | isolates | recipe | n | Δ nats (mean ± std) | 95 % CI | p (sign-flip) | p (t) | "
             f"seeds {ARM} lower | unhealthy runs: {ARM} / reference | clear |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for ref in dict.fromkeys(c["ref"] for s in recipes.values() for c in _contrasts(s)):
        for recipe, s in recipes.items():
            c = next((c for c in _contrasts(s) if c["ref"] == ref), None)
            if c is None:
                continue
            d, n = c["delta"], len(c["seeds"])
            ci = f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d["ci95"] else "n/a"
            lines.append(f"| {ARM} vs {ref} | {isolates(ref)} | {recipe} | {n} | "
                         f"{_pm((d['mean'], d['std']), '{:+.3f}')} | {ci} | {_p(d['p_signflip'])} | {_p(d['p_t'])} | "
                         f"{c['seeds_arm_lower']}/{n} | "
                         f"{len(c['spiked_seeds']['arm'])}/{n} / {len(c['spiked_seeds']['ref'])}/{n} | "
                         f"{'yes' if clear(d) else 'no'} |")
    lines += ["", "## Each arm, per recipe", "",
              "| arm | recipe | runs | final val loss (mean ± std) | unhealthy runs | unhealthy steps | "
              "max grad norm (median over runs; max) | clipped steps (mean) |", "|---|---|---|---|---|---|---|---|"]
    arms = {a for s in recipes.values() for a in s["arms"]}
    for arm in [a for a in ARMS if a in arms] + sorted(arms - set(ARMS)):
        for recipe, s in recipes.items():
            a = s["arms"].get(arm)
            if a is None:
                continue
            sp = list(a["spikes"].values())
            norms = [v["max_grad_norm"] for v in sp]
            clipped = [v["clipped_frac"] for v in sp if v["clipped_frac"] is not None]
            lines.append(f"| {arm} | {recipe} | {len(sp)} | {_pm((a['val_loss_mean'], a['val_loss_std']), '{:.3f}')} | "
                         f"{sum(v['unhealthy_steps'] > 0 for v in sp)}/{len(sp)} | "
                         f"{sum(v['unhealthy_steps'] for v in sp)} | "
                         f"{statistics.median(norms):.3g}; {max(norms):.3g} | "
                         + (f"{100 * statistics.fmean(clipped):.0f} % |" if clipped else "n/a |"))
    return "\n".join(lines) + "\n"


def _contrasts(summary):
    return [c for c in summary["comparisons"] if c["arm"] == ARM and c["ref"] in ARMS[ARM].contrasts]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("grid", help="folder with one <recipe>/summary.json per recipe (results/attribution)")
    ap.add_argument("--out", default=None, help="default: GRID/contrasts.md")
    ap.add_argument("--title", default="What explains the gain: the codec against its controls")
    args = ap.parse_args(argv)
    try:
        text = table(read(args.grid), args.title)
        atomic_write(Path(args.out or Path(args.grid) / "contrasts.md"), lambda f: f.write(text.encode()))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(text, end="")
    return text


if __name__ == "__main__":
    main()
