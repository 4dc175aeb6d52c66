"""What the probes share: loading checkpoints train.py wrote, and writing JSON + markdown outputs."""
import json
import sys
from pathlib import Path

from checkpoint import load_checkpoint, resolve_checkpoint
from util import ROOT, UserError, atomic_write, make_dir


class ProbeError(UserError):
    pass


def load_models(paths, device="cpu"):
    """[(label, model, ckpt)] for checkpoint files or run folders; label = arm (+ seed/step when ambiguous)."""
    out = []
    for p in paths:
        path = resolve_checkpoint(p)
        model, ckpt = load_checkpoint(path, device=device)
        label = f"{model.config.input_embedding}_s{ckpt['config'].get('seed')}"
        out.append((label, model, ckpt, repo_relative(path)))
    labels = [o[0] for o in out]
    return [(lab if labels.count(lab) == 1 else f"{lab}@{Path(path).parent.name}/{Path(path).stem}", m, c, path)
            for (lab, m, c, path) in out]


def repo_relative(path) -> str:
    """A path as results should store it: relative to the repo when inside it (never a machine's absolute path)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(path)


def probe_parser(doc):
    """argparse for a checkpoint probe: --checkpoints, --out, --device, --debug; the probe adds its own options."""
    import argparse
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", nargs="+", required=True, help="ckpt_*.pt files or run folders")
    ap.add_argument("--out", required=True, help="OUT.json (OUT.md is written beside it)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    return ap


def write_outputs(result: dict, markdown: str, out_json):
    out_json = Path(out_json)
    make_dir(out_json.parent)
    for path, text in ((out_json, json.dumps(result, indent=1)), (out_json.with_suffix(".md"), markdown)):
        atomic_write(path, lambda f: f.write(text.encode()))
    print(markdown)


def run_main(main):
    """One clear line for expected errors (bad files, bad checkpoints), exit code 2."""
    try:
        main()
    except UserError as e:  # ProbeError, CheckpointError, a write that fails
        if "--debug" in sys.argv:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
