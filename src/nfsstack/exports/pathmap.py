"""Where each handed-out handle's object was last seen: the persistent map of the unprivileged local backend.

Without CAP_DAC_READ_SEARCH a process may make kernel handles (``name_to_handle_at(2)`` needs no privilege) but
not open them (``open_by_handle_at(2)`` does), so :class:`~nfsstack.exports.paths.PathHandles` remembers, for
every object whose handle it gave out, the directory it was found in and its name there:

    key (export id, kernel handle type and bytes) -> (key of the parent directory, name, inode number, gone)

A row names its parent by the parent's key, not by a path: a directory renamed (through NFS, or on the server
and found again) moves its whole subtree by changing one row.  The inode number lets a search for a lost object
compare ``d_ino`` before making a handle; ``gone`` marks an object removed through NFS, whose handle is
NFS3ERR_STALE at once, without a search.

The map is an SQLite database (``--state-dir/handles.sqlite``) in WAL mode with ``synchronous=NORMAL``: a
committed row survives the process being killed (SIGKILL), as the write is in the kernel's page cache; a power
failure may lose the last rows, which the search finds again.  Rows are written in batches (:meth:`PathMap.flush`)
by a thread acting as the server, never as a client's identity: the state directory is the server's own.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import sqlite3
import struct
import threading
import time
from typing import NamedTuple, Optional

from nfsstack.exports.handles import object_id

_KEY = struct.Struct(">Ii")  # export id, kernel handle type; then the kernel handle bytes

#: openat2(2) (Linux 5.6), the same number on x86_64 and aarch64, and its RESOLVE_* flags.
_SYS_OPENAT2 = 437
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_BENEATH = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_openat2_works = True


def open_beneath(root_fd: int, path: bytes, flags: int) -> int:
    """Open ``path`` (relative, components separated by ``/``) beneath the directory ``root_fd``, following no
    symlink, never leaving it (no ``..`` above it, no other mount): ``openat2`` with RESOLVE_BENEATH,
    RESOLVE_NO_SYMLINKS, RESOLVE_NO_MAGICLINKS and RESOLVE_NO_XDEV, else (before Linux 5.6, or a seccomp
    filter refusing it) a walk of one ``openat(O_NOFOLLOW)`` per component that refuses ``..`` and other
    mounts.  OSError when it cannot be opened so."""
    global _openat2_works
    flags |= os.O_CLOEXEC | os.O_NOFOLLOW
    if _openat2_works:
        how = _OpenHow(flags, 0, _BENEATH)
        fd = _libc.syscall(_SYS_OPENAT2, root_fd, path or b".", ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            return fd
        e = ctypes.get_errno()
        if e not in (errno.ENOSYS, errno.E2BIG, errno.EPERM):
            raise OSError(e, os.strerror(e), path)
        _openat2_works = False
    return _walk_beneath(root_fd, path, flags)


def _walk_beneath(root_fd: int, path: bytes, flags: int) -> int:
    device = os.fstat(root_fd).st_dev
    fd = os.dup(root_fd)
    parts = [p for p in path.split(b"/") if p and p != b"."]
    try:
        for i, part in enumerate(parts):
            if part == b"..":
                raise OSError(errno.EXDEV, "a path with .. does not stay beneath the export", path)
            last = i == len(parts) - 1
            step = flags if last else os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            nxt = os.open(part, step, dir_fd=fd)
            os.close(fd)
            fd = nxt
            if os.fstat(fd).st_dev != device:
                raise OSError(errno.EXDEV, "the path crosses into another filesystem", path)
        if not parts:
            nxt = os.open(".", flags & ~os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def map_key(export_id: int, handle_type: int, data: bytes) -> bytes:
    """The map's key of an object: its export and kernel handle (not the MAC: a new key keeps the map)."""
    return _KEY.pack(export_id, handle_type) + data


class Place(NamedTuple):
    """Where an object was last seen: the key of its directory, its name there, its inode number; ``gone``: it was
    removed through NFS."""

    parent: bytes
    name: bytes
    ino: int
    gone: bool = False


class PathMap:
    """The rows of the map, with an in-memory cache in front of the database; safe to use from several threads.

    Changes go to :attr:`pending` first and are written, one transaction for all, by :meth:`flush`.
    """

    def __init__(self, path: str, cache_size: int = 262144) -> None:
        self.path = path
        self.cache_size = cache_size
        self._db: Optional[sqlite3.Connection] = None
        self._cache: dict[bytes, Place] = {}
        #: key -> Place (None: forget) not yet written
        self.pending: dict[bytes, Optional[Place]] = {}
        self._lock = threading.Lock()

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS places (key BLOB PRIMARY KEY, parent BLOB NOT NULL, "
                       "name BLOB NOT NULL, ino INTEGER NOT NULL, gone INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID")
            db.execute("CREATE INDEX IF NOT EXISTS places_ino ON places (ino)")
            try:
                os.chmod(self.path, 0o600)
            except OSError:
                pass
            self._db = db
        return self._db

    def get(self, key: bytes) -> Optional[Place]:
        with self._lock:
            if key in self.pending:
                return self.pending[key]
            place = self._cache.get(key)
            if place is not None:
                return place
            row = self._open().execute("SELECT parent, name, ino, gone FROM places WHERE key = ?",
                                       (key,)).fetchone()
            if row is None:
                return None
            place = Place(bytes(row[0]), bytes(row[1]), row[2], bool(row[3]))
            self._cached(key, place)
            return place

    def put(self, key: bytes, place: Place) -> None:
        """Remember where ``key``'s object is (written at the next :meth:`flush`); nothing to write if known."""
        with self._lock:
            known = self.pending.get(key) if key in self.pending else self._cache.get(key)
            if known != place:
                self.pending[key] = place
                self._cached(key, place)

    def gone_inode(self, ino: int, keys_of: "set[bytes] | None" = None) -> None:
        """An object with inode number ``ino`` was removed through NFS: its rows (of the exports ``keys_of``
        prefixes allow, the exports on its device) are marked gone, written at the next :meth:`flush`."""
        with self._lock:
            found = {key: place for key, place in self.pending.items()
                     if place is not None and place.ino == ino and not place.gone}
            rows = self._open().execute("SELECT key, parent, name FROM places WHERE ino = ? AND gone = 0",
                                        (ino,)).fetchall()
            for key, parent, name in rows:
                if bytes(key) not in self.pending:  # a pending row is newer than the written one
                    found[bytes(key)] = Place(bytes(parent), bytes(name), ino)
            for key, place in found.items():
                if keys_of is not None and key[:4] not in keys_of:
                    continue
                gone = Place(place.parent, place.name, ino, True)
                self.pending[key] = gone
                self._cached(key, gone)

    def _cached(self, key: bytes, place: Place) -> None:
        if len(self._cache) >= self.cache_size:
            self._cache.clear()
        self._cache[key] = place

    def flush(self) -> None:
        """Write the pending rows in one transaction (the calling thread must act as the server)."""
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        rows = list(self.pending.items())
        db = self._open()
        db.execute("BEGIN")
        try:
            db.executemany("INSERT OR REPLACE INTO places (key, parent, name, ino, gone) VALUES (?, ?, ?, ?, ?)",
                           [(k, p.parent, p.name, p.ino, int(p.gone)) for k, p in rows if p is not None])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.pending.clear()

    def close(self) -> None:
        with self._lock:
            try:
                self._flush()
            finally:
                if self._db is not None:
                    self._db.close()
                    self._db = None
                self._cache.clear()


def key_parts(key: bytes) -> tuple[int, int, bytes]:
    """(export id, kernel handle type, kernel handle bytes) of a map key."""
    export_id, handle_type = _KEY.unpack_from(key)
    return export_id, handle_type, key[_KEY.size:]


def search(root_fd: int, root_key: bytes, mount_id: int, key: bytes, ino: Optional[int], max_entries: int,
           max_seconds: float) -> Optional[tuple[int, list[tuple[bytes, Place]]]]:
    """Find the object of ``key`` in the export whose root directory is ``root_fd`` (key ``root_key``, on the
    mount ``mount_id``): breadth first, looking at no more than ``max_entries`` directory entries and for no
    longer than ``max_seconds``, never following a symlink nor entering another filesystem.  An entry is
    compared by its inode number first (``d_ino``, when ``ino`` is known), then by its kernel handle, which
    holds the inode's generation: an inode number reused by a new object never matches.

    (an O_PATH descriptor of the object, the places of it and of every directory on the way, to remember), or
    None when it was not found within the bounds."""
    export_id, handle_type, data = key_parts(key)
    deadline = time.monotonic() + max_seconds
    queue: list[tuple[bytes, bytes]] = [(b"", root_key)]
    seen_dirs: dict[bytes, Place] = {}
    looked = 0
    at = 0
    while at < len(queue):
        rel, dir_key = queue[at]
        queue[at] = (b"", b"")  # let go of what is done
        at += 1
        try:
            dfd = open_beneath(root_fd, rel, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            with os.scandir(dfd) as entries:
                for entry in entries:
                    looked += 1
                    if looked > max_entries or (not looked & 127 and time.monotonic() > deadline):
                        return None
                    name = os.fsencode(entry.name)
                    number = entry.inode()
                    if ino is None or number == ino:
                        try:
                            got = object_id(dfd, name)
                        except OSError:
                            got = None
                        if got == (handle_type, data, mount_id):
                            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
                            if object_id(fd, "") != got:  # replaced meanwhile
                                os.close(fd)
                                continue
                            places = [(key, Place(dir_key, name, number))]
                            while dir_key in seen_dirs:
                                place = seen_dirs[dir_key]
                                places.append((dir_key, place))
                                dir_key = place.parent
                            return fd, places
                    if entry.is_dir(follow_symlinks=False):
                        try:
                            dtype, ddata, dmount = object_id(dfd, name)
                        except OSError:
                            continue
                        if dmount != mount_id:
                            continue  # a filesystem mounted below the export: not served by this backend
                        child = _KEY.pack(export_id, dtype) + ddata
                        seen_dirs[child] = Place(dir_key, name, number)
                        queue.append((rel + b"/" + name if rel else name, child))
        except OSError:
            continue
        finally:
            os.close(dfd)
    return None

