import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import prepare_fineweb
from data import DataError, ShardLoader, load_tokens, read_header, val_batches, write_shard
from tokenizer import EOT, get_encoding

ROOT = Path(__file__).resolve().parents[1]


def prep(*argv):
    return prepare_fineweb.prepare(prepare_fineweb.parse_args([*map(str, argv), "--quiet"]))


def chapters():
    with gzip.open(ROOT / "data/sample/austen.jsonl.gz", "rt") as f:
        return [json.loads(line)["text"] for line in f]


def test_sample_shards_decode_back_to_the_chapters(sample_dir):
    meta = json.loads((sample_dir / "meta.json").read_text())
    docs = chapters()
    assert len(docs) == 269
    val_ids = [i for i in range(len(docs)) if i % 20 == 0]
    enc = get_encoding()
    val = np.asarray(load_tokens(sample_dir / meta["shards"][0]))
    train = np.concatenate([np.asarray(load_tokens(sample_dir / s)) for s in meta["shards"][1:]])
    expect_val = np.concatenate([[EOT] + enc.encode_ordinary(docs[i]) for i in val_ids])
    expect_train = np.concatenate([[EOT] + enc.encode_ordinary(d) for i, d in enumerate(docs) if i % 20])
    assert np.array_equal(val, expect_val) and np.array_equal(train, expect_train)
    assert 0.98e6 < len(val) + len(train) < 1.0e6
    assert meta["documents"] == {"train": 255, "val": 14}
    assert enc.decode(train[:50].tolist()).startswith("<|endoftext|>CHAPTER 2")


def test_second_run_is_a_noop(sample_dir, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in sample_dir.iterdir()}
    prep("--source", "sample", "--out_dir", sample_dir)
    assert "nothing to do" in capsys.readouterr().out
    assert before == {p.name: p.stat().st_mtime_ns for p in sample_dir.iterdir()}


@pytest.mark.slow
def test_interrupted_prepare_resumes_to_identical_shards(tmp_path):
    full = tmp_path / "full"
    prep("--source", "sample", "--out_dir", full, "--shard_tokens", "150000", "--workers", "1")
    shards = sorted(p.name for p in full.glob("*.bin"))
    assert len(shards) == 8  # val + 7 train
    # a crash after shard 3: later shards gone, a half-written temp file and a truncated shard 4 left behind
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for p in full.iterdir():
        if p.name != "meta.json" and p.name not in shards[5:]:
            (crashed / p.name).write_bytes(p.read_bytes())
    (crashed / shards[4]).write_bytes((full / shards[4]).read_bytes()[:5000])
    (crashed / (shards[5] + ".tmp")).write_bytes(b"partial")
    prep("--source", "sample", "--out_dir", crashed, "--shard_tokens", "150000", "--workers", "2")
    for name in shards:
        assert (crashed / name).read_bytes() == (full / name).read_bytes(), name
    a, b = (json.loads((d / "meta.json").read_text()) for d in (full, crashed))
    assert a["tokens"] == b["tokens"] and a["documents"] == b["documents"] and a["shards"] == b["shards"]


@pytest.mark.slow
def test_sigkill_mid_prepare_then_rerun_is_identical(tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    args = ["--source", "sample", "--shard_tokens", "100000", "--workers", "1", "--quiet"]
    prep(*args[:-1], "--out_dir", ref)
    proc = subprocess.Popen([sys.executable, str(ROOT / "prepare_fineweb.py"), *args, "--out_dir", str(killed)],
                            cwd=ROOT)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(killed.glob("*train*.bin"))) < 3 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "meta.json").exists() or proc.returncode == 0
    prep(*args[:-1], "--out_dir", killed)
    names = sorted(p.name for p in ref.glob("*.bin"))
    assert names == sorted(p.name for p in killed.glob("*.bin"))
    assert all((ref / n).read_bytes() == (killed / n).read_bytes() for n in names)


@pytest.mark.slow
def test_local_sources_go_through_datasets(tmp_path):
    texts = [f"Document number {i}. " + "The quick brown fox jumps. " * (i % 7 + 1) for i in range(60)]
    enc = get_encoding()
    jl = tmp_path / "in.jsonl"
    jl.write_text("".join(json.dumps({"content": t, "id": i}) + "\n" for i, t in enumerate(texts)))
    prep("--source", jl, "--text_column", "content", "--out_dir", tmp_path / "j", "--val_tokens", "60")
    pq = tmp_path / "pq"
    pq.mkdir()
    import pyarrow as pa
    import pyarrow.parquet as papq
    papq.write_table(pa.table({"text": texts[:30]}), pq / "a.parquet")
    papq.write_table(pa.table({"text": texts[30:]}), pq / "b.parquet")
    prep("--source", pq, "--out_dir", tmp_path / "p", "--val_tokens", "60")
    for out in (tmp_path / "j", tmp_path / "p"):
        meta = json.loads((out / "meta.json").read_text())
        val = np.asarray(load_tokens(out / meta["shards"][0]))
        assert len(val) == 60 and meta["tokens"]["val"] == 60  # fixed val token count
        train = np.concatenate([np.asarray(load_tokens(out / s)) for s in meta["shards"][1:]])
        expect = np.concatenate([[EOT] + enc.encode_ordinary(t) for i, t in enumerate(texts)
                                 if i % 20 or i >= 40])  # docs 0 and 20 filled val; doc 40 is train
        assert np.array_equal(train, expect)
    txt = tmp_path / "txt"
    txt.mkdir()
    for i in range(3):
        (txt / f"{i}.txt").write_text(texts[i] + "\nsecond line\n")
    meta = prep("--source", txt, "--out_dir", tmp_path / "t", "--val_tokens", "10")
    assert meta["documents"] == {"train": 2, "val": 1}  # one file = one document


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing", "empty", "column", "offline", "mismatch", "not_utf8", "fake_gz",
                                  "damaged_progress"])
def test_prepare_errors_are_one_clear_line(tmp_path, capsys, case):
    out = tmp_path / "out"
    if case == "missing":
        argv, match = ["--source", tmp_path / "nope.jsonl"], "does not exist"
    elif case == "empty":
        (tmp_path / "e.jsonl").write_text("")
        argv, match = ["--source", tmp_path / "e.jsonl"], "is empty"
    elif case == "column":
        (tmp_path / "c.jsonl").write_text(json.dumps({"body": "hi"}) + "\n")
        argv, match = ["--source", tmp_path / "c.jsonl"], "no column 'text'.*--text_column"
    elif case == "offline":
        argv, match = ["--source", "fineweb-edu"], "offline.*--source sample"
    elif case == "not_utf8":
        (tmp_path / "t").mkdir()
        (tmp_path / "t" / "a.txt").write_text("fine text\n")
        (tmp_path / "t" / "b.txt").write_bytes(b"caf\xe9 latin-1\n")
        argv, match = ["--source", tmp_path / "t"], r"b\.txt is not UTF-8 text \(byte 3\)"
    elif case == "fake_gz":
        (tmp_path / "f.jsonl.gz").write_text('{"text": "not compressed"}\n')
        argv, match = ["--source", tmp_path / "f.jsonl.gz"], "not a readable gzip file"
    elif case == "damaged_progress":
        out.mkdir()
        (out / "progress.json").write_text('{"identity": {"sou')
        argv, match = ["--source", "sample"], r"progress\.json is damaged .* delete .* and rerun"
    else:
        (tmp_path / "c.jsonl").write_text(json.dumps({"text": "hello there " * 50}) + "\n" +
                                          json.dumps({"text": "more words " * 50}) + "\n")
        prep("--source", tmp_path / "c.jsonl", "--out_dir", out, "--val_tokens", "20")
        argv, match = ["--source", "sample"], "other settings"
    before = sorted(p.name for p in out.iterdir()) if out.exists() else None
    argv = [*map(str, argv), "--out_dir", str(out), "--quiet"]
    if case == "offline":  # through the real command line once: exit code 2, one line, no traceback
        proc = subprocess.run([sys.executable, str(ROOT / "prepare_fineweb.py"), *argv], capture_output=True,
                              text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        code, err = proc.returncode, proc.stderr
    else:  # in-process: the same main(), without paying for an interpreter and `datasets` import each time
        with pytest.raises(SystemExit) as e:
            prepare_fineweb.main(argv)
        code, err = e.value.code, capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    import re
    assert re.search(match, lines[0])
    assert (sorted(p.name for p in out.iterdir()) if out.exists() and before is not None else before) == before


def test_documents_that_cannot_be_tokenized_are_skipped_and_counted(tmp_path, capsys):
    rows = [{"text": "a normal document. " * 20}, {"text": None}, {"text": 42}, {"text": "another one. " * 20},
            {"text": "more. " * 30}, {"text": "last. " * 30}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta = prep("--source", tmp_path / "in.jsonl", "--out_dir", tmp_path / "o", "--val_tokens", "10")
    assert "skipped 2 document(s): 2 non-string text" in capsys.readouterr().out
    assert meta["skipped_documents"] == {"non-string text": 2}
    assert meta["documents"] == {"train": 3, "val": 1}  # doc 0 is val; skipped docs keep their index


@pytest.mark.slow
def test_the_sample_needs_no_datasets(tmp_path, monkeypatch, sample_dir):
    """Where `datasets` is not installed (a bare GPU image), the sample is read with gzip + json: same bytes."""
    monkeypatch.setitem(sys.modules, "datasets", None)
    prep("--source", "sample", "--out_dir", tmp_path / "plain")
    for f in sorted(sample_dir.glob("*.bin")):
        assert (tmp_path / "plain" / f.name).read_bytes() == f.read_bytes(), f.name
    with pytest.raises(prepare_fineweb.PrepareError, match="needs the `datasets` package"):
        prep("--source", tmp_path / "x.jsonl", "--out_dir", tmp_path / "y")


def _shard(tmp_path, n=5000, name="x_train_000001.bin"):
    path = tmp_path / name
    write_shard(path, np.arange(n) % 50257)
    return path


def test_header_errors_name_the_file(tmp_path):
    good = _shard(tmp_path)
    assert read_header(good) == 5000
    raw = bytearray(good.read_bytes())
    for field, value, match in [(0, 12345, "magic 12345"), (1, 7, "version 7")]:
        bad = bytearray(raw)
        bad[4 * field: 4 * field + 4] = np.int32(value).tobytes()
        p = tmp_path / f"bad{field}_train.bin"
        p.write_bytes(bytes(bad))
        with pytest.raises(DataError, match=match) as e:
            read_header(p)
        assert str(p) in str(e.value)
    trunc = tmp_path / "trunc_train.bin"
    trunc.write_bytes(bytes(raw[:3000]))
    with pytest.raises(DataError, match="truncated"):
        read_header(trunc)
    tiny = tmp_path / "tiny_train.bin"
    tiny.write_bytes(bytes(raw[:100]))
    with pytest.raises(DataError, match="truncated"):
        read_header(tiny)


def distinct_ids(n, i):
    """A shard's tokens that no other shard holds (shard i: 10000 i + 1 ...), after the document start every shard
    begins with."""
    ids = np.arange(n) + 10000 * i + 1
    ids[0] = EOT
    return ids


def _windows(loader, n):
    return [loader.next_batch()[0] for _ in range(n)]


def test_two_ranks_are_disjoint_and_cover_the_data(tmp_path):
    for i, n in enumerate((4000, 2500, 3300)):
        write_shard(tmp_path / f"d_train_{i:06d}.bin", distinct_ids(n, i))
    B, T = 2, 50
    ranks = [ShardLoader(tmp_path, "train", B, T, r, 2) for r in range(2)]
    steps = sum(ranks[0].n_blocks)  # one epoch
    seen = [torch_cat(_windows(ld, steps)) for ld in ranks]
    assert not set(seen[0].tolist()) & set(seen[1].tolist())
    covered = set(seen[0].tolist()) | set(seen[1].tolist())
    usable = sum(ranks[0].n_blocks) * 2 * B * T
    assert len(covered - {EOT}) == usable - 3  # every usable window, once (each shard's first token is EOT)
    # the epoch wraps: the next batch is the first one again
    assert np.array_equal(ranks[0].next_batch()[0], ShardLoader(tmp_path, "train", B, T, 0, 2).next_batch()[0])


def torch_cat(ws):
    return np.concatenate([w.reshape(-1).numpy() for w in ws])


@pytest.mark.parametrize("shuffle", [False, True])
def test_loader_resumes_at_the_exact_next_window(tmp_path, shuffle):
    for i, n in enumerate((4000, 2500, 3300)):
        write_shard(tmp_path / f"d_train_{i:06d}.bin", distinct_ids(n, i))
    a = ShardLoader(tmp_path, "train", 2, 50, 1, 2, shuffle=shuffle, seed=5)
    straight = _windows(a, 60)  # crosses shards and epochs
    b = ShardLoader(tmp_path, "train", 2, 50, 1, 2, shuffle=shuffle, seed=5)
    first = _windows(b, 23)
    state = json.loads(json.dumps(b.state_dict()))  # survives serialisation
    c = ShardLoader(tmp_path, "train", 2, 50, 1, 2, shuffle=shuffle, seed=5)
    c.load_state_dict(state)
    resumed = first + _windows(c, 37)
    assert all(np.array_equal(x, y) for x, y in zip(straight, resumed))
    if shuffle:  # a different seed gives a different order
        d = ShardLoader(tmp_path, "train", 2, 50, 1, 2, shuffle=True, seed=6)
        assert not all(np.array_equal(p, q) for p, q in zip(straight, _windows(d, 60)))


@pytest.mark.parametrize("shuffle", [False, True])
def test_a_step_sees_the_same_tokens_however_it_is_split(tmp_path, shuffle):
    """1 rank x 1 micro-batch of 4 rows, 1 rank x 2 micro-batches of 2, 2 ranks x 1 of 2: the same rows per step."""
    for i, n in enumerate((4000, 2500, 3300)):
        write_shard(tmp_path / f"d_train_{i:06d}.bin", distinct_ids(n, i))

    def steps(B, world, accum, n=12):
        loaders = [ShardLoader(tmp_path, "train", B, 50, r, world, shuffle=shuffle, seed=3, accum=accum)
                   for r in range(world)]
        out = []
        for _ in range(n):
            rows = [ld.next_batch()[0] for _ in range(accum) for ld in loaders]
            out.append(sorted(map(tuple, torch_cat(rows).reshape(-1, 50).tolist())))
        return out

    one = steps(4, 1, 1)
    assert steps(2, 1, 2) == one and steps(2, 2, 1) == one and steps(1, 2, 2) == one
    assert steps(4, 1, 1) == one  # deterministic
    if shuffle:
        other = [ShardLoader(tmp_path, "train", 4, 50, shuffle=True, seed=4).next_batch()[0] for _ in range(1)]
        assert one[0] != sorted(map(tuple, other[0].tolist()))  # another seed, another order


def test_targets_are_inputs_shifted_and_val_is_fixed(sample_dir):
    ld = ShardLoader(sample_dir, "train", 2, 16)
    x, y = ld.next_batch()
    assert x.dtype.is_floating_point is False and x.shape == (2, 16)
    assert np.array_equal(x.reshape(-1)[1:].numpy(), y.reshape(-1)[:-1].numpy())
    v, steps = val_batches(sample_dir, 4, 64, 0, 1, 1024)
    assert steps == 4
    with pytest.raises(DataError, match="'val' shards .* too small"):
        val_batches(sample_dir, 64, 1024, 0, 1, 1024)


def test_for_config_prepares_exactly_one_pass_of_whole_steps(tmp_path, capsys):
    """--for_config: enough tokens that the loader yields max_steps whole steps (each shard's tail is skipped)."""
    assert prepare_fineweb.tokens_for_config(ROOT / "configs/gpt2_124m.py", 10 ** 8) == 25 * 10 ** 8 + 18 * 524288 + 1
    prep("--source", "sample", "--for_config", ROOT / "configs/smoke.py", "--shard_tokens", 1000,
         "--out_dir", tmp_path / "d")
    loader = ShardLoader(tmp_path / "d", "train", 4, 64)  # configs/smoke.py: 256 tokens a step, 20 steps
    assert sum(loader.n_blocks) == 20 and len(loader.files) == 7
