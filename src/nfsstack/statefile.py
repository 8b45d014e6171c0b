"""Small state files that survive crashes: written whole to a temporary file, fsynced, then renamed."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``: after a crash it holds either the old or the new contents."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def make_private(path: Path, mode: int) -> int | None:
    """Take away the group's and others' access to ``path`` (a state directory, the handle key): its mode
    becomes ``mode``.  The mode it had, when that gave others any access; None when it was private already."""
    st = os.stat(path)
    if st.st_mode & 0o077 == 0:
        return None
    os.chmod(path, mode)
    return st.st_mode & 0o7777
