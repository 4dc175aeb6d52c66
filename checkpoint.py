"""Checkpoints: save / read / find / rotate, loading a model for inference, RNG state, and
the lock that makes a run folder single-writer.

A checkpoint (ckpt_<step>.pt) holds everything a run needs to go on exactly where it stopped: model and optimizer
state, the step, the flat config, every rank's data position and RNG states, and the tokenizer's and data's
identities. Inference (sample.py, probes, export) needs only this file and model.py.
"""
import errno
import os
import random
import socket
from pathlib import Path

import numpy as np
import torch

from config import resume_mismatches
from model import GPT, GPTConfig
from tokenizer import RANKS_SHA256
from util import UserError, atomic_write, warn


class CheckpointError(UserError):
    """A checkpoint or run folder that cannot be used as asked; the message says what to do."""


# -- writing -------------------------------------------------------------------------------------------------------

def save_checkpoint(path, state: dict) -> None:
    try:
        atomic_write(path, lambda f: torch.save(state, f))
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CheckpointError(f"no space left on the device writing {path}; the previous checkpoints are "
                                  f"intact -- free some space and rerun the same command to resume") from None
        raise


# -- finding and reading -------------------------------------------------------------------------------------------

def step_of(path) -> int:
    return int(Path(path).name[len("ckpt_"):-len(".pt")])


def list_checkpoints(out_dir) -> list:
    """ckpt_<step>.pt files of a run folder, oldest first (moved-aside .corrupt/.suspect files are not listed)."""
    paths = [p for p in Path(out_dir).glob("ckpt_*.pt") if p.name[5:-3].isdigit()]
    return sorted(paths, key=step_of)


def read_checkpoint(path, map_location="cpu", mmap=False) -> dict:
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {str(e)[:80]})") from None
    missing = [k for k in ("model", "step", "model_args") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a nanokron checkpoint (no {', '.join(missing)}); pass a ckpt_*.pt "
                              f"written by train.py")
    return ckpt


def is_readable(path) -> bool:
    """Does the checkpoint load? (memory-mapped: checks the file's structure without reading every tensor)"""
    try:
        read_checkpoint(path, mmap=True)
        return True
    except CheckpointError:
        return False


def move_aside(path, why: str, suffix: str) -> Path:
    target = path.with_name(path.name + suffix)
    os.replace(path, target)
    warn(f"{path.name} {why}: moved aside to {target.name}")
    return target


def latest_checkpoint(out_dir, move_unreadable=False):
    """(path, checkpoint) of the newest readable checkpoint, or (None, None) if the folder has none.

    An unreadable newer one is skipped with a warning; with move_unreadable (the run that owns the folder) it is
    renamed *.corrupt so that it can never count as the newest again. If checkpoints exist but none is readable,
    that is an error: starting over would overwrite the run."""
    paths = list_checkpoints(out_dir)
    bad = []
    for path in reversed(paths):
        try:
            ckpt = read_checkpoint(path)
        except CheckpointError as e:
            bad.append((path, e))
            continue
        for p, e in bad:
            if move_unreadable:
                move_aside(p, "is unreadable", ".corrupt")
            else:
                warn(f"{e}; using an earlier checkpoint")
        return path, ckpt
    if paths:
        raise CheckpointError(f"no readable checkpoint in {out_dir} ({len(paths)} corrupt: "
                              f"{', '.join(p.name for p in paths)}); move them away to start the run over")
    return None, None


def rotate(out_dir, keep: int, protect=None) -> None:
    """Keep the `keep` newest readable checkpoints, and the one named `protect` (the newest known to precede a
    healthy step) whatever its age. Unreadable ones are moved aside, never counted, never kept as 'newest'."""
    readable = []
    for path in reversed(list_checkpoints(out_dir)):
        if is_readable(path):
            readable.append(path)
        else:
            move_aside(path, "is unreadable", ".corrupt")
    for path in readable[keep:]:
        if path.name != protect:
            path.unlink()


def resolve_checkpoint(path) -> Path:
    """A checkpoint file, or a run folder (its newest readable checkpoint)."""
    path = Path(path)
    if path.is_dir():
        found, _ = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"no checkpoint (ckpt_*.pt) in {path}; train one with train.py first")
        return found
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a ckpt_*.pt file or a run folder")
    return path


def load_checkpoint(path, device="cpu"):
    """Rebuild the right arm from a checkpoint file or run folder alone: (model in eval mode, checkpoint dict)."""
    path = resolve_checkpoint(path)
    ckpt = read_checkpoint(path)
    try:
        model = GPT(GPTConfig(**ckpt["model_args"]))
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path} does not match this version's model ({str(e)[:120]})") from None
    return model.to(device).eval(), ckpt


# -- resuming ---------------------------------------------------------------------------------------------------------

def check_resume(ckpt, path, cfg, data_id, world):
    """Refuse a checkpoint this run cannot continue: one line naming every field that differs."""
    diff = resume_mismatches(ckpt.get("config", {}), cfg)
    if diff:
        raise CheckpointError(f"cannot resume {path} with other settings ({'; '.join(diff)}); use the original "
                              f"values or a new out_dir (fields that may change on resume: see config.RESUMABLE)")
    if ckpt.get("tokenizer_sha256") != RANKS_SHA256:
        raise CheckpointError(f"checkpoint {path} was trained with another tokenizer; use a new out_dir")
    if ckpt.get("data_identity") not in (None, data_id):
        raise CheckpointError(f"the shards in {cfg.data_dir} are not the ones {path} was trained on; point "
                              f"--data_dir at the original data or use a new out_dir")
    if len(ckpt["loader"]) != world:
        raise CheckpointError(f"checkpoint {path} was written by {len(ckpt['loader'])} ranks, this run has {world}; "
                              f"resume with --nproc_per_node={len(ckpt['loader'])}")


# -- RNG state -----------------------------------------------------------------------------------------------------

def capture_rng(device: torch.device) -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def restore_rng(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


# -- one writer per run folder -------------------------------------------------------------------------------------

class RunLock:
    """An exclusive lock on out_dir/.lock for the life of the run. It is an OS lock (flock): the kernel drops it
    when the process dies, so `kill -9` leaves no stale lock. On NFS it needs a lock manager (NFSv4 has one).
    Platforms without fcntl (Windows) run without it."""

    def __init__(self, out_dir):
        self.file = None
        try:
            import fcntl
        except ImportError:
            return
        f = open(Path(out_dir) / ".lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "an unknown process"
            f.close()
            raise CheckpointError(f"out_dir {out_dir} is in use by another training run ({holder}); wait for it "
                                  f"to finish, stop it, or pass another --out_dir") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on host {socket.gethostname()}")
        f.flush()
        self.file = f

    def release(self):
        if self.file is not None:
            self.file.close()  # closing the descriptor drops the flock
            self.file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def open_run_dir(out_dir: Path) -> RunLock:
    """Create out_dir, take its lock (one writer per run folder), clear temp files of a killed save."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(out_dir)
    except OSError as e:
        raise CheckpointError(f"out_dir {out_dir} is not writable ({e.strerror or e}); pass a writable --out_dir") \
            from None
    for stale in out_dir.glob(".*.tmp"):  # atomic_write temp files; only the lock holder writes here: dead
        stale.unlink()
    return lock
