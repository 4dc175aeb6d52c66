"""Checkpoints: save / read / verify / find / rotate, loading a model for inference, RNG state, and opening a run
folder (one writer, nothing of anyone else's overwritten).

A checkpoint (ckpt_<step>.pt) holds everything a run needs to go on exactly where it stopped: model and optimizer
state, the step, the flat config, every rank's data position and RNG states, and the tokenizer's and data's
identities. Inference (sample.py, probes, export) needs only this file and model.py.

A checkpoint is data, never code: it holds only tensors and plain values (numbers, strings, lists, dicts), and it is
read with torch.load(weights_only=True), which refuses anything else, so a planted pickle payload is never run.
Before a checkpoint is trusted its zip records are checked against their CRC-32 (a flipped bit is caught) and the
step in its file name must be the step inside. Health decides which checkpoints count as good: training writes
them only after healthy steps.
"""
import io
import math
import os
import pickle
import random
import statistics
import zipfile
from collections import deque
from pathlib import Path

import numpy as np
import torch

from config import resume_mismatches
from model import GPT, GPTConfig
from tokenizer import RANKS_SHA256
from util import FolderLock, UserError, atomic_write, warn


class CheckpointError(UserError):
    """A checkpoint or run folder that cannot be used as asked; the message says what to do."""


class UntrustedCheckpoint(CheckpointError):
    """A checkpoint file that must not be used: damaged, misnamed, or holding objects other than data. A run that
    owns the folder moves it aside under `suffix`, so it is kept for inspection and never counted again."""

    def __init__(self, msg, suffix=".corrupt"):
        super().__init__(msg)
        self.suffix = suffix


# -- writing -------------------------------------------------------------------------------------------------------

def save_checkpoint(path, state: dict) -> None:
    """Serialise into memory first, then write the bytes atomically: a full disk is then an OSError from our own
    write (one error line, the previous checkpoints intact), never an error from inside torch's zip writer."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, lambda f: f.write(buf.getbuffer()))


# -- finding and reading -------------------------------------------------------------------------------------------

def step_of(path) -> int:
    return int(Path(path).name[len("ckpt_"):-len(".pt")])


def list_checkpoints(out_dir) -> list:
    """ckpt_<step>.pt files of a run folder, oldest first (moved-aside .corrupt/.suspect files are not listed)."""
    paths = [p for p in Path(out_dir).glob("ckpt_*.pt") if p.name[5:-3].isdigit()]
    return sorted(paths, key=step_of)


_verified = {}  # (path, size, mtime) of checkpoints whose CRCs this process has checked: rotation reads each once


def verify_file(path) -> None:
    """Check every zip record of a checkpoint against its CRC-32 (reads the whole file: about 1 s per GB)."""
    st = Path(path).stat()
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key in _verified:
        return
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as e:
        raise UntrustedCheckpoint(f"checkpoint {path} is not a complete checkpoint file ({type(e).__name__}: "
                                  f"{str(e)[:80]})") from None
    if bad is not None:
        raise UntrustedCheckpoint(f"checkpoint {path} is damaged: record {bad} fails its CRC check (a changed or "
                                  f"flipped byte)")
    _verified[key] = True


def read_checkpoint(path, map_location="cpu", mmap=False) -> dict:
    """A verified checkpoint's contents. Raises UntrustedCheckpoint for a damaged, misnamed or unsafe file."""
    verify_file(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise UntrustedCheckpoint(f"checkpoint {path} holds pickled objects other than tensors and plain data "
                                  f"({str(e).splitlines()[-1][:100] if str(e) else 'refused'}); loading it could "
                                  f"run code, so nanokron refuses it (a checkpoint written before checkpoints were "
                                  f"data-only cannot be resumed either)", suffix=".unsafe") from None
    except Exception as e:
        raise UntrustedCheckpoint(f"checkpoint {path} is unreadable ({type(e).__name__}: {str(e)[:80]})") from None
    missing = [k for k in ("model", "step", "model_args") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a nanokron checkpoint (no {', '.join(missing)}); pass a ckpt_*.pt "
                              f"written by train.py")
    name = Path(path).name
    if name.startswith("ckpt_") and name[5:-3].isdigit() and step_of(path) != ckpt["step"]:
        raise UntrustedCheckpoint(f"checkpoint {path} holds step {ckpt['step']} but its name says step "
                                  f"{step_of(path)}: a renamed or copied-in file", suffix=".misnamed")
    return ckpt


def move_aside(path, why: str, suffix: str) -> Path:
    target = path.with_name(path.name + suffix)
    os.replace(path, target)
    warn(f"{path.name} {why}: moved aside to {target.name}")
    return target


def latest_checkpoint(out_dir, move_unreadable=False):
    """(path, checkpoint) of the newest trustworthy checkpoint, or (None, None) if the folder has none.

    A damaged, misnamed or unsafe newer one is skipped with a warning; with move_unreadable (the run that owns the
    folder) it is renamed (*.corrupt, *.misnamed, *.unsafe) so that it can never count as the newest again. If
    checkpoints exist but none can be used, that is an error: starting over would overwrite the run."""
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
                warn(str(e))
                move_aside(p, "cannot be used", getattr(e, "suffix", ".corrupt"))
            else:
                warn(f"{e}; using an earlier checkpoint")
        return path, ckpt
    if paths:
        raise CheckpointError(f"no usable checkpoint in {out_dir} ({'; '.join(str(e) for _, e in bad)[:300]}); "
                              f"move them away to start the run over")
    return None, None


def rotate(out_dir, keep: int, protect=None) -> None:
    """Keep the `keep` newest trustworthy checkpoints, and the one named `protect` (the newest known to precede a
    healthy step) whatever its age. Untrustworthy ones are moved aside, never counted, never kept as 'newest'."""
    readable = []
    for path in reversed(list_checkpoints(out_dir)):
        try:
            read_checkpoint(path, mmap=True)
            readable.append(path)
        except CheckpointError as e:
            warn(str(e))
            move_aside(path, "cannot be used", getattr(e, "suffix", ".corrupt"))
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

def same_data(saved, now) -> bool:
    """Do two data identities describe the same shards? (checkpoints of older versions hashed only each shard's
    first MiB, 16 hex digits: for those, names and token counts are compared)"""
    if saved is None:
        return True
    if any(len(s) == 3 and len(str(s[2])) == 16 for s in saved):
        return [s[:2] for s in saved] == [n[:2] for n in now]
    return saved == now


def check_resume(ckpt, path, cfg, data_id, world):
    """Refuse a checkpoint this run cannot continue: one line naming every field that differs."""
    diff = resume_mismatches(ckpt.get("config", {}), cfg)
    if diff:
        raise CheckpointError(f"cannot resume {path} with other settings ({'; '.join(diff)}); use the original "
                              f"values or a new out_dir (fields that may change on resume: see config.RESUMABLE)")
    if ckpt.get("tokenizer_sha256") != RANKS_SHA256:
        raise CheckpointError(f"checkpoint {path} was trained with another tokenizer; use a new out_dir")
    if not same_data(ckpt.get("data_identity"), data_id):
        raise CheckpointError(f"the shards in {cfg.data_dir} are not the ones {path} was trained on; point "
                              f"--data_dir at the original data or use a new out_dir")
    if len(ckpt["loader"]) != world:
        raise CheckpointError(f"checkpoint {path} was written by {len(ckpt['loader'])} ranks, this run has {world}; "
                              f"resume with --nproc_per_node={len(ckpt['loader'])}")


# -- RNG state (as tensors and plain values, so a checkpoint stays data) ---------------------------------------------

def capture_rng(device: torch.device) -> dict:
    np_state = np.random.get_state(legacy=False)
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": {**np_state, "state": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                                            "pos": int(np_state["state"]["pos"])}},
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def restore_rng(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state({**np_state, "state": {"key": np_state["state"]["key"].numpy().astype(np.uint32),
                                               "pos": np_state["state"]["pos"]}})
    random.setstate(state["python"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


# -- opening a run folder -------------------------------------------------------------------------------------------

RUN_FILES = ("config.json", "metrics.jsonl", "wandb_id.txt", "wandb")  # what a fresh start writes or replaces


def open_run_dir(out_dir: Path, force=False) -> FolderLock:
    """Create out_dir, take its lock (one writer per run folder), clear temp files of a killed save.

    A folder that a training run has used holds `.lock` (created here, never committed or exported). A folder
    without it that holds files a fresh start would overwrite -- a copy of a committed run, a Hugging Face export --
    is someone else's: refused unless `force`."""
    if str(out_dir) in ("", "."):
        raise CheckpointError("out_dir is empty: pass a folder for the run, e.g. --out_dir=runs/my_run")
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"out_dir {out_dir} is a file; pass a folder")
    if out_dir.is_dir() and not (out_dir / ".lock").exists() and not force:
        theirs = [n for n in RUN_FILES if (out_dir / n).exists()]
        if theirs:
            raise CheckpointError(f"out_dir {out_dir} holds {', '.join(theirs)} but no run of this repo ever used "
                                  f"it; a fresh start would overwrite them. Pass another --out_dir, or --force=true "
                                  f"to start over there")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"out_dir {out_dir} cannot be created ({e.strerror or e}); pass a writable "
                              f"--out_dir") from None
    if not os.access(out_dir, os.W_OK):
        raise CheckpointError(f"out_dir {out_dir} is not writable; pass a writable --out_dir")
    lock = FolderLock(out_dir, "training run")
    for stale in out_dir.glob(".*.tmp"):  # atomic_write temp files; only the lock holder writes here: dead
        stale.unlink()
    return lock


# -- is training still sane? ------------------------------------------------------------------------------

class Health:
    """Is training still sane? A step is healthy when its loss and grad norm are finite, its loss is at most
    LOSS_MARGIN nats above where the run started (worse than the untrained model means divergence), and its grad
    norm is at most SPIKE x the median of the last healthy steps. Checkpoints are written only after healthy steps
    (a transient spike defers them). The loss of step t measures the weights after step t-1, so a checkpoint counts
    as *good* only once the step after it was healthy. MAX_BAD unhealthy steps in a row stop the run."""
    LOSS_MARGIN, SPIKE, MAX_BAD, WINDOW, MIN_HISTORY = 1.0, 20.0, 20, 50, 10

    def __init__(self, state=None, resumed_from=None):
        s = state or {}
        self.start_loss, self.bad_run = s.get("start_loss"), s.get("bad_run", 0)
        self.norms = deque(s.get("norms", []), maxlen=self.WINDOW)
        self.last_good = s.get("last_good")
        self.pending = resumed_from  # a checkpoint's name, saved but not yet followed by a healthy step

    def state(self):
        return {"start_loss": self.start_loss, "bad_run": self.bad_run, "norms": list(self.norms),
                "last_good": self.last_good}

    def check(self, loss, norm, finite, vocab_size) -> str | None:
        """None if the step is healthy, else what is wrong with it."""
        if self.start_loss is None and finite:
            self.start_loss = max(loss, math.log(vocab_size))
        median = statistics.median(self.norms) if len(self.norms) >= self.MIN_HISTORY else None
        if not finite:
            why = "non-finite loss or gradient norm"
        elif loss > self.start_loss + self.LOSS_MARGIN:
            why = f"loss {loss:.4g} above the starting {self.start_loss:.3f} + {self.LOSS_MARGIN}"
        elif median is not None and norm > self.SPIKE * median:
            why = f"grad norm {norm:.4g} > {self.SPIKE:g} x the recent median {median:.3g}"
        else:
            self.norms.append(norm)
            self.bad_run = 0
            if self.pending:
                self.last_good, self.pending = self.pending, None
            return None
        self.bad_run += 1
        self.pending = None  # the checkpoint before an unhealthy step is not known to be good, and never will be
        return why

    def saved(self, name):
        self.pending = name
