"""Training-step benchmark: every arm at one config, timed interleaved in one process.

    python bench/train_step.py configs/cpu_tiny.py [--steps 10] [--warmup 3] [--json PATH] [--key=value ...]
    python bench/train_step.py configs/gpt2_124m.py --kron_modes=sparse,dynamic,cached      # on a GPU

Each arm is built with train.py's own pieces (build_model: compile, then DDP if launched by torchrun;
forward_backward; optimizer_step: clip + fused AdamW on CUDA; bf16 autocast) and trained on seeded synthetic
token windows (the data path is not what is measured). Steps run A B C D A B C D ... so drift hits every arm
alike. Prints median ms/step, tokens/s, MFU (GPU), peak memory (GPU) and the ratio to bpe_tied.
"""
import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train  # noqa: E402
from model import ARMS  # noqa: E402


def variants(arms, kron_modes):
    out = []
    for arm in arms:
        modes = kron_modes if arm.startswith("kronecker") else ["sparse"]
        out += [(arm, m) for m in modes]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--kron_modes", default="sparse", help="e.g. sparse,dynamic,cached")
    ap.add_argument("--json", default=None)
    args, overrides = ap.parse_known_args(argv)
    cfg = train.load_config([args.config, *overrides])
    rt = train.setup_runtime(cfg)
    accum = train.grad_accum_steps(cfg, rt.world)
    names = variants(args.arms.split(","), args.kron_modes.split(","))
    peak = train.peak_flops(rt.device)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 50257, (cfg.batch_size, cfg.block_size), generator=g),
                torch.randint(0, 50257, (cfg.batch_size, cfg.block_size), generator=g)) for _ in range(accum)]
    batches = [tuple(train.to_device(t, rt) for t in b) for b in batches]

    runs = {}
    for arm, mode in names:
        c = train.TrainConfig(**{**cfg.__dict__, "input_embedding": arm, "kron_mode": mode})
        raw, model = train.build_model(c, rt)
        opt = raw.configure_optimizers(c.weight_decay, c.learning_rate, (c.beta1, c.beta2), rt.device_type)
        runs[arm, mode] = dict(raw=raw, model=model, opt=opt, times=[], peak_mem=0.0,
                               flops=raw.estimate_flops_per_token(cfg.batch_size * cfg.block_size),
                               params=raw.num_params())

    def step(r):
        if rt.device_type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        loss = train.forward_backward(r["model"], batches, rt)
        train.optimizer_step(r["raw"], r["opt"], cfg.learning_rate, cfg.grad_clip, loss)
        if rt.device_type == "cuda":
            torch.cuda.synchronize()
            r["peak_mem"] = max(r["peak_mem"], torch.cuda.max_memory_allocated() / 2 ** 20)
        return (time.perf_counter() - t0) * 1000

    for i in range(args.warmup + args.steps):  # interleaved
        for r in runs.values():
            dt = step(r)
            if i >= args.warmup:
                r["times"].append(dt)

    base = statistics.median(runs.get(("bpe_tied", "sparse"), next(iter(runs.values())))["times"])
    rows = []
    for (arm, mode), r in runs.items():
        ms = statistics.median(r["times"])
        tok_s = cfg.total_batch_size / (ms / 1000)
        rows.append({"arm": arm, "kron_mode": mode if arm.startswith("kronecker") else None,
                     "ms_per_step": ms, "tok_per_s": tok_s,
                     "mfu": r["flops"] * tok_s / (peak * rt.world) if peak else None,
                     "peak_mem_mb": r["peak_mem"] if rt.device_type == "cuda" else None,
                     "ratio_vs_bpe_tied": ms / base, "params": r["params"],
                     "ms_min": min(r["times"]), "ms_max": max(r["times"]), "steps": args.steps})
    dev = torch.cuda.get_device_name(rt.device) if rt.device_type == "cuda" else \
        f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    if rt.master:
        print(f"# {args.config} | {dev} | {rt.world} rank(s) | {str(rt.ptdtype).replace('torch.', '')} | "
              f"compile {rt.compile} | {cfg.total_batch_size:,} tokens/step | torch {torch.__version__}")
        print("| arm | kron_mode | ms/step (median) | min–max | tokens/s | MFU | peak mem MiB | × bpe_tied |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
            mem = f"{r['peak_mem_mb']:,.0f}" if r["peak_mem_mb"] is not None else "n/a"
            print(f"| {r['arm']} | {r['kron_mode'] or '–'} | {r['ms_per_step']:.1f} | {r['ms_min']:.1f}–"
                  f"{r['ms_max']:.1f} | {r['tok_per_s']:,.0f} | {mfu} | {mem} | {r['ratio_vs_bpe_tied']:.3f} |")
        if args.json:
            Path(args.json).write_text(json.dumps({"device": dev, "config": args.config, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
