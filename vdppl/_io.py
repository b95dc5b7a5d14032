"""Files that are written whole or not at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _fsync_file(path: str) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _fsync_directory(path: Path) -> None:
    """Make a rename in ``path`` durable; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows, where a directory cannot be opened for fsync
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then move the finished file onto ``path`` atomically.

    The temporary file lives in the destination's directory, so ``os.replace`` is a rename
    on the same file system: a reader sees the old file or the new one, never a partial
    one, and an exception in ``write`` leaves any existing ``path`` untouched. The
    temporary file is flushed to disk (``fsync``) before the rename and the directory
    after it, so that a crash or power loss right after the call cannot leave ``path``
    empty or pointing at the old file. The file gets the mode a plain ``open()`` would
    give it, ``0o666 & ~umask`` (``tempfile.mkstemp`` creates it ``0o600``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _fsync_directory(path.parent)
    return path
