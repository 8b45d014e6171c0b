"""Encoded READDIR and READDIRPLUS replies, kept while nothing they show can have changed.

knfsd builds every listing afresh: getdents and, for READDIRPLUS (RFC 1813
section 3.3.17), an lstat of every entry.  That lstat alone costs more than
nfs-ganesha spends per entry serving from its attribute cache (bench/README.md).
This cache keeps the body of a reply, the entries encoded, by directory,
cookie, sizes, export and caller, and drops it as soon as what it shows may
have changed:

- inotify(7) reports a change to the directory or to an entry in it: a name
  made, removed or renamed, an entry's data, attributes or access time;
- an NFS procedure changed the directory or an object listed in it
  (:meth:`Listings.touched`): a file written through a handle may have no
  path to its directory, which inotify needs;
- the directory's mtime, ctime, size or link count differ from the cached;
- it is older than :data:`TTL`, for what inotify cannot see: writes through
  mmap, blocks allocated at writeback.

Only directories of local filesystems (:data:`LOCAL`) are kept: inotify sees
nothing of what another host does to a network or cluster filesystem, so their
listings are built afresh on every call, as knfsd does for all.

Entries whose attributes can change with no event in this directory are never
kept but taken afresh in every reply (the caller marks them): ".", "..",
subdirectories (their own contents change them), symlinks (reading one
touches its atime, silently) and files with more than one link.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Hashable, Optional, Union

from nfsstack.nfs3.local.inotify import IN_ACCESS, IN_IGNORED, IN_ISDIR, IN_Q_OVERFLOW, Inotify

#: Longest a reply is kept (seconds), whatever inotify says.
TTL = 1.0
#: Bytes of encoded entries kept, over all directories, and how many entries (about 180 bytes each).
MAX_BYTES = 16 << 20
MAX_ENTRIES = 1 << 17
#: What a chunk costs beyond its kept bytes (key, object, index), charged to MAX_BYTES: a client asking for many
#: different cookies and sizes of an empty directory makes chunks of no bytes, and their number is bounded too.
CHUNK_COST = 512
#: Directories watched at once (each watch pins its inode in memory).
MAX_DIRS = 1024

#: statfs(2) f_type of the filesystems whose every change inotify reports: ext2/3/4, xfs, btrfs, tmpfs, f2fs,
#: zfs, bcachefs (include/uapi/linux/magic.h).
LOCAL = frozenset({0xEF53, 0x58465342, 0x9123683E, 0x01021994, 0xF2F52010, 0x2FC12FC1, 0xCA451A4E})

_libc = ctypes.CDLL(None, use_errno=True)

DirKey = tuple[int, int]  # (st_dev, st_ino) of a directory
#: A cached run of encoded entries, or (encoded entry without its attributes, name to lstat) of a fresh one.
Segment = Union[bytes, tuple[bytes, bytes]]


@dataclass(slots=True)
class Chunk:
    """The entries of one reply: ``segments`` in order, ``eof`` after them."""

    segments: list[Segment]
    #: Bytes of the cached runs.
    kept: int
    eof: bool
    born: float = 0.0
    stamp: tuple = ()


@dataclass(slots=True)
class Fill:
    """A reply being built: what changed meanwhile decides whether it may be kept."""

    dirkey: DirKey
    born: float
    spoiled: bool = False
    members: list[int] = field(default_factory=list)


def fs_type(fd: int) -> int:
    """The statfs(2) f_type of the filesystem of ``fd`` (0 if it cannot be had)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs: f_type is its first field, a long
    if _libc.fstatfs(fd, buf) != 0:
        return 0
    return int.from_bytes(buf.raw[:ctypes.sizeof(ctypes.c_long)], sys.byteorder)


class Listings:
    """The cache; safe to call from the reactor and from pool threads (procedures that ran there)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._notify: Optional[Inotify] = None
        self._broken = False  # inotify could not be had: nothing is cached
        self._chunks: dict[Hashable, Chunk] = {}
        self._keys: dict[DirKey, set] = {}  # directory -> keys of its chunks
        self._home: dict[DirKey, DirKey] = {}  # (dev, ino) of a kept entry -> its directory
        self._wd: dict[int, DirKey] = {}
        self._watched: dict[DirKey, int] = {}
        self._fills: list[Fill] = []
        self._bytes = 0
        self._local: dict[int, bool] = {}  # st_dev -> whether it is a filesystem of LOCAL

    # -- serving ---------------------------------------------------------------------------------------

    def get(self, key: Hashable, stamp: tuple) -> Optional[Chunk]:
        """The chunk kept for ``key`` if the directory still has ``stamp`` and nothing changed since."""
        with self._lock:
            if not self._chunks:
                return None
            self._drain()
            chunk = self._chunks.get(key)
            if chunk is None:
                return None
            if chunk.stamp != stamp or time.monotonic() - chunk.born > TTL:
                self._drop_dir(key[0])
                return None
            return chunk

    def begin(self, dirkey: DirKey, dirfd: int) -> Optional[Fill]:
        """Start building a reply of the directory ``dirkey`` (open as ``dirfd``): watched from now on.
        None when it cannot be watched, and so not kept."""
        with self._lock:
            if self._broken:
                return None
            local = self._local.get(dirkey[0])
            if local is None:
                local = self._local[dirkey[0]] = fs_type(dirfd) in LOCAL
            if not local:
                return None
            try:
                if self._notify is None:
                    self._notify = Inotify()
                if dirkey not in self._watched:
                    if len(self._watched) >= MAX_DIRS:
                        self._reset()
                    wd = self._notify.watch(dirfd)
                    self._watched[dirkey] = wd
                    self._wd[wd] = dirkey
            except OSError:
                if self._notify is None:
                    self._broken = True  # no inotify instance left: never try again
                return None
            self._drain()  # what changed before this fill does not spoil it
            fill = Fill(dirkey, time.monotonic())
            self._fills.append(fill)
            return fill

    def put(self, fill: Fill, key: Hashable, stamp: tuple, chunk: Chunk) -> None:
        """Keep ``chunk`` (with ``fill.members`` the inode numbers of its kept entries) unless something it
        shows changed while it was built; ends the fill."""
        with self._lock:
            self._end(fill)
            self._drain()
            if fill.spoiled:
                return
            if self._bytes + chunk.kept + CHUNK_COST > MAX_BYTES or len(self._home) > MAX_ENTRIES:
                self._reset()
                return
            chunk.born, chunk.stamp = fill.born, stamp
            old = self._chunks.pop(key, None)
            if old is not None:
                self._bytes -= old.kept + CHUNK_COST
            self._chunks[key] = chunk
            self._bytes += chunk.kept + CHUNK_COST
            self._keys.setdefault(fill.dirkey, set()).add(key)
            dev, dirkey, home = fill.dirkey[0], fill.dirkey, self._home
            for ino in fill.members:
                home[(dev, ino)] = dirkey

    def abandon(self, fill: Fill) -> None:
        """A fill that failed: nothing is kept."""
        with self._lock:
            self._end(fill)

    # -- invalidation ------------------------------------------------------------------------------------

    def idle(self) -> bool:
        """Nothing kept and nothing being filled, so :meth:`touched` has nothing to do.  Read without the lock: a
        fill that starts after the change it would be told of reads the directory after it, too."""
        return not self._chunks and not self._fills

    def touched(self, objects: list[DirKey]) -> None:
        """An NFS procedure changed (or read: atime) these objects, directories or entries."""
        with self._lock:
            for obj in objects:
                for fill in self._fills:
                    if fill.dirkey == obj or obj[1] in fill.members:
                        fill.spoiled = True
                if self._chunks:
                    self._drop_dir(obj)
                    home = self._home.pop(obj, None)
                    if home is not None:
                        self._drop_dir(home)

    def clear(self) -> None:
        with self._lock:
            self._reset()

    def close(self) -> None:
        with self._lock:
            self._reset()
            if self._notify is not None:
                self._notify.close()
                self._notify = None

    # -- inside the lock ---------------------------------------------------------------------------------

    def _drain(self) -> None:
        if self._notify is None:
            return
        for wd, mask, named in self._notify.events():
            if mask & IN_Q_OVERFLOW:
                self._reset()
                continue
            dirkey = self._wd.get(wd)
            if dirkey is None:
                continue
            if mask & IN_IGNORED:  # the directory is gone (or its filesystem)
                del self._wd[wd]
                self._watched.pop(dirkey, None)
            elif mask & ~IN_ISDIR == IN_ACCESS and not named:
                continue  # the directory itself was read (getdents): its own attributes are taken fresh
            self._drop_dir(dirkey)

    def _drop_dir(self, dirkey: DirKey) -> None:
        for fill in self._fills:
            if fill.dirkey == dirkey:
                fill.spoiled = True
        for key in self._keys.pop(dirkey, ()):
            chunk = self._chunks.pop(key, None)
            if chunk is not None:
                self._bytes -= chunk.kept + CHUNK_COST

    def _end(self, fill: Fill) -> None:
        try:
            self._fills.remove(fill)
        except ValueError:
            pass

    def _reset(self) -> None:
        for fill in self._fills:
            fill.spoiled = True
        self._chunks.clear()
        self._keys.clear()
        self._home.clear()
        self._bytes = 0
        if self._notify is not None:
            for wd in self._wd:
                self._notify.unwatch(wd)
        self._wd.clear()
        self._watched.clear()
