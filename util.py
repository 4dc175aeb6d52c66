"""The bottom of the house: the error every command prints as one line, the one atomic file writer, the lock that
makes a folder single-writer, the commit.

Nothing here imports another nanokron module, so data, tokenizer, config and checkpoint code can all use it.
"""
import errno
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


class UserError(RuntimeError):
    """A mistake in the command, config or files: printed as one `error:` line, exit code 2. Every such error in
    nanokron (bad checkpoint, bad data, bad device, ...) is a subclass."""


def warn(msg):
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def write_error(e: OSError, path) -> UserError:
    """An OSError from writing `path`, as one line that says what to do. Nothing written before is changed by the
    failed write (atomic_write removes its temp file), so every message can say: fix it and rerun."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):  # EFBIG: a file-size limit (ulimit -f)
        why = "no space left on the device" if e.errno != errno.EFBIG else "the file size limit (ulimit -f) was hit"
        return UserError(f"{why} writing {path}; what was written before is intact -- free some space (or raise "
                         f"the limit) and rerun the same command")
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return UserError(f"cannot write {path} ({e.strerror}); pass a writable folder")
    if e.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return UserError(f"cannot write {path}: a part of that path is a file, or the file is a folder; pass "
                         f"another path")
    return UserError(f"cannot write {path} ({e.strerror or e}); check the path and the disk")


def make_dir(path) -> Path:
    """mkdir -p, with one error line instead of a traceback when the path cannot be a folder."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(e, path) from None
    if not os.access(path, os.W_OK):
        raise UserError(f"cannot write to {path} (no write permission); pass a writable folder")
    return path


def atomic_write(path, write) -> None:
    """Write a file so that a crash at any moment leaves either the old file or the new one, never half of one:
    write(f) fills a temp file (unique per writer), which is fsynced, renamed over `path`, and the folder fsynced.
    On any failure the temp file is removed and `path` is untouched; a full disk is one UserError line."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise write_error(e, path) from None
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FolderLock:
    """An exclusive lock on <folder>/.lock for as long as it is held: one writer per run folder (train.py) or data
    folder (prepare_fineweb.py). It is an OS lock (flock): the kernel drops it when the process dies, so `kill -9`
    leaves no stale lock. On NFS it needs a lock manager (NFSv4 has one). Platforms without fcntl (Windows) run
    without it. `what` names the holder's kind in the error, e.g. 'training run'."""

    def __init__(self, folder, what):
        self.file = None
        try:
            import fcntl
        except ImportError:
            return
        try:
            f = open(Path(folder) / ".lock", "a+")
        except OSError as e:
            raise write_error(e, Path(folder) / ".lock") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "an unknown process"
            f.close()
            raise UserError(f"{folder} is in use by another {what} ({holder}); wait for it to finish, stop it, "
                            f"or pass another output folder") from None
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


def git_commit():
    """The commit of this checkout ('<sha>-dirty' when tracked files differ from it), or None outside git."""
    try:
        def git(*args):
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        sha = git("rev-parse", "HEAD")
        return (sha + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")) or None
    except Exception:
        return None
