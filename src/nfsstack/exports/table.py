"""The exports in force: the parsed file, each export's open root, handles, and each client's options.

Shared by mountd, nfsd and nlockmgr, which admit clients through
:mod:`nfsstack.exports.policy`.  :meth:`ExportTable.reload` swaps in a new
exports file (SIGHUP) without touching handles: a handle names its export by
id, so it stays valid as long as the export does.

Filesystems mounted below an export (exports(5) ``crossmnt``, ``nohide``, and
the default, ``hide``), as knfsd serves them:

* a filesystem mounted at R below an export A whose options for the client say
  ``crossmnt`` is served as an export of its own (:meth:`ExportTable.export_for`
  makes it, an :class:`Export` with ``crossed_from`` = A's path): A's options,
  its own root (opened at R, which must lie inside A's real path), its own id
  (``0x80000000 | crc32("A's id:R relative to A")``, as stable as A's id and the
  mount point's place; knfsd takes the filesystem's UUID, which tmpfs and many
  others do not have), so its own fsid in the attributes, and handles that
  ``open_by_handle_at`` resolves against its root.  After a restart a handle of
  such an id is found by reading ``/proc/self/mountinfo`` (at most once a second);
* an export B exported ``nohide`` is what LOOKUP of its mount point through A
  gives, if B admits the client;
* otherwise the mount point is not crossed: LOOKUP gives the directory it covers
  on A's filesystem, found through a clone of A's mount without its submounts
  (``open_tree(OPEN_TREE_CLONE)``); where that fails (no CAP_SYS_ADMIN, Linux
  before 5.2) LOOKUP answers NFS3ERR_XDEV.

``..`` at the root of a crossed filesystem (or of a ``nohide`` export) leads to
the directory above it, in the export that serves it.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import threading
import time
import zlib
from typing import Iterable, Optional

from nfsstack.exports.file import WILDCARD, Export, ExportOptions, Exports, normalize
from nfsstack.exports.handles import (BadHandle, HandleCodec, StaleHandle, kernel_handle, object_id,
                                      open_kernel_handle)
from nfsstack.exports.mounts import mounts, open_tree
from nfsstack.exports.names import HostNames


#: Descriptors the table keeps at most, whatever the limit of the process.
MAX_KEPT = 262144
#: Handles of objects seen by LOOKUP and READDIRPLUS kept, each by (export, device, inode) and ctime.
KNOWN_HANDLES = 262144


def descriptor_budget() -> int:
    """How many O_PATH descriptors the table may keep: half of what the process may open (connections, files
    kept for writing and directories listed need the rest), at most :data:`MAX_KEPT`, at least 1,024."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return MAX_KEPT
    return max(1024, min(MAX_KEPT, soft // 2))


class ExportGone(StaleHandle):
    """A valid handle of an export that is no longer in the exports file (removed by a reload)."""


class ExportTable:
    """Handles to descriptors, and which options a client gets.

    Resolving a handle costs an HMAC, ``open_by_handle_at`` and a look at
    where the object lies; handles in use keep an O_PATH descriptor, so a call
    costs a ``dup`` and an ``fstat`` (attributes are never cached: every call
    sees the object as it is now).  The descriptors kept are sized for the
    working sets clients have (:func:`descriptor_budget`: up to 262,144, half
    the descriptors the process may open), not for a few hot files: a client
    going round 100,000 files would miss every time in a small LRU.  A cached
    object is looked at again (still inside its export?) ``recheck`` seconds
    after its last look, and one that was deleted is stale at once; one unused
    for ``idle`` seconds is closed by :meth:`sweep`.
    """

    def __init__(self, exports: Exports, codec: HandleCodec, names: Optional[HostNames] = None,
                 cache_size: Optional[int] = None, recheck: float = 2.0) -> None:
        self.codec = codec
        #: Called with the exports after every :meth:`reload`.
        self.reloaded: list = []
        self.names = names or HostNames()
        #: Descriptors kept at most; None: :func:`descriptor_budget` when the first is kept (after the service
        #: raised the process's limit).
        self.cache_size = cache_size
        self.recheck = recheck
        #: handle -> (export, O_PATH fd, when last checked, (st_dev, st_ino))
        self._fds: dict[bytes, tuple[Export, int, float, tuple[int, int]]] = {}
        #: The handles of ``_fds`` kept beyond ``cache_size`` (:meth:`_keep`), least recently used first.
        self._fresh: dict[bytes, None] = {}
        #: (device, inode) -> the handle in ``_fds`` naming it (a set in the rare case of several, e.g. one
        #: object reached through two exports): REMOVE forgets an object without a scan.
        self._inodes: dict[tuple[int, int], "bytes | set[bytes]"] = {}
        #: handle -> (export, kernel handle type and bytes, when its object was last found inside the export):
        #: handles whose MAC was checked, opened again without one (:meth:`_resolve`).
        self._opened: dict[bytes, tuple[Export, int, bytes, float]] = {}
        #: Where :meth:`sweep` goes on looking for deleted objects among the kept descriptors.
        self._sweep_from = 0
        self._options: dict[tuple[int, str], Optional[ExportOptions]] = {}
        #: (export id, st_dev, st_ino) -> (st_ctime_ns, handle): an inode number used again by a new object
        #: (another ctime) is not taken for the old one; an object removed through NFS is dropped at once.
        self._handles: dict[tuple[int, int, int], tuple[int, bytes]] = {}
        self._names_for: Optional[Exports] = None
        #: nfsd resolves handles in pool threads too.
        self._lock = threading.RLock()
        self._needs_names = False
        # export id -> (fd of the root, mount id, real path, (st_dev, st_ino))
        self._roots: dict[int, tuple[int, int, str, tuple[int, int]]] = {}
        #: Filesystems mounted below a ``crossmnt`` export, served as exports of their own: by id, by root path.
        self._crossed: dict[int, Export] = {}
        self._crossed_at: dict[str, Export] = {}
        #: When /proc/self/mountinfo was last read for an unknown export id.
        self._scanned = -1e9
        #: export id -> (fd, mount id) of a clone of the export's mount without what is mounted below it.
        self._clones: dict[int, tuple[int, int]] = {}
        self.exports = exports
        #: (the exports, id of each -> its path with its symlinks resolved, as read with them): what
        #: :meth:`locate` matches MNT's paths with, made again for a reload's exports.
        self._real_roots: Optional[tuple[Exports, dict[int, str]]] = None

    #: Writes a subclass keeps until :meth:`flush` (PathHandles' map of places): none here.
    pending: tuple = ()

    def flush(self) -> None:
        """Write what handles made since the last flush need kept (nothing: kernel handles need no map)."""

    def flush_due(self) -> None:
        """:meth:`flush`, when it is time to (PathHandles writes the rows of many calls at once)."""

    def renamed(self, export: Export, dirfd: int, name: bytes) -> None:
        """RENAME through NFS moved an object to ``name`` in ``dirfd`` (kernel handles do not care)."""

    def reload(self, exports: Exports) -> None:
        """Serve ``exports`` from now on; roots are opened again on use (a path may have changed).  Then each of
        :attr:`reloaded` is called with them (a storage backend that keeps its own trees per export)."""
        with self._lock:
            self._close()
            self.exports = exports
        for listener in self.reloaded:
            listener(exports)

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        for entry in self._roots.values():
            os.close(entry[0])
        self._roots.clear()
        for entry in self._clones.values():
            if entry[0] >= 0:
                os.close(entry[0])
        self._clones.clear()
        self._crossed.clear()
        self._crossed_at.clear()
        self._scanned = -1e9
        for entry in self._fds.values():
            os.close(entry[1])
        self._fds.clear()
        self._fresh.clear()
        self._inodes.clear()
        self._opened.clear()
        self._options.clear()
        self._handles.clear()

    @property
    def needs_names(self) -> bool:
        exports = self.exports
        if self._names_for is not exports:
            self._needs_names = any(spec.kind == WILDCARD for e in exports for spec, _ in e.clients)
            self._names_for = exports
        return self._needs_names

    def options_for(self, export: Export, address: str) -> Optional[ExportOptions]:
        if self.needs_names:  # wildcard names: the answer follows the name cache
            return export.options_for(address, self.names.cached)
        key = (export.export_id, address)
        try:
            return self._options[key]
        except KeyError:
            if len(self._options) >= 4096:
                self._options.clear()
            options = self._options[key] = export.options_for(address, self.names.cached)
            return options

    def root(self, export: Export) -> tuple[int, int]:
        """(fd, mount id) of the export's root directory, opened once."""
        return self._root(export)[:2]

    def _root(self, export: Export) -> tuple[int, int, str, tuple[int, int]]:
        entry = self._roots.get(export.export_id)
        if entry is not None:
            return entry
        with self._lock:
            return self._open_root(export)

    def _open_root(self, export: Export) -> tuple[int, int, str, tuple[int, int]]:
        entry = self._roots.get(export.export_id)
        if entry is None:
            # A real descriptor: open_by_handle_at refuses an O_PATH one as its mount fd.
            fd = os.open(export.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                _, _, mount_id = object_id(fd, "")
                real = os.readlink(f"/proc/self/fd/{fd}")  # the path with symlinks resolved
                st = os.fstat(fd)
                if export.crossed_from:
                    # Where the mount was found, and still inside the export it is crossed from.
                    parent = self.exports.find(export.crossed_from)
                    top = self._root(parent)[2] if parent is not None else None
                    if real != export.path or top is None or not real.startswith(top.rstrip("/") + "/"):
                        raise OSError(errno.ENOENT, "the crossed filesystem is no longer below its export")
            except OSError:
                os.close(fd)
                raise
            entry = self._roots[export.export_id] = (fd, mount_id, real, (st.st_dev, st.st_ino))
        return entry

    def reopen_root_on(self, dev: int) -> Optional[int]:
        """A new descriptor (for reading, the caller's to close) of an export's root on the filesystem ``dev``,
        if one is open, else None: what syncs a filesystem (syncfs) for an object the server cannot open
        itself.  New, not a copy: syncfs reports the filesystem's write errors since its descriptor was opened,
        and the root's may be days old."""
        with self._lock:  # a reload closes the roots
            for fd, _, _, (root_dev, _) in self._roots.values():
                if root_dev == dev:
                    try:
                        return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
                    except OSError:
                        return None
        return None

    def is_root(self, export: Export, st: os.stat_result) -> bool:
        """Whether ``st`` is the export's root directory (where ``..`` stops)."""
        return (st.st_dev, st.st_ino) == self._root(export)[3]

    def locate(self, path: str) -> Optional[tuple[Export, str]]:
        """The export a MNT of ``path`` names, and the path to mount it by; None if no export holds ``path``.

        As rpc.mountd matches them, with every symlink resolved (``realpath``, as the server) in ``path`` and in
        each export's path (resolved so when the exports were read, its ``e_realpath``): an export written as a
        symlink is mounted by the path it names too, and a path that reaches an export only through a symlink is
        that export's, mounted by the export's path as written with what lies below its resolved root.  But a
        path that lies as written in an export stays that export's, as written, unless its resolved path lies
        deeper in another export (a directory of an export reached through the symlink of another, which
        rpc.mountd gives its own export): so two exports of one directory, one through a symlink, are told apart
        by the path a client writes, and a backend whose exports are not the host's directories (memory, a
        tree of the user's) gets the paths its clients wrote.  A path with a NUL, which no file has, is no
        export's."""
        if "\0" in path:
            return None
        written = normalize(path)
        roots = self._real_roots
        if roots is None or roots[0] is not self.exports:
            roots = self._real_roots = (self.exports, {id(e): os.path.realpath(e.path) for e in self.exports})
        real = os.path.realpath(path)
        literal = _longest(written, ((export.path, export) for export in self.exports))
        resolved = _longest(real, ((roots[1][id(e)], e) for e in self.exports))
        if literal is not None and (resolved is None or len(resolved[0]) <= len(roots[1][id(literal[1])])):
            return literal[1], written
        if resolved is None:
            return None
        root, export = resolved
        return export, normalize(os.path.join(export.path, real[len(root):].lstrip("/")))

    def inside(self, export: Export, fd: int) -> bool:
        """Whether the object open at ``fd`` lies inside ``export`` (its real path, symlinks resolved).

        A directory has one place, which the kernel always knows: it must lie inside.  So must a file whose path
        the kernel gives is its one name.  But ``open_by_handle_at`` gives a file whose directory entry is no
        longer cached (after a reboot, under memory pressure) as an entry connected to no directory, whose path
        is ``/`` (the kernel keeps no parent of a file and reconnects only directories); and a file with several
        names (hard links) under whichever of them the kernel has at hand, which may lie outside while another
        lies inside.  The place of such a file is not known.  Under ``no_subtree_check`` (the default, as
        knfsd's) it is served: it was opened by a handle this server signed for this export, through the
        export's root, so on its filesystem, which is all knfsd checks of any object then; a file with one name
        moved out of the export by a rename on the server is stale while the kernel remembers where it went,
        and served once it forgot.  (Taking every such file for outside made each file handle a client kept
        across a server's reboot stale, and each file linked from outside, as a ``git clone`` of a repository
        outside links its objects.)  Under ``subtree_check`` (on any of the export's lines) it is stale: after a
        server's reboot a client's file handles are stale until a LOOKUP of their names finds them again (knfsd's
        ``subtree_check`` keeps the parent in its handles and reconnects the file; these handles hold no parent),
        and a file linked from outside is stale while the kernel gives it under that name.
        """
        try:
            where = os.readlink(f"/proc/self/fd/{fd}")
            root = self._root(export)[2]
        except OSError:
            return False
        if where == root or where.startswith(root.rstrip("/") + "/"):
            return True
        st = os.fstat(fd)
        return not stat.S_ISDIR(st.st_mode) and (where == "/" or st.st_nlink > 1) and not self._subtree_check(export)

    def _subtree_check(self, export: Export) -> bool:
        """Whether any of ``export``'s lines says ``subtree_check``."""
        return any(options.subtree_check for _, options in export.clients)

    def handle(self, export: Export, dirfd: int, name: str | bytes = "") -> bytes:
        """The handle of ``name`` under ``dirfd`` (``dirfd`` itself if ``name`` is empty)."""
        htype, data, mount_id = kernel_handle(dirfd, name)
        if mount_id != self.root(export)[1]:
            raise OSError(errno.EXDEV, "object is on another filesystem than its export")
        return self.codec.encode(export.export_id, htype, data)

    def stat_and_handle(self, export: Export, dirfd: int, name: bytes) -> tuple[os.stat_result, bytes]:
        """``lstat`` of ``name`` under ``dirfd`` (``dirfd`` itself if ``name`` is empty) and its handle.

        Handles are remembered by (export, device, inode, ctime): a listing of a directory the client has
        seen costs one ``fstatat`` per entry.  A new one is made from an O_PATH descriptor of the object,
        so the attributes and the handle are of the same object even if the name changes meanwhile.
        """
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False) if name else os.fstat(dirfd)
        known = self._handles.get((export.export_id, st.st_dev, st.st_ino))
        if known is not None and known[0] == st.st_ctime_ns:
            return st, known[1]
        return self._new_handle(export, dirfd, name)

    def known_handle(self, export: Export, dirfd: int, name: bytes, dev: int, ino: int, ctime_ns: int) -> bytes:
        """The handle of ``name`` under ``dirfd``, which a stat just found to be (dev, ino, ctime_ns).

        OSError(ESTALE) if the name was meanwhile given to another object.
        """
        known = self._handles.get((export.export_id, dev, ino))
        if known is not None and known[0] == ctime_ns:
            return known[1]
        st, handle = self._new_handle(export, dirfd, name)
        if (st.st_dev, st.st_ino) != (dev, ino):
            raise OSError(errno.ESTALE, "the name now names another object")
        return handle

    def _new_handle(self, export: Export, dirfd: int, name: bytes) -> tuple[os.stat_result, bytes]:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd) if name else os.dup(dirfd)
        try:
            st = os.fstat(fd)
            handle = self.handle(export, fd)
        finally:
            os.close(fd)
        self._known(export, st, handle)
        return st, handle

    def _known(self, export: Export, st: os.stat_result, handle: bytes) -> None:
        """Keep ``handle`` of the object ``st`` for LOOKUP and READDIRPLUS (:meth:`known_handle`), at most
        :data:`KNOWN_HANDLES`; when full, the older half goes (not all: a directory of more names than that,
        listed again and again, still finds half of them)."""
        handles = self._handles
        if len(handles) >= KNOWN_HANDLES:
            for key in list(itertools.islice(handles, KNOWN_HANDLES // 2)):
                del handles[key]
        handles[(export.export_id, st.st_dev, st.st_ino)] = (st.st_ctime_ns, handle)

    def resolve(self, handle: bytes, flags: int = os.O_PATH) -> tuple[Export, int]:
        """(export, fd) of a handle, the fd the caller's to close; BadHandle or StaleHandle if it names nothing
        we serve."""
        if flags != os.O_PATH:
            with self._lock:
                return self._resolve(handle, flags)[:2]
        return self.resolve_stat(handle)[:2]

    def resolve_stat(self, handle: bytes) -> tuple[Export, int, os.stat_result]:
        """(export, O_PATH fd, its fstat taken now) of a handle, as :meth:`resolve`.  Every nfsd call's first
        step: a kept descriptor's ``fstat`` and ``dup`` in this one method."""
        with self._lock:
            entry = self._fds.get(handle)
            if entry is None:
                export, fd, st = self._resolve(handle, os.O_PATH)
                self._keep(handle, export, fd, (st.st_dev, st.st_ino), time.monotonic())
                return export, fd, st
            export, cached, checked, _ = entry
            fresh = self._fresh
            if fresh and handle in fresh:  # used again: the last of them to go
                del fresh[handle]
                fresh[handle] = None
            st = os.fstat(cached)
            if st.st_nlink == 0:
                self._evict(handle)
                raise StaleHandle("object was deleted")
            now = time.monotonic()
            if now - checked >= self.recheck:
                # Looked at again where it lies (a rename on the server may have taken it out of its export),
                # through the descriptor kept: no need to open the handle again.
                if not self.inside(export, cached):
                    self._evict(handle)
                    raise StaleHandle("object is outside its export")
                self._fds[handle] = (export, cached, now, entry[3])
            return export, os.dup(cached), st

    def _keep(self, handle: bytes, export: Export, fd: int, inode: tuple[int, int], now: float,
              fresh: bool = False) -> None:
        """Cache a copy of ``fd`` for ``handle`` (under the lock), if there is room.

        When ``cache_size`` are kept, nothing of them is evicted to make room: a client going round more objects
        than there is room for would evict each one before it came back (an LRU hits nothing under a cyclic
        pattern), while kept ones keep hitting and the others are opened by handle (:meth:`_resolve`, without
        the MAC).  Room is made by :meth:`sweep`, which closes what has not been used for a while.

        But an object just made (``fresh``: :meth:`remember`, after CREATE, MKDIR, ...) is kept even then, in a
        few more places (``cache_size // 16``, least recently used out): the calls that follow a CREATE (WRITE,
        COMMIT, SETATTR) and the names made in a new directory would otherwise each open their handle again, for
        as long as a full cache keeps older objects (a client unpacking a tree after another went round 100,000
        files).  Directories and files merely looked up are not: a walk of many would churn those places."""
        size = self.cache_size
        if size is None:
            size = self.cache_size = descriptor_budget()
        if handle in self._fds:
            return
        kept = self._fresh
        if len(self._fds) - len(kept) >= size:
            room = size // 16
            if not fresh or not room:
                return
            copy = os.dup(fd)  # first: a failed dup leaves everything as it was
            if len(kept) >= room:
                self._evict(next(iter(kept)))
            kept[handle] = None
        else:
            copy = os.dup(fd)
        self._fds[handle] = (export, copy, now, inode)
        others = self._inodes.get(inode)
        if others is None:
            self._inodes[inode] = handle
        elif isinstance(others, set):
            others.add(handle)
        elif others != handle:
            self._inodes[inode] = {others, handle}

    def remember(self, handle: bytes, export: Export, fd: int, st: os.stat_result) -> None:
        """Keep a descriptor of an object just made in ``export`` (a copy of the O_PATH ``fd``): the calls that
        follow a CREATE (WRITE, SETATTR, COMMIT) find it without opening the handle."""
        with self._lock:
            self._keep(handle, export, fd, (st.st_dev, st.st_ino), time.monotonic(), fresh=True)

    def forget(self, st: os.stat_result) -> None:
        """An object was removed through NFS: close the cached descriptors that would keep its blocks, and
        forget its handle (its inode number may come back with a new object)."""
        inode = (st.st_dev, st.st_ino)
        with self._lock:
            handles = self._inodes.get(inode, ())
            for handle in [handles] if isinstance(handles, bytes) else list(handles):
                self._evict(handle)
            for export in self.exports:
                self._handles.pop((export.export_id, st.st_dev, st.st_ino), None)
            for export_id in self._crossed:
                self._handles.pop((export_id, st.st_dev, st.st_ino), None)

    def sweep(self, idle: float = 30.0, look: int = 8192) -> int:
        """Close the cached descriptors of objects not used for ``idle`` seconds, and of deleted ones (a
        server-side ``rm`` must free space: a kept descriptor holds the blocks); how many were closed.

        Whether an object was deleted costs an ``fstat``: at most ``look`` of them are looked at per sweep, the
        next ones the next time, so a sweep of a cache of 100,000 stays short on the reactor.  A deleted object
        not used again is closed as idle in any case."""
        now = time.monotonic()
        closed = 0
        with self._lock:
            entries = list(self._fds.items())
            start = self._sweep_from if self._sweep_from < len(entries) else 0
            self._sweep_from = start + look
            for i, (handle, (_, fd, checked, _)) in enumerate(entries):
                gone = now - checked > idle
                if not gone and start <= i < start + look:
                    try:
                        gone = os.fstat(fd).st_nlink == 0
                    except OSError:
                        gone = True
                if gone:
                    self._evict(handle)
                    closed += 1
        return closed

    def _evict(self, handle: bytes) -> None:
        self._fresh.pop(handle, None)
        entry = self._fds.pop(handle, None)
        if entry is not None:
            os.close(entry[1])
            inode = entry[3]
            handles = self._inodes.get(inode)
            if handles == handle:
                del self._inodes[inode]
            elif isinstance(handles, set):
                handles.discard(handle)
                if not handles:
                    del self._inodes[inode]

    def _resolve(self, handle: bytes, flags: int) -> tuple[Export, int, os.stat_result]:
        """Open a handle: a descriptor of its object, the caller's to close.

        A handle opened before skips its MAC and the look at where its object lies (for ``recheck`` seconds):
        a working set larger than the descriptors kept costs ``open_by_handle_at``, ``fstat`` and ``close``."""
        now = time.monotonic()
        known = self._opened.get(handle)
        if known is not None:
            export, handle_type, data, checked = known
            try:
                fd = open_kernel_handle(self.root(export)[0], handle_type, data, flags)
            except OSError as e:
                del self._opened[handle]
                raise StaleHandle(str(e)) from None
            if now - checked < self.recheck:
                st = os.fstat(fd)
                if st.st_nlink == 0:
                    os.close(fd)
                    raise StaleHandle("object was deleted")
                return export, fd, st
            del self._opened[handle]
            st = self._served(export, fd)
        else:
            decoded = self.codec.decode(handle)
            export = self.exports.by_id(decoded.export_id)
            if export is None:
                export = self._crossed.get(decoded.export_id) or self._find_crossed(decoded.export_id)
                if export is None:
                    raise ExportGone("export no longer exported")
            handle_type, data = decoded.handle_type, decoded.data
            try:
                fd = open_kernel_handle(self.root(export)[0], handle_type, data, flags)
            except OSError as e:
                raise StaleHandle(str(e)) from None
            st = self._served(export, fd)
        opened = self._opened
        if len(opened) >= KNOWN_HANDLES:
            for key in list(itertools.islice(opened, KNOWN_HANDLES // 2)):
                del opened[key]
        opened[handle] = (export, handle_type, data, now)
        return export, fd, st

    def _served(self, export: Export, fd: int) -> os.stat_result:
        """The fstat of a handle's object, which must be inside ``export`` and not removed (else StaleHandle, and
        ``fd`` closed)."""
        st = os.fstat(fd)
        if not self.inside(export, fd) or st.st_nlink == 0:
            os.close(fd)
            raise StaleHandle("object is outside its export")
        return st

    # -- filesystems mounted below an export (crossmnt, nohide, hide) ----------------------------------------

    def _find_crossed(self, export_id: int) -> Optional[Export]:
        """The crossed filesystem of an id not seen since the start (or the last reload): every filesystem
        mounted below a ``crossmnt`` export gets its export, and its id is looked up again.  At most once a
        second: a handle needs a valid MAC to get here, but a client may keep one of a filesystem since
        unmounted."""
        now = time.monotonic()
        if now - self._scanned < 1.0:
            return None
        self._scanned = now
        tops = []
        for export in self.exports:
            if any(options.crossmnt for _, options in export.clients):
                try:
                    tops.append(self._root(export)[2])
                except OSError:
                    continue
        for mount_id, where in mounts().items():
            if not any(where.startswith(top.rstrip("/") + "/") for top in tops):
                continue
            try:
                fd = os.open(where, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                self.export_for(fd)
            except OSError:
                pass
            finally:
                os.close(fd)
        return self._crossed.get(export_id)

    def _parent_export(self, real: str) -> Optional[Export]:
        """The export whose real root path is the longest one holding the real path ``real``."""
        best, length = None, -1
        for export in self.exports:
            try:
                top = self._root(export)[2]
            except OSError:
                continue
            if (real == top or real.startswith(top.rstrip("/") + "/")) and len(top) > length:
                best, length = export, len(top)
        return best

    def export_for(self, fd: int) -> Optional[Export]:
        """The export that serves the object open at ``fd``: an export of the file on whose filesystem it lies,
        or the filesystem (mounted below such an export) it lies on, as an export crossed from it (whether a
        client may use it is :meth:`options_for`'s question).  None: not below any export."""
        with self._lock:
            where = os.readlink(f"/proc/self/fd/{fd}")
            mount_id = object_id(fd, "")[2]
            export = self._parent_export(where)
            if export is None:
                return None
            _, top_mount, top, _ = self._root(export)
            if mount_id == top_mount:
                return export
            root = mounts().get(mount_id)
            if root is None or not root.startswith(top.rstrip("/") + "/") or not (
                    where == root or where.startswith(root.rstrip("/") + "/")):
                return None
            crossed = self._crossed_at.get(root)
            if crossed is not None and crossed.crossed_from == export.path:
                return crossed
            relative = os.path.relpath(root, top)
            taken = {e.export_id for e in self.exports} | set(self._crossed)
            n = 0
            while True:
                seed = f"{export.export_id}:{relative}" + (f":{n}" if n else "")
                export_id = zlib.crc32(seed.encode("utf-8", "surrogateescape")) | 0x80000000
                if export_id not in taken:
                    break
                n += 1
            crossed = Export(root, export.clients, export.line, export_id, crossed_from=export.path)
            old = self._crossed_at.pop(root, None)
            if old is not None:
                self._crossed.pop(old.export_id, None)
            self._crossed[export_id] = self._crossed_at[root] = crossed
            return crossed

    def cross(self, export: Export, options: ExportOptions, fd: int, address: str) -> Optional[Export]:
        """LOOKUP in ``export`` (``options``: the client's) found ``fd``, a directory on another mount: the export
        to serve it as, or None if the mount point is not crossed for this client (``hide``)."""
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode):
            return None
        target = self.export_for(fd)
        if target is None or target.export_id == export.export_id:
            return None
        theirs = self.options_for(target, address)
        if theirs is None:
            return None
        if target.crossed_from:
            return target if self.is_root(target, st) else None
        # A line of the file: crossed at its root, if it says nohide or the export we come from crossmnt.
        return target if (theirs.nohide or options.crossmnt) and self.is_root(target, st) else None

    def above_root(self, export: Export, options: ExportOptions, address: str) -> Optional[tuple[Export, int]]:
        """``..`` at the root of a crossed filesystem or of a ``nohide`` export: (export, O_PATH fd) of the
        directory above it, if an export serves it to this client; None: ``..`` stays at the root."""
        if not (export.crossed_from or options.nohide):
            return None
        up = os.open("..", os.O_PATH | os.O_CLOEXEC, dir_fd=self.root(export)[0])
        try:
            target = self.export_for(up)
            if target is not None and target.export_id != export.export_id and self.inside(target, up) \
                    and self.options_for(target, address) is not None:
                return target, up
        except OSError:
            pass
        os.close(up)
        return None

    def covered(self, export: Export, dirfd: int, name: bytes) -> tuple[bytes, int]:
        """(handle, O_PATH fd) of what ``name`` under ``dirfd`` is on the export's own filesystem, below what is
        mounted on it (knfsd's ``hide``): found through a clone of the export's mount that has none of the
        mounts below it, then opened by its handle as any other (inside the export).  OSError(EXDEV) where the
        clone cannot be had."""
        with self._lock:
            clone, clone_mount = self._clone(export)
            top, top_mount = self._root(export)[2], self._root(export)[1]
        where = os.readlink(f"/proc/self/fd/{dirfd}")
        if not (where == top or where.startswith(top.rstrip("/") + "/")):
            raise OSError(errno.EXDEV, "directory outside its export")
        relative = os.path.join(os.path.relpath(where, top), os.fsdecode(name))
        fd = os.open(relative, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=clone)
        try:
            htype, data, mount_id = kernel_handle(fd, "")
        finally:
            os.close(fd)
        if mount_id != clone_mount:
            raise OSError(errno.EXDEV, "object is on another filesystem than its export")
        fd = open_kernel_handle(self.root(export)[0], htype, data)
        if not self.inside(export, fd) or kernel_handle(fd, "")[2] != top_mount:
            os.close(fd)
            raise OSError(errno.EXDEV, "object is outside its export")
        return self.codec.encode(export.export_id, htype, data), fd

    def _clone(self, export: Export) -> tuple[int, int]:
        entry = self._clones.get(export.export_id)
        if entry is None:
            fd = open_tree(self._root(export)[0])
            try:
                entry = (fd, object_id(fd, "")[2]) if fd >= 0 else (-1, -1)
            except OSError:
                os.close(fd)
                entry = (-1, -1)
            self._clones[export.export_id] = entry
        if entry[0] < 0:
            raise OSError(errno.EXDEV, "filesystems mounted below the export are not crossed (no open_tree)")
        return entry


def _longest(path: str, roots: Iterable[tuple[str, Export]]) -> Optional[tuple[str, Export]]:
    """Of (root, export) pairs, the one whose root is ``path`` or the longest above it (the first of equals)."""
    best: Optional[tuple[str, Export]] = None
    for root, export in roots:
        if (path == root or path.startswith(root.rstrip("/") + "/")) and (best is None or len(root) > len(best[0])):
            best = (root, export)
    return best


__all__ = ["ExportTable", "BadHandle", "StaleHandle", "ExportGone"]
