"""Granted NLM locks held a second time as Linux OFD locks on the exported file (docs/architecture.md, "Locks
are real").

Each lock owner gets its own open file description of the file, and the
owner's locks are taken on it with ``F_OFD_SETLK``: the kernel merges and
splits them just as the lock table does, local processes (POSIX ``fcntl``
locks and OFD locks) see and respect them, and a lock a local process holds
keeps the table from granting a conflicting one.  The descriptor is closed
when its owner holds nothing more on the file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from typing import Any, Callable, Hashable, Optional

from nfsstack.logs import logger
from nfsstack.nlm.locks import END, FileLocks, Lock, Owner

log = logger("nfsstack.nlm")

F_OFD_GETLK, F_OFD_SETLK = 36, 37
F_RDLCK, F_WRLCK, F_UNLCK = 0, 1, 2
_FLOCK = struct.Struct("@hhqqi4x")  # struct flock: l_type, l_whence, l_start, l_len, l_pid
OFFSET_MAX = (1 << 63) - 1
#: The owner of a lock held outside the table (a local process, or another server head).
OUTSIDE = Owner("", 0, b"")


def _span(start: int, end: int) -> Optional[tuple[int, int]]:
    """(l_start, l_len) for the kernel, or None for a range it cannot express (starting past 2^63-1)."""
    if start > OFFSET_MAX:
        return None
    if end >= END or end >= OFFSET_MAX:
        return start, 0
    return start, end - start + 1


class OfdMirror:
    """Implements :class:`nfsstack.nlm.locks.Mirror` with OFD locks.

    ``opener(context)`` opens the file a :class:`FileLocks` is about (its
    context is the file handle) and returns a descriptor, read-write when it
    can be.
    """

    def __init__(self, opener: Callable[[Any], tuple[int, bool]]) -> None:
        self.opener = opener
        self._fds: dict[tuple[Hashable, Owner], tuple[int, bool]] = {}

    def __len__(self) -> int:
        return len(self._fds)

    def _fd(self, files: FileLocks, owner: Owner) -> Optional[tuple[int, bool]]:
        entry = self._fds.get((files.key, owner))
        if entry is None:
            try:
                entry = self.opener(files.context)
            except OSError as e:
                log.warn("cannot mirror locks on {key} as OFD locks: {e}", key=files.key, e=e)
                return None
            self._fds[(files.key, owner)] = entry
        return entry

    def acquire(self, files: FileLocks, lock: Lock) -> Optional[Lock]:
        span = _span(lock.start, lock.end)
        entry = self._fd(files, lock.owner)
        if span is None or entry is None:
            return None
        fd, writable = entry
        if lock.exclusive and not writable:
            return None  # the file cannot be opened for writing (read-only filesystem): the table alone decides
        try:
            fcntl.fcntl(fd, F_OFD_SETLK, _FLOCK.pack(F_WRLCK if lock.exclusive else F_RDLCK, os.SEEK_SET, *span, 0))
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                log.warn("OFD lock on {key} failed: {e}", key=files.key, e=e)
                return None
            if not files.holds(lock.owner):
                self._close(files.key, lock.owner)
            return self.test(files, lock) or Lock(OUTSIDE, lock.start, lock.end, True)
        return None

    def test(self, files: FileLocks, lock: Lock) -> Optional[Lock]:
        span = _span(lock.start, lock.end)
        if span is None:
            return None
        entry = self._fds.get((files.key, lock.owner))
        opened = None
        if entry is None:
            try:
                entry = opened = self.opener(files.context)
            except OSError:
                return None
        try:
            raw = fcntl.fcntl(entry[0], F_OFD_GETLK,
                              _FLOCK.pack(F_WRLCK if lock.exclusive else F_RDLCK, os.SEEK_SET, *span, 0))
        except OSError:
            return None
        finally:
            if opened is not None:
                os.close(opened[0])
        kind, _, start, length, _ = _FLOCK.unpack(raw)
        if kind == F_UNLCK:
            return None
        return Lock(OUTSIDE, start, END if length == 0 else start + length - 1, kind == F_WRLCK)

    def release(self, files: FileLocks, owner: Owner, start: int, end: int, holds_more: bool) -> None:
        key = (files.key, owner)
        entry = self._fds.get(key)
        if entry is None:
            return
        if not holds_more:
            self._close(files.key, owner)  # closing the description drops all its locks
            return
        span = _span(start, end)
        if span is not None:
            try:
                fcntl.fcntl(entry[0], F_OFD_SETLK, _FLOCK.pack(F_UNLCK, os.SEEK_SET, *span, 0))
            except OSError as e:
                log.warn("OFD unlock on {key} failed: {e}", key=files.key, e=e)

    def _close(self, key: Hashable, owner: Owner) -> None:
        entry = self._fds.pop((key, owner), None)
        if entry is not None:
            os.close(entry[0])

    def close(self) -> None:
        for fd, _ in self._fds.values():
            os.close(fd)
        self._fds.clear()
