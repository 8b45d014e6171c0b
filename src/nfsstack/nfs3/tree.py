"""A read-only tree your own code describes, served by nfsd: the quickest way to write a backend.

Subclass :class:`ReadOnlyTree` and give it two methods: :meth:`~ReadOnlyTree.nodes`, every path of the tree
with its :class:`Node` (a file, a directory or a symbolic link, its size, mode and time), and
:meth:`~ReadOnlyTree.read_file`, the bytes of a file, answered at once or with a Deferred (or as a coroutine):
a tree whose data comes from the network holds up no other client while it waits.  Everything else of
:class:`~nfsstack.nfs3.interface.IFilesystem` is done here: handles (signed with the server's handle key, so
they survive a restart), attributes, LOOKUP, READDIR(PLUS) with stable cookies, ACCESS, MNT, and NFS3ERR_ROFS for
every change.  The README has a complete example (a zip file as an export); ``--backend module:factory`` serves
one, ``factory(export_table)`` returning it.

Every export gets the same tree (each export's path only names it).  The tree is read once, when the first
call needs it; :meth:`ReadOnlyTree.reload` reads it again.
"""

from __future__ import annotations

import hashlib
import stat
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from twisted.internet import defer
from zope.interface import implementer

from nfsstack.exports.handles import BadHandle, StaleHandle
from nfsstack.exports.policy import MountRefused
from nfsstack.nfs3.codec import (
    ACCESS_EXECUTE, ACCESS_LOOKUP, ACCESS_READ, NAME_MAX, NFSError, Stat,
)
from nfsstack.nfs3.entries import listing
from nfsstack.nfs3.interface import Found, HoldsNothing, IFilesystem, Limits, Sizes

#: The handle type of a tree's handles (beside the kernel's types in the local backend's).
TREE_HANDLE = 0x7472
_KINDS = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "link": stat.S_IFLNK}


@dataclass
class Node:
    """One object of the tree: ``kind`` "file", "dir" or "link"; for a link, ``target``."""

    kind: str
    size: int = 0
    mode: int = 0o444
    mtime_ns: int = 0
    target: bytes = b""


class Attributes:
    """A node's attributes, with the field names of :class:`os.stat_result` that fattr3 reads."""

    __slots__ = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks", "st_rdev", "st_ino",
                 "st_dev", "st_atime_ns", "st_mtime_ns", "st_ctime_ns")

    def __init__(self, node: Node, fileid: int) -> None:
        self.st_mode = _KINDS[node.kind] | (node.mode & 0o7777)
        self.st_nlink = 2 if node.kind == "dir" else 1
        self.st_uid = self.st_gid = self.st_rdev = self.st_dev = 0
        self.st_size = len(node.target) if node.kind == "link" else node.size
        self.st_blocks = (self.st_size + 511) // 512
        self.st_ino = fileid
        self.st_atime_ns = self.st_mtime_ns = self.st_ctime_ns = node.mtime_ns


class _Object:
    __slots__ = ("path", "node", "fileid", "attributes", "children", "parent")

    def __init__(self, path: str, node: Node, fileid: int) -> None:
        self.path, self.node, self.fileid = path, node, fileid
        self.attributes = Attributes(node, fileid)
        self.children: dict[bytes, _Object] = {}
        self.parent: Optional[_Object] = None


def _fileid(path: str) -> int:
    """A path's fileid: the same at every start (63 bits of its SHA-256; 1 is the root's, and no other's)."""
    return 1 if not path else (int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "big") >> 1) | 2


@implementer(IFilesystem)
class ReadOnlyTree(HoldsNothing):
    """Serves the tree :meth:`nodes` describes under every export of ``table`` (read only)."""

    blocking = False
    lock_opener = None
    write_verifier = b"\0" * 8

    def __init__(self, table) -> None:
        self.table = table
        self._objects: Optional[dict[int, _Object]] = None

    # -- what a subclass gives ---------------------------------------------------------------

    def nodes(self) -> Iterable[tuple[str, Node]]:
        """Every object of the tree: its path ("" is the root, then "a", "a/b"...) and its :class:`Node`.
        A directory not named is made (mode 0555)."""
        raise NotImplementedError

    def read_file(self, path: str, offset: int, count: int) -> Any:
        """At most ``count`` bytes of the file at ``path`` from ``offset`` (bytes, a Deferred of bytes, or a
        coroutine)."""
        raise NotImplementedError

    def reload(self, exports=None) -> None:
        """Read :meth:`nodes` again at the next call (handles of paths still there stay valid); the stack calls
        it after a reload of the exports file too."""
        self._objects = None

    # -- the index -------------------------------------------------------------------------

    def _index(self) -> dict[int, _Object]:
        if self._objects is None:
            by_path = {"": _Object("", Node("dir", mode=0o555), 1)}
            for path, node in self.nodes():
                path = path.strip("/")
                by_path[path] = _Object(path, node, _fileid(path))
            for path in sorted(by_path, key=lambda p: p.count("/")):
                if not path:
                    continue
                parent_path = path.rpartition("/")[0]
                if parent_path not in by_path:  # a directory only its entries name
                    by_path[parent_path] = _Object(parent_path, Node("dir", mode=0o555), _fileid(parent_path))
            for path, obj in sorted(by_path.items()):
                if path:
                    parent = by_path[path.rpartition("/")[0]]
                    obj.parent = parent
                    parent.children[path.rpartition("/")[2].encode()] = obj
            self._objects = {obj.fileid: obj for obj in by_path.values()}
        return self._objects

    def _handle(self, export, obj: _Object) -> bytes:
        return self.table.codec.encode(export.export_id, TREE_HANDLE, obj.fileid.to_bytes(8, "big"))

    def _export(self, export_id: int):
        for export in self.table.exports:
            if export.export_id == export_id:
                return export
        raise StaleHandle("no such export")

    def _object(self, handle: bytes):
        decoded = self.table.codec.decode(handle)
        if decoded.handle_type != TREE_HANDLE or len(decoded.data) != 8:
            raise BadHandle("not a tree handle")
        export = self._export(decoded.export_id)
        obj = self._index().get(int.from_bytes(decoded.data, "big"))
        if obj is None:
            raise StaleHandle("no longer in the tree")
        return export, obj

    # -- IFilesystem -------------------------------------------------------------------------

    def resolve(self, call, handle: bytes):
        export, obj = self._object(handle)
        return export, obj, obj.attributes

    def attributes(self, call, obj: _Object):
        return obj.attributes

    def access(self, call, obj: _Object, attributes) -> int:
        mode = attributes.st_mode
        granted = ACCESS_READ if mode & 0o444 else 0
        if mode & 0o111:
            granted |= ACCESS_LOOKUP if stat.S_ISDIR(mode) else ACCESS_EXECUTE
        return granted

    def lookup(self, call, directory: _Object, dir_attributes, name: bytes) -> Found:
        if name == b".":
            found = directory
        elif name == b"..":
            found = directory.parent or directory  # the root's ".." is the root
        else:
            found = directory.children.get(name)
            if found is None:
                raise NFSError(Stat.NOENT)
        return Found(self._handle(call.export, found), found.attributes, call.fsid)

    def readlink(self, call, obj: _Object) -> bytes:
        return obj.node.target

    def read(self, call, obj: _Object, attributes, offset: int, count: int):
        size = obj.node.size
        if offset >= size or not count:
            return b"", True, attributes
        got = self.read_file(obj.path, offset, min(count, size - offset))

        def answer(data) -> tuple:
            return data, offset + len(data) >= size, attributes

        if isinstance(got, defer.Deferred):
            return got.addCallback(answer)
        if hasattr(got, "__await__"):
            return defer.Deferred.fromCoroutine(got).addCallback(answer)
        return answer(got)

    def readdir(self, call, directory: _Object, dir_attributes, cookie: int, dircount: int, room: int,
                plus: bool):
        names = [(b".", directory), (b"..", directory.parent or directory)] + sorted(directory.children.items())
        export, fsid = call.export, call.fsid
        return listing(((obj.fileid, name, i + 1, obj.attributes, self._handle(export, obj) if plus else None)
                        for i, (name, obj) in enumerate(names) if i >= cookie), dircount, room, plus, fsid)

    def fsstat(self, call, obj: _Object) -> Sizes:
        objects = self._index().values()
        used = sum(o.node.size for o in objects)
        return Sizes(used, 0, 0, len(objects), 0, 0)

    def pathconf(self, call, obj: _Object) -> Limits:
        return Limits(1, NAME_MAX)

    def mount(self, export, path: str, options, address: str) -> bytes:
        below = path[len(export.path):].strip("/")
        obj = next((o for o in self._index().values() if o.path == below), None)
        if obj is None:
            raise MountRefused(f"{below} is not in the tree", noent=True)
        if obj.node.kind != "dir":
            raise MountRefused(f"{below} is not a directory")
        return self._handle(export, obj)

    def lock_key(self, handle: bytes):
        export, obj = self._object(handle)
        return export, (export.export_id, obj.fileid)

    # -- every change: NFS3ERR_ROFS ---------------------------------------------------------------

    def _read_only(self, *_args) -> None:
        raise NFSError(Stat.ROFS)

    setattr = write = commit = create = mkdir = symlink = mknod = remove = rmdir = rename = link = _read_only
