"""One-shot GPU check, ordered by value and held to a time budget (run it through scripts/gpu_check.sh).

    python -m scripts.gpu_check --data DIR --out DIR [--budget_s 420] [--smoke]

Steps, most valuable first; each prints its result as soon as it has it, appends it to OUT/summary.md and rewrites
OUT/gpu_check.json, so a run cut off at any point still leaves everything it finished. A step whose estimated
time would overrun --budget_s is skipped, with the reason.
  a  the codec's three forms agree on the device, fp32 and bf16 autocast (scripts/check_modes.py)
  b  every study arm (model.ARMS without the controls), compiled, bf16, at micro-batch 64 -- what a 124M run
     uses: 50 steps of GPT-2 124M on the shards in --data; loss finite and falling, tok/s, MFU, peak memory
  c  arm overhead: interleaved steps of the same compiled models from b (no second compile), ratio to the first arm
  d  where the time goes: a profiler table of the top kernels of one step of the first two arms of b
  e  fused vs plain head, first arm: compiled step time and peak memory at micro-batch 64; the largest micro-batch
     that fits (eager)
  f  attention backends: SDPA forward + backward, causal, at (64, 12, 1024, 64) bf16 with each backend (flash,
     cuDNN, efficient, math) and with the default choice
  g  every study arm again at micro-batch 16 (the micro-batch of the first committed H100 numbers)
  h  input embeddings alone at the 124M micro-step: nn.Embedding vs the codec's table (bench/embedding.py)
  i  train.py end to end (eager): 20 steps with a checkpoint, then a resume to 30
  j  2-rank NCCL training through torchrun (only with 2+ GPUs)
--smoke runs the same pipeline at configs/smoke.py size on any device (the CPU rehearsal used by the tests).
Needs only torch, numpy, tiktoken and tqdm: no datasets, no wandb.
"""
import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
from scripts import check_modes
import train
from bench import embedding as embedding_bench, train_step
from config import load_config
from data import ShardLoader
from model import ARMS
from runtime import peak_flops, setup_runtime

# first guesses of each step's seconds (a compile of a 124M GPT is about a minute); replaced by measurements
STUDY = [a for a in ARMS if not ARMS[a].control]  # the arms a study runs by default; STUDY[0] is the baseline
ESTIMATE = {"full": {"a": 40, "compile": 60, "b_steps": 15, "c": 25, "d": 20, "e": 150, "f": 20, "h": 45, "i": 90,
                     "j": 120},
            "smoke": {"a": 15, "compile": 0, "b_steps": 3, "c": 5, "d": 5, "e": 10, "f": 3, "h": 8, "i": 25, "j": 30}}
MICRO_BATCHES = {"full": (64, 16), "smoke": (4, 2)}  # the production micro-batch, and the first check's


class Check:
    """Budget, summary.md and gpu_check.json: every step's outcome is written the moment it is known."""

    def __init__(self, out: Path, budget_s: float, smoke: bool):
        self.out, self.budget, self.t0 = out, budget_s, time.time()
        self.est = dict(ESTIMATE["smoke" if smoke else "full"])
        self.result = {"budget_s": budget_s, "smoke": smoke, "torch": torch.__version__, "steps": {}}
        self.ok = True

    def left(self):
        return self.budget - (time.time() - self.t0)

    def fits(self, key, seconds):
        if seconds <= self.left():
            return True
        self.record(key, "skipped", f"needs ~{seconds:.0f} s, {max(self.left(), 0):.0f} s of the budget left")
        return False

    def record(self, key, status, text, data=None, seconds=None):
        self.ok &= status != "fail"
        took = f" ({seconds:.0f} s)" if seconds is not None else ""
        line = f"- **{key}** {status}{took}: {text}"
        print(line, flush=True)
        with open(self.out / "summary.md", "a") as f:
            f.write(line + "\n")
        self.result["steps"][key] = {"status": status, "text": text, "seconds": seconds, "data": data}
        self.result["elapsed_s"] = round(time.time() - self.t0, 1)
        (self.out / "gpu_check.json").write_text(json.dumps(self.result, indent=1))


def step_modes(ck, dev, smoke):
    t = time.time()
    rows, ok = check_modes.run(dev, d=32 if smoke else 768)
    worst = {dt: max(max(r["out_rel_err"], r["grad_rel_err"]) for r in rows if r["dtype"] == dt)
             for dt in ("float32", "bfloat16")}
    ck.record("a modes agree", "ok" if ok else "fail",
              f"max rel err fp32 {worst['float32']:.1e}, bf16 autocast {worst['bfloat16']:.1e} "
              f"(outputs {rows[-1]['out_dtype'].replace('torch.', '')} under autocast)", rows, time.time() - t)


def step_train_arms(ck, cfg, rt, data, n_steps, letter):
    """b (and g): each arm compiled once at cfg's micro-batch, trained n_steps on real shards. Returns the runs (kept
    for steps c and d)."""
    runs = []
    for arm in STUDY:
        key = f"{letter} train {arm} B{cfg.batch_size}"
        if not ck.fits(key, ck.est["compile"] + ck.est["b_steps"]):
            continue
        t = time.time()
        if rt.device_type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        run = train_step.build_variant(cfg, rt, arm)
        loader = ShardLoader(data, "train", cfg.batch_size, cfg.model.block_size, shuffle=True, seed=cfg.seed)
        first_done = None
        try:
            for i in range(n_steps):
                batches = [tuple(train.to_device(x, rt) for x in loader.next_batch())]
                lr = train.get_lr(i, cfg)
                t_step = time.time()
                loss = train.forward_backward(run["model"], batches, rt)
                loss_f, _, finite, _ = train.optimizer_step(run["raw"], run["opt"], lr, cfg.grad_clip, loss)
                run["losses"].append(loss_f)
                if i == 0:
                    first_done = time.time() - t  # build + compile + first step
                elif i >= min(5, n_steps // 2):
                    run["times"].append((time.time() - t_step) * 1000)
                if not finite:
                    raise RuntimeError(f"non-finite loss at step {i + 1}")
        except Exception as e:  # one arm's failure must not cost the others
            ck.record(key, "fail", f"{type(e).__name__}: {str(e)[:300]}", seconds=time.time() - t)
            continue
        ck.est["compile"] = first_done  # the measured compile time is the next arm's estimate
        L = run["losses"]
        head, tail = statistics.mean(L[:5]), statistics.mean(L[-5:])
        falls = tail < head - (0.5 if ck.result["smoke"] else 1.0)
        ms = statistics.median(run["times"])
        tok_s = cfg.total_batch_size / (ms / 1000)
        peak = peak_flops(rt.device)
        mfu = run["flops"] * tok_s / peak if peak else None
        mfu_s = f", MFU {100 * mfu:.1f}%" if mfu is not None else ""
        mem = torch.cuda.max_memory_allocated() / 2 ** 30 if rt.device_type == "cuda" else None
        mem_s = f", peak memory {mem:.1f} GiB" if mem is not None else ""
        ck.record(key, "ok" if falls else "fail",
                  f"loss {head:.3f} -> {tail:.3f} ({'falls' if falls else 'DOES NOT FALL'}), first step incl. "
                  f"compile {first_done:.1f} s, then {ms:.1f} ms/step = {tok_s:,.0f} tok/s{mfu_s}{mem_s}",
                  {"batch_size": cfg.batch_size, "losses": list(L), "first_step_s": first_done, "ms_per_step": ms,
                   "tok_per_s": tok_s, "mfu": mfu, "peak_mem_gib": mem, "params": run["params"]}, time.time() - t)
        run["times"], run["losses"] = [], []  # (later steps time these models again: their own lists)
        runs.append(run)
    return runs


def step_profile(ck, runs, cfg, rt, steps):
    """d: one profiled step (after a warm one) of the first two arms' compiled models: the top kernels by self
    time on the device (CPU: on the host). The full tables go to profile_<arm>.txt."""
    if len(runs) < 1 or not ck.fits("d profile", ck.est["d"]):
        return
    from torch.profiler import ProfilerActivity, profile
    t = time.time()
    batches = train_step.random_batches(cfg, rt, 1)
    cuda = rt.device_type == "cuda"
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    tops = {}
    for run in runs[:2]:
        train_step.timed_step(run, batches, rt, cfg)  # warm
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts) as prof:
            for _ in range(steps):
                train_step.timed_step(run, batches, rt, cfg)
        avg = prof.key_averages()
        (ck.out / f"profile_{run['arm']}.txt").write_text(avg.table(sort_by=sort, row_limit=25))
        total = sum(getattr(e, sort) for e in avg) or 1
        top = sorted(avg, key=lambda e: -getattr(e, sort))[:5]
        tops[run["arm"]] = [{"name": e.key[:80], "share": getattr(e, sort) / total} for e in top]
    text = "; ".join(f"{arm}: " + ", ".join(f"{x['name'][:40]} {100 * x['share']:.0f}%" for x in top[:3])
                     for arm, top in tops.items())
    ck.record("d profile", "ok", f"top kernels by self {'device' if cuda else 'host'} time ({steps} step(s)): {text}",
              tops, time.time() - t)


def step_attention(ck, rt, smoke):
    """f: SDPA forward + backward, causal, with each backend forced, and with torch's own choice."""
    if not ck.fits("f attention backends", ck.est["f"]):
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn import functional as F
    t = time.time()
    B, H, T, D = (2, 2, 64, 16) if smoke else (64, 12, 1024, 64)
    dtype = rt.ptdtype
    g = torch.Generator(device=rt.device).manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, device=rt.device, dtype=dtype, generator=g).requires_grad_()
               for _ in range(3))

    def run(backend, reps=5 if smoke else 10):
        ctx = sdpa_kernel(backend) if backend is not None else contextlib.nullcontext()
        times = []
        with ctx:
            for i in range(reps + 2):
                if rt.device_type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
                if rt.device_type == "cuda":
                    torch.cuda.synchronize()
                if i >= 2:
                    times.append((time.perf_counter() - t0) * 1000)
        return statistics.median(times)
    rows = []
    for name, backend in [("default", None), ("flash", SDPBackend.FLASH_ATTENTION),
                          ("cudnn", SDPBackend.CUDNN_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                          ("math", SDPBackend.MATH)]:
        try:
            rows.append({"backend": name, "fwd_bwd_ms": run(backend)})
        except RuntimeError as e:  # not available for this device, dtype or shape
            rows.append({"backend": name, "unavailable": str(e).splitlines()[0][:120]})
    text = ", ".join(f"{r['backend']} {r['fwd_bwd_ms']:.2f} ms" if "fwd_bwd_ms" in r else f"{r['backend']} n/a"
                     for r in rows)
    ck.record("f attention backends", "ok", f"(B, H, T, D) = {(B, H, T, D)}, {str(dtype).replace('torch.', '')}, "
              f"fwd+bwd causal: {text}", rows, time.time() - t)


def step_overhead(ck, runs, cfg, rt, steps):
    if not runs or not ck.fits("c arm overhead", ck.est["c"]):
        return
    t = time.time()
    batches = train_step.random_batches(cfg, rt, 1)
    train_step.time_interleaved(runs, batches, rt, cfg, steps, 2)
    rows = train_step.summarize(runs, cfg, rt, steps)
    text = ", ".join(f"{r['arm']} {r['ms_per_step']:.1f} ms ({r['ratio_vs_baseline']:.3f}x)" for r in rows)
    ck.record("c arm overhead", "ok", f"compile {rt.compile}, interleaved, {steps} steps each: {text}", rows, time.time() - t)


def step_fused_head(ck, cfg, rt, steps):
    """e: fused vs plain head, first study arm. Compiled (as training runs) at the check's micro-batch: step time and the
    step's peak memory; eager at micro-batch 32 too; then the largest micro-batch that fits, eager, each way."""
    if not ck.fits("e fused head", ck.est["e"]):
        return
    t = time.time()
    batches = train_step.random_batches(cfg, rt, 1)
    runs = [train_step.build_variant(cfg, rt, STUDY[0], fused=f) for f in (True, False)]
    train_step.time_interleaved(runs, batches, rt, cfg, steps, 2)
    rows = [{"batch_size": cfg.batch_size, **r} for r in train_step.summarize(runs, cfg, rt, steps)]
    del runs, batches
    rt_eager = train_step.eager(rt)
    fits = {}
    sizes = [4, 8] if ck.result["smoke"] else [64, 128, 256]
    for B in sizes:
        c = cfg.replace(batch_size=B, total_batch_size=B * cfg.model.block_size, compile="false")
        for fused in (True, False):
            if fits.get(fused) is False:
                continue  # a smaller micro-batch already did not fit
            run = None
            try:
                run = train_step.build_variant(c, rt_eager, STUDY[0], fused=fused)
                b = train_step.random_batches(c, rt_eager, 1)
                train_step.time_interleaved([run], b, rt_eager, c, 1, 1)
                rows += [{"batch_size": B, **r} for r in train_step.summarize([run], c, rt_eager, 1)]
            except torch.cuda.OutOfMemoryError:  # (torch.OutOfMemoryError only exists in newer torch)
                fits[fused] = False
                rows.append({"batch_size": B, "fused_head": fused, "oom": True})
            del run
            if rt.device_type == "cuda":
                torch.cuda.empty_cache()
    comp = rows[:2]
    text = (f"compile {rt.compile}, B={cfg.batch_size}: fused {comp[0]['ms_per_step']:.1f} ms vs plain "
            f"{comp[1]['ms_per_step']:.1f} ms ({comp[0]['fused_vs_unfused']:.3f}x)")
    if comp[0]["step_peak_mem_mb"] is not None:
        text += f", step peak {comp[0]['step_peak_mem_mb']:,.0f} vs {comp[1]['step_peak_mem_mb']:,.0f} MiB"
    for fused in (True, False):
        ok = [r["batch_size"] for r in rows[2:] if r["fused_head"] == fused and not r.get("oom")]
        peak = {r["batch_size"]: r["step_peak_mem_mb"] for r in rows[2:] if r["fused_head"] == fused
                and not r.get("oom") and r["step_peak_mem_mb"]}
        text += (f"; {'fused' if fused else 'plain'} eager: largest micro-batch tried that fits "
                 f"{max(ok) if ok else 'none'}" + (" (" + ", ".join(f"B={b} {m:,.0f} MiB" for b, m in peak.items())
                                                   + ")" if peak else ""))
    ck.record("e fused head", "ok", text, rows, time.time() - t)


def step_embeddings(ck, rt, reps, smoke):
    """h: the input embedding alone, forward + backward, at the 124M micro-step (smoke: 4 x 64 ids)."""
    if not ck.fits("h embeddings", ck.est["h"]):
        return
    t = time.time()
    setting = dict(embedding_bench.SETTINGS[0], **({"B": 4, "T": 64, "d": 32} if smoke else {}))
    rows = embedding_bench.run_setting(setting, ["nn.Embedding", "codec-table"], reps, rt.device, log=lambda *a: None)
    text = ", ".join(f"{r['method']} {r['fwd_bwd_ms']:.2f} ms ({r['vs_nn_embedding']:.2f}x)" for r in rows)
    ck.record("h embeddings", "ok", f"ids {rows[0]['ids']}, V {rows[0]['V']:,}, d {rows[0]['d']}: {text}", rows,
              time.time() - t)


def portable(text, work):
    """A log that can be committed: the scratch folder and the checkout are named, not spelled out."""
    return text.replace(str(work), "WORK").replace(str(ROOT), ".")


def run_train_py(args, log, work):
    """train.py in a subprocess; returns (rc, its output). The log keeps the last lines (the folder must stay
    small)."""
    p = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True, cwd=ROOT)
    text = p.stdout + p.stderr
    with open(log, "a") as f:
        f.write(portable("\n".join(text.splitlines()[-40:]), work) + "\n")
    return p.returncode, text


def step_train_py(ck, cfg_path, data, out, work, smoke):
    if not ck.fits("i train.py", ck.est["i"]):
        return
    t = time.time()
    run_dir = work / "train_py"
    common = [cfg_path, f"--data_dir={data}", f"--out_dir={run_dir}", f"--input_embedding={STUDY[1]}",
              "--compile=false", "--progress=false", "--eval_interval=10", "--ckpt_interval=10", "--log_interval=5",
              "--warmup_steps=5", "--lr_decay_steps=30"]
    if not smoke:
        common += ["--batch_size=16", "--total_batch_size=16384", "--val_tokens=32768"]
    rc1, _ = run_train_py(common + ["--max_steps=20"], out / "train_py.log", work)
    rc2, text = run_train_py(common + ["--max_steps=30"], out / "train_py.log", work)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()] if rc2 == 0 else []
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    ok = rc1 == 0 and rc2 == 0 and "resumed from" in text and len(val) >= 2 and val[-1] < val[0]
    mfu = [r["mfu"] for r in rows if r.get("mfu")]
    ck.record("i train.py", "ok" if ok else "fail",
              f"rc {rc1}/{rc2}, resumed at step 20, val loss " + " -> ".join(f"{v:.3f}" for v in val)
              + (f", eager MFU {100 * mfu[-1]:.1f}%" if mfu else ""), {"val": val}, time.time() - t)
    for p in run_dir.glob("ckpt_*.pt"):
        p.unlink()


def step_nccl(ck, cfg_path, data, out, work, smoke):
    ngpu = torch.cuda.device_count()
    if ngpu < 2:
        ck.record("j 2-rank NCCL", "skipped", f"{ngpu} GPU(s) here; needs 2")
        return
    if not ck.fits("j 2-rank NCCL", ck.est["j"]):
        return
    t = time.time()
    run_dir = work / "ddp"
    cmd = ["torchrun", "--standalone", "--nproc_per_node=2", str(ROOT / "train.py"), cfg_path, f"--data_dir={data}",
           f"--out_dir={run_dir}", f"--input_embedding={STUDY[1]}", "--progress=false", "--max_steps=20",
           "--eval_interval=10", "--ckpt_interval=20", "--warmup_steps=5"]
    if not smoke:
        cmd += ["--batch_size=16", "--total_batch_size=32768", "--val_tokens=32768"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    (out / "ddp.log").write_text(portable("\n".join((p.stdout + p.stderr).splitlines()[-40:]), work))
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()] if p.returncode == 0 else []
    spread = [r["ddp_param_spread"] for r in rows if "ddp_param_spread" in r]
    ok = p.returncode == 0 and spread and spread[-1] == 0
    ck.record("j 2-rank NCCL", "ok" if ok else "fail", f"rc {p.returncode}, parameter spread across ranks {spread}",
              None, time.time() - t)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder of token shards (prepare_fineweb.py --source sample)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default=None, help="scratch folder for checkpoints (default: a new temp folder)")
    ap.add_argument("--budget_s", type=float, default=480)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--only", default="abcdefghij", help="run only these steps, e.g. --only ab (a rerun)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    cfg_path = str(ROOT / ("configs/smoke.py" if args.smoke else "configs/gpt2_124m.py"))
    big, small = MICRO_BATCHES["smoke" if args.smoke else "full"]
    T = load_config([cfg_path]).model.block_size
    cfg = load_config([cfg_path, f"--data_dir={args.data}", f"--batch_size={big}", f"--total_batch_size={big * T}",
                       *([] if args.smoke else ["--warmup_steps=10", "--max_steps=50"])])
    cfg_small = cfg.replace(batch_size=small, total_batch_size=small * T)
    rt = setup_runtime(cfg.device, cfg.dtype, cfg.compile)
    dev = torch.cuda.get_device_name(rt.device) if rt.device_type == "cuda" else "cpu"
    (out / "summary.md").write_text(
        f"# GPU check on {dev}\n\ntorch {torch.__version__}, {str(rt.ptdtype).replace('torch.', '')}, compile "
        f"{rt.compile}, peak {peak_flops(rt.device) or 'n/a'} FLOP/s for MFU, budget {args.budget_s:.0f} s"
        f"{', smoke size' if args.smoke else ''}\n\n")
    ck = Check(out, args.budget_s, args.smoke)
    ck.result.update(device=dev, peak_flops=peak_flops(rt.device), compile=rt.compile)
    if rt.compile:
        train_step.allow_many_compiled_models(4 * len(STUDY))  # two micro-batches, fused and plain
    steps = 10 if args.smoke else 50

    def guarded(name, fn, *a):
        if name[0] not in args.only:
            ck.record(name, "skipped", f"not selected (--only {args.only})")
            return None
        try:
            return fn(*a)
        except Exception as e:  # a broken step is reported and the next one still runs
            ck.record(name, "fail", f"{type(e).__name__}: {str(e)[:300]}")
        finally:
            if rt.device_type == "cuda":
                torch.cuda.empty_cache()

    guarded("a modes agree", step_modes, ck, str(rt.device), args.smoke)
    runs = guarded("b train", step_train_arms, ck, cfg, rt, args.data, steps, "b") or []
    guarded("c arm overhead", step_overhead, ck, runs, cfg, rt, 5 if args.smoke else 20)
    guarded("d profile", step_profile, ck, runs, cfg, rt, 1)
    del runs
    guarded("e fused head", step_fused_head, ck, cfg, rt, 3 if args.smoke else 10)
    guarded("f attention backends", step_attention, ck, rt, args.smoke)
    del_runs = guarded("g train", step_train_arms, ck, cfg_small, rt, args.data, steps, "g")
    del del_runs
    guarded("h embeddings", step_embeddings, ck, rt, 3 if args.smoke else 10, args.smoke)
    guarded("i train.py", step_train_py, ck, cfg_path, args.data, out, work, args.smoke)
    guarded("j 2-rank NCCL", step_nccl, ck, cfg_path, args.data, out, work, args.smoke)
    verdict = "PASS" if ck.ok else "FAIL"
    with open(out / "summary.md", "a") as f:
        f.write(f"\ngpu check: {verdict} in {time.time() - ck.t0:.0f} s\n")
    print(f"gpu check: {verdict} in {time.time() - ck.t0:.0f} s (summary.md, gpu_check.json)")
    return 0 if ck.ok else 1


if __name__ == "__main__":
    sys.exit(main())
