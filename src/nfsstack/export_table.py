"""The exports in force: the parsed file, each export's open root, handles and client decisions.

Shared by mountd and nfsd.  :meth:`ExportTable.reload` swaps in a new exports
file (SIGHUP) without touching handles: a handle names its export by id, so it
stays valid as long as the export does.
"""

from __future__ import annotations

import os
import time
from typing import Optional

from twisted.internet import defer, threads

from nfsstack.exports import WILDCARD, Export, ExportOptions, Exports, normalize
from nfsstack.nfs3.handles import BadHandle, HandleCodec, StaleHandle, kernel_handle, open_kernel_handle


class HostNames:
    """Reverse lookups of client addresses, for wildcard client specifications; cached, done in a thread."""

    def __init__(self, ttl: float = 300.0, size: int = 4096, lookup=None) -> None:
        self.ttl = ttl
        self.size = size
        self._cache: dict[str, tuple[float, Optional[str]]] = {}
        self._lookup = lookup or self._gethostbyaddr

    @staticmethod
    def _gethostbyaddr(address: str) -> Optional[str]:
        import socket

        try:
            return socket.gethostbyaddr(address)[0]
        except OSError:
            return None

    def cached(self, address: str) -> Optional[str]:
        entry = self._cache.get(address)
        return entry[1] if entry else None

    def known(self, address: str) -> bool:
        """Whether a lookup of ``address`` is cached and fresh."""
        entry = self._cache.get(address)
        return entry is not None and time.monotonic() - entry[0] < self.ttl

    def resolve(self, address: str) -> defer.Deferred:
        entry = self._cache.get(address)
        if entry is not None and time.monotonic() - entry[0] < self.ttl:
            return defer.succeed(entry[1])

        def store(name):
            if len(self._cache) >= self.size:
                self._cache.clear()
            self._cache[address] = (time.monotonic(), name)
            return name

        return threads.deferToThread(self._lookup, address).addCallback(store)


class ExportTable:
    def __init__(self, exports: Exports, codec: HandleCodec, names: Optional[HostNames] = None) -> None:
        self.codec = codec
        self.names = names or HostNames()
        # export id -> (fd of the root, mount id, real path, (st_dev, st_ino))
        self._roots: dict[int, tuple[int, int, str, tuple[int, int]]] = {}
        self.exports = exports

    def reload(self, exports: Exports) -> None:
        """Serve ``exports`` from now on; roots are opened again on use (a path may have changed)."""
        self.close()
        self.exports = exports

    def close(self) -> None:
        for entry in self._roots.values():
            os.close(entry[0])
        self._roots.clear()

    @property
    def needs_names(self) -> bool:
        return any(spec.kind == WILDCARD for e in self.exports for spec, _ in e.clients)

    def options_for(self, export: Export, address: str) -> Optional[ExportOptions]:
        return export.options_for(address, self.names.cached)

    def root(self, export: Export) -> tuple[int, int]:
        """(fd, mount id) of the export's root directory, opened once."""
        return self._root(export)[:2]

    def _root(self, export: Export) -> tuple[int, int, str, tuple[int, int]]:
        entry = self._roots.get(export.export_id)
        if entry is None:
            # A real descriptor: open_by_handle_at refuses an O_PATH one as its mount fd.
            fd = os.open(export.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                _, _, mount_id = kernel_handle(fd, "")
                real = os.readlink(f"/proc/self/fd/{fd}")  # the path with symlinks resolved
                st = os.fstat(fd)
            except OSError:
                os.close(fd)
                raise
            entry = self._roots[export.export_id] = (fd, mount_id, real, (st.st_dev, st.st_ino))
        return entry

    def is_root(self, export: Export, st: os.stat_result) -> bool:
        """Whether ``st`` is the export's root directory (where ``..`` stops)."""
        return (st.st_dev, st.st_ino) == self._root(export)[3]

    def containing(self, path: str) -> Optional[Export]:
        """The export that contains ``path`` (the longest exported prefix), as mountd finds it."""
        path = normalize(path)
        best = None
        for export in self.exports:
            if path == export.path or path.startswith(export.path.rstrip("/") + "/"):
                if best is None or len(export.path) > len(best.path):
                    best = export
        return best

    def inside(self, export: Export, fd: int) -> bool:
        """Whether the object open at ``fd`` lies inside ``export`` (its real path, symlinks resolved)."""
        try:
            where = os.readlink(f"/proc/self/fd/{fd}")
            root = self._root(export)[2]
        except OSError:
            return False
        return where == root or where.startswith(root.rstrip("/") + "/")

    def handle(self, export: Export, dirfd: int, name: str | bytes = "") -> bytes:
        """The handle of ``name`` under ``dirfd`` (``dirfd`` itself if ``name`` is empty)."""
        htype, data, mount_id = kernel_handle(dirfd, name)
        if mount_id != self.root(export)[1]:
            import errno

            raise OSError(errno.EXDEV, "object is on another filesystem than its export")
        return self.codec.encode(export.export_id, htype, data)

    def resolve(self, handle: bytes, flags: int = os.O_PATH) -> tuple[Export, int]:
        """(export, fd) of a handle; BadHandle or StaleHandle if it names nothing we serve."""
        decoded = self.codec.decode(handle)
        export = self.exports.by_id(decoded.export_id)
        if export is None:
            raise StaleHandle("export no longer exported")
        try:
            mount_fd = self.root(export)[0]
            fd = open_kernel_handle(mount_fd, decoded.handle_type, decoded.data, flags)
        except OSError as e:
            raise StaleHandle(str(e)) from None
        if not self.inside(export, fd):
            os.close(fd)
            raise StaleHandle("object is outside its export")
        return export, fd


__all__ = ["ExportTable", "HostNames", "BadHandle", "StaleHandle"]
