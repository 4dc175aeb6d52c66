"""Tokenize a text corpus into GPT-2 token shards (llm.c .bin format) for train.py.

    python prepare_fineweb.py --source sample                         # bundled Austen corpus, ~0.99M tokens
    python prepare_fineweb.py --source fineweb-edu --max_tokens 2.5e9 # the paper run (HF hub, streamed)
    python prepare_fineweb.py --source /mirror/fineweb-edu/sample/10BT --out_dir data/fineweb  # local parquet

Every source -- the hub, the bundled sample, local parquet/jsonl/txt -- goes through the same
`datasets.load_dataset(..., streaming=True)` path, so tests on local files exercise the FineWeb-Edu code.

Split: documents whose stream index is a multiple of 20 go to validation until it holds --val_tokens tokens
(then the val shard is cut to exactly that many); everything else is training data, capped at --max_tokens. The
val set therefore does not depend on how many train tokens are written.

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
from pathlib import Path

import numpy as np

from data import DataError, read_header, shard_is_valid, write_shard
from tokenizer import EOT, RANKS_SHA256, get_encoding

ROOT = Path(__file__).resolve().parent
SAMPLE_PATH = ROOT / "data" / "sample" / "austen.jsonl.gz"
SAMPLE_SHA256 = "951affce19545f13e5ab29a6e0765b3668307f79b20e1c22f4dcd7c31b679b9f"
HUB_DATASET = "HuggingFaceFW/fineweb-edu"
VAL_EVERY = 20  # every 20th document is a validation candidate (~5 %)


class PrepareError(RuntimeError):
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
    return builders.pop(), [str(f) for f in files]


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
    enc = get_encoding()
    return np.array([EOT] + enc.encode_ordinary(text), dtype=np.uint16)  # EOT before every document


def tokenized(docs, workers, skip=0):
    """(doc_index, tokens) in stream order; tokenization spread over `workers` processes."""
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
            other = json.loads(f.read_text()).get("identity")
            if other != identity:
                diff = {k: (other or {}).get(k) for k in identity if (other or {}).get(k) != identity[k]}
                raise PrepareError(f"{out_dir} holds shards made with other settings ({diff}); "
                                   f"pass another --out_dir or delete {out_dir}")


def prepare(args):
    out_dir = Path(args.out_dir)
    src_name = args.source[0] if len(args.source) == 1 and args.source[0] in ("sample", "fineweb-edu") else "local"
    identity = {"source": args.source if src_name == "local" else src_name,
                "name": args.name if src_name == "fineweb-edu" else None,
                "text_column": args.text_column, "tokenizer_sha256": RANKS_SHA256,
                "val_tokens": args.val_tokens, "shard_tokens": args.shard_tokens, "max_tokens": args.max_tokens}
    if out_dir.exists() and not out_dir.is_dir():
        raise PrepareError(f"--out_dir {out_dir} is a file; pass a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    check_out_dir(out_dir, identity)
    if (out_dir / "meta.json").is_file():
        meta = json.loads((out_dir / "meta.json").read_text())
        if all(shard_is_valid(out_dir / s) for s in meta["shards"]):
            print(f"{out_dir}: already complete ({meta['tokens']['train']:,} train + {meta['tokens']['val']:,} "
                  f"val tokens); nothing to do")
            return meta
    prefix = {"sample": "sample", "fineweb-edu": "edufineweb"}.get(src_name, "local")

    # resume point: the last train shard that is complete, valid, and has its stream position recorded
    progress_path = out_dir / "progress.json"
    progress = json.loads(progress_path.read_text()) if progress_path.is_file() else {"identity": identity}
    resume = None
    for rec in progress.get("train_shards", []):
        if shard_is_valid(out_dir / rec["file"]) and shard_is_valid(out_dir / progress.get("val_file", "-")):
            resume = rec
        else:
            break
    kept = progress.get("train_shards", [])[: progress.get("train_shards", []).index(resume) + 1] if resume else []

    val_target = args.val_tokens
    if resume:  # the val shard is complete and the stream position after the last good train shard is known
        val_done, val_end_doc, val_docs = True, progress["val_end_doc"], progress["val_docs"]
        start_doc, start_offset = resume["next_doc"], resume["next_offset"]
        train_total, train_docs = sum(r["tokens"] for r in kept), resume["train_docs"]
        print(f"resuming after {len(kept)} complete train shard(s), at document {start_doc:,}")
    else:
        val_done, val_end_doc, val_docs = False, None, 0
        start_doc, start_offset, train_total, train_docs = 0, 0, 0, 0
        progress = {"identity": identity, "train_shards": []}
    val_buf, val_count = [], 0
    buf = []  # pending train chunks: [doc index, offset of the chunk's first token in that doc, tokens]
    next_doc = start_doc

    def write_train_shards(final=False):
        nonlocal buf, train_total
        while sum(len(c[2]) for c in buf) >= args.shard_tokens or (final and buf):
            take, parts = args.shard_tokens, []
            while take > 0 and buf:
                d, off, toks = buf[0]
                parts.append(toks[:take])
                if len(toks) > take:
                    buf[0] = [d, off + take, toks[take:]]
                else:
                    buf.pop(0)
                take -= len(parts[-1])
            path = shard_name(out_dir, prefix, "train", len(kept) + 1)
            write_shard(path, np.concatenate(parts))
            n = sum(len(p) for p in parts)
            train_total += n
            # where a rerun picks up: the first token not yet in a shard
            at = (buf[0][0], buf[0][1]) if buf else (next_doc, 0)
            kept.append({"file": path.name, "tokens": n, "next_doc": at[0], "next_offset": at[1],
                         "train_docs": train_docs - sum(1 for c in buf if c[1] == 0)})
            progress["train_shards"] = kept
            _write_json(progress_path, progress)

    docs = open_stream(args.source, args.name, args.text_column)
    t0 = time.time()
    from tqdm import tqdm
    bar = tqdm(unit="tok", unit_scale=True, desc=f"tokenizing {src_name}", disable=args.quiet)
    try:
        for doc_i, toks in tokenized(docs, args.workers, skip=start_doc):
            bar.update(len(toks))
            next_doc = doc_i + 1
            val_candidate = doc_i % VAL_EVERY == 0 and (val_end_doc is None or doc_i < val_end_doc)
            if val_candidate:
                if not val_done:
                    val_buf.append(toks)
                    val_count += len(toks)
                    val_docs += 1
                    if val_target and val_count >= val_target:
                        val_done, val_end_doc = True, doc_i + 1
                        _finish_val(out_dir, prefix, val_buf, val_target, progress, val_end_doc, val_docs)
                        _write_json(progress_path, progress)
                        val_buf = []
                continue  # (a val document of an earlier, complete val shard is skipped likewise)
            offset = start_offset if doc_i == start_doc else 0
            toks = toks[offset:]
            if args.max_tokens:
                room = args.max_tokens - train_total - sum(len(c[2]) for c in buf)
                toks = toks[:max(room, 0)]
            if len(toks):
                buf.append([doc_i, offset, toks])
                train_docs += offset == 0  # a document resumed mid-way was counted before
                write_train_shards()
            if args.max_tokens and train_total + sum(len(c[2]) for c in buf) >= args.max_tokens and val_done:
                break
        if not val_done:  # the corpus ended before val_tokens: everything collected is the val set
            if not val_buf:
                raise PrepareError("the corpus is too small to hold any validation document; pass more data")
            val_done, val_end_doc = True, next_doc
            _finish_val(out_dir, prefix, val_buf, None, progress, val_end_doc, val_docs)
        write_train_shards(final=True)
    finally:
        bar.close()
    if train_total == 0:
        raise PrepareError("no training tokens were written (the corpus only fills the val split); "
                           "lower --val_tokens or pass more data")
    val_file = progress["val_file"]
    meta = {
        "identity": identity, "source": identity["source"], "dataset": HUB_DATASET if src_name == "fineweb-edu"
        else None, "name": identity["name"], "tokenizer": "gpt2 (tiktoken r50k_base)",
        "tokenizer_sha256": RANKS_SHA256, "format": "llm.c .bin: 256 x int32 header (20240520, 1, count), uint16",
        "documents": {"train": train_docs, "val": progress["val_docs"]},
        "tokens": {"train": train_total, "val": read_header(out_dir / val_file)},
        "shards": [val_file] + [r["file"] for r in kept],
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "seconds": round(time.time() - t0, 1),
    }
    _write_json(out_dir / "meta.json", meta)
    print(f"wrote {out_dir}: {meta['tokens']['train']:,} train tokens in {len(kept)} shard(s), "
          f"{meta['tokens']['val']:,} val tokens ({meta['documents']['val']} docs)")
    return meta


def _finish_val(out_dir, prefix, val_buf, cut, progress, val_end_doc, val_docs):
    flat = np.concatenate(val_buf)
    if cut:
        flat = flat[:int(cut)]
    path = shard_name(out_dir, prefix, "val", 0)
    write_shard(path, flat)
    progress.update(val_file=path.name, val_end_doc=val_end_doc, val_docs=val_docs)


def _write_json(path, obj):
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", nargs="+", default=["sample"],
                    help="'sample' (bundled), 'fineweb-edu' (HF hub), or local parquet/jsonl(.gz)/txt files/folders")
    ap.add_argument("--name", default="sample-10BT", help="FineWeb-Edu config: sample-10BT, sample-100BT, default")
    ap.add_argument("--text_column", default="text")
    ap.add_argument("--out_dir", default=None, help="default data/<source>")
    ap.add_argument("--val_tokens", type=float, default=None,
                    help="validation tokens (default 10,485,760; for --source sample: all of every 20th chapter)")
    ap.add_argument("--max_tokens", type=float, default=None, help="cap on train tokens (2.5e9 for the paper run)")
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
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        prepare(args)
    except (PrepareError, DataError) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
