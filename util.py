"""The bottom of the house: the error every command prints as one line, the one atomic file writer, the commit.

Nothing here imports another nanokron module, so data, tokenizer, config and checkpoint code can all use it.
"""
import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


class UserError(RuntimeError):
    """A mistake in the command, config or files: printed as one `error:` line, exit code 2. Every such error in
    nanokron (bad checkpoint, bad data, bad device, ...) is a subclass."""


def warn(msg):
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def atomic_write(path, write) -> None:
    """Write a file so that a crash at any moment leaves either the old file or the new one, never half of one:
    write(f) fills a temp file (unique per writer), which is fsynced, renamed over `path`, and the folder fsynced.
    On any failure the temp file is removed and `path` is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def git_commit():
    """The commit of this checkout ('<sha>-dirty' when tracked files differ from it), or None outside git."""
    try:
        def git(*args):
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        sha = git("rev-parse", "HEAD")
        return (sha + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")) or None
    except Exception:
        return None
