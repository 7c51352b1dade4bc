"""Atomic file writes, shared by every writer of the package (checkpoints, metrics,
exported models, structure files, the LAMMPS plugin).

The data goes to a temporary file in the target's folder, is flushed to disk (fsync) and
then moved over the target with ``os.replace``. So:

- a reader never sees a partial file, and a crash, an error or Ctrl-C (KeyboardInterrupt)
  mid-write leaves the previous file intact and removes the temporary file;
- the final file never appears with 0 bytes under its name (it is renamed only once
  written completely);
- the final file gets the permissions a plain ``open(path, "w")`` would give a new file,
  ``0o666 & ~umask`` (``mkstemp`` alone would leave 0o600).

Temporary files are named ``.<name>.<random>.tmp``. Only a process killed outright
(``kill -9``, power loss) can leave one behind; such stale ``.*.tmp`` files are never read
by anything here and may be deleted at will.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

from forcefield.errors import InputError

__all__ = ["atomic_path", "write_text", "write_bytes", "save_torch", "current_umask"]

PathLike = Union[str, os.PathLike]


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (thread-safe)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: set and restore (briefly racy with other threads)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: PathLike, mode: int = 0o666) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it replaces ``path``.

    ``mode`` is masked with the umask, like ``open()`` does (0o777 for an executable or a
    shared library). On any exception, KeyboardInterrupt included, the temporary file is
    removed and ``path`` is left as it was. InputError if ``path`` is a directory.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, mode & ~current_umask())
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(text: str, path: PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(data: bytes, path: PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def save_torch(obj, path: PathLike) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
