"""Handles without open_by_handle_at: the export table of the unprivileged local backend.

``open_by_handle_at(2)`` needs CAP_DAC_READ_SEARCH, which a plain user and a container with Docker's default
capabilities do not have; ``name_to_handle_at(2)`` needs nothing.  So :class:`PathHandles` makes the same handles
as :class:`~nfsstack.exports.table.ExportTable` (kernel handle bytes, with the inode's generation, MAC'd with the
handle key), and turns them back into objects through where it last saw them (:mod:`nfsstack.exports.pathmap`,
kept in ``--state-dir/handles.sqlite``):

1. the MAC is checked (NFS3ERR_BADHANDLE if forged);
2. the object's directory is opened (from the descriptors kept for recent handles, else down from the export's
   root, one ``openat(O_NOFOLLOW)`` per name, each directory checked to be the one the map says), then its name
   there, without following a symlink;
3. ``name_to_handle_at`` of what was opened must give the handle's kernel bytes: then it is the object.  An inode
   number reused by a new object has another generation, so it never matches;
4. otherwise (renamed on the server, or the map lost the row) the export is searched for it, breadth first,
   bounded by :data:`SEARCH_ENTRIES` entries and :data:`SEARCH_SECONDS` seconds (``--search-entries``,
   ``--search-seconds``), and the map is corrected.  Not found: NFS3ERR_STALE, and the same handle is not
   searched for again for :data:`SEARCH_AGAIN` seconds.  An object removed through NFS is marked gone, and its
   handle is NFS3ERR_STALE without a search.

Every object opened must lie inside its export (its path under the export's real path) and on the export's own
filesystem: filesystems mounted below an export are not crossed (LOOKUP of a mount point answers NFS3ERR_XDEV),
and exports asking for it (``crossmnt``, ``nohide``) are refused.
"""

from __future__ import annotations

import errno
import os
import time
from typing import Optional

from nfsstack.exports.file import Export, Exports, ExportsError
from nfsstack.exports.handles import StaleHandle, object_id
from nfsstack.exports.identity import unhonoured_as_plain_user
from nfsstack.exports.names import HostNames
from nfsstack.exports.pathmap import PathMap, Place, key_parts, map_key, open_beneath, search
from nfsstack.exports.table import ExportGone, ExportTable

#: At most this many directory entries are looked at when searching for a handle's object.
SEARCH_ENTRIES = 100_000
#: And for at most this many seconds (the search runs in the thread resolving the handle).
SEARCH_SECONDS = 1.0
#: A handle whose object a search did not find is not searched for again for this many seconds.
SEARCH_AGAIN = 30.0
#: The map's new rows are written at most this often (seconds), all in one transaction, or once this many wait:
#: a commit per CREATE cost a third of the small-file rate (bench/README.md).
FLUSH_EVERY = 0.005
FLUSH_ROWS = 256
#: Deepest directory chain followed through the map (a path of PATH_MAX bytes has at most 2,048 names).
MAX_DEPTH = 2048
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def refuse_unservable(exports: Exports, plain_user: Optional[tuple[int, int]] = None) -> None:
    """ExportsError naming the file and line of every export this backend cannot serve as asked: crossing into
    filesystems mounted below it (:func:`refuse_crossing`) and, for a server running as the plain user
    ``plain_user`` (uid, gid), another identity than its own
    (:func:`~nfsstack.exports.identity.unhonoured_as_plain_user`)."""
    errors = []
    try:
        refuse_crossing(exports)
    except ExportsError as e:
        errors += e.errors
    if plain_user is not None:
        errors += unhonoured_as_plain_user(exports, *plain_user)
    if errors:
        raise ExportsError(*errors)


def refuse_crossing(exports: Exports) -> None:
    """ExportsError naming the file and line of every export that asks for filesystems mounted below an export to
    be crossed (``crossmnt``, ``nohide``): this backend serves an export's own filesystem only."""
    errors = []
    for export in exports:
        asked = sorted({word for _, options in export.clients
                        for word, on in (("crossmnt", options.crossmnt), ("nohide", options.nohide)) if on})
        if asked:
            errors.append(f"{exports.source}:{export.line}: {export.path}: {' and '.join(asked)} cannot be served "
                          "by the unprivileged local backend (it does not cross into filesystems mounted below "
                          "an export): remove it, or run with CAP_DAC_READ_SEARCH")
    if errors:
        raise ExportsError(*errors)


class PathHandles(ExportTable):
    """An :class:`~nfsstack.exports.table.ExportTable` whose handles are resolved through the map of where their
    objects are (the module's docstring), for a process without CAP_DAC_READ_SEARCH.

    A subclass rather than a second object beside the table: mountd, nfsd, nlockmgr, the reloader and the state
    service all hold the one table, and its lifecycle (roots, the descriptor cache, reload, close) is the same.
    """

    def __init__(self, exports: Exports, codec, state_dir: str, names: Optional[HostNames] = None,
                 cache_size: Optional[int] = None, recheck: float = 2.0, search_entries: int = SEARCH_ENTRIES,
                 search_seconds: float = SEARCH_SECONDS, plain_user: Optional[tuple[int, int]] = None) -> None:
        refuse_unservable(exports, plain_user)
        super().__init__(exports, codec, names, cache_size, recheck)
        #: (uid, gid) of a server that cannot act as its clients: reloaded exports are checked against it too.
        self.plain_user = plain_user
        self.places = PathMap(os.path.join(state_dir, "handles.sqlite"))
        self.search_entries = search_entries
        self.search_seconds = search_seconds
        #: How many searches ran, and how many found their object (the status report and the tests read them).
        self.searches = 0
        self.found = 0
        #: map key -> when a search for it failed
        self._missed: dict[bytes, float] = {}
        #: export id -> the map key of its root
        self._root_keys: dict[int, bytes] = {}
        #: When the map's pending rows were last written (monotonic seconds).
        self._flushed = 0.0

    @property
    def pending(self):
        """Rows not yet written: :meth:`flush` writes them (LocalFilesystem's ``end``, as the server)."""
        return self.places.pending

    def flush(self) -> None:
        self.places.flush()
        self._flushed = time.monotonic()

    def flush_due(self) -> None:
        """Write the pending rows if the last write is :data:`FLUSH_EVERY` old or they are many: the rows of many
        calls go in one transaction.  A SIGKILL loses at most those, which a search finds again; :meth:`sweep`
        writes what an idle server still holds."""
        pending = self.places.pending
        if pending and (len(pending) >= FLUSH_ROWS or time.monotonic() - self._flushed >= FLUSH_EVERY):
            self.flush()

    def reload(self, exports: Exports) -> None:
        refuse_unservable(exports, self.plain_user)  # the old exports stay in force
        super().reload(exports)

    def close(self) -> None:
        super().close()
        self.places.close()

    def _close(self) -> None:
        super()._close()
        self._root_keys.clear()
        self._missed.clear()

    def sweep(self, idle: float = 30.0) -> int:
        self.flush()
        return super().sweep(idle)

    # -- making handles: each one's place is noted --------------------------------------------------------

    def _root_key(self, export: Export) -> bytes:
        key = self._root_keys.get(export.export_id)
        if key is None:
            htype, data, _ = object_id(self.root(export)[0], "")
            key = self._root_keys[export.export_id] = map_key(export.export_id, htype, data)
        return key

    def handle(self, export: Export, dirfd: int, name: str | bytes = "") -> bytes:
        htype, data, mount_id = object_id(dirfd, name)
        if mount_id != self.root(export)[1]:
            raise OSError(errno.EXDEV, "object is on another filesystem than its export")
        key = map_key(export.export_id, htype, data)
        if name:
            self._note_at(export, key, dirfd, os.fsencode(name),
                          os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_ino)
        else:
            self._note_fd(export, key, dirfd)
        return self.codec.encode(export.export_id, htype, data)

    def _new_handle(self, export: Export, dirfd: int, name: bytes) -> tuple[os.stat_result, bytes]:
        fd = os.open(name, _PATH_FLAGS, dir_fd=dirfd) if name else os.dup(dirfd)
        try:
            st = os.fstat(fd)
            htype, data, mount_id = object_id(fd, "")
            if mount_id != self.root(export)[1]:
                raise OSError(errno.EXDEV, "object is on another filesystem than its export")
            key = map_key(export.export_id, htype, data)
            if name:
                self._note_at(export, key, dirfd, name, st.st_ino)
            else:
                self._note_fd(export, key, fd)
            handle = self.codec.encode(export.export_id, htype, data)
        finally:
            os.close(fd)
        self._known(export, st, handle)
        return st, handle

    def _note_at(self, export: Export, key: bytes, dirfd: int, name: bytes, ino: int) -> None:
        """``key``'s object is ``name`` in the directory ``dirfd``."""
        if name in (b".", b"..") or key == self._root_key(export):
            return  # not where the object lives: its own entry says that
        htype, data, _ = object_id(dirfd, "")
        self.places.put(key, Place(map_key(export.export_id, htype, data), name, ino))
        self._missed.pop(key, None)

    def _note_fd(self, export: Export, key: bytes, fd: int) -> None:
        """``key``'s object is open at ``fd``: its place is found from its path (``/proc/self/fd``)."""
        if key == self._root_key(export):
            return
        try:
            st = os.fstat(fd)
            where = os.fsencode(os.readlink(f"/proc/self/fd/{fd}"))
            top = os.fsencode(self._root(export)[2]).rstrip(b"/") + b"/"
            if st.st_nlink == 0 or not where.startswith(top):
                return
            parent, _, name = where[len(top):].rpartition(b"/")
            pfd = open_beneath(self.root(export)[0], parent, os.O_PATH | os.O_DIRECTORY)
        except OSError:
            return  # not noted: a search finds it
        try:
            self._note_at(export, key, pfd, name, st.st_ino)
        finally:
            os.close(pfd)

    def renamed(self, export: Export, dirfd: int, name: bytes) -> None:
        """RENAME through NFS moved an object to ``name`` in ``dirfd``: a directory takes its subtree along."""
        try:
            htype, data, _ = object_id(dirfd, name)
            ino = os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_ino
        except OSError:
            return
        self._note_at(export, map_key(export.export_id, htype, data), dirfd, name, ino)

    def remember(self, handle: bytes, export: Export, fd: int, st: os.stat_result) -> None:
        super().remember(handle, export, fd, st)
        self.flush_due()  # LocalFilesystem calls this as the server, after making an object

    def forget(self, st: os.stat_result) -> None:
        super().forget(st)
        exports = [export.export_id for export in self.exports
                   if export.export_id in self._roots and self._roots[export.export_id][3][0] == st.st_dev]
        self.places.gone_inode(st.st_ino, {map_key(i, 0, b"")[:4] for i in exports})

    # -- resolving handles -------------------------------------------------------------------------------

    def _subtree_check(self, export: Export) -> bool:
        """Always: objects are opened by their paths here, so a place is known, and a file's other names are
        not its place (ExportTable.inside)."""
        return True

    def resolve(self, handle: bytes, flags: int = os.O_PATH) -> tuple[Export, int]:
        self.flush_due()
        return super().resolve(handle, flags)

    def resolve_stat(self, handle: bytes) -> tuple[Export, int, os.stat_result]:
        self.flush_due()
        return super().resolve_stat(handle)

    def _resolve(self, handle: bytes, flags: int) -> tuple[Export, int, os.stat_result]:
        decoded = self.codec.decode(handle)
        export = self.exports.by_id(decoded.export_id)
        if export is None:
            raise ExportGone("export no longer exported")
        try:
            fd = self._open(export, map_key(export.export_id, decoded.handle_type, decoded.data))
        except OSError as e:
            raise StaleHandle(str(e)) from None
        st = self._served(export, fd)
        if flags != os.O_PATH:
            try:
                opened = os.open(f"/proc/self/fd/{fd}", flags | os.O_CLOEXEC)
            finally:
                os.close(fd)
            fd = opened
        return export, fd, st

    def _open(self, export: Export, key: bytes) -> int:
        """An O_PATH descriptor of ``key``'s object (under the lock): through the map, else by a search."""
        root_fd, mount_id = self.root(export)
        root_key = self._root_key(export)
        if key == root_key:
            return os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=root_fd)
        # Up the map from the object to a directory with a descriptor at hand (kept, or the root) ...
        chain: list[tuple[bytes, Place]] = []
        walked: set[bytes] = set()
        at, fd = key, -1
        while True:
            place = self.places.get(at)
            if place is None or place.gone or len(chain) >= MAX_DEPTH or at in walked:
                if place is not None and place.gone and at == key:
                    raise StaleHandle("object was removed")
                break
            chain.append((at, place))
            walked.add(at)
            at = place.parent
            if at == root_key:
                fd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=root_fd)
                break
            kept = self._fds.get(self.codec.encode(*key_parts(at)))
            if kept is not None and kept[0] is export:
                fd = os.dup(kept[1])
                break
        # ... then down, one name at a time, each object checked to be the one the map names.
        while fd >= 0 and chain:
            at, place = chain.pop()
            try:
                if b"/" in place.name or place.name in (b".", b".."):  # one name, in the directory
                    raise OSError(errno.ENOENT, "not a name in a directory")
                child = os.open(place.name, _PATH_FLAGS, dir_fd=fd)
            except OSError:
                child = -1
            os.close(fd)
            fd = child
            if fd >= 0 and object_id(fd, "") != (*key_parts(at)[1:], mount_id):
                os.close(fd)
                fd = -1
            if fd < 0:  # moved: found by a search, then on down from it
                if at == key:
                    return self._search(export, key, place.ino)
                try:
                    fd = self._search(export, at, place.ino)
                except StaleHandle:
                    break
        if fd >= 0 and not chain:
            return fd
        if fd >= 0:
            os.close(fd)
        place = self.places.get(key)
        return self._search(export, key, place.ino if place is not None else None)

    def _search(self, export: Export, key: bytes, ino: Optional[int]) -> int:
        now = time.monotonic()
        missed = self._missed.get(key)
        if missed is not None and now - missed < SEARCH_AGAIN:
            raise StaleHandle("not found by a search a moment ago")
        self.searches += 1
        root_fd, mount_id = self.root(export)
        found = search(root_fd, self._root_key(export), mount_id, key, ino, self.search_entries,
                       self.search_seconds)
        if found is None:
            if len(self._missed) >= 4096:
                self._missed.clear()
            self._missed[key] = now
            raise StaleHandle("object not found in its export")
        self.found += 1
        fd, places = found
        for at, place in places:
            self.places.put(at, place)
        return fd

    # -- filesystems mounted below an export are not crossed ---------------------------------------------

    def export_for(self, fd: int) -> Optional[Export]:
        export = self._parent_export(os.readlink(f"/proc/self/fd/{fd}"))
        if export is None or object_id(fd, "")[2] != self.root(export)[1]:
            return None
        return export

    def covered(self, export: Export, dirfd: int, name: bytes) -> tuple[bytes, int]:
        raise OSError(errno.EXDEV, "filesystems mounted below the export are not crossed (unprivileged backend)")


__all__ = ["PathHandles", "refuse_crossing", "refuse_unservable", "SEARCH_ENTRIES", "SEARCH_SECONDS", "SEARCH_AGAIN"]
