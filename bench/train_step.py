"""Training-step benchmark: every arm, with the fused head and without, timed interleaved in one process.

    python -m bench.train_step configs/cpu_tiny.py [--steps 10] [--warmup 3] [--json PATH] [--key=value ...]
    python -m bench.train_step configs/gpt2_124m.py --batch_size=64                         # on a GPU
    python -m bench.train_step configs/cpu_tiny.py --fused on                               # fused head only

Each variant (arm x fused head on/off) is built with train.py's own pieces (build_model: compile,
then DDP if launched by torchrun; forward_backward; optimizer_step: clip + fused AdamW on CUDA; bf16 autocast) and
trained on seeded random token windows (the data path is not what is measured). Steps run A B C D A B C D ... so
drift hits every variant alike. Prints the median ms/step, tokens/s, MFU (GPU), the step's peak memory above what
was allocated before it (GPU: the activations, gradients and optimizer temporaries of that variant alone), the
ratio to the first arm of --arms (default: the first of model.ARMS) and the fused/unfused ratio per arm.

Every compiled variant must really run compiled: the recompile limit is raised so that dynamo never falls back to
eager for the 9th variant, and hitting it anyway is an error.
"""
import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import train
from config import load_config
from model import ARMS
from runtime import Runtime, peak_flops, setup_runtime
from tokenizer import N_VOCAB


def variants(arms, fused=("on", "off")):
    """[(arm, fused_head)] in the order they are timed."""
    return [(arm, f == "on") for arm in arms for f in fused]


def allow_many_compiled_models(n: int):
    """Variants share GPT.forward's code cache: let it hold them all, and fail rather than fall back to eager."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), 4 * n))
    if hasattr(cfg, "fail_on_recompile_limit_hit"):
        cfg.fail_on_recompile_limit_hit = True


def random_batches(cfg, rt, accum, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (cfg.batch_size, cfg.model.block_size)
    return [tuple(train.to_device(torch.randint(0, N_VOCAB, shape, generator=g), rt) for _ in range(2))
            for _ in range(accum)]


def build_variant(cfg, rt, arm, fused=True):
    c = cfg.replace(input_embedding=arm, fused_head=fused)
    raw, model = train.build_model(c, rt)
    opt = raw.configure_optimizers(c.weight_decay, c.learning_rate, (c.beta1, c.beta2), rt.device_type)
    return dict(arm=arm, fused=fused, raw=raw, model=model, opt=opt, times=[], peak_mem=0.0,
                losses=[], flops=raw.estimate_flops_per_token(cfg.batch_size * cfg.model.block_size),
                params=raw.num_params())


def eager(rt: Runtime) -> Runtime:
    return Runtime(**{**rt.__dict__, "compile": False})


def timed_step(run, batches, rt, cfg):
    """One optimizer step; returns its wall time in ms and records the loss and the step's extra peak memory."""
    cuda = rt.device_type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    loss = train.forward_backward(run["model"], batches, rt)
    loss_f, _, _, _ = train.optimizer_step(run["raw"], run["opt"], cfg.learning_rate, cfg.grad_clip, loss)
    if cuda:
        torch.cuda.synchronize()
        run["peak_mem"] = max(run["peak_mem"], (torch.cuda.max_memory_allocated() - before) / 2 ** 20)
    run["losses"].append(loss_f)
    return (time.perf_counter() - t0) * 1000


def time_interleaved(runs, batches, rt, cfg, steps, warmup):
    for i in range(warmup + steps):
        for r in runs:
            dt = timed_step(r, batches, rt, cfg)
            if i >= warmup:
                r["times"].append(dt)


def summarize(runs, cfg, rt, steps):
    peak = peak_flops(rt.device)
    base = next((r for r in runs if r["arm"] == runs[0]["arm"] and r["fused"]), runs[0])
    base_ms = statistics.median(base["times"])
    rows = []
    for r in runs:
        ms = statistics.median(r["times"])
        tok_s = cfg.total_batch_size / (ms / 1000)
        twin = next((o for o in runs if o["arm"] == r["arm"] and not o["fused"]), None)
        rows.append({"arm": r["arm"], "fused_head": r["fused"], "baseline": base["arm"], "ms_per_step": ms, "tok_per_s": tok_s,
                     "mfu": r["flops"] * tok_s / (peak * rt.world) if peak else None,
                     "step_peak_mem_mb": r["peak_mem"] if rt.device_type == "cuda" else None,
                     "ratio_vs_baseline": ms / base_ms,
                     "fused_vs_unfused": ms / statistics.median(twin["times"]) if r["fused"] and twin else None,
                     "params": r["params"], "ms_min": min(r["times"]), "ms_max": max(r["times"]), "steps": steps})
    return rows


def print_table(rows, header):
    print(header)
    print(f"| arm | head | ms/step (median) | min–max | tokens/s | MFU | step peak MiB | × {rows[0]['baseline']} "
          f"| fused ÷ unfused |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        mem = f"{r['step_peak_mem_mb']:,.0f}" if r["step_peak_mem_mb"] is not None else "n/a"
        fu = f"{r['fused_vs_unfused']:.3f}" if r["fused_vs_unfused"] is not None else "–"
        print(f"| {r['arm']} | {'fused' if r['fused_head'] else 'plain'} | "
              f"{r['ms_per_step']:.1f} | {r['ms_min']:.1f}–{r['ms_max']:.1f} | {r['tok_per_s']:,.0f} | {mfu} | "
              f"{mem} | {r['ratio_vs_baseline']:.3f} | {fu} |")


def device_name(rt):
    if rt.device_type == "cuda":
        return torch.cuda.get_device_name(rt.device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated; the first is the ratios' baseline")
    ap.add_argument("--fused", default="both", choices=("both", "on", "off"), help="fused head variants to run")
    ap.add_argument("--json", default=None)
    args, overrides = ap.parse_known_args(argv)
    cfg = load_config([args.config, *overrides])
    rt = setup_runtime(cfg.device, cfg.dtype, cfg.compile)
    accum = train.grad_accum_steps(cfg, rt.world)
    names = variants(args.arms.split(","), ("on", "off") if args.fused == "both" else (args.fused,))
    if rt.compile:
        allow_many_compiled_models(len(names))
    batches = random_batches(cfg, rt, accum)
    runs = [build_variant(cfg, rt, *v) for v in names]
    time_interleaved(runs, batches, rt, cfg, args.steps, args.warmup)
    rows = summarize(runs, cfg, rt, args.steps)
    dev = device_name(rt)
    if rt.master:
        print_table(rows, f"# {args.config} | {dev} | {rt.world} rank(s) | {str(rt.ptdtype).replace('torch.', '')} "
                          f"| compile {rt.compile} | {cfg.total_batch_size:,} tokens/step | torch {torch.__version__}")
        if args.json:
            Path(args.json).write_text(json.dumps({"device": dev, "config": args.config, "torch": torch.__version__,
                                                   "compile": rt.compile, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
