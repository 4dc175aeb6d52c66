"""Train a GPT-2 with any input-embedding arm. One loop for one CPU, one GPU, 8 GPUs or many nodes.

    python train.py configs/smoke.py --input_embedding=kronecker
    torchrun --standalone --nproc_per_node=8 train.py configs/gpt2_124m.py --input_embedding=kronecker --seed=1337

Re-running the same command on an out_dir that holds a checkpoint resumes from it (raise --max_steps to extend).
Outputs in out_dir: config.json, metrics.jsonl (one JSON object per event), ckpt_<step>.pt (last few kept),
wandb/ when wandb_mode is not 'disabled'.
"""
import dataclasses
import difflib
import json
import math
import os
import random
import runpy
import secrets
import signal
import subprocess
import sys
import time
import typing
from contextlib import nullcontext
from dataclasses import dataclass, asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from data import DataError, ShardLoader, val_batches
from model import ARMS, GPT, GPTConfig, KRON_MODES
from tokenizer import N_VOCAB, RANKS_SHA256, TokenizerFileError

ROOT = Path(__file__).resolve().parent


@dataclass
class TrainConfig:
    # data and output
    data_dir: str = "data/sample"
    out_dir: str = "runs/default"
    # model (the arm and the GPT-2 shape)
    input_embedding: str = "bpe_tied"
    kron_pos_dim: int = 16
    kron_mode: str = "sparse"
    fused_head: bool = True  # chunked head + cross-entropy (false: plain logits, for checking)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    vocab_size: int = 50304
    bias: bool = True
    dropout: float = 0.0
    # batch: total_batch_size tokens per optimizer step = batch_size * block_size * world * grad_accum
    batch_size: int = 16
    block_size: int = 1024
    total_batch_size: int = 524288
    shuffle: bool = True  # the seed also picks the order of training windows (per epoch, same for every arm)
    # optimizer and schedule (linear warmup, cosine to min_lr at lr_decay_steps, then flat)
    learning_rate: float = 6e-4
    min_lr: float = 6e-5
    warmup_steps: int = 715
    max_steps: int = 4768
    lr_decay_steps: int = 0  # 0 = max_steps
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    nonfinite: str = "stop"  # 'stop' the run on a non-finite loss/grad norm, or 'skip' that step (counted)
    # evaluation, logging, checkpoints
    eval_interval: int = 250
    val_tokens: int = 10485760
    log_interval: int = 10
    norm_interval: int = 50
    ckpt_interval: int = 500
    keep_checkpoints: int = 3
    progress: bool = True  # tqdm bar on rank 0
    seed: int = 1337
    # runtime
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bf16 autocast where the GPU has bf16, else fp32) | float32 | bfloat16
    compile: str = "auto"  # auto (on for CUDA) | true | false
    # wandb
    wandb_mode: str = "disabled"  # disabled | offline | online
    wandb_project: str = "nanokron"
    wandb_run_name: str = ""  # default <arm>_s<seed>
    wandb_group: str = ""  # experiment name

    def model_config(self) -> GPTConfig:
        """The GPTConfig fields, taken from this config (they share names)."""
        return GPTConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(GPTConfig)})


CHOICES = {"input_embedding": ARMS, "kron_mode": KRON_MODES, "nonfinite": ("stop", "skip"),
           "dtype": ("auto", "float32", "bfloat16"), "compile": ("auto", "true", "false"),
           "wandb_mode": ("disabled", "offline", "online")}
# what a checkpoint must agree on to be resumed
SHAPE_KEYS = ("input_embedding", "kron_pos_dim", "vocab_size", "n_layer", "n_head", "n_embd", "block_size", "bias")


class UserError(RuntimeError):
    """A mistake in the command, config or files: printed as one line, exit code 2."""


# ----------------------------------------------------------------------------------------------------------------
# config: file + --key=value overrides, typed


def _closest(key, names):
    match = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


def _parse_value(name, raw, typ):
    if typ is bool:
        low = str(raw).lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise UserError(f"bad value {raw!r} for {name}: expected true or false")
    try:
        if typ is int:
            f = float(raw)  # allow 1e6 / 2.5e9 but not 1.5
            if f != int(f):
                raise ValueError
            return int(f)
        return typ(raw)
    except (TypeError, ValueError):
        raise UserError(f"bad value {raw!r} for {name}: expected {typ.__name__}") from None


def read_config_file(path: Path, fields, depth=0) -> dict:
    """The `key = value` lines of a config file. `base = "other.py"` (relative to the file) loads that file first,
    so a config can restate only what differs from a recipe."""
    if not path.is_file():
        known = sorted(p.name for p in (ROOT / "configs").glob("*.py"))
        raise UserError(f"config file {path} not found; available in configs/: {', '.join(known)}")
    own = {k: v for k, v in runpy.run_path(str(path)).items()
           if not (k.startswith("_") or callable(v) or type(v).__name__ == "module")}
    values = {}
    if "base" in own:
        if depth > 8:
            raise UserError(f"config {path}: 'base' chain too deep (a cycle?)")
        values = read_config_file(path.parent / own.pop("base"), fields, depth + 1)
    for k, v in own.items():
        if k not in fields:
            raise UserError(f"unknown config key '{k}' in {path}{_closest(k, fields)}")
        values[k] = v
    return values


def load_config(argv) -> TrainConfig:
    """`CONFIG_FILE [--key=value ...]` (a config file is optional) -> a validated TrainConfig."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    types = typing.get_type_hints(TrainConfig)
    args = list(argv)
    values = read_config_file(Path(args.pop(0)), fields) if args and not args[0].startswith("--") else {}
    for a in args:
        if not a.startswith("--") or "=" not in a:
            raise UserError(f"bad argument {a!r}: overrides are --key=value (e.g. --max_steps=100)")
        k, v = a[2:].split("=", 1)
        if k not in fields:
            raise UserError(f"unknown config key '{k}'{_closest(k, fields)}")
        values[k] = _parse_value(k, v, types[k])
    for k, v in values.items():  # values from config files are Python literals: check their types too
        typ = types[k]
        if typ is float and isinstance(v, int) and not isinstance(v, bool):
            values[k] = float(v)
        elif typ is int and isinstance(v, float) and v == int(v):
            values[k] = int(v)
        elif not isinstance(values[k], typ) or (typ is int and isinstance(v, bool)):
            raise UserError(f"bad value {v!r} for {k}: expected {typ.__name__}")
        if k == "dtype" and values[k] == "float16":
            raise UserError("dtype=float16 is not supported: without loss scaling small gradients underflow; use "
                            "bfloat16 (A100/H100/RTX 30xx and newer) or float32 (V100, T4)")
        if k in CHOICES and values[k] not in CHOICES[k]:
            raise UserError(f"bad value {v!r} for {k}: choose one of {', '.join(CHOICES[k])}")
    cfg = TrainConfig(**values)
    for k in ("batch_size", "block_size", "total_batch_size", "max_steps", "n_layer", "n_head", "n_embd",
              "eval_interval", "log_interval", "norm_interval", "ckpt_interval", "keep_checkpoints", "kron_pos_dim"):
        if getattr(cfg, k) < 1:
            raise UserError(f"bad value {getattr(cfg, k)} for {k}: must be >= 1")
    if cfg.n_embd % cfg.n_head:
        raise UserError(f"n_embd={cfg.n_embd} is not divisible by n_head={cfg.n_head}; change one of them")
    if cfg.vocab_size < N_VOCAB:
        raise UserError(f"vocab_size={cfg.vocab_size} is smaller than GPT-2's {N_VOCAB} tokens; use 50304")
    return cfg


# ----------------------------------------------------------------------------------------------------------------
# runtime: distributed setup, device, precision


@dataclass
class Runtime:
    rank: int
    local_rank: int
    world: int
    device: torch.device
    device_type: str
    ptdtype: torch.dtype
    compile: bool

    @property
    def master(self):
        return self.rank == 0

    @property
    def ddp(self):
        return self.world > 1

    def autocast(self):
        if self.ptdtype == torch.float32:
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.ptdtype)


def init_distributed(backend, rank, world):
    """Join the process group. Single-node torchrun restarts (--max-restarts) reuse the launcher's store, whose
    keys still name the dead workers' addresses: gloo then times out connecting to them. Namespacing the keys
    by restart attempt makes a restarted group find only its own members. (Multi-node: per-node restart counts
    can differ, so the plain env:// path is used; recover there by resubmitting -- auto-resume does the rest.)"""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    single_node = os.environ.get("LOCAL_WORLD_SIZE") == str(world)
    if attempt is None or not single_node:
        dist.init_process_group(backend=backend)
        return
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=rank == 0 and not agent_store)
    dist.init_process_group(backend=backend, store=dist.PrefixStore(f"nanokron/attempt{attempt}", store),
                            rank=rank, world_size=world)


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """torchrun sets RANK/WORLD_SIZE: then join the process group (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    want = cfg.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={cfg.device} but CUDA is not available here; use --device=cpu")
    if want == "cuda":
        want = f"cuda:{local_rank}"
    device = torch.device(want)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
    if world > 1 and not dist.is_initialized():
        init_distributed("nccl" if device.type == "cuda" else "gloo", rank, world)
    dtype = cfg.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    comp = cfg.compile == "true" or (cfg.compile == "auto" and device.type == "cuda")
    return Runtime(rank, local_rank, world, device, device.type, getattr(torch, dtype), comp)


# ----------------------------------------------------------------------------------------------------------------
# the pieces of a step (bench/train_step.py uses these too)


def get_lr(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to learning_rate, cosine decay to min_lr at lr_decay_steps, then min_lr."""
    decay_steps = cfg.lr_decay_steps or cfg.max_steps
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    if step >= decay_steps:
        return cfg.min_lr
    ratio = (step - cfg.warmup_steps) / max(1, decay_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


def grad_accum_steps(cfg: TrainConfig, world: int) -> int:
    per_micro = cfg.batch_size * cfg.block_size * world
    if cfg.total_batch_size % per_micro:
        raise UserError(f"total_batch_size={cfg.total_batch_size} is not divisible by batch_size x block_size x "
                        f"world = {cfg.batch_size} x {cfg.block_size} x {world} = {per_micro}; make it a multiple")
    return cfg.total_batch_size // per_micro


def build_model(cfg: TrainConfig, rt: Runtime):
    """(raw_model, model): raw for checkpoints/eval helpers, model compiled and DDP-wrapped for training."""
    torch.manual_seed(cfg.seed)  # identical init on every rank
    raw = GPT(cfg.model_config()).to(rt.device)
    model = torch.compile(raw) if rt.compile else raw  # compile first, then wrap in DDP
    if rt.ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        # buffers (the codec's byte table, cached codec) are deterministic constants: never re-broadcast them
        model = DDP(model, device_ids=[rt.local_rank] if rt.device_type == "cuda" else None,
                    broadcast_buffers=False, gradient_as_bucket_view=True)
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
                loss = model(x, y)[1]  # never keep the logits alive into the next micro-batch
            (loss / n).backward()
        loss_sum += loss.detach()
    return loss_sum / n


def optimizer_step(raw_model, optimizer, lr: float, grad_clip: float, loss):
    """Clip, read loss and grad norm in one host sync, step only if both are finite.
    Returns (loss, grad_norm, finite) as Python numbers."""
    norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    loss_f, norm_f = torch.stack([loss.detach().float(), norm.float()]).tolist()
    finite = math.isfinite(loss_f) and math.isfinite(norm_f)
    if finite:
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_f, norm_f, finite


@torch.no_grad()
def evaluate(model, loader, steps, rt: Runtime) -> float:
    """Mean val loss over the fixed val windows, averaged over ranks."""
    model.eval()
    loader.reset()
    total = torch.zeros((), device=rt.device)
    for _ in range(steps):
        x, y = loader.next_batch()
        with rt.autocast():
            loss = model(to_device(x, rt), to_device(y, rt))[1]
        total += loss.float()
    total /= steps
    if rt.ddp:
        dist.all_reduce(total, op=dist.ReduceOp.AVG if rt.device_type == "cuda" else dist.ReduceOp.SUM)
        if rt.device_type != "cuda":
            total /= rt.world  # gloo has no AVG
    model.train()
    return total.item()


# bf16 dense tensor-core peak per device (vendor datasheets, no sparsity), for MFU. First match wins, so the more
# specific names come first ("H100 NVL" before "H100", "L40S" before "L40").
PEAK_FLOPS = [("H200", 989e12), ("H100 NVL", 835e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("GH200", 989e12),
              ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12),
              ("A10G", 70e12), ("A10", 125e12), ("RTX 6000 Ada", 364e12), ("RTX A6000", 155e12),
              ("V100", 125e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12), ("MI300X", 1307e12)]


def peak_flops(device: torch.device):
    """Peak bf16 FLOP/s of this device, or None on CPU or an unknown GPU (then no MFU is reported)."""
    return peak_flops_entry(device)[1]


def peak_flops_entry(device: torch.device):
    """(table entry, peak FLOP/s) for this device, or (None, None)."""
    if device.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name(device)
    return next(((key, p) for key, p in PEAK_FLOPS if key in name), (None, None))


def param_spread(raw: GPT) -> float:
    """max - min over ranks of a checksum of all parameters (0.0 when DDP kept them identical)."""
    with torch.no_grad():
        s = torch.stack([sum(p.double().sum() for p in raw.parameters()),
                         sum((p.double() ** 2).sum() for p in raw.parameters())])
    gathered = [torch.zeros_like(s) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, s)
    g = torch.stack(gathered)
    return (g.max(0).values - g.min(0).values).max().item()


# ----------------------------------------------------------------------------------------------------------------
# checkpoints


class CheckpointError(UserError):
    pass


def list_checkpoints(out_dir) -> list:
    return sorted(Path(out_dir).glob("ckpt_*.pt"), key=lambda p: int(p.stem.split("_")[1]))


def save_checkpoint(path, state: dict):
    """Atomic: write a temp file, fsync, rename, fsync the folder. A kill at any moment leaves either the old
    set of checkpoints or the new one, never a half file under a checkpoint name."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_checkpoint(path, map_location="cpu") -> dict:
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
        if not isinstance(ckpt, dict) or "model" not in ckpt or "step" not in ckpt:
            raise ValueError("not a nanokron checkpoint")
        return ckpt
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {str(e)[:80]}); "
                              f"delete it to resume from an earlier one") from None


def latest_checkpoint(out_dir, log=print):
    """The newest readable checkpoint; a corrupt newest one is skipped with a warning (kept on disk).
    If checkpoints exist but none is readable, that is an error: starting over would overwrite the run."""
    paths = list_checkpoints(out_dir)
    for path in reversed(paths):
        try:
            return path, read_checkpoint(path)
        except CheckpointError as e:
            log(f"warning: {e}; falling back to the previous checkpoint")
    if paths:
        raise CheckpointError(f"no readable checkpoint in {out_dir} ({len(paths)} corrupt: "
                              f"{', '.join(p.name for p in paths)}); move them away to start the run over")
    return None, None


def load_checkpoint(path, device="cpu", kron_mode=None):
    """Rebuild the right arm from a checkpoint alone. Returns (model in eval mode, checkpoint dict)."""
    ckpt = read_checkpoint(path)
    args = dict(ckpt["model_args"])
    if kron_mode:
        args["kron_mode"] = kron_mode
    model = GPT(GPTConfig(**args))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def check_resume_compatible(ckpt, cfg: TrainConfig, path):
    saved = ckpt["config"]
    diff = [f"{k}: checkpoint {saved.get(k)!r} vs now {getattr(cfg, k)!r}" for k in SHAPE_KEYS
            if saved.get(k) != getattr(cfg, k)]
    if diff:
        raise CheckpointError(f"cannot resume {path} with another model ({'; '.join(diff)}); use a new out_dir "
                              f"or the original settings")
    if ckpt.get("tokenizer_sha256") != RANKS_SHA256:
        raise CheckpointError(f"checkpoint {path} was trained with another tokenizer; use a new out_dir")


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except Exception:
        return None


# ----------------------------------------------------------------------------------------------------------------
# the training loop


def _parse_row(line):
    """One metrics.jsonl row, or None for a blank or torn line (a kill -9 in the middle of a write)."""
    try:
        row = json.loads(line)
        return row if isinstance(row, dict) and "step" in row else None
    except json.JSONDecodeError:
        return None


class Metrics:
    """metrics.jsonl (rank 0) + wandb with the same keys."""

    def __init__(self, out_dir, cfg, master, resume_step):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.master, self.wandb = master, None
        if not master:
            return
        if resume_step is not None and self.path.exists():  # drop events after the checkpoint we resume from
            rows = [r for r in map(_parse_row, self.path.read_text().splitlines()) if r and r["step"] <= resume_step]
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
            os.replace(tmp, self.path)
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        if cfg.wandb_mode != "disabled":
            import wandb
            id_file = Path(out_dir) / "wandb_id.txt"
            run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
            id_file.write_text(run_id)
            self.wandb = wandb.init(project=cfg.wandb_project, group=cfg.wandb_group or None,
                                    name=cfg.wandb_run_name or f"{cfg.input_embedding}_s{cfg.seed}",
                                    mode=cfg.wandb_mode, dir=str(out_dir), config=asdict(cfg), id=run_id,
                                    resume="allow")

    def log(self, step, **values):
        if not self.master:
            return
        row = {"step": step, **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self):
        if self.wandb is not None:
            self.wandb.finish()


class StopFlag:
    """SIGTERM / SIGINT (Slurm preemption, Ctrl-C): finish the step, checkpoint, exit cleanly."""

    def __init__(self):
        self.signum = None
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the checkpoint
        self.signum = signum

    def vote(self, device) -> torch.Tensor:
        """1.0 if this rank was signalled: summed over ranks together with the loss (one collective per step).
        One device tensor, filled in place: torch.tensor(v, device=cuda) would be a blocking host-to-device copy
        that waits for the whole backward before the all-reduce is even queued."""
        if getattr(self, "_flag", None) is None or self._flag.device != torch.device(device):
            self._flag = torch.zeros((), device=device)
        return self._flag.fill_(1.0 if self.signum else 0.0)


def prepare_out_dir(out_dir):
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"out_dir {out} is not writable ({e.strerror or e}); pass a writable --out_dir") from None


def train(cfg: TrainConfig):
    rt = setup_runtime(cfg)
    stop = StopFlag()
    out_dir = Path(cfg.out_dir)
    log = (lambda *a: print(*a, flush=True)) if rt.master else (lambda *a: None)
    accum = grad_accum_steps(cfg, rt.world)
    if rt.master:
        prepare_out_dir(out_dir)
        for stale in out_dir.glob("ckpt_*.pt.tmp"):  # a save interrupted by kill -9: never a checkpoint
            stale.unlink()

    # data first: bad data must fail before anything is written
    loader = ShardLoader(cfg.data_dir, "train", cfg.batch_size, cfg.block_size, rt.rank, rt.world,
                         shuffle=cfg.shuffle, seed=cfg.seed, vocab_size=cfg.vocab_size, accum=accum)
    val_loader, val_steps = val_batches(cfg.data_dir, cfg.batch_size, cfg.block_size, rt.rank, rt.world,
                                        cfg.val_tokens, vocab_size=cfg.vocab_size)

    ckpt_path, ckpt = latest_checkpoint(out_dir, log=log) if out_dir.is_dir() else (None, None)
    if ckpt is not None:
        check_resume_compatible(ckpt, cfg, ckpt_path)
    raw, model = build_model(cfg, rt)
    optimizer = raw.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2),
                                         rt.device_type)
    step, skipped = 0, 0
    if ckpt is not None:
        raw.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, skipped = ckpt["step"], ckpt.get("skipped_steps", 0)
        if len(ckpt["loader"]) != rt.world:
            raise CheckpointError(f"checkpoint {ckpt_path} was written by {len(ckpt['loader'])} ranks, this run "
                                  f"has {rt.world}; resume with --nproc_per_node={len(ckpt['loader'])}")
        loader.load_state_dict(ckpt["loader"][rt.rank])
        rng = ckpt["rng"][rt.rank]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if rng.get("cuda") is not None and rt.device_type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], rt.device)
        log(f"resumed from {ckpt_path} at step {step}")
    else:
        torch.manual_seed(cfg.seed + rt.rank)  # dropout differs per rank; init was identical
    del ckpt

    if rt.master:
        (out_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    metrics = Metrics(out_dir, cfg, rt.master, step if ckpt_path else None)
    n_params, n_input = raw.num_params(), raw.input_params()
    flops_per_token = raw.estimate_flops_per_token(cfg.batch_size * cfg.block_size)
    peak_key, peak = peak_flops_entry(rt.device)
    log(f"{cfg.input_embedding}: {n_params:,} params ({n_input:,} input-side) | {rt.world} rank(s) on "
        f"{rt.device} | {str(rt.ptdtype).replace('torch.', '')} | compile {rt.compile} | grad accum {accum} | "
        f"{cfg.total_batch_size:,} tokens/step")
    if rt.device_type == "cuda":
        log(f"MFU against {peak / 1e12:.0f} TFLOP/s bf16 (table entry '{peak_key}')" if peak else
            f"no peak FLOP/s known for {torch.cuda.get_device_name(rt.device)}: MFU not reported")
    if step == 0:
        metrics.log(0, params=n_params, input_params=n_input, tokens=0)

    def save(step, loader_state):
        loaders = [loader_state]
        rngs = [{"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                 "cuda": torch.cuda.get_rng_state(rt.device) if rt.device_type == "cuda" else None}]
        if rt.ddp:
            loaders, rngs = [None] * rt.world, [None] * rt.world
            dist.all_gather_object(loaders, loader_state)
            dist.all_gather_object(rngs, {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                                          "python": random.getstate(), "cuda": torch.cuda.get_rng_state(rt.device)
                                          if rt.device_type == "cuda" else None})
        if rt.master:
            state = {"model": raw.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                     "skipped_steps": skipped, "model_args": asdict(raw.config), "config": asdict(cfg),
                     "loader": loaders, "rng": rngs, "tokenizer_sha256": RANKS_SHA256, "git_commit": git_commit(),
                     "world_size": rt.world}
            save_checkpoint(out_dir / f"ckpt_{step:07d}.pt", state)
            for old in list_checkpoints(out_dir)[:-cfg.keep_checkpoints]:
                old.unlink()
        if rt.ddp:
            dist.barrier()

    def eval_and_norms(step, final=False):
        if step % cfg.eval_interval == 0 or final:
            val = evaluate(model, val_loader, val_steps, rt)
            metrics.log(step, val_loss=val, tokens=step * cfg.total_batch_size)
            log(f"step {step}: val loss {val:.4f}")
        if step % cfg.norm_interval == 0 or final:
            metrics.log(step, **raw.embedding_norms())

    if step >= cfg.max_steps:
        log(f"{out_dir} already finished at step {step} (max_steps={cfg.max_steps}); raise --max_steps to extend")
        metrics.close()
        return
    if step == 0:
        eval_and_norms(0)

    from tqdm import tqdm
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not (rt.master and cfg.progress), unit="step",
               dynamic_ncols=True, mininterval=1.0)
    say = bar.write if (rt.master and cfg.progress) else log
    model.train()
    t_last = time.time()
    interrupted = False
    def fetch():  # one optimizer step's micro-batches, copied to the device without blocking
        return [tuple(to_device(t, rt) for t in loader.next_batch()) for _ in range(accum)]

    batches = fetch()
    while step < cfg.max_steps:
        lr = get_lr(step, cfg)
        loss = forward_backward(model, batches, rt)
        # Prefetch the next step's data while the GPU is still busy with this one; the checkpoint keeps the
        # position *before* the prefetch, so a resume re-reads exactly these windows.
        loader_state = loader.state_dict()
        batches = fetch() if step + 1 < cfg.max_steps else None
        votes = None
        if rt.ddp:  # mean loss and "was any rank signalled" in one all-reduce
            summed = torch.stack([loss, stop.vote(loss.device)])
            dist.all_reduce(summed, op=dist.ReduceOp.SUM)
            loss, votes = summed[0] / rt.world, summed[1]
        loss_f, grad_norm, finite = optimizer_step(raw, optimizer, lr, cfg.grad_clip, loss)
        interrupted = bool(votes.item()) if votes is not None else stop.signum is not None  # read after the sync
        step += 1
        if not finite:
            if cfg.nonfinite == "stop":
                bar.close()
                last = list_checkpoints(out_dir)
                raise UserError(f"non-finite loss or gradient norm at step {step} (loss {loss_f}, grad norm "
                                f"{grad_norm}); stopped without saving. Last good checkpoint: "
                                f"{last[-1] if last else 'none'}. Lower learning_rate, or pass --nonfinite=skip")
            skipped += 1
            metrics.log(step, skipped_steps=skipped)
            say(f"step {step}: non-finite loss/grad norm, step skipped ({skipped} so far)")
        now = time.time()
        dt, t_last = now - t_last, now
        tok_s = cfg.total_batch_size / dt
        mfu = flops_per_token * tok_s / (peak * rt.world) if peak else None
        if finite:
            metrics.log(step, train_loss=loss_f, lr=lr, grad_norm=grad_norm, tokens=step * cfg.total_batch_size,
                        tok_per_s=tok_s, mfu=mfu, ms_per_step=dt * 1000)
        if step % cfg.log_interval == 0 or step == 1:
            mfu_s = f" | mfu {100 * mfu:.1f}%" if mfu is not None else ""
            say(f"step {step}/{cfg.max_steps} | loss {loss_f:.4f} | lr {lr:.2e} | grad norm {grad_norm:.3f} | "
                f"{tok_s:,.0f} tok/s{mfu_s} | {dt * 1000:.0f} ms")
        bar.update(1)
        final = step == cfg.max_steps
        eval_and_norms(step, final)
        if step % cfg.ckpt_interval == 0 or final or interrupted:
            save(step, loader_state)
        if interrupted:
            say(f"signal {stop.signum}: checkpoint written at step {step}; rerun the same command to resume")
            break
        t_last = time.time()  # eval / checkpoint time is not step time
    bar.close()
    if rt.ddp:  # cheap guard: every rank must hold the same weights
        spread = param_spread(raw)
        metrics.log(step, ddp_param_spread=spread)
        if spread != 0:
            say(f"warning: ranks hold different parameters (spread {spread:.3g})")
    metrics.close()
    if not interrupted:
        log(f"done: {step} steps, checkpoint in {out_dir}")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        print("config keys (--key=value):")
        for f in dataclasses.fields(TrainConfig):
            print(f"  {f.name} = {f.default!r}")
        return
    try:
        cfg = load_config(argv)
        train(cfg)
    except (UserError, DataError, TokenizerFileError, ValueError) as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
