"""Reading a directory at a cookie with getdents64(2).

A READDIR cookie is the filesystem's own directory offset (``d_off``, what
telldir returns): on ext4, xfs and btrfs it names a position by hash or index,
so it survives unrelated creates and deletes, and hard links or "." and ".."
never collide as fileids would (docs/architecture.md, "Directory
cookies are stable").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import struct
from typing import Iterator

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long
_SYS_GETDENTS64 = {"x86_64": 217, "aarch64": 61}[platform.machine()]
_HEAD = struct.Struct("=QqHB")  # d_ino, d_off, d_reclen, d_type


def entries(fd: int, cookie: int, bufsize: int = 32768) -> Iterator[tuple[int, bytes, int]]:
    """(fileid, name, cookie of the next entry) from position ``cookie`` of the open directory ``fd``."""
    os.lseek(fd, cookie, os.SEEK_SET)
    buf = ctypes.create_string_buffer(bufsize)
    while True:
        n = _libc.syscall(_SYS_GETDENTS64, fd, buf, bufsize)
        if n < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        if n == 0:
            return
        data = buf.raw[:n]
        pos = 0
        while pos < n:
            ino, off, reclen, _ = _HEAD.unpack_from(data, pos)
            name = data[pos + _HEAD.size : pos + reclen].split(b"\0", 1)[0]
            pos += reclen
            yield ino, name, off & 0x7FFFFFFFFFFFFFFF
