"""``fstatat(2)`` into a reusable buffer: the raw ``struct stat`` as an exact cache key.

A READDIRPLUS reply (RFC 1813 section 3.3.17) carries the attributes of every
entry, and knfsd stats every entry on every call; so do we, with fresh
attributes.  What costs in Python is not the system call but building an
``os.stat_result`` and packing fattr3 (RFC 1813 section 2.6) field by field.
Here the kernel fills a buffer and its bytes are the key of a cache of encoded
attributes: any change to the object (size, times, mode, owner, links, even
atime) changes those bytes, so a hit is exactly what a new stat would give,
and only a miss decodes the fields.  Layouts of x86_64 and aarch64; elsewhere
:data:`SUPPORTED` is false and callers use ``os.stat``.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
from typing import Optional

#: (syscall number of newfstatat, size of struct stat, decoder of its fields) per machine.
_LAYOUTS = {
    # arch/x86/include/uapi/asm/stat.h
    "x86_64": (262, 144, struct.Struct("=QQQIII4xQqqqQQQQQQ24x"),
               ("dev", "ino", "nlink", "mode", "uid", "gid", "rdev", "size", "blksize", "blocks",
                "atime", "atime_ns", "mtime", "mtime_ns", "ctime", "ctime_ns")),
    # include/uapi/asm-generic/stat.h
    "aarch64": (79, 128, struct.Struct("=QQIIIIQ8xqi4xqqQqQqQ8x"),
                ("dev", "ino", "mode", "nlink", "uid", "gid", "rdev", "size", "blksize", "blocks",
                 "atime", "atime_ns", "mtime", "mtime_ns", "ctime", "ctime_ns")),
}
_AT_SYMLINK_NOFOLLOW = 0x100
_layout = _LAYOUTS.get(platform.machine())
SUPPORTED = _layout is not None
if SUPPORTED:
    _NR, SIZE, _RAW, _FIELDS = _layout
    _ORDER = [_FIELDS.index(n) for n in ("dev", "ino", "nlink", "mode", "uid", "gid", "rdev", "size", "blocks",
                                          "atime", "atime_ns", "mtime", "mtime_ns", "ctime", "ctime_ns")]
    _syscall = ctypes.CDLL(None, use_errno=True).syscall
    _syscall.restype = ctypes.c_long

_FATTR3 = struct.Struct(">5I2Q2I2Q6I")
_FTYPE = {0o100000: 1, 0o040000: 2, 0o060000: 3, 0o020000: 4, 0o120000: 5, 0o140000: 6, 0o010000: 7}


class Stat:
    """The decoded fields of a raw ``struct stat`` that fattr3 and handles need."""

    __slots__ = ("dev", "ino", "nlink", "mode", "uid", "gid", "rdev", "size", "blocks",
                 "atime", "atime_ns", "mtime", "mtime_ns", "ctime", "ctime_ns")

    def __init__(self, raw: bytes) -> None:
        values = _RAW.unpack(raw)
        for name, i in zip(self.__slots__, _ORDER):
            setattr(self, name, values[i])

    @property
    def ctime_total_ns(self) -> int:
        return self.ctime * 1_000_000_000 + self.ctime_ns

    def fattr3(self, fsid: int) -> bytes:
        """fattr3 (RFC 1813 section 2.6), as :func:`nfsstack.nfs3.codec.fattr3` packs an ``os.stat_result``."""
        rdev = self.rdev
        return _FATTR3.pack(
            _FTYPE.get(self.mode & 0o170000, 1), self.mode & 0o7777, self.nlink & 0xFFFFFFFF, self.uid, self.gid,
            self.size, self.blocks * 512, os.major(rdev) if rdev else 0, os.minor(rdev) if rdev else 0, fsid,
            self.ino, self.atime & 0xFFFFFFFF, self.atime_ns, self.mtime & 0xFFFFFFFF, self.mtime_ns,
            self.ctime & 0xFFFFFFFF, self.ctime_ns,
        )


class Buffer:
    """One reusable ``struct stat`` for ``lstat`` of names under a directory descriptor."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = ctypes.create_string_buffer(SIZE)

    def lstat(self, dirfd: int, name: bytes) -> Optional[bytes]:
        """The raw ``struct stat`` of ``name`` under ``dirfd`` (not following a symlink), or None on an error."""
        if _syscall(_NR, dirfd, name, self._buf, _AT_SYMLINK_NOFOLLOW) != 0:
            return None
        return self._buf.raw
