"""checkpoint.py on its own: the atomic writer, round trip, rotation, quarantine, the run lock, a full disk, and
what makes a checkpoint trusted: data only (no pickle payload runs), CRC-checked, the step its name says."""
import os
import shutil
import zipfile

import pytest
import torch

import util
from checkpoint import (CheckpointError, UntrustedCheckpoint, latest_checkpoint, list_checkpoints, load_checkpoint,
                        read_checkpoint, rotate, save_checkpoint)
from model import GPT, GPTConfig
from util import FolderLock, UserError, atomic_write

TINY = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, input_embedding="kronecker", kron_pos_dim=2)


def fake_run(tmp_path, steps=(10, 20), model=None):
    model = model or GPT(TINY)
    for s in steps:
        save_checkpoint(tmp_path / f"ckpt_{s:07d}.pt", {"model": model.state_dict(), "step": s,
                                                        "model_args": vars(TINY).copy()})
    return model


def test_round_trip_rebuilds_the_arm_from_the_file_alone(tmp_path):
    torch.manual_seed(0)
    model = fake_run(tmp_path, steps=(5,))
    loaded, ckpt = load_checkpoint(tmp_path)  # a run folder resolves to its newest checkpoint
    assert ckpt["step"] == 5 and loaded.config == TINY and not loaded.training
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    idx = torch.randint(0, 50257, (1, 8))
    assert torch.equal(model.eval()(idx)[0], loaded(idx)[0])


def test_atomic_write_leaves_the_old_file_on_any_failure(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write(path, lambda f: f.write(b"old"))

    def boom(f):
        f.write(b"half")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, boom)
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_full_disk_is_one_clear_error_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """A real ENOSPC from the kernel: the temp file is opened on /dev/full. The checkpoint is serialised in memory
    first, so torch's zip writer never meets the full disk (it would raise a RuntimeError, not an OSError)."""
    fake_run(tmp_path, steps=(10,))
    before = (tmp_path / "ckpt_0000010.pt").read_bytes()
    real_open = open
    monkeypatch.setattr(util, "open", lambda path, mode="r", *a, **k: real_open("/dev/full", mode, *a, **k),
                        raising=False)
    with pytest.raises(UserError, match="no space left on the device writing .*ckpt_0000020.pt; what was written "
                                        "before is intact"):
        save_checkpoint(tmp_path / "ckpt_0000020.pt", {"step": 20, "w": torch.zeros(1 << 16)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_0000010.pt"]
    assert (tmp_path / "ckpt_0000010.pt").read_bytes() == before


def test_rotation_never_keeps_an_unreadable_newest_and_protects_the_last_good(tmp_path, capsys):
    fake_run(tmp_path, steps=(10, 15, 20))
    (tmp_path / "ckpt_0000030.pt").write_bytes(b"garbage")
    rotate(tmp_path, keep=1, protect="ckpt_0000010.pt")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_0000010.pt", "ckpt_0000020.pt"]
    assert (tmp_path / "ckpt_0000030.pt.corrupt").exists()
    assert "ckpt_0000030.pt cannot be used: moved aside to ckpt_0000030.pt.corrupt" in capsys.readouterr().err


def test_latest_skips_unreadable_and_only_the_owner_moves_it(tmp_path, capsys):
    fake_run(tmp_path, steps=(10,))
    (tmp_path / "ckpt_0000020.pt").write_bytes(b"")
    path, ckpt = latest_checkpoint(tmp_path)
    assert path.name == "ckpt_0000010.pt" and (tmp_path / "ckpt_0000020.pt").exists()
    path, _ = latest_checkpoint(tmp_path, move_unreadable=True)
    assert path.name == "ckpt_0000010.pt" and (tmp_path / "ckpt_0000020.pt.corrupt").exists()
    (tmp_path / "ckpt_0000010.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        latest_checkpoint(tmp_path, move_unreadable=True)


def test_not_a_nanokron_checkpoint(tmp_path):
    torch.save({"model": {}, "step": 3}, tmp_path / "ckpt_0000003.pt")
    with pytest.raises(CheckpointError, match="not a nanokron checkpoint .*model_args"):
        load_checkpoint(tmp_path / "ckpt_0000003.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_run_lock_is_exclusive_and_names_the_holder(tmp_path):
    lock = FolderLock(tmp_path, "training run")
    with pytest.raises(UserError, match=rf"in use by another training run \(pid {os.getpid()} on host "):
        FolderLock(tmp_path, "training run")
    lock.release()
    FolderLock(tmp_path, "training run").release()  # released: the next run takes it


class Payload:
    """What a hostile checkpoint holds: unpickling it runs a command (here: it creates a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path, marker, step):
    """A checkpoint-shaped file whose unpickling would create `marker`."""
    torch.save({"model": {}, "step": step, "model_args": vars(TINY).copy(), "x": Payload(marker)}, path)


def test_a_pickle_payload_is_never_run(tmp_path, capsys):
    marker = tmp_path / "pwned"
    fake_run(tmp_path, steps=(10,))
    plant(tmp_path / "ckpt_0000020.pt", marker, 20)
    with pytest.raises(UntrustedCheckpoint, match="pickled objects other than tensors") as e:
        read_checkpoint(tmp_path / "ckpt_0000020.pt")
    assert e.value.suffix == ".unsafe"
    path, _ = latest_checkpoint(tmp_path, move_unreadable=True)  # resume
    assert path.name == "ckpt_0000010.pt" and (tmp_path / "ckpt_0000020.pt.unsafe").exists()
    plant(tmp_path / "ckpt_0000030.pt", marker, 30)
    rotate(tmp_path, keep=3)  # rotation opens every checkpoint
    plant(tmp_path / "ckpt_0000040.pt", marker, 40)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "ckpt_0000040.pt")  # sample.py, export_hf.py and the probes load this way
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_0000010.pt", "ckpt_0000020.pt.unsafe",
                                                          "ckpt_0000030.pt.unsafe", "ckpt_0000040.pt"]


def flip_bit_in_a_tensor(path):
    """Flip one exponent bit of the first float of the largest tensor record, leaving the zip structure intact."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    with open(path, "rb") as f:  # the record's data starts after its local header (30 bytes + name + extra)
        f.seek(info.header_offset + 26)
        n, m = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
    start = info.header_offset + 30 + n + m
    raw[start + 3] ^= 0x40
    path.write_bytes(bytes(raw))


def test_a_flipped_bit_is_caught_and_the_previous_checkpoint_used(tmp_path, capsys):
    fake_run(tmp_path, steps=(10, 20))
    newest = tmp_path / "ckpt_0000020.pt"
    flip_bit_in_a_tensor(newest)
    torch.load(newest, weights_only=True)  # torch alone would load the damaged weights
    with pytest.raises(UntrustedCheckpoint, match="fails its CRC check"):
        read_checkpoint(newest)
    path, ckpt = latest_checkpoint(tmp_path, move_unreadable=True)
    assert path.name == "ckpt_0000010.pt" and (tmp_path / "ckpt_0000020.pt.corrupt").exists()


def test_a_checkpoint_under_another_steps_name_is_not_trusted(tmp_path, capsys):
    fake_run(tmp_path, steps=(10, 20))
    shutil.copy(tmp_path / "ckpt_0000010.pt", tmp_path / "ckpt_0000099.pt")
    path, ckpt = latest_checkpoint(tmp_path, move_unreadable=True)
    assert path.name == "ckpt_0000020.pt" and ckpt["step"] == 20
    assert (tmp_path / "ckpt_0000099.pt.misnamed").exists()
    assert "holds step 10 but its name says step 99" in capsys.readouterr().err
    rotate(tmp_path, keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_0000020.pt"]
