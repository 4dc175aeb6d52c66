"""Train a GPT-2 with any input-embedding arm. One loop for one CPU, one GPU, 8 GPUs or many nodes.

    python train.py configs/smoke.py --input_embedding=kronecker
    torchrun --standalone --nproc_per_node=8 train.py configs/gpt2_124m.py --input_embedding=kronecker --seed=1337

Re-running the same command on an out_dir that holds a checkpoint resumes from it (raise --max_steps to extend).
Outputs in out_dir: config.json, metrics.jsonl (one JSON object per event), ckpt_<step>.pt (last few kept),
wandb/ when wandb_mode is not 'disabled'. config.py lists the keys; `python train.py --help` prints them.
"""
import dataclasses
import functools
import hashlib
import inspect
import json
import math
import netrc
import os
import platform
import secrets
import signal
import socket
import sys
import time
import urllib.parse
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

from checkpoint import (Health, capture_rng, check_resume, latest_checkpoint, list_checkpoints, move_aside,
                        open_run_dir, restore_rng, rotate, save_checkpoint)
from config import TrainConfig, load_config
from data import ShardLoader, data_identity, val_batches
from model import GPT, GPTConfig
from runtime import Runtime, param_spread, peak_flops_entry, setup_runtime
from tokenizer import RANKS_SHA256
from util import UserError, atomic_write, git_commit, warn, write_error


# -- the pieces of a step (bench/train_step.py and scripts/gpu_check.py use them too) ------------------------------

def get_lr(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to learning_rate, cosine decay to min_lr at lr_decay_steps, then min_lr."""
    decay_steps = cfg.lr_decay_steps or cfg.max_steps
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    if step >= decay_steps:
        return cfg.min_lr
    ratio = (step - cfg.warmup_steps) / max(1, decay_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


def plan_batch(cfg: TrainConfig, world: int):
    """(micro-batch, grad accum) for `world` ranks: the largest micro-batch <= batch_size such that micro-batch x
    block_size x world x accum = total_batch_size. So one config runs on 1 GPU or 64 (batch_size is a cap: 64 at
    124M fits an 80 GB card, and on 16+ GPUs a step has fewer sequences per rank than that)."""
    T = cfg.model.block_size
    if cfg.total_batch_size % (T * world):
        raise UserError(f"total_batch_size={cfg.total_batch_size} is not divisible by block_size x world = {T} x "
                        f"{world} = {T * world}; make it a multiple, or use another number of ranks")
    per_rank = cfg.total_batch_size // (T * world)  # sequences per rank per optimizer step
    micro = max(b for b in range(1, min(cfg.batch_size, per_rank) + 1) if per_rank % b == 0)
    return micro, per_rank // micro


def grad_accum_steps(cfg: TrainConfig, world: int) -> int:
    """Micro-batches per optimizer step at cfg.batch_size exactly (benchmarks, which do not adapt it)."""
    micro, accum = plan_batch(cfg, world)
    if micro != cfg.batch_size:
        raise UserError(f"batch_size={cfg.batch_size} does not divide a step's sequences per rank; use {micro}")
    return accum


def build_model(cfg: TrainConfig, rt: Runtime):
    """(raw_model, model): raw for checkpoints/eval helpers, model compiled and DDP-wrapped for training."""
    torch.manual_seed(cfg.seed)  # identical init on every rank
    raw = GPT(cfg.model).to(rt.device)
    model = raw
    if rt.ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        # buffers (the codec's byte table, the cached codec) are deterministic constants: never re-broadcast them
        # every step (torch >= 2.13 names that forward_sync_buffers; older versions broadcast_buffers)
        no_sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters \
            else "broadcast_buffers"
        model = DDP(model, device_ids=[rt.local_rank] if rt.device_type == "cuda" else None,
                    gradient_as_bucket_view=True, **{no_sync: False})
    # Wrap in DDP first, then compile: compiling the DDP module lets dynamo split the graph at DDP's bucket
    # boundaries, so each bucket's all-reduce overlaps the rest of the backward. (Compiling first hides the
    # parameters' gradients inside one backward graph: every all-reduce would wait for the whole backward.)
    if rt.compile:
        model = torch.compile(model)
    return raw, model


def to_device(x, rt: Runtime):
    if rt.device_type == "cuda":
        return x.pin_memory().to(rt.device, non_blocking=True)
    return x.to(rt.device)


def forward_backward(model, batches, rt: Runtime):
    """Accumulate gradients over micro-batches; DDP all-reduces only on the last one. Returns the mean loss."""
    n = len(batches)
    loss_sum = torch.zeros((), device=rt.device)
    for i, (x, y) in enumerate(batches):
        sync = nullcontext() if (not rt.ddp or i == n - 1) else model.no_sync()
        with sync:
            with rt.autocast():
                loss = model(x, y)[1]  # never keep logits alive into the next micro-batch
            (loss / n).backward()
        loss_sum += loss.detach()
    return loss_sum / n


def optimizer_step(raw_model, optimizer, lr: float, grad_clip: float, loss, vote=None):
    """Clip, step only if loss and grad norm are finite, and read loss, grad norm (and the DDP stop vote) in one
    host sync. Returns (loss, grad_norm, finite, vote) as Python numbers (vote None when none was given).

    With fused AdamW (on a GPU) the update is queued *before* the read, so the device runs it while the host waits:
    the kernel itself skips the update (and its step count) when told through `found_inf` that loss or norm is not
    finite -- the same decision the host would take after reading them."""
    norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    read = torch.stack([loss.detach().float(), norm.float()] + ([vote.float()] if vote is not None else []))
    for group in optimizer.param_groups:
        group["lr"] = lr
    queued = bool(optimizer.defaults.get("fused"))
    if queued:
        optimizer.found_inf = (~torch.isfinite(read[:2]).all()).float()
        optimizer.step()
    loss_f, norm_f, *vote_f = read.tolist()
    finite = math.isfinite(loss_f) and math.isfinite(norm_f)
    if finite and not queued:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_f, norm_f, finite, (vote_f[0] if vote_f else None)


@torch.no_grad()
def evaluate(model, loader, steps, rt: Runtime) -> float:
    """Mean val loss over the fixed val windows, averaged over ranks."""
    model.eval()
    loader.reset()
    total = torch.zeros((), device=rt.device)
    for _ in range(steps):
        x, y = loader.next_batch()
        with rt.autocast():
            total += model(to_device(x, rt), to_device(y, rt))[1].float()
    total /= steps
    if rt.ddp:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)  # (gloo has no AVG)
        total /= rt.world
    model.train()
    return total.item()


# -- watching the run ----------------------------------------------------------------------------------------------

class Metrics:
    """metrics.jsonl (rank 0), wandb with the same keys, and the console."""

    def __init__(self, out_dir, cfg, master, resume_step):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.master, self.wandb, self.bar = master, None, None
        if not master:
            return
        if resume_step is not None and self.path.exists():  # drop events after the checkpoint we resume from
            lines = self.path.read_text(errors="replace").splitlines()
            parsed = [(line, _parse_row(line)) for line in lines if line.strip()]
            bad = [line for line, r in parsed if r is None]
            if bad:  # kept, never deleted: a torn last line after kill -9 is expected, one in the middle is not
                with open(self.path.with_name(self.path.name + ".bad"), "a") as f:
                    f.write("".join(line + "\n" for line in bad))
                middle = [line for line, r in parsed[:-1] if r is None]
                if middle:
                    warn(f"{len(middle)} unreadable row(s) in the middle of {self.path}; kept in {self.path.name}.bad")
            rows = [r for _, r in parsed if r and r["step"] <= resume_step]
            atomic_write(self.path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        if cfg.progress:
            from tqdm import tqdm
            self.bar = tqdm(total=cfg.max_steps, unit="step", dynamic_ncols=True, mininterval=1.0)
        if cfg.wandb_mode != "disabled":
            import wandb
            id_file = Path(out_dir) / "wandb_id.txt"
            run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
            id_file.write_text(run_id)
            try:
                self.wandb = wandb.init(project=cfg.wandb_project, group=cfg.wandb_group or None,
                                        name=cfg.wandb_run_name or f"{cfg.model.input_embedding}_s{cfg.seed}",
                                        mode=cfg.wandb_mode, dir=str(out_dir), config=cfg.to_dict(), id=run_id,
                                        resume="allow")
            except Exception as e:  # a bad project or entity, a refused key: wandb's own message, in one line
                raise UserError(f"wandb could not start ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                                f"check --wandb_project, or use --wandb_mode=offline") from None

    def log(self, step, **values):
        if not self.master:
            return
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": step, **values}) + "\n")
        except OSError as e:  # a full disk: one line; the checkpoints and earlier rows are intact
            raise write_error(e, self.path) from None
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def say(self, msg):
        if self.master:
            (self.bar.write if self.bar else print)(msg)
            sys.stdout.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()
        if self.wandb is not None:
            self.wandb.finish()


def _parse_row(line):
    """One metrics.jsonl row, or None for a blank or torn line (a kill -9 in the middle of a write)."""
    try:
        row = json.loads(line)
        return row if isinstance(row, dict) and "step" in row else None
    except json.JSONDecodeError:
        return None


class StopFlag:
    """SIGTERM / SIGINT (Slurm preemption, Ctrl-C): finish the step, checkpoint, exit cleanly."""

    def __init__(self, device):
        self.signum = None
        self.flag = torch.zeros((), device=device)  # filled in place: no blocking host-to-device copy per step
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the checkpoint
        self.signum = signum

    def vote(self) -> torch.Tensor:
        """1.0 if this rank was signalled: summed over ranks together with the loss (one collective per step)."""
        return self.flag.fill_(1.0 if self.signum else 0.0)


# -- the run -------------------------------------------------------------------------------------------------------

def eval_and_norms(step, final, cfg, rt, model, raw, vals, metrics):
    """vals: {'val_loss': (loader, steps)}, plus 'final_val_loss' when the last eval uses a larger val set."""
    if step % cfg.eval_interval == 0 or final:
        val = evaluate(model, *vals["val_loss"], rt)
        metrics.log(step, val_loss=val, tokens=step * cfg.total_batch_size)
        metrics.say(f"step {step}: val loss {val:.4f}")
    if final and "final_val_loss" in vals:
        loader, steps = vals["final_val_loss"]
        val, n_tok = evaluate(model, loader, steps, rt), steps * cfg.batch_size * cfg.model.block_size * rt.world
        metrics.log(step, final_val_loss=val, final_val_tokens=n_tok)
        metrics.say(f"step {step}: final val loss {val:.4f} on {n_tok:,} tokens")
    if step % cfg.norm_interval == 0 or final:
        metrics.log(step, **raw.embedding_norms())


def save(out_dir, step, raw, optimizer, cfg, rt, loader_state, extra):
    """Every rank contributes its data position and RNG state; rank 0 writes, rotates, everyone waits."""
    loaders, rngs = [loader_state], [capture_rng(rt.device)]
    if rt.ddp:
        loaders, rngs = [None] * rt.world, [None] * rt.world
        dist.all_gather_object(loaders, loader_state)
        dist.all_gather_object(rngs, capture_rng(rt.device))
    path = Path(out_dir) / f"ckpt_{step:07d}.pt"
    failed = None
    if rt.master:
        state = {"model": raw.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                 "model_args": dataclasses.asdict(raw.config), "config": cfg.to_dict(), "loader": loaders, "rng": rngs,
                 "tokenizer_sha256": RANKS_SHA256, "git_commit": git_commit(), "world_size": rt.world, **extra}
        try:
            save_checkpoint(path, state)
            rotate(out_dir, cfg.keep_checkpoints, protect=extra["health"]["last_good"])
        except UserError as e:  # a full disk: every rank must stop, not wait for rank 0 until the NCCL timeout
            failed = e
    if rt.ddp:  # doubles as the barrier: nobody goes on before the checkpoint is on disk (or known lost)
        ok = torch.tensor([0.0 if failed else 1.0], device=rt.device)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if ok.item() == 0 and failed is None:
            failed = UserError(f"rank 0 could not write {path} (its error line says why); rerun after fixing it")
    if failed:
        raise failed
    return path


def agree_on_resume(step, loader_state, rt, out_dir):
    """Every rank looked for the newest checkpoint by itself: all must go on from the same step and the same data
    position (one all-reduce of the values and their negatives: max == -min everywhere)."""
    mine = [step] + [loader_state[k] for k in ("epoch", "shard_cursor", "block_cursor", "micro")]
    both = torch.tensor(mine + [-v for v in mine], dtype=torch.int64, device=rt.device)
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    top, low = both[:len(mine)].tolist(), [-v for v in both[len(mine):].tolist()]
    if top != low:
        raise UserError(f"ranks would resume from different points (steps {low[0]} to {top[0]}, or different "
                        f"data positions): is {out_dir} one shared folder on every node? Use a shared out_dir")


def diverged(out_dir, step, why, health, master):
    """The error for a run that went bad: move aside what was saved after the last good checkpoint, name it."""
    good = health.last_good  # a file name
    later = [p for p in list_checkpoints(out_dir) if good is None or p.name > good]
    if master:
        for p in later:
            move_aside(p, "was written after training went bad", ".suspect")
    where = (f"rerun with a lower --learning_rate to resume from {good}" if good else
             "no checkpoint precedes it: start over with a lower --learning_rate")
    return UserError(f"training diverged at step {step} ({why}); stopped. {where}, or pass --nonfinite=skip")


def check_wandb(cfg: TrainConfig):
    """Fail before any training, in one line, when wandb cannot log as asked: no package, no API key (online), or
    no route to the server (online). Offline mode needs neither: `wandb sync` uploads the run later."""
    if cfg.wandb_mode == "disabled":
        return
    sync = f"`wandb sync {cfg.out_dir}/wandb/offline-run-*` from a machine with network"
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise UserError(f"wandb_mode={cfg.wandb_mode} needs the wandb package: pip install wandb") from None
    if cfg.wandb_mode != "online":
        return
    host = urllib.parse.urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        has_key = bool(os.environ.get("WANDB_API_KEY") or netrc.netrc().authenticators(host))
    except (OSError, netrc.NetrcParseError):
        has_key = False
    if not has_key:
        raise UserError(f"wandb_mode=online but no wandb API key is set up here: run `wandb login` (or set "
                        f"WANDB_API_KEY), or train with --wandb_mode=offline and later run {sync}")
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError:
        raise UserError(f"wandb_mode=online but {host} cannot be reached from this machine: train with "
                        f"--wandb_mode=offline and later run {sync}") from None


def provenance(rt: Runtime, data_id) -> dict:
    """What made this run, as data: code, library, threads, device, ranks and the data's identity."""
    device = torch.cuda.get_device_name(rt.device) if rt.device_type == "cuda" else f"cpu ({platform.machine()})"
    return {"commit": git_commit(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "device": device, "world_size": rt.world, "python": platform.python_version(),
            "data_sha256": hashlib.sha256(json.dumps(data_id).encode()).hexdigest()}


def train(cfg: TrainConfig):
    # setup: everything that can be wrong with the command or the data fails before out_dir is touched
    if int(os.environ.get("RANK", 0)) == 0:
        check_wandb(cfg)
    rt = setup_runtime(cfg.device, cfg.dtype, cfg.compile)
    micro, accum = plan_batch(cfg, rt.world)
    cfg = cfg.replace(batch_size=micro)  # the configured batch_size is a cap; the startup line says what runs
    T = cfg.model.block_size
    loader = ShardLoader(cfg.data_dir, "train", cfg.batch_size, T, rt.rank, rt.world, shuffle=cfg.shuffle,
                         seed=cfg.seed, accum=accum)
    vals = {"val_loss": val_batches(cfg.data_dir, cfg.batch_size, T, rt.rank, rt.world, cfg.val_tokens)}
    if cfg.final_val_tokens:
        vals["final_val_loss"] = val_batches(cfg.data_dir, cfg.batch_size, T, rt.rank, rt.world,
                                             cfg.final_val_tokens)
    data_id = data_identity(cfg.data_dir)
    out_dir = Path(cfg.out_dir)
    stop = StopFlag(rt.device)
    with open_run_dir(out_dir, cfg.force) if rt.master else nullcontext():  # one writer per run folder
        # resume or start: the checkpoint must describe this very run, and config.json is written only after that
        ckpt_path, ckpt = latest_checkpoint(out_dir, move_unreadable=rt.master) if out_dir.is_dir() else (None, None)
        if ckpt is not None:
            check_resume(ckpt, ckpt_path, cfg, data_id, rt.world)
        raw, model = build_model(cfg, rt)
        optimizer = raw.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2),
                                             rt.device_type)
        step, skipped, health = 0, 0, Health()
        if ckpt is not None:
            raw.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            loader.load_state_dict(ckpt["loader"][rt.rank])
            restore_rng(ckpt["rng"][rt.rank], rt.device)
            step, skipped = ckpt["step"], ckpt.get("skipped_steps", 0)
            health = Health(ckpt.get("health"), resumed_from=ckpt_path.name)
        else:
            torch.manual_seed(cfg.seed + rt.rank)  # dropout differs per rank; init was identical
        del ckpt
        if rt.ddp:
            agree_on_resume(step, loader.state_dict(), rt, out_dir)
        if rt.master:
            record = {**cfg.to_dict(), "provenance": provenance(rt, data_id)}
            atomic_write(out_dir / "config.json", lambda f: f.write(json.dumps(record, indent=1).encode()))
        metrics = Metrics(out_dir, cfg, rt.master, step if ckpt_path else None)
        if ckpt_path:
            metrics.say(f"resumed from {ckpt_path} at step {step}")
        n_params, n_input = raw.num_params(), raw.input_params()
        flops_per_token = raw.estimate_flops_per_token(cfg.batch_size * cfg.model.block_size)
        peak_key, peak = peak_flops_entry(rt.device)
        metrics.say(f"{cfg.model.input_embedding}: {n_params:,} params ({n_input:,} input-side) | {rt.world} rank(s) on "
                    f"{rt.device} | {str(rt.ptdtype).replace('torch.', '')} | compile {rt.compile} | micro-batch "
                    f"{cfg.batch_size} x grad accum {accum} x {rt.world} rank(s) x {cfg.model.block_size} = "
                    f"{cfg.total_batch_size:,} tokens/step")
        if rt.device_type == "cuda":
            metrics.say(f"MFU against {peak / 1e12:.0f} TFLOP/s bf16 (table entry '{peak_key}')" if peak else
                        f"no peak FLOP/s known for {torch.cuda.get_device_name(rt.device)}: MFU not reported")
        if step >= cfg.max_steps:
            metrics.say(f"{out_dir} already finished at step {step} (max_steps={cfg.max_steps}); raise --max_steps "
                        f"to extend")
            metrics.close()
            return
        if step == 0:
            metrics.log(0, params=n_params, input_params=n_input, tokens=0)
        if metrics.bar:
            metrics.bar.update(step)

        def fetch():  # one optimizer step's micro-batches, copied to the device without blocking
            return [tuple(to_device(t, rt) for t in loader.next_batch()) for _ in range(accum)]

        model.train()
        if step == 0:
            eval_and_norms(0, False, cfg, rt, model, raw, vals, metrics)
        data_pass = loader.epoch
        batches, interrupted, due_ckpt, t_last = fetch(), False, False, time.time()
        while step < cfg.max_steps and not interrupted:
            lr = get_lr(step, cfg)
            loss = forward_backward(model, batches, rt)
            # Prefetch the next step's data while the device is still busy with this one; the checkpoint keeps the
            # position *before* the prefetch, so a resume re-reads exactly these windows.
            loader_state = loader.state_dict()
            batches = fetch() if step + 1 < cfg.max_steps else None
            if loader.epoch > data_pass:  # said once per run: the data on disk was shorter than the run
                if data_pass == 0:
                    metrics.say(f"warning: step {step + 2} starts a second pass over the training data in "
                                f"{cfg.data_dir}; for one pass, prepare more tokens (train.py --dry_run tells how many)")
                data_pass = loader.epoch
            votes = None
            if rt.ddp:  # mean loss and "was any rank signalled" in one all-reduce, read with the grad norm
                summed = torch.stack([loss, stop.vote()])
                dist.all_reduce(summed, op=dist.ReduceOp.SUM)
                loss, votes = summed[0] / rt.world, summed[1]
            loss_f, grad_norm, finite, votes_f = optimizer_step(raw, optimizer, lr, cfg.grad_clip, loss, votes)
            interrupted = votes_f > 0 if votes is not None else stop.signum is not None
            step += 1
            dt = time.time() - t_last
            tok_s = cfg.total_batch_size / dt
            mfu = flops_per_token * tok_s / (peak * rt.world) if peak else None

            # still sane? A spike only defers the checkpoint; divergence stops the run.
            why = health.check(loss_f, grad_norm, finite, cfg.model.vocab_size)
            if not finite and cfg.nonfinite == "skip":
                skipped += 1
                metrics.log(step, skipped_steps=skipped)
                metrics.say(f"step {step}: non-finite loss/grad norm, step skipped ({skipped} so far)")
            elif not finite or health.bad_run >= Health.MAX_BAD:
                metrics.close()
                raise diverged(out_dir, step, why, health, rt.master)
            elif why:
                metrics.say(f"warning: step {step}: {why}; checkpoints wait for a healthy step")
            if finite:
                metrics.log(step, train_loss=loss_f, lr=lr, grad_norm=grad_norm, tokens=step * cfg.total_batch_size,
                            tok_per_s=tok_s, mfu=mfu, ms_per_step=dt * 1000)
            if step % cfg.log_interval == 0 or step == 1 or step == cfg.max_steps:
                mfu_s = f" | mfu {100 * mfu:.1f}%" if mfu is not None else ""
                metrics.say(f"step {step}/{cfg.max_steps} | loss {loss_f:.4f} | lr {lr:.2e} | grad norm {grad_norm:.3f} "
                            f"| {tok_s:,.0f} tok/s{mfu_s} | {dt * 1000:.0f} ms")
            if metrics.bar:
                metrics.bar.update(1)
            eval_and_norms(step, step == cfg.max_steps, cfg, rt, model, raw, vals, metrics)
            due_ckpt |= step % cfg.ckpt_interval == 0
            if (due_ckpt and why is None) or step == cfg.max_steps or interrupted:
                save(out_dir, step, raw, optimizer, cfg, rt, loader_state,
                     {"skipped_steps": skipped, "data_identity": data_id, "health": health.state()})
                health.saved(f"ckpt_{step:07d}.pt")
                due_ckpt = False
            if interrupted:
                metrics.say(f"signal {stop.signum}: checkpoint written at step {step}; rerun the same command to resume")
            t_last = time.time()  # eval / checkpoint time is not step time

        if rt.ddp:  # cheap guard: every rank must hold the same weights
            spread = param_spread(raw)
            metrics.log(step, ddp_param_spread=spread)
            if spread != 0:
                metrics.say(f"warning: ranks hold different parameters (spread {spread:.3g})")
        metrics.close()
        if not interrupted:
            metrics.say(f"done: {step} steps, checkpoint in {out_dir}")



@functools.lru_cache(maxsize=4)
def model_size(**model_args):
    """(parameters, checkpoint bytes: weights + AdamW's two moments + buffers) of a model, built once per process."""
    model = GPT(GPTConfig(**model_args))
    n = model.num_params()
    return n, n * 4 * 3 + sum(b.numel() * b.element_size() for b in model.buffers())


def dry_run(cfg: TrainConfig) -> str:
    """The whole plan of a run, resolved without a process group or a GPU: world size (WORLD_SIZE, as torchrun
    sets it), batch geometry, token budget against the data on disk, checkpoint size and disk."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    micro, accum = plan_batch(cfg, world)
    T, tokens = cfg.model.block_size, cfg.max_steps * cfg.total_batch_size
    out = [f"world size {world} | micro-batch {micro} (cap batch_size={cfg.batch_size}) x grad accum {accum} x {world} "
           f"x {T} = {micro * accum * world * T:,} tokens/step",
           f"{cfg.max_steps:,} steps = {tokens:,} training tokens ({cfg.model.input_embedding}, seed {cfg.seed})"]
    try:
        loader = ShardLoader(cfg.data_dir, "train", micro, T, 0, world, accum=accum)
        per_epoch = sum(loader.n_blocks)
        usable = per_epoch * cfg.total_batch_size
        out.append(f"data: {cfg.data_dir} holds {sum(loader.counts):,} train tokens in {len(loader.files)} shard(s), "
                   f"{per_epoch:,} whole steps ({usable:,} tokens; each shard's tail shorter than a step is skipped)")
        if per_epoch < cfg.max_steps:
            out.append(f"warning: a second pass over the data starts at step {per_epoch + 1}: prepare enough tokens "
                       f"(prepare_fineweb.py --for_config CONFIG) or lower max_steps")
    except UserError as e:
        out.append(f"data: not usable yet ({e})")
    n, ckpt = model_size(**dataclasses.asdict(cfg.model))
    out.append(f"model: {n:,} parameters; a checkpoint is about {ckpt / 1e9:.2f} GB, {cfg.keep_checkpoints} kept "
               f"(+1 while a new one is written): about {(cfg.keep_checkpoints + 1) * ckpt / 1e9:.1f} GB in "
               f"{cfg.out_dir}")
    return "\n".join(out)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    plan_only = "--dry_run" in argv
    argv = [a for a in argv if a not in ("--debug", "--dry_run")]
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        print("config keys (--key=value), with their defaults:")
        for k, v in TrainConfig().to_dict().items():
            print(f"  {k} = {v!r}")
        return
    try:
        if plan_only:
            print(dry_run(load_config(argv)))
            return
        train(load_config(argv))
    except UserError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
