"""The memory backend's :class:`~nfsstack.nfs3.interface.IFilesystem` (:class:`MemoryFilesystem`): one tree of
inodes per export, every call answered at once on the reactor."""

from __future__ import annotations

import errno
import os
import secrets
import stat
import struct
import time
from typing import Callable, Iterable, Optional, Union

from zope.interface import implementer

from nfsstack.exports.file import Export
from nfsstack.exports.handles import BadHandle, HandleCodec, StaleHandle
from nfsstack.exports.table import ExportGone
from nfsstack.nfs3.codec import EXCLUSIVE, GUARDED, NAME_MAX, Ftype, NFSError, Sattr, Stat
from nfsstack.nfs3.interface import Found, HoldsNothing, IFilesystem, Limits, Listing, Made, Sizes
from nfsstack.nfs3.memory import permissions
from nfsstack.nfs3.memory.inodes import INODE_COST, LINK_MAX, Content, Inode, Space, Tree, entry_cost
from nfsstack.nfs3.memory.listing import listing
from nfsstack.nfs3.memory.permissions import R, W, X, need, need_io, need_sticky

#: The handle type of memory handles (HandleCodec's "kernel handle type"): "MEM".
HANDLE_TYPE = 0x4D454D
#: A memory handle's body: fileid, generation.
_OBJECT = struct.Struct(">QQ")
#: What a backend holds unless told otherwise.
DEFAULT_LIMIT = 1 << 30
#: READ moves atime as Linux's default ``relatime`` does: when it is not after mtime or ctime, or a day old.
_RELATIME = 86400 * 1_000_000_000
_DEVICES = (Ftype.CHR, Ftype.BLK)
_KIND_OF = {Ftype.CHR: stat.S_IFCHR, Ftype.BLK: stat.S_IFBLK, Ftype.SOCK: stat.S_IFSOCK, Ftype.FIFO: stat.S_IFIFO}


@implementer(IFilesystem)
class MemoryFilesystem(HoldsNothing):
    """A POSIX-like tree in memory for each export of ``exports`` (the export's path only names it), whose root
    belongs to root, mode ``root_mode`` (0755; the stack gives 1777).  Everything it holds takes at most
    ``limit_bytes`` (file data, symlink targets, names, and a little per object): beyond, NFS3ERR_NOSPC.  ``clock`` gives the times (ns); ``key`` signs the
    handles (random: handles die with the process, as the trees do).  ``initial``: what each tree starts with
    (:data:`Content`, or a function of the export giving it or None)."""

    blocking = False

    def __init__(self, exports: Iterable[Export], limit_bytes: int = DEFAULT_LIMIT,
                 clock: Callable[[], int] = time.time_ns, key: Optional[bytes] = None,
                 initial: Union[Content, Callable[[Export], Optional[Content]], None] = None,
                 root_mode: int = 0o755) -> None:
        self.codec = HandleCodec(key or secrets.token_bytes(32))
        self.space = Space(limit_bytes)
        self.clock = clock
        self._last = 0
        #: The data lives as long as the process: it changes with every start.
        self.write_verifier = secrets.token_bytes(8)
        self.initial = initial
        #: The mode of each export's root (owned by root).
        self.root_mode = root_mode
        #: export id -> the export in force; a tree outlives its export's removal (a reload may bring it back).
        self.exports: dict[int, Export] = {}
        self.trees: dict[int, Tree] = {}
        self.reload(exports)

    def reload(self, exports: Iterable[Export]) -> None:
        """Serve ``exports`` from now on; the trees of the exports still there stay as they are."""
        self.exports = {export.export_id: export for export in exports}
        for export_id, export in self.exports.items():
            if export_id not in self.trees:
                tree = self.trees[export_id] = Tree(export_id, self.space, self.now(), self.root_mode)
                content = self.initial(export) if callable(self.initial) else self.initial
                if content:
                    tree.fill(tree.root, content, self.now())

    def now(self) -> int:
        """The clock, but always later than the last time given: every change moves the times it sets."""
        t = self.clock()
        if t <= self._last:
            t = self._last + 1
        self._last = t
        return t

    # -- handles and attributes ----------------------------------------------------------

    def root_handle(self, export: Export) -> bytes:
        """The handle of ``export``'s root (what MNT answers)."""
        return self._handle(export.export_id, self.trees[export.export_id].root)

    # -- mountd and nlockmgr -------------------------------------------------------------

    #: Nothing of this storage is a file of this machine: nlockmgr's locks live in its table alone.
    lock_opener = None

    def mount(self, export: Export, path: str, options, address: str) -> bytes:
        """MNT of the export's path, or of a directory below it (every component searched as root)."""
        inode = self.trees[export.export_id].root
        for name in path[len(export.path):].strip("/").split("/"):
            if not name:
                continue
            if inode.entries is None:
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
            inode = inode.entries.get(name.encode())
            if inode is None:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        if inode.entries is None:
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        return self._handle(export.export_id, inode)

    def lock_key(self, handle: bytes):
        export, inode, _ = self.resolve(None, handle)
        return export, (export.export_id, inode.fileid, inode.generation)

    def _handle(self, export_id: int, inode: Inode) -> bytes:
        """export id, fileid and generation, MAC'd (:class:`~nfsstack.exports.handles.HandleCodec`)."""
        handle = inode.handle
        if handle is None:
            handle = inode.handle = self.codec.encode(export_id, HANDLE_TYPE,
                                                      _OBJECT.pack(inode.fileid, inode.generation))
        return handle

    def resolve(self, call, handle: bytes):
        decoded = self.codec.decode(handle)
        if decoded.handle_type != HANDLE_TYPE or len(decoded.data) != _OBJECT.size:
            raise BadHandle("not a memory handle")
        export = self.exports.get(decoded.export_id)
        if export is None:
            raise ExportGone(f"export {decoded.export_id} is no longer exported")
        fileid, generation = _OBJECT.unpack(decoded.data)
        inode = self.trees[decoded.export_id].inodes.get(fileid)
        if inode is None or inode.generation != generation:
            raise StaleHandle("removed")
        return export, inode, inode.attributes(decoded.export_id)

    def attributes(self, call, inode: Inode):
        return inode.attributes(call.fsid)

    # -- attributes ----------------------------------------------------------------------

    def setattr(self, call, inode: Inode, before, attrs: Sattr) -> None:
        who = call.who
        permissions.check_setattr(who, inode, attrs, call.options.read_only)
        if attrs.size is not None:
            self.space.check(attrs.size - len(inode.data))
        if all(v is None for v in (attrs.size, attrs.uid, attrs.gid, attrs.mode, attrs.atime, attrs.mtime)):
            return
        now = self.now()
        if attrs.size is not None:
            self._resize(inode, attrs.size)
            inode.mtime = now
            if who.uid != 0:
                permissions.kill_set_ids(inode)
        if attrs.uid is not None or attrs.gid is not None:
            inode.uid = inode.uid if attrs.uid is None else attrs.uid
            inode.gid = inode.gid if attrs.gid is None else attrs.gid
            if inode.entries is None:
                permissions.kill_set_ids(inode)  # before the mode: a mode set in the same call keeps them
        if attrs.mode is not None and inode.kind != stat.S_IFLNK:
            mode = attrs.mode & 0o7777
            if who.uid != 0 and not permissions.in_group(who, inode.gid):
                mode &= ~stat.S_ISGID
            inode.mode = inode.kind | mode
        if attrs.atime is not None:
            inode.atime = now if attrs.atime == "now" else attrs.atime
        if attrs.mtime is not None:
            inode.mtime = now if attrs.mtime == "now" else attrs.mtime
        inode.ctime = now

    def _resize(self, inode: Inode, size: int) -> None:
        data = inode.data
        grow = size - len(data)
        self.space.take(grow)
        if grow > 0:
            data.extend(bytes(grow))
        else:
            del data[size:]
            self.space.give(-grow)

    def access(self, call, inode: Inode, attributes) -> int:
        return permissions.access(call.who, inode, call.options.read_only)

    def readlink(self, call, inode: Inode) -> bytes:
        return inode.target

    def lookup(self, call, directory: Inode, dir_attributes, name: bytes) -> Found:
        need(call.who, directory, X)
        if name == b".":
            found = directory
        elif name == b"..":
            found = directory.parent
        else:
            found = directory.entries.get(name)
            if found is None:
                raise NFSError(Stat.NOENT)
        fsid = call.fsid
        return Found(self._handle(fsid, found), found.attributes(fsid), fsid)

    # -- data ----------------------------------------------------------------------------

    def read(self, call, inode: Inode, attributes, offset: int, count: int):
        need_io(call.who, inode, R, call.options.read_only)
        data = inode.data
        size = len(data)
        # A copy: the reply may be sent after the file changed, and a bytearray with a view on it cannot grow.
        chunk = bytes(data[offset:offset + count]) if count and offset < size else b""
        if not call.options.read_only and chunk:
            now = self.clock()
            if inode.atime <= inode.mtime or inode.atime <= inode.ctime or now - inode.atime >= _RELATIME:
                inode.atime = self.now()
        return chunk, offset + len(chunk) >= size, inode.attributes(call.fsid)

    def write(self, call, inode: Inode, before, offset: int, data, stable: int):
        who = call.who
        need_io(who, inode, W, call.options.read_only)
        if not len(data):
            return 0, stable, inode.attributes(call.fsid)  # a write of nothing changes nothing
        buf = inode.data
        end = offset + len(data)
        self.space.take(end - len(buf))
        if offset > len(buf):
            buf.extend(bytes(offset - len(buf)))
        buf[offset:end] = data
        if who.uid != 0:
            permissions.kill_set_ids(inode)
        inode.mtime = inode.ctime = self.now()
        # The data is as stable as the process: what was asked for is what there is.
        return len(data), stable, inode.attributes(call.fsid)

    def commit(self, call, inode: Inode, attributes) -> None:
        return None

    # -- directory changes ---------------------------------------------------------------

    def _tree(self, call) -> Tree:
        return self.trees[call.fsid]

    def _new_name(self, call, directory: Inode, name: bytes) -> None:
        """May the caller add ``name`` to ``directory``: search it (NFS3ERR_ACCES), the name free
        (NFS3ERR_EXIST), then write to it (NFS3ERR_ACCES), in the kernel's order."""
        need(call.who, directory, X)
        if name in directory.entries:
            raise NFSError(Stat.EXIST)
        need(call.who, directory, W | X)

    def _made(self, call, inode: Inode, attrs: Optional[Sattr] = None) -> Made:
        """What a CREATE, MKDIR or MKNOD made, with the owners and times of ``attrs`` set as the caller (the mode
        it was made with; a refusal leaves it made, as the local backend's does)."""
        if attrs is not None and (attrs.uid is not None or attrs.gid is not None or attrs.atime is not None
                                  or attrs.mtime is not None):
            self.setattr(call, inode, None, Sattr(None, attrs.uid, attrs.gid, None, attrs.atime, attrs.mtime))
        fsid = call.fsid
        return Made(self._handle(fsid, inode), inode.attributes(fsid))

    def _make(self, call, directory: Inode, name: bytes, mode: int, extra: int = 0) -> Inode:
        mode, uid, gid = permissions.new_owner(call.who, directory, mode)
        return self._tree(call).make(directory, name, mode, uid, gid, self.now(), extra)

    def create(self, call, directory: Inode, name: bytes, how: int, attrs) -> Made:
        need(call.who, directory, X)
        existing = directory.entries.get(name)
        if how == EXCLUSIVE:
            # The client's verifier lives in atime and mtime (seconds), as the local backend keeps it.
            atime, mtime = int.from_bytes(attrs[:4], "big") * 10**9, int.from_bytes(attrs[4:], "big") * 10**9
            if existing is not None:
                if existing.kind == stat.S_IFREG and (existing.atime, existing.mtime) == (atime, mtime):
                    return self._made(call, existing)  # a retransmission
                raise NFSError(Stat.EXIST)
            need(call.who, directory, W | X)
            inode = self._make(call, directory, name, stat.S_IFREG | 0o600)
            inode.atime, inode.mtime = atime, mtime
            return self._made(call, inode)
        if existing is not None:
            if how == GUARDED or existing.kind != stat.S_IFREG:
                raise NFSError(Stat.EXIST)
            # UNCHECKED: the file as it is, but for the size and times sent.
            self.setattr(call, existing, None, Sattr(None, None, None, attrs.size, attrs.atime, attrs.mtime))
            return self._made(call, existing)
        need(call.who, directory, W | X)
        perm = attrs.mode & 0o7777 if attrs.mode is not None else 0o644
        inode = self._make(call, directory, name, stat.S_IFREG | perm, attrs.size or 0)
        if attrs.size:
            self._resize(inode, attrs.size)
        return self._made(call, inode, attrs)

    def mkdir(self, call, directory: Inode, name: bytes, attrs) -> Made:
        self._new_name(call, directory, name)
        perm = attrs.mode & 0o7777 if attrs.mode is not None else 0o755
        if directory.nlink >= LINK_MAX:
            raise NFSError(Stat.MLINK)
        return self._made(call, self._make(call, directory, name, stat.S_IFDIR | perm), attrs)

    def symlink(self, call, directory: Inode, name: bytes, attrs, target: bytes) -> Made:
        self._new_name(call, directory, name)
        inode = self._make(call, directory, name, stat.S_IFLNK | 0o777, len(target))
        self.space.take(len(target))
        inode.target = bytes(target)
        return self._made(call, inode)  # Linux gives symlinks no mode, and the local backend sets nothing else

    def mknod(self, call, directory: Inode, name: bytes, ftype: int, attrs, device: tuple) -> Made:
        self._new_name(call, directory, name)
        if ftype in _DEVICES and call.who.uid != 0:
            raise NFSError(Stat.PERM)  # CAP_MKNOD
        perm = attrs.mode & 0o7777 if attrs.mode is not None else 0o644
        inode = self._make(call, directory, name, _KIND_OF[ftype] | perm)
        if ftype in _DEVICES:
            inode.rdev = os.makedev(*device)
        return self._made(call, inode, attrs)

    def _victim(self, call, directory: Inode, name: bytes) -> Inode:
        """The object ``name`` in ``directory``, which the caller may take out of it (``may_delete``): search
        (NFS3ERR_ACCES), the name there (NFS3ERR_NOENT), write and search (NFS3ERR_ACCES), the sticky bit
        (NFS3ERR_PERM)."""
        who = call.who
        need(who, directory, X)
        inode = directory.entries.get(name)
        if inode is None:
            raise NFSError(Stat.NOENT)
        need(who, directory, W | X)
        need_sticky(who, directory, inode)
        return inode

    def remove(self, call, directory: Inode, name: bytes) -> None:
        if self._victim(call, directory, name).entries is not None:
            raise NFSError(Stat.ISDIR)
        now = self.now()
        tree = self._tree(call)
        tree.unlinked(tree.leave(directory, name, now), now)

    def rmdir(self, call, directory: Inode, name: bytes) -> None:
        inode = self._victim(call, directory, name)
        if inode.entries is None:
            raise NFSError(Stat.NOTDIR)
        if inode.entries:
            raise NFSError(Stat.NOTEMPTY)
        now = self.now()
        tree = self._tree(call)
        tree.unlinked(tree.leave(directory, name, now), now)

    def rename(self, call, from_dir: Inode, from_name: bytes, to_dir: Inode, to_name: bytes) -> None:
        who = call.who
        need(who, from_dir, X)
        need(who, to_dir, X)
        source = from_dir.entries.get(from_name)
        if source is None:
            raise NFSError(Stat.NOENT)
        target = to_dir.entries.get(to_name)
        if source.entries is not None and permissions.within(to_dir, source):
            raise NFSError(Stat.INVAL)  # a directory into itself
        if target is not None and target.entries is not None and permissions.within(from_dir, target):
            raise NFSError(Stat.NOTEMPTY)  # over a directory the source lies in
        if source is target:
            return  # two names of one object: nothing to do (rename(2))
        need(who, from_dir, W | X)
        need_sticky(who, from_dir, source)
        need(who, to_dir, W | X)
        if target is not None:
            need_sticky(who, to_dir, target)
            if source.entries is not None and target.entries is None:
                raise NFSError(Stat.NOTDIR)
            if source.entries is None and target.entries is not None:
                raise NFSError(Stat.ISDIR)
        if source.entries is not None and to_dir is not from_dir:
            need(who, source, W)  # its ".." changes
            if target is None and to_dir.nlink >= LINK_MAX:
                raise NFSError(Stat.MLINK)
        if target is not None and target.entries:
            raise NFSError(Stat.NOTEMPTY)
        tree = self._tree(call)
        self.space.take(entry_cost(to_name))
        now = self.now()
        if target is not None:
            tree.unlinked(tree.leave(to_dir, to_name, now), now)
        tree.leave(from_dir, from_name, now)
        tree.enter(to_dir, to_name, source, now, paid=True)
        source.ctime = now

    def link(self, call, inode: Inode, directory: Inode, name: bytes) -> None:
        who = call.who
        need(who, directory, X)
        if name in directory.entries:
            raise NFSError(Stat.EXIST)
        if who.uid != 0 and who.uid != inode.uid and not permissions.may_link(who, inode):
            raise NFSError(Stat.PERM)  # fs.protected_hardlinks, Linux's default
        need(who, directory, W | X)
        if inode.nlink >= LINK_MAX:
            raise NFSError(Stat.MLINK)
        now = self.now()
        self._tree(call).enter(directory, name, inode, now)
        inode.ctime = now

    # -- listings and the filesystem -----------------------------------------------------

    def readdir(self, call, directory: Inode, dir_attributes, cookie: int, dircount: int, room: int,
                plus: bool) -> Listing:
        need_io(call.who, directory, R, call.options.read_only)
        fsid = call.fsid
        return listing(directory, cookie, dircount, room, fsid, plus, lambda inode: self._handle(fsid, inode))

    def fsstat(self, call, inode: Inode) -> Sizes:
        total, free = self.space.limit, max(self.space.limit - self.space.used, 0)
        return Sizes(total, free, free, total // INODE_COST, free // INODE_COST, free // INODE_COST)

    def pathconf(self, call, inode: Inode) -> Limits:
        return Limits(LINK_MAX, NAME_MAX)

