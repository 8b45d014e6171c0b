"""inotify(7) through ctypes: which watched directories saw a change.

Only what the listing cache (:mod:`nfsstack.nfs3.local.listings`) needs: watch a
directory for changes to itself and to the entries in it, and read the queued
events without blocking.  The kernel queues an event while the system call
that caused it runs, so a read after that call returns sees it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
import weakref
from typing import Iterator

IN_ACCESS = 0x001
IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
#: Everything that changes what a listing of the directory shows: names, and any attribute of an entry.
CHANGES = (IN_ACCESS | IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE
           | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)

_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("=iIII")  # wd, mask, cookie, len (inotify_event, name follows)
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _checked(result: int) -> int:
    if result < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return result


class Inotify:
    """One inotify instance, non-blocking."""

    def __init__(self) -> None:
        self.fd = _checked(_libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC))
        self._closer = weakref.finalize(self, os.close, self.fd)  # an instance is a scarce thing (max_user_instances)

    def watch(self, fd: int, mask: int = CHANGES) -> int:
        """Watch the directory open as ``fd`` (any descriptor, O_PATH too); the watch descriptor."""
        return _checked(_libc.inotify_add_watch(self.fd, f"/proc/self/fd/{fd}".encode(), mask))

    def unwatch(self, wd: int) -> None:
        _libc.inotify_rm_watch(self.fd, wd)

    def events(self) -> Iterator[tuple[int, int, bool]]:
        """(watch descriptor, mask, whether the event names an entry) of every queued event."""
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            pos, n = 0, len(data)
            while pos + 16 <= n:
                wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
                pos += 16 + length
                yield wd, mask, length > 0

    def close(self) -> None:
        self._closer()
        self.fd = -1
