"""Files kept open for writing and for reading between calls, as knfsd's file cache (fs/nfsd/filecache.c).

NFSv3 is stateless: every READ and WRITE names its file by handle, and a READ,
a WRITE or a COMMIT would reopen it (an ``open`` of ``/proc/self/fd/N`` as the
caller, and a ``close``).  A client writing a file sends CREATE, WRITE, COMMIT
or many WRITEs in a row, and one reading it many READs, so the descriptor a
CREATE, a WRITE or a READ opened is kept (one for writing and one for reading
per file), for the same caller, while nothing that decides permissions may
have changed:

- the same identity (uid, gid, groups) as the one the kernel let open it;
- the same mode, owner, group and ctime as the entry last saw.  Every change
  of permission (chmod, chown, an ACL, chattr) changes the ctime; the calls
  that write through the entry record the ctime their own write made.

Anything else gets a fresh open, which then replaces the entry.  A COMMIT
syncs through any kept descriptor of the file: fsync needs no permission.
Entries go when idle for ``idle`` seconds (knfsd's laundrette: a file held
open for writing cannot be executed, ETXTBSY), when the file is removed
through NFS, and when deleted on the server (:meth:`FileCache.sweep`).

Used on the reactor thread only.  A descriptor lent to a call (:meth:`writer`,
:meth:`reader`, :meth:`syncer`) is closed only after the call gives it back (:meth:`OpenFile.release`):
io_uring may still be writing through it.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from typing import Callable, Optional

#: Open files kept at most (least recently used go first).
SIZE = 256
#: Seconds a kept file stays open unused.
IDLE = 2.0
#: The last part of a reading descriptor's key, ``(st_dev, st_ino, READING)``; a writing one's is ``(st_dev, st_ino)``.
READING = "r"


class OpenFile:
    """One kept descriptor: whom it was opened for, what its inode looked like, and who uses it now."""

    __slots__ = ("fd", "who", "seen", "used", "users", "dropped")

    def __init__(self, fd: int, who, st: os.stat_result, now: float) -> None:
        self.fd = fd
        self.who = who
        self.seen = _permission_key(st)
        self.used = now
        self.users = 0
        self.dropped = False

    def release(self) -> None:
        """The call it was lent to is done with it: closed now if the cache dropped it meanwhile."""
        self.users -= 1
        if self.dropped and self.users == 0:
            _close(self.fd)


def _permission_key(st: os.stat_result) -> tuple:
    return (st.st_mode, st.st_uid, st.st_gid, st.st_ctime_ns)


class FileCache:
    """Writable descriptors by inode (``(st_dev, st_ino)``), readable ones beside them (``(st_dev, st_ino,
    READING)``); see the module's docstring for when one is used."""

    def __init__(self, size: int = SIZE, idle: float = IDLE, clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self.idle = idle
        self.clock = clock
        self._files: OrderedDict[tuple, OpenFile] = OrderedDict()
        #: WRITEs and READs served by a kept descriptor, and by a fresh open.
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._files)

    def writer(self, who, st: os.stat_result) -> Optional[OpenFile]:
        """A kept writable descriptor of the inode ``st`` (a fresh fstat) that ``who`` may use, lent until
        :meth:`OpenFile.release`; None if there is none (a stale entry is dropped)."""
        return self._usable((st.st_dev, st.st_ino), who, st)

    def reader(self, who, st: os.stat_result) -> Optional[OpenFile]:
        """A kept read-only descriptor of the inode ``st`` that ``who`` may use, as :meth:`writer`."""
        return self._usable((st.st_dev, st.st_ino, READING), who, st)

    def _usable(self, key: tuple, who, st: os.stat_result) -> Optional[OpenFile]:
        entry = self._files.get(key)
        if entry is None:
            self.misses += 1
            return None
        if entry.who != who or entry.seen != _permission_key(st):
            self._drop(key)
            self.misses += 1
            return None
        self.hits += 1
        return self._lend(key, entry)

    def syncer(self, st: os.stat_result) -> Optional[OpenFile]:
        """Any kept descriptor of the inode ``st``, for fsync (which checks no permission); lent likewise."""
        key = (st.st_dev, st.st_ino)
        entry = self._files.get(key)
        if entry is None:
            return None
        return self._lend(key, entry)

    def _lend(self, key: tuple, entry: OpenFile) -> OpenFile:
        entry.users += 1
        entry.used = self.clock()
        self._files.move_to_end(key)
        return entry

    def saw(self, entry: OpenFile, st: os.stat_result) -> None:
        """A call wrote through ``entry`` and its fstat afterwards is ``st``: the new ctime is its own."""
        entry.seen = _permission_key(st)

    def keep(self, fd: int, who, st: os.stat_result, lend: bool = False, reading: bool = False) -> OpenFile:
        """Keep ``fd`` (opened by ``who`` for writing, or with ``reading`` read-only; ``st`` its fstat now), which
        now belongs to the cache; with ``lend``, lent at once to the call that opened it."""
        key = (st.st_dev, st.st_ino, READING) if reading else (st.st_dev, st.st_ino)
        if key in self._files:
            self._drop(key)
        entry = self._files[key] = OpenFile(fd, who, st, self.clock())
        if lend:
            entry.users = 1
        while len(self._files) > self.size:
            self._drop(next(iter(self._files)))
        return entry

    def forget(self, st: os.stat_result) -> None:
        """The inode ``st`` was removed: its blocks must not stay allocated by a kept descriptor."""
        self._drop((st.st_dev, st.st_ino))
        self._drop((st.st_dev, st.st_ino, READING))

    def sweep(self) -> int:
        """Close what has been idle for :attr:`idle` seconds and what was deleted meanwhile; how many."""
        now = self.clock()
        closed = 0
        for key, entry in list(self._files.items()):
            if now - entry.used > self.idle or _deleted(entry.fd):
                self._drop(key)
                closed += 1
        return closed

    def close(self) -> None:
        for key in list(self._files):
            self._drop(key)

    def _drop(self, key: tuple) -> None:
        entry = self._files.pop(key, None)
        if entry is None:
            return
        entry.dropped = True
        if entry.users == 0:
            _close(entry.fd)


def _deleted(fd: int) -> bool:
    try:
        return os.fstat(fd).st_nlink == 0
    except OSError:
        return True


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
