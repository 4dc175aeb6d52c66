"""What reproducing the paper's 124M comparison costs, each number marked measured, computed or estimated, with its
arithmetic: download, disk, tokenization time, time per run and GPU-hours on 8 GPUs.

    python -m scripts.costs [--config configs/gpt2_124m.py] [--out results/costs.md]

Inputs are committed files: the GPU check's single-GPU throughput per arm (results/gpu/*/gpu_check.json), the
tokenization benchmark (results/bench/tokenize_x10.json), and the config itself (steps, batch, checkpoint sizes
from the models built on the CPU). What no file here measures is an estimate, and says what it assumes.
"""
import argparse
import json
from pathlib import Path

from config import load_config
from model import ARMS
from prepare_fineweb import tokens_for_config
from train import model_size
from util import ROOT, atomic_write

GPU_CHECK = ROOT / "results/gpu/NVIDIA_H100_80GB_HBM3/gpu_check.json"
TOKENIZE = ROOT / "results/bench/tokenize_x10.json"
SHARD_TOKENS = 10 ** 8
VAL_TOKENS = 10_485_760
# estimates (not measured here): English web text is about 4.6 bytes of UTF-8 per GPT-2 token, and FineWeb-Edu's
# parquet files hold text at about 2.3x compression
BYTES_PER_TOKEN, PARQUET_RATIO = 4.6, 2.3
GPUS, SEEDS = 8, 3


def costs(config_path):
    cfg = load_config([str(config_path)])
    train_tokens = tokens_for_config(config_path, SHARD_TOKENS)
    shard_gb = 2 * (train_tokens + VAL_TOKENS) / 1e9
    download_gb = (train_tokens + VAL_TOKENS) * BYTES_PER_TOKEN / PARQUET_RATIO / 1e9
    tok = json.loads(TOKENIZE.read_text())
    rate = max(r["tok_per_s"] for r in tok if r["method"].startswith("prepare_fineweb.py"))
    gpu = json.loads(GPU_CHECK.read_text())
    run_tokens = cfg.max_steps * cfg.total_batch_size
    arms = [a for a, spec in ARMS.items() if not spec.control]
    rows, gpu_hours, ckpt_total = [], 0.0, 0.0
    for arm in arms:
        n, ckpt = model_size(**{**vars(cfg.model), "input_embedding": arm})
        per_gpu = gpu["steps"][f"b train {arm}"]["data"]["tok_per_s"]
        minutes = run_tokens / (per_gpu * GPUS) / 60
        gpu_hours += SEEDS * minutes * GPUS / 60
        ckpt_total += SEEDS * cfg.keep_checkpoints * ckpt
        rows.append((arm, n, ckpt, per_gpu, minutes))
    L = [f"# What the {Path(config_path).name} comparison costs", "",
         f"- command: `python -m scripts.costs --config {Path(config_path).as_posix()}`",
         f"- inputs: `{GPU_CHECK.relative_to(ROOT)}` ({gpu['device']}, micro-batch 16, compiled, bf16; "
         f"torch {gpu['torch']}), `{TOKENIZE.relative_to(ROOT)}`, the config", "",
         "| what | amount | how it was obtained |", "|---|---|---|",
         f"| train tokens to prepare | {train_tokens:,} | computed: `prepare_fineweb.py --for_config` "
         f"({cfg.max_steps:,} whole steps of {cfg.total_batch_size:,} tokens; each 100M-token shard gives "
         f"{(SHARD_TOKENS - 1) // cfg.total_batch_size} of them) |",
         f"| download | ≈ {download_gb:.1f} GB | estimated: {train_tokens + VAL_TOKENS:,} tokens × "
         f"{BYTES_PER_TOKEN} bytes of text per token ÷ {PARQUET_RATIO} parquet compression |",
         f"| disk for shards | {shard_gb:.2f} GB | computed: 2 bytes per token, train + {VAL_TOKENS:,} val |",
         f"| tokenization | ≈ {(train_tokens + VAL_TOKENS) / rate / 60:.0f} min on 2 cores | estimated from the "
         f"measured {rate / 1e6:.1f}M tokens/s of `prepare_fineweb.py` on 2 cores (10× the sample); more cores "
         f"(`--workers`) and the network change it |",
         f"| checkpoints, the whole study | ≈ {ckpt_total / 1e9:.0f} GB | computed: {len(arms)} arms × {SEEDS} seeds "
         f"× {cfg.keep_checkpoints} kept per run × the checkpoint size below (one more per running job while it "
         f"writes a new one) |",
         f"| GPU time, the whole study | ≈ {gpu_hours:.0f} GPU-hours | estimated: the sum of the per-run times "
         f"below × {GPUS} GPUs × {SEEDS} seeds |", "",
         f"Per run ({run_tokens:,} tokens on {GPUS} GPUs; estimated from the single-GPU throughput, assuming "
         f"{GPUS} GPUs reach {GPUS}× of it; evals, checkpoints and the first compile add a few minutes):", "",
         "| arm | parameters | checkpoint | measured tokens/s on 1 GPU | minutes per run on 8 |", "|---|---|---|---|---|"]
    for arm, n, ckpt, per_gpu, minutes in rows:
        L.append(f"| `{arm}` | {n:,} | {ckpt / 1e9:.2f} GB | {per_gpu:,.0f} | {minutes:.1f} |")
    return "\n".join(L) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/gpt2_124m.py")
    ap.add_argument("--out", default=None, help="write the table here (default: print only)")
    args = ap.parse_args(argv)
    text = costs(args.config)
    if args.out:
        atomic_write(args.out, lambda f: f.write(text.encode()))
    print(text)


if __name__ == "__main__":
    main()
