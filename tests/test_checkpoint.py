"""checkpoint.py on its own: the atomic writer, round trip, rotation, quarantine, the run lock, a full disk."""
import errno
import os

import pytest
import torch

import checkpoint
from checkpoint import (CheckpointError, RunLock, atomic_write, latest_checkpoint, list_checkpoints, load_checkpoint,
                        rotate, save_checkpoint)
from model import GPT, GPTConfig

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
    fake_run(tmp_path, steps=(10,))
    before = (tmp_path / "ckpt_0000010.pt").read_bytes()

    def no_space(obj, f):
        f.write(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(checkpoint.torch, "save", no_space)
    with pytest.raises(CheckpointError, match="no space left .* previous checkpoints are intact"):
        save_checkpoint(tmp_path / "ckpt_0000020.pt", {"step": 20})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_0000010.pt"]
    assert (tmp_path / "ckpt_0000010.pt").read_bytes() == before


def test_rotation_never_keeps_an_unreadable_newest_and_protects_the_last_good(tmp_path, capsys):
    fake_run(tmp_path, steps=(10, 15, 20))
    (tmp_path / "ckpt_0000030.pt").write_bytes(b"garbage")
    rotate(tmp_path, keep=1, protect="ckpt_0000010.pt")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_0000010.pt", "ckpt_0000020.pt"]
    assert (tmp_path / "ckpt_0000030.pt.corrupt").exists()
    assert "ckpt_0000030.pt is unreadable: moved aside to ckpt_0000030.pt.corrupt" in capsys.readouterr().err


def test_latest_skips_unreadable_and_only_the_owner_moves_it(tmp_path, capsys):
    fake_run(tmp_path, steps=(10,))
    (tmp_path / "ckpt_0000020.pt").write_bytes(b"")
    path, ckpt = latest_checkpoint(tmp_path)
    assert path.name == "ckpt_0000010.pt" and (tmp_path / "ckpt_0000020.pt").exists()
    path, _ = latest_checkpoint(tmp_path, move_unreadable=True)
    assert path.name == "ckpt_0000010.pt" and (tmp_path / "ckpt_0000020.pt.corrupt").exists()
    (tmp_path / "ckpt_0000010.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        latest_checkpoint(tmp_path, move_unreadable=True)


def test_not_a_nanokron_checkpoint(tmp_path):
    torch.save({"model": {}, "step": 3}, tmp_path / "ckpt_0000003.pt")
    with pytest.raises(CheckpointError, match="not a nanokron checkpoint .*model_args"):
        load_checkpoint(tmp_path / "ckpt_0000003.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_run_lock_is_exclusive_and_names_the_holder(tmp_path):
    lock = RunLock(tmp_path)
    with pytest.raises(CheckpointError, match=rf"in use by another training run \(pid {os.getpid()} on host "):
        RunLock(tmp_path)
    lock.release()
    RunLock(tmp_path).release()  # released: the next run takes it
