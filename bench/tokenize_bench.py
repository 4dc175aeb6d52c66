"""Tokenization throughput: prepare_fineweb.py on the bundled sample (1 worker, all workers) vs a plain loop.

    python -m bench.tokenize_bench [--reps 3] [--json PATH]

The plain loop is the floor: one process, `encode_ordinary` per chapter, no shards written. prepare_fineweb.py adds
the datasets streaming reader, shard writing and (with workers > 1) process-pool overhead, and gains the cores.
"""
import argparse
import gzip
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import prepare_fineweb
from tokenizer import get_encoding


def sample_texts():
    with gzip.open(prepare_fineweb.SAMPLE_PATH, "rt") as f:
        return [json.loads(line)["text"] for line in f]


def plain_loop(texts):
    enc = get_encoding()
    t0 = time.perf_counter()
    n = sum(len(enc.encode_ordinary(t)) + 1 for t in texts)
    return n, time.perf_counter() - t0


def prepare(workers, source):
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        meta = prepare_fineweb.prepare(prepare_fineweb.parse_args(
            ["--source", source, "--out_dir", d, "--workers", str(workers), "--quiet", "--val_tokens", "0"]))
        dt = time.perf_counter() - t0
    return meta["tokens"]["train"] + meta["tokens"]["val"], dt


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--repeat", type=int, default=1,
                    help="tokenize the sample N times over (a local jsonl), so pool start-up is amortised")
    args = ap.parse_args(argv)
    cores = os.cpu_count()
    texts = sample_texts() * args.repeat
    tmp = tempfile.TemporaryDirectory()
    source = "sample"
    if args.repeat > 1:
        source = str(Path(tmp.name) / "repeated.jsonl")
        Path(source).write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cases = {"plain encode_ordinary loop (1 process)": lambda: plain_loop(texts),
             "prepare_fineweb.py --workers 1": lambda: prepare(1, source),
             f"prepare_fineweb.py --workers {cores}": lambda: prepare(cores, source)}
    times = {k: [] for k in cases}
    tokens = {}
    for _ in range(args.reps):  # interleaved
        for name, fn in cases.items():
            n, dt = fn()
            tokens[name] = n
            times[name].append(dt)
    base = statistics.median(times["plain encode_ordinary loop (1 process)"])
    rows = []
    print(f"sample x {args.repeat}\n| method | tokens | seconds (median of {args.reps}) | tokens/s | × plain loop |\n"
          f"|---|---|---|---|---|")
    for name in cases:
        t = statistics.median(times[name])
        rows.append({"method": name, "tokens": tokens[name], "seconds": t, "tok_per_s": tokens[name] / t,
                     "vs_plain": base / t})
        print(f"| {name} | {tokens[name]:,} | {t:.2f} | {tokens[name] / t:,.0f} | {base / t:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
