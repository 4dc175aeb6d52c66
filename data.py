"""Token shards (llm.c / modded-nanogpt .bin format) and the DDP-aware, resumable loader.

Shard layout: a header of 256 little-endian int32 -- magic 20240520, version 1, token count, then zeros -- followed
by `count` uint16 GPT-2 token ids. Every document is preceded by <|endoftext|> (50256). This is the format of the
public pre-tokenized `finewebedu10B-gpt2` shards, which therefore load unchanged.
"""
import glob
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from util import UserError, atomic_write

MAGIC, VERSION, HEADER_INTS = 20240520, 1, 256
HEADER_BYTES = HEADER_INTS * 4
EOT, N_REAL = 50256, 50257  # GPT-2's <|endoftext|> and its number of real tokens (ids above are padding rows)


class DataError(UserError):
    """A problem with the data on disk; the message names the file and what to do."""


# -- shard files ---------------------------------------------------------------------------------------------------

def read_header(path) -> int:
    """Validate a shard's header and size; return its token count."""
    path = Path(path)
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise DataError(f"shard {path} is truncated ({size} bytes, shorter than its 1024-byte header); "
                        f"delete it and rerun prepare_fineweb.py")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if header[0] != MAGIC:
        raise DataError(f"shard {path} has magic {header[0]}, expected {MAGIC}: not an llm.c-format token shard; "
                        f"regenerate it with prepare_fineweb.py")
    if header[1] != VERSION:
        raise DataError(f"shard {path} has version {header[1]}, expected {VERSION} (uint16 GPT-2 tokens); "
                        f"regenerate it with prepare_fineweb.py")
    count = int(header[2])
    if size != HEADER_BYTES + 2 * count:
        raise DataError(f"shard {path} is {size} bytes but its header says {count} tokens "
                        f"({HEADER_BYTES + 2 * count} bytes): truncated or corrupt; delete it and rerun "
                        f"prepare_fineweb.py")
    return count


def file_sha256(path) -> str:
    """sha256 of a whole file, read in 8 MiB pieces (hashlib releases the GIL: threads hash shards in parallel)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 23):
            h.update(chunk)
    return h.hexdigest()


def shard_is_valid(path, sha256=None) -> bool:
    """Header and size consistent, and (when a hash was recorded) the content unchanged."""
    try:
        read_header(path)
        return sha256 is None or file_sha256(path) == sha256
    except (DataError, OSError):
        return False


def check_tokens(path, tokens) -> None:
    """What a GPT-2 shard must hold: a document start first, real token ids only, and not the halves of 32-bit ids
    (uint32 tokens behind a header that counts them as twice as many uint16 ones: every second value is 0)."""
    if not len(tokens):
        return
    if int(tokens[0]) != EOT:
        raise DataError(f"shard {path} does not start with <|endoftext|> ({EOT}) but with {int(tokens[0])}: not a "
                        f"GPT-2 shard of this format (every document starts with it); regenerate it with "
                        f"prepare_fineweb.py")
    odd = np.asarray(tokens[1:1 << 17:2])
    if len(odd) >= 64 and not odd.any():
        raise DataError(f"shard {path}: every second token is 0, as when 32-bit token ids are read as 16-bit ones; "
                        f"regenerate it with prepare_fineweb.py (uint16 tokens)")
    top = int(tokens.max())
    if top >= N_REAL:
        raise DataError(f"shard {path} holds token id {top} >= {N_REAL} (GPT-2 has {N_REAL} tokens; higher ids are "
                        f"padding rows): made with another tokenizer; regenerate it with prepare_fineweb.py")


def load_tokens(path) -> np.ndarray:
    """Memory-map a shard's tokens (uint16) after validating its header."""
    count = read_header(path)
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(count,))


def write_shard(path, tokens) -> None:
    """Write a shard atomically: a crash never leaves a half shard under the real name."""
    tokens = np.asarray(tokens)
    if tokens.size and int(tokens.max()) >= 2 ** 16:
        raise ValueError("token id does not fit in uint16")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, VERSION, len(tokens))

    def write(f):
        f.write(header.tobytes())
        f.write(tokens.astype("<u2", copy=False).tobytes())
    atomic_write(path, write)


def read_meta(data_dir):
    """prepare_fineweb.py's meta.json of a data folder, or None (e.g. public pre-tokenized shards)."""
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
        assert isinstance(meta["shards"], list)
        return meta
    except (ValueError, KeyError, TypeError, AssertionError, UnicodeDecodeError):
        raise DataError(f"{path} is damaged (not the JSON prepare_fineweb.py writes); rerun prepare_fineweb.py on "
                        f"that folder, or delete meta.json to read every shard there") from None


def data_identity(data_dir) -> list:
    """What a run's data is: [name, token count, sha256 of the whole file] per shard, hashed in parallel (about
    1 s per GB on one core; results/bench/shard_hash.md). A start checks the hashes against the ones meta.json
    recorded when the shards were written, and a resume compares the whole identity with the checkpoint's, so a
    run never goes on over changed or other data under the same folder name."""
    files = [f for split in ("train", "val") for f in find_shards(data_dir, split)]
    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        hashes = list(pool.map(file_sha256, files))
    recorded = (read_meta(data_dir) or {}).get("sha256", {})
    for f, h in zip(files, hashes):
        if recorded.get(f.name, h) != h:
            raise DataError(f"shard {f} has changed since prepare_fineweb.py wrote it (its sha256 differs from "
                            f"meta.json's); rerun prepare_fineweb.py on {data_dir}: it rewrites damaged shards")
    return [[f.name, read_header(f), h] for f, h in zip(files, hashes)]


def find_shards(data_dir, split: str) -> list:
    """The .bin shards of a split ('train' / 'val') in data_dir: exactly those meta.json lists when prepare wrote
    the folder (nothing else lying there is read), else every *split*.bin, sorted. One clear error if none."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data_dir {data_dir} does not exist; create it with "
                        f"`python prepare_fineweb.py --source sample --out_dir {data_dir}`")
    meta = read_meta(data_dir)
    if meta is not None:
        files = [str(data_dir / name) for name in meta["shards"] if f"_{split}_" in name]
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            raise DataError(f"shard {missing[0]} is listed in {data_dir / 'meta.json'} but missing; rerun "
                            f"prepare_fineweb.py on {data_dir} (it resumes)")
    else:
        files = sorted(p for p in glob.glob(str(data_dir / f"*{split}*.bin")))
    if not files:
        raise DataError(f"no '{split}' shards (*{split}*.bin) in {data_dir}; create them with "
                        f"`python prepare_fineweb.py --source sample --out_dir {data_dir}`")
    return [Path(f) for f in files]


# -- the loader ----------------------------------------------------------------------------------------------------

class ShardLoader:
    """Yields (x, y) int64 windows of shape (B, T) for one rank of a DDP job.

    A shard is cut into windows of B*T tokens (+1 for the shifted targets), and consecutive windows are grouped
    into *step blocks* of world_size x accum windows: the tokens of one optimizer step. Within a block, micro-batch
    i of rank r is window i * world_size + r. Blocks are the unit of order: with `shuffle`, the shard order and the
    block order inside each shard are permuted per epoch from `seed`, identically on every rank. A step therefore
    sees the same tokens however it is split into ranks and micro-batches (1 GPU x 8 micro-batches or 8 GPUs x 1
    read the same data at the same seed). A shard's tail shorter than one block is skipped; after the last shard
    the epoch ends and the next one starts (wrap).

    The whole position is four integers (epoch, shard cursor, block cursor, micro-batch), so
    state_dict()/load_state_dict() resume at exactly the next window.
    """

    def __init__(self, data_dir, split, B, T, rank=0, world_size=1, shuffle=False, seed=0, accum=1):
        self.files = find_shards(data_dir, split)
        self.split, self.B, self.T, self.rank, self.world, self.accum = split, B, T, rank, world_size, accum
        self.shuffle, self.seed = shuffle, seed
        self.window = B * T
        self.per_block = world_size * accum  # windows per optimizer step
        self.counts = [read_header(f) for f in self.files]
        self.n_windows = [max(0, (c - 1) // self.window) for c in self.counts]
        self.n_blocks = [n // self.per_block for n in self.n_windows]
        if max(self.n_blocks) < 1:
            need = self.window * self.per_block + 1
            raise DataError(f"the '{split}' shards in {data_dir} are too small: a step needs {need:,} tokens "
                            f"(batch_size {B} x block_size {T} x world {world_size} x grad accum {accum} + 1) but "
                            f"the largest shard has {max(self.counts):,}; lower batch_size/block_size/"
                            f"total_batch_size or prepare more data")
        self.epoch, self.shard_cursor, self.block_cursor, self.micro = 0, 0, 0, 0
        self._tokens, self._tokens_index = None, None
        self._set_epoch(0)

    # ordering -------------------------------------------------------------------------------------------------
    def _rng(self, *key):
        return np.random.default_rng([self.seed, *key])

    def _set_epoch(self, epoch):
        self.epoch = epoch
        order = np.arange(len(self.files))
        if self.shuffle:
            order = self._rng(epoch).permutation(order)
        self.shard_order = [int(i) for i in order if self.n_blocks[i] >= 1]

    def _block_order(self, shard):
        n = self.n_blocks[shard]
        return self._rng(self.epoch, shard).permutation(n) if self.shuffle else np.arange(n)

    def _load(self, shard):
        if self._tokens_index != shard:
            tokens = load_tokens(self.files[shard])
            check_tokens(self.files[shard], tokens)  # once per shard load (~0.1 s per 100M tokens)
            self._tokens, self._tokens_index = tokens, shard
            self._order = self._block_order(shard)
        return self._tokens

    # iteration ------------------------------------------------------------------------------------------------
    def next_batch(self):
        shard = self.shard_order[self.shard_cursor]
        tokens = self._load(shard)
        w = int(self._order[self.block_cursor]) * self.per_block + self.micro * self.world + self.rank
        buf = torch.from_numpy(tokens[w * self.window: (w + 1) * self.window + 1].astype(np.int64))
        self._advance()
        return buf[:-1].view(self.B, self.T), buf[1:].view(self.B, self.T)

    def _advance(self):
        self.micro += 1
        if self.micro < self.accum:
            return
        self.micro, self.block_cursor = 0, self.block_cursor + 1
        if self.block_cursor >= self.n_blocks[self.shard_order[self.shard_cursor]]:
            self.block_cursor, self.shard_cursor = 0, self.shard_cursor + 1
            if self.shard_cursor >= len(self.shard_order):
                self.shard_cursor = 0
                self._set_epoch(self.epoch + 1)
                self._tokens_index = None  # block order depends on the epoch

    def reset(self):
        self.shard_cursor, self.block_cursor, self.micro = 0, 0, 0
        self._set_epoch(0)
        self._tokens_index = None

    # resume ---------------------------------------------------------------------------------------------------
    def state_dict(self):
        return {"epoch": self.epoch, "shard_cursor": self.shard_cursor, "block_cursor": self.block_cursor,
                "micro": self.micro, "files": [f.name for f in self.files], "B": self.B, "T": self.T,
                "world": self.world, "accum": self.accum, "shuffle": self.shuffle, "seed": self.seed}

    def load_state_dict(self, state):
        """Resume at the saved position. The micro-batch size may differ (a step's tokens do not depend on it) as
        long as the step's token count, world size, order and shards are the same."""
        def key(d):
            return (d["T"], d["B"] * d["T"] * d["world"] * d["accum"], d["world"], d["shuffle"], d["seed"], d["files"])
        if state.get("micro", 0) != 0 or key(state) != key(self.state_dict()):
            raise DataError("the checkpoint's data position was saved for another step size, world size, data "
                            "order or shard list; resume with the original settings or start a new out_dir")
        self._set_epoch(state["epoch"])
        self.shard_cursor, self.block_cursor, self.micro = state["shard_cursor"], state["block_cursor"], state["micro"]
        self._tokens_index = None


def val_batches(data_dir, B, T, rank, world_size, val_tokens):
    """The fixed validation set: the first `val_tokens` tokens' worth of windows, split over ranks.

    Returns (loader, steps). Every eval starts from the same windows, so val losses are comparable across runs.
    """
    loader = ShardLoader(data_dir, "val", B, T, rank, world_size)
    per_step = B * T * world_size
    available = sum(loader.n_blocks) * per_step
    steps = min(val_tokens, available) // per_step
    if steps < 1:
        raise DataError(f"the val split in {data_dir} ({sum(loader.counts):,} tokens) is smaller than one "
                        f"eval batch ({per_step:,} tokens = batch_size x block_size x world); lower batch_size "
                        f"or block_size, or prepare more val data (--val_tokens)")
    return loader, steps
