"""Kill test: SIGKILL a training run at random steps, resume it, and check it ends exactly where an
uninterrupted run ends.

    python -m scripts.kill_test configs/smoke.py --input_embedding=kronecker [--nproc 2] [--kills 2] [--seed 0]

1 rank: the train.py process itself is killed and the same command is run again (auto-resume).
N ranks: one worker under `torchrun --max-restarts` is killed; torchrun restarts the group, which resumes from the
last checkpoint on its own. Either way the final train/val losses must match the uninterrupted run (CPU: within
--tol, 1e-4 by default). Checkpoints are written every 2 steps so kills land between and on checkpoints.
"""
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def launch(config, out_dir, overrides, nproc, max_restarts=0):
    args = [str(ROOT / "train.py"), str(config), f"--out_dir={out_dir}", *overrides]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               f"--max-restarts={max_restarts}", *args]
    else:
        cmd = [sys.executable, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def last_step(out_dir):
    path = Path(out_dir) / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = []
    for line in path.read_text().splitlines():
        if '"train_loss"' in line:
            try:
                steps.append(json.loads(line)["step"])
            except json.JSONDecodeError:  # the line being written right now
                pass
    return max(steps, default=0)


def children(pid):
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def kill_at(proc, out_dir, step, nproc, timeout=300):
    """Wait until the run has logged `step`, then SIGKILL it (1 rank) or one of its workers (N ranks)."""
    deadline = time.time() + timeout
    while last_step(out_dir) < step:
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"run ended or stalled before step {step}: {proc.stderr.read()[-1500:]}")
        time.sleep(0.05)
    victim = proc.pid if nproc == 1 else random.choice(children(proc.pid) or [proc.pid])
    os.kill(victim, signal.SIGKILL)
    return victim


def losses(out_dir):
    rows = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    return ({r["step"]: r["train_loss"] for r in rows if "train_loss" in r},
            {r["step"]: r["val_loss"] for r in rows if "val_loss" in r})


def killed_run(config, out_dir, overrides, nproc, kill_steps):
    """Train with a SIGKILL at each step of kill_steps, resuming after each; returns (train, val) losses."""
    if nproc == 1:
        for step in kill_steps:
            proc = launch(config, out_dir, overrides, 1)
            kill_at(proc, out_dir, step, 1)
            proc.wait()
        proc = launch(config, out_dir, overrides, 1)
    else:  # torchrun restarts the worker group after each kill
        proc = launch(config, out_dir, overrides, nproc, max_restarts=len(kill_steps))
        for step in kill_steps:
            kill_at(proc, out_dir, step, nproc)
    _, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"resumed run failed (exit {proc.returncode}): {err[-1500:]}")
    return losses(out_dir)


def compare(a, b):
    """Max |difference| over the steps both logged, per kind; and whether the step sets match."""
    (ta, va), (tb, vb) = a, b
    same_steps = sorted(ta) == sorted(tb) and sorted(va) == sorted(vb)
    diff = max([abs(ta[s] - tb[s]) for s in ta if s in tb] + [abs(va[s] - vb[s]) for s in va if s in vb])
    return same_steps, diff


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--kills", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="chooses the kill steps")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--work_dir", default=None)
    args, overrides = ap.parse_known_args(argv)
    overrides = [o for o in overrides if not o.startswith("--ckpt_interval")] + ["--ckpt_interval=2"]
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="kill_test_"))
    ref = launch(args.config, work / "ref", overrides, args.nproc)
    _, err = ref.communicate()
    if ref.returncode != 0:
        sys.exit(f"error: the uninterrupted run failed: {err[-800:]}")
    straight = losses(work / "ref")
    n = max(straight[0])
    rng = random.Random(args.seed)
    kill_steps = sorted(rng.sample(range(2, n - 1), k=min(args.kills, n - 3)))
    resumed = killed_run(args.config, work / "killed", overrides, args.nproc, kill_steps)
    same, diff = compare(straight, resumed)
    ok = same and diff <= args.tol
    print(f"kill test: {args.nproc} rank(s), SIGKILL after steps {kill_steps}, {n} steps; same steps logged: {same}; "
          f"max |loss difference| vs uninterrupted: {diff:.2e} (tol {args.tol:g}) -> {'PASS' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
