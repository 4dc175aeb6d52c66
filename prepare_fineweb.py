"""Tokenize a text corpus into GPT-2 token shards (llm.c .bin format) for train.py.

    python prepare_fineweb.py --source sample                         # bundled Austen corpus, ~0.99M tokens
    python prepare_fineweb.py --source fineweb-edu --for_config configs/gpt2_124m.py  # the paper run (HF hub)
    python prepare_fineweb.py --source path/to/fineweb-edu/sample/10BT --out_dir data/fineweb-edu  # local parquet

--for_config CONFIG sets --max_tokens to what that config's run reads in one pass: max_steps whole steps of
total_batch_size tokens, where each shard only yields whole steps (its tail is skipped): 2,509,437,185 tokens for
gpt2_124m.py (25 shards of 100M tokens give 190 steps each, a 26th of 9.4M the last 18), not 2.5e9.

Every source -- the hub, the bundled sample, local parquet/jsonl/txt -- goes through the same
`datasets.load_dataset(..., streaming=True)` path, so tests on local files exercise the FineWeb-Edu code.

Split: documents whose stream index is a multiple of 20 go to validation until it holds --val_tokens tokens
(then the val shard is cut to exactly that many); everything else is training data, capped at --max_tokens. The
val set therefore does not depend on how many train tokens are written.

Documents whose text cannot be tokenized (not a string, e.g. null or a number; an invalid Unicode escape) are
skipped, counted, and reported in one summary line and in meta.json; they keep their stream index, so the split of
the others does not move. Whole-file problems (a .txt that is not UTF-8, a .gz that is not gzip, a damaged
progress.json) are refused up front with an error line, before anything is written.

Output (--out_dir): <name>_val_000000.bin, <name>_train_000001.bin, ... each written to a temp name and renamed
when complete, plus progress.json (resume points) and meta.json (what was made, from what, by which command).
A rerun keeps the complete shards and continues; with the same inputs it writes byte-identical files.
"""
import argparse
import gzip
import hashlib
import json
import multiprocessing as mp
import os
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np

from data import file_sha256, read_header, shard_is_valid, write_shard
from tokenizer import EOT, RANKS_SHA256, get_encoding
from util import FolderLock, UserError, atomic_write, make_dir

ROOT = Path(__file__).resolve().parent
SAMPLE_PATH = ROOT / "data" / "sample" / "austen.jsonl.gz"
SAMPLE_SHA256 = "e6dda2245d55ddd4cdd7bbb9cd8eeba89fe399cb5e45bf8a912cf6cf7ece080d"
HUB_DATASET = "HuggingFaceFW/fineweb-edu"
VAL_EVERY = 20  # every 20th document is a validation candidate (~5 %)


class PrepareError(UserError):
    pass


# -- sources -------------------------------------------------------------------------------------------------------

def _local_files(paths):
    """Expand files/folders into (builder, [files]) for datasets. One builder per call (parquet, json or text)."""
    kinds = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".gz": "json", ".txt": "text"}
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in kinds)
        elif p.is_file():
            files.append(p)
        else:
            raise PrepareError(f"input {p} does not exist; pass existing parquet/jsonl(.gz)/txt files or folders")
    if not files:
        raise PrepareError(f"no parquet/jsonl/txt files under {' '.join(map(str, paths))}; check the path")
    builders = {kinds.get(f.suffix) for f in files}
    if None in builders or len(builders) != 1:
        raise PrepareError(f"inputs must all be one kind (parquet, jsonl[.gz] or txt), got: "
                           f"{', '.join(sorted({f.suffix or f.name for f in files}))}")
    if any(f.stat().st_size == 0 for f in files):
        empty = next(f for f in files if f.stat().st_size == 0)
        raise PrepareError(f"input {empty} is empty; remove it or pass other files")
    for f in files:  # whole-file problems are refused before anything is written
        _check_readable(f)
    return builders.pop(), [str(f) for f in files]


def _check_readable(f: Path):
    """A .gz must really be gzip, a .txt must be UTF-8 (read in 1 MiB pieces: no size limit)."""
    if f.suffix == ".gz":
        try:
            with gzip.open(f) as g:
                g.read(1 << 16)
        except (OSError, EOFError) as e:
            raise PrepareError(f"input {f} is not a readable gzip file ({e}); pass the real .jsonl.gz") from None
    elif f.suffix == ".txt":
        import codecs
        dec = codecs.getincrementaldecoder("utf-8")()
        with open(f, "rb") as fh:
            try:
                while chunk := fh.read(1 << 20):
                    dec.decode(chunk)
                dec.decode(b"", final=True)
            except UnicodeDecodeError as e:
                raise PrepareError(f"input {f} is not UTF-8 text (byte {fh.tell() - len(chunk) + e.start}); "
                                   f"convert it (e.g. iconv -t UTF-8) or remove it") from None


def sample_docs_plain(path):
    """The bundled sample read with the standard library alone (gzip + json): the same documents, in the same order,
    as the `datasets` path gives. Used where `datasets` is not installed (a bare GPU image)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)["text"]


def _check_sample():
    if not SAMPLE_PATH.is_file():
        raise PrepareError(f"bundled sample {SAMPLE_PATH} is missing; restore it with git checkout")
    digest = hashlib.sha256(SAMPLE_PATH.read_bytes()).hexdigest()
    if digest != SAMPLE_SHA256:
        raise PrepareError(f"bundled sample {SAMPLE_PATH} has sha256 {digest}, expected {SAMPLE_SHA256}; "
                           f"restore it with git checkout")


def _check_online(host="huggingface.co"):
    """Fail in seconds, not after the hub client's retries, when the hub cannot be reached (skipped behind a
    proxy, where a direct connection says nothing)."""
    import socket
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError:
        raise PrepareError(f"cannot reach {host} (offline?); use --source sample, or local parquet files of "
                           f"FineWeb-Edu: --source /path/to/parquet_dir") from None


def open_stream(source, name, text_column):
    """An iterable of document texts, in a fixed order, through datasets' streaming loader."""
    try:
        import datasets
    except ImportError:
        if source == ["sample"]:
            _check_sample()
            return sample_docs_plain(SAMPLE_PATH)
        raise PrepareError("reading this source needs the `datasets` package (pip install -r requirements.txt); "
                           "only --source sample works without it") from None
    datasets.disable_progress_bars()
    if source == ["fineweb-edu"]:
        if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
            raise PrepareError("--source fineweb-edu needs the Hugging Face hub but this machine is offline "
                               "(HF_HUB_OFFLINE/HF_DATASETS_OFFLINE=1); use --source sample, or local parquet "
                               "files of FineWeb-Edu: --source /path/to/parquet_dir")
        _check_online()
        try:
            ds = datasets.load_dataset(HUB_DATASET, name=name, split="train", streaming=True)
        except Exception as e:  # network errors come in many types; say what to do instead
            raise PrepareError(f"could not open {HUB_DATASET} ({name}) on the Hugging Face hub "
                               f"({type(e).__name__}); if this machine is offline use --source sample or local "
                               f"parquet files: --source /path/to/parquet_dir") from e
        column = "text"
    else:
        if source == ["sample"]:
            _check_sample()
            builder, files, column = "json", [str(SAMPLE_PATH)], "text"
        else:
            builder, files = _local_files(source)
            column = "text" if builder == "text" else text_column
        kwargs = {"sample_by": "document"} if builder == "text" else {}
        ds = datasets.load_dataset(builder, data_files=files, split="train", streaming=True, **kwargs)
    try:
        first = next(iter(ds))
    except StopIteration:
        raise PrepareError(f"input {' '.join(source)} holds no documents; pass a non-empty corpus") from None
    except Exception as e:
        raise PrepareError(f"could not read {' '.join(source)}: {type(e).__name__}: {str(e)[:200]}") from e
    if column not in first:
        raise PrepareError(f"input has no column {column!r} (columns: {', '.join(first)}); "
                           f"pass --text_column with the right name")
    return (row[column] for row in ds)


# -- tokenization (worker processes) -------------------------------------------------------------------------------

def _tokenize(text):
    """(tokens with EOT first, None), or (None, what is wrong) for a document that cannot be tokenized."""
    if not isinstance(text, str):
        return None, "non-string text"
    try:
        return np.array([EOT] + get_encoding().encode_ordinary(text), dtype=np.uint16), None
    except (UnicodeError, ValueError):  # e.g. a lone surrogate from a JSON escape
        return None, "undecodable"


def tokenized(docs, workers, skip=0):
    """(doc_index, (tokens, problem)) in stream order; tokenization spread over `workers` processes."""
    import itertools
    docs = itertools.islice(docs, skip, None)
    if workers <= 1:
        yield from enumerate(map(_tokenize, docs), start=skip)
        return
    ctx = mp.get_context("spawn")  # same behaviour on Linux, macOS and Windows
    with ctx.Pool(workers) as pool:
        yield from enumerate(pool.imap(_tokenize, docs, chunksize=16), start=skip)


# -- the writer ----------------------------------------------------------------------------------------------------

def shard_name(out_dir, prefix, split, i):
    return Path(out_dir) / f"{prefix}_{split}_{i:06d}.bin"


def check_out_dir(out_dir, identity):
    """Refuse to mix shards of another source / tokenizer / split settings into out_dir."""
    for fname in ("progress.json", "meta.json"):
        f = out_dir / fname
        if f.is_file():
            try:
                other = json.loads(f.read_text()).get("identity")
            except (ValueError, AttributeError, UnicodeDecodeError):
                raise PrepareError(f"{f} is damaged (not the JSON this script writes); delete {out_dir} and rerun "
                                   f"to start over") from None
            if other != identity:
                diff = {k: (other or {}).get(k) for k in identity if (other or {}).get(k) != identity[k]}
                raise PrepareError(f"{out_dir} holds shards made with other settings ({diff}); "
                                   f"pass another --out_dir or delete {out_dir}")


class ShardWriter:
    """Cuts the stream of training tokens into shards of exactly shard_tokens (the last one may be shorter).

    Documents are added as (doc index, offset of the first token within the doc, tokens). Each complete shard is
    written atomically and recorded in progress.json with the stream position of the first token not yet in a
    shard, so a rerun resumes exactly there and writes byte-identical files.
    """

    def __init__(self, out_dir, prefix, shard_tokens, progress, progress_path, kept):
        self.out_dir, self.prefix, self.shard_tokens = out_dir, prefix, shard_tokens
        self.progress, self.progress_path = progress, progress_path
        self.kept = kept  # records of the complete shards
        self.total = sum(r["tokens"] for r in kept)  # tokens in complete shards
        self.buf = deque()  # [doc index, offset within the doc, tokens] not yet in a shard
        self.n_pending = 0  # tokens in buf, kept as a count: a 100M-token shard gathers ~10^5 documents

    def pending(self) -> int:
        return self.n_pending

    def add(self, doc_i, offset, toks):
        self.buf.append([doc_i, offset, toks])
        self.n_pending += len(toks)

    def flush(self, next_doc, train_docs, final=False):
        """Write every complete shard (and, if final, the rest)."""
        while self.pending() >= self.shard_tokens or (final and self.buf):
            take, parts = self.shard_tokens, []
            while take > 0 and self.buf:
                d, off, toks = self.buf[0]
                parts.append(toks[:take])
                if len(toks) > take:
                    self.buf[0] = [d, off + take, toks[take:]]
                else:
                    self.buf.popleft()
                take -= len(parts[-1])
            self.n_pending -= self.shard_tokens - take
            path = shard_name(self.out_dir, self.prefix, "train", len(self.kept) + 1)
            write_shard(path, np.concatenate(parts))
            n = sum(len(p) for p in parts)
            self.total += n
            at = (self.buf[0][0], self.buf[0][1]) if self.buf else (next_doc, 0)  # the first token not in a shard
            self.kept.append({"file": path.name, "tokens": n, "sha256": file_sha256(path),
                              "next_doc": at[0], "next_offset": at[1],
                              "train_docs": train_docs - sum(1 for c in self.buf if c[1] == 0)})
            self.progress["train_shards"] = self.kept
            write_json(self.progress_path, self.progress)


def read_progress(path, identity):
    if not path.is_file():
        return {"identity": identity, "train_shards": []}
    try:
        progress = json.loads(path.read_text())
        progress["train_shards"]
        return progress
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise PrepareError(f"{path} is damaged (not the JSON this script writes); delete {path.parent} and rerun "
                           f"to start over") from None


def complete(out_dir, identity, say_damaged=True):
    """meta.json of a finished folder whose every shard still has the content it was written with, else None."""
    if not out_dir.is_dir():
        return None
    check_out_dir(out_dir, identity)
    if not (out_dir / "meta.json").is_file():
        return None
    meta = json.loads((out_dir / "meta.json").read_text())
    hashes = meta.get("sha256", {})
    damaged = [s for s in meta["shards"] if not shard_is_valid(out_dir / s, hashes.get(s))]
    if damaged:
        if say_damaged:
            print(f"{out_dir}: {len(damaged)} shard(s) changed or missing since they were written "
                  f"({damaged[0]}, ...); rewriting from the last intact one")
        return None
    print(f"{out_dir}: already complete ({meta['tokens']['train']:,} train + {meta['tokens']['val']:,} val tokens, "
          f"every shard's sha256 checked); nothing to do")
    return meta


def prepare(args):
    out_dir = Path(args.out_dir)
    src_name = args.source[0] if len(args.source) == 1 and args.source[0] in ("sample", "fineweb-edu") else "local"
    identity = {"source": args.source if src_name == "local" else src_name,
                "name": args.name if src_name == "fineweb-edu" else None,
                "text_column": args.text_column, "tokenizer_sha256": RANKS_SHA256,
                "val_tokens": args.val_tokens, "shard_tokens": args.shard_tokens, "max_tokens": args.max_tokens}
    if out_dir.exists() and not out_dir.is_dir():
        raise PrepareError(f"--out_dir {out_dir} is a file; pass a folder")
    if meta := complete(out_dir, identity, say_damaged=False):  # said once, below, under the lock
        return meta
    docs = open_stream(args.source, args.name, args.text_column)  # fails (offline, bad input) before any write
    make_dir(out_dir)
    with FolderLock(out_dir, "prepare_fineweb.py run"):  # one writer; a second prepare on the folder stops at once
        for stale in out_dir.glob(".*.tmp"):  # temp files of a killed writer
            stale.unlink()
        if meta := complete(out_dir, identity):  # another run may have finished it while this one started
            return meta
        return write_shards(args, out_dir, identity, src_name, docs)


def write_shards(args, out_dir, identity, src_name, docs):
    prefix = {"sample": "sample", "fineweb-edu": "edufineweb"}.get(src_name, "local")

    # resume point: the last train shard that is complete, valid, and has its stream position recorded
    progress_path = out_dir / "progress.json"
    progress = read_progress(progress_path, identity)
    resume = None
    for rec in progress["train_shards"]:
        if shard_is_valid(out_dir / rec["file"], rec.get("sha256")) and \
                shard_is_valid(out_dir / progress.get("val_file", "-"), progress.get("val_sha256")):
            resume = rec
        else:
            break
    kept = progress["train_shards"][: progress["train_shards"].index(resume) + 1] if resume else []
    if resume:  # the val shard is complete and the stream position after the last good train shard is known
        val_done, val_end_doc, val_docs = True, progress["val_end_doc"], progress["val_docs"]
        start_doc, start_offset, train_docs = resume["next_doc"], resume["next_offset"], resume["train_docs"]
        print(f"resuming after {len(kept)} complete train shard(s), at document {start_doc:,}")
    else:
        val_done, val_end_doc, val_docs = False, None, 0
        start_doc, start_offset, train_docs = 0, 0, 0
        progress = {"identity": identity, "train_shards": []}

    writer = ShardWriter(out_dir, prefix, args.shard_tokens, progress, progress_path, kept)
    val_buf, val_count, next_doc, skipped = [], 0, start_doc, {}
    t0 = time.time()
    from tqdm import tqdm
    bar = tqdm(unit="tok", unit_scale=True, desc=f"tokenizing {src_name}", disable=args.quiet)
    try:
        for doc_i, (toks, problem) in tokenized(docs, args.workers, skip=start_doc):
            next_doc = doc_i + 1
            if problem:  # a document that cannot be tokenized keeps its index, so the split stays the same
                skipped[problem] = skipped.get(problem, 0) + 1
                continue
            bar.update(len(toks))
            if doc_i % VAL_EVERY == 0 and (val_end_doc is None or doc_i < val_end_doc):
                if not val_done:
                    val_buf.append(toks)
                    val_count += len(toks)
                    val_docs += 1
                    if args.val_tokens and val_count >= args.val_tokens:
                        val_done, val_end_doc = True, doc_i + 1
                        finish_val(out_dir, prefix, val_buf, args.val_tokens, progress, val_end_doc, val_docs)
                        write_json(progress_path, progress)
                        val_buf = []
                continue  # (a val document of an earlier, complete val shard is skipped likewise)
            offset = start_offset if doc_i == start_doc else 0
            toks = toks[offset:]
            if args.max_tokens:
                toks = toks[:max(args.max_tokens - writer.total - writer.pending(), 0)]
            if len(toks):
                writer.add(doc_i, offset, toks)
                train_docs += offset == 0  # a document resumed mid-way was counted before
                writer.flush(next_doc, train_docs)
            if args.max_tokens and writer.total + writer.pending() >= args.max_tokens and val_done:
                break
        if not val_done:  # the corpus ended before val_tokens: everything collected is the val set
            if not val_buf:
                raise PrepareError("the corpus is too small to hold any validation document; pass more data")
            val_done, val_end_doc = True, next_doc
            finish_val(out_dir, prefix, val_buf, None, progress, val_end_doc, val_docs)
        writer.flush(next_doc, train_docs, final=True)
    finally:
        bar.close()
    if skipped:
        print(f"skipped {sum(skipped.values())} document(s): "
              + ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())))
    if writer.total == 0:
        raise PrepareError("no training tokens were written (the corpus only fills the val split); "
                           "lower --val_tokens or pass more data")
    val_file = progress["val_file"]
    meta = {
        "identity": identity, "source": identity["source"], "dataset": HUB_DATASET if src_name == "fineweb-edu"
        else None, "name": identity["name"], "tokenizer": "gpt2 (tiktoken r50k_base)",
        "tokenizer_sha256": RANKS_SHA256, "format": "llm.c .bin: 256 x int32 header (20240520, 1, count), uint16",
        "documents": {"train": train_docs, "val": progress["val_docs"]}, "skipped_documents": skipped,
        "tokens": {"train": writer.total, "val": read_header(out_dir / val_file)},
        "shards": [val_file] + [r["file"] for r in writer.kept],
        "sha256": {val_file: progress["val_sha256"], **{r["file"]: r["sha256"] for r in writer.kept}},
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "seconds": round(time.time() - t0, 1),
    }
    write_json(out_dir / "meta.json", meta)
    print(f"wrote {out_dir}: {meta['tokens']['train']:,} train tokens in {len(writer.kept)} shard(s), "
          f"{meta['tokens']['val']:,} val tokens ({meta['documents']['val']} docs)")
    return meta


def finish_val(out_dir, prefix, val_buf, cut, progress, val_end_doc, val_docs):
    flat = np.concatenate(val_buf)
    if cut:
        flat = flat[:int(cut)]
    path = shard_name(out_dir, prefix, "val", 0)
    write_shard(path, flat)
    progress.update(val_file=path.name, val_sha256=file_sha256(path), val_end_doc=val_end_doc, val_docs=val_docs)


def write_json(path, obj):
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", nargs="+", default=["sample"],
                    help="'sample' (bundled), 'fineweb-edu' (HF hub), or local parquet/jsonl(.gz)/txt files/folders")
    ap.add_argument("--name", default="sample-10BT", help="FineWeb-Edu config: sample-10BT, sample-100BT, default")
    ap.add_argument("--text_column", default="text")
    ap.add_argument("--out_dir", default=None, help="default data/<source>")
    ap.add_argument("--val_tokens", type=float, default=None,
                    help="validation tokens (default 10,485,760; for --source sample: all of every 20th chapter)")
    ap.add_argument("--max_tokens", type=float, default=None, help="cap on train tokens")
    ap.add_argument("--for_config", default=None,
                    help="set --max_tokens to what this training config reads in one pass (e.g. configs/gpt2_124m.py)")
    ap.add_argument("--shard_tokens", type=float, default=1e8, help="tokens per train shard (default 100M)")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="tokenizer processes (default: all cores)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    args = ap.parse_args(argv)
    if args.out_dir is None:
        base = args.source[0] if args.source[0] in ("sample", "fineweb-edu") else "local"
        args.out_dir = str(ROOT / "data" / base)
    if args.val_tokens is None:
        args.val_tokens = 0 if args.source == ["sample"] else 10_485_760
    args.val_tokens = int(args.val_tokens)
    args.max_tokens = int(args.max_tokens) if args.max_tokens else None
    args.shard_tokens = int(args.shard_tokens)
    if args.shard_tokens < 1:
        ap.error("--shard_tokens must be positive")
    if args.for_config:
        if args.max_tokens:
            ap.error("pass --max_tokens or --for_config, not both")
        args.max_tokens = tokens_for_config(args.for_config, args.shard_tokens)
    return args


def tokens_for_config(path, shard_tokens) -> int:
    """Train tokens that give a config's max_steps whole steps in one pass over shards of shard_tokens: a shard
    of c tokens yields (c - 1) // total_batch_size steps (data.ShardLoader skips the tail)."""
    from config import load_config  # only here: preparing data needs no model code otherwise
    cfg = load_config([str(path)])
    per_shard = (shard_tokens - 1) // cfg.total_batch_size
    if per_shard < 1:
        raise PrepareError(f"--shard_tokens {shard_tokens:,} holds no whole step of {cfg.total_batch_size:,} tokens; "
                           f"raise it")
    full, rest = divmod(cfg.max_steps, per_shard)
    tokens = full * shard_tokens + (rest * cfg.total_batch_size + 1 if rest else 0)
    print(f"{path}: {cfg.max_steps:,} steps of {cfg.total_batch_size:,} tokens = {tokens:,} train tokens "
          f"({per_shard} steps per shard of {shard_tokens:,})")
    return tokens


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
        prepare(args)
    except UserError as e:  # PrepareError, DataError, a config error, a folder that cannot be written
        if "--debug" in argv:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
