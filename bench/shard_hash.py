"""What checking every shard's full sha256 costs at the start of a run (data.data_identity, which train.py calls on
every start and resume), against one core hashing the same bytes.

    python -m bench.shard_hash [--gb 1.0] [--shards 8] [--json results/bench/shard_hash.json]

Writes --gb of shards (random GPT-2 ids after an EOT) to a temp folder, then times data_identity (parallel threads)
and a one-thread loop of file_sha256 over the same files, each the median of 3 (the files are in the page cache:
this measures hashing, not the disk). The last column scales to the 124M run's 5.04 GB of shards.
"""
import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from data import EOT, data_identity, file_sha256, write_shard

PAPER_RUN_GB = 5.04  # 2,519,922,945 tokens x 2 bytes (results/costs.md)


def timed(fn, repeat=3):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    per = int(args.gb * 1e9 / 2 / args.shards)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.shards):
            ids = rng.integers(0, EOT, per, dtype=np.uint16)
            ids[0] = EOT
            write_shard(Path(tmp) / f"x_{'val' if i == 0 else 'train'}_{i:06d}.bin", ids)
        files = sorted(Path(tmp).glob("*.bin"))
        size = sum(f.stat().st_size for f in files) / 1e9
        data_identity(tmp)  # warm the page cache
        parallel = timed(lambda: data_identity(tmp))
        serial = timed(lambda: [file_sha256(f) for f in files])
    rows = [("data_identity (parallel threads)", parallel), ("file_sha256, one thread", serial)]
    result = {"gb": size, "shards": args.shards, "cpu_threads": torch.get_num_threads(),
              "results": [{"method": m, "seconds": s, "gb_per_s": size / s, "paper_run_s": PAPER_RUN_GB * s / size}
                          for m, s in rows]}
    print(f"{size:.2f} GB in {args.shards} shards")
    print("| method | seconds (median of 3) | GB/s | seconds for the 124M run's 5.04 GB |")
    print("|---|---|---|---|")
    for r in result["results"]:
        print(f"| {r['method']} | {r['seconds']:.2f} | {r['gb_per_s']:.2f} | {r['paper_run_s']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
