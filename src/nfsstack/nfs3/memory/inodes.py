"""The memory backend's objects: inodes, their attributes, directories whose cookies stay valid, one tree per
export, and the bytes they all take (:class:`Space`, the limit behind NFS3ERR_NOSPC)."""

from __future__ import annotations

import bisect
import stat
from typing import Mapping, Optional, Union

from nfsstack.nfs3.codec import NFSError, Stat

#: The type bits of a mode.
S_IFMT = 0o170000
#: What an object costs besides its data (its attributes, its place in the tables): FSSTAT's file counts are the
#: bytes divided by this.
INODE_COST = 256
#: What a name in a directory costs besides its bytes.
ENTRY_COST = 32
#: tmpfs's size of one directory entry (``BOGO_DIRENT_SIZE``): a directory's st_size is this per entry, "." and
#: ".." included, so that it changes with every entry added or removed.
DIRENT_SIZE = 20
#: The most names a file may have (PATHCONF linkmax; ext4's).
LINK_MAX = 65000
#: READDIR cookies: "." is 1, ".." is 2, the first name added to a directory 3 (0 asks for the beginning).
DOT, DOTDOT, FIRST_COOKIE = 1, 2, 3


#: What a tree may be filled with at the start (:meth:`Tree.fill`): a name's bytes (a file) or a mapping (a
#: directory).
Content = Mapping[Union[str, bytes], Union[bytes, str, "Content"]]


def entry_cost(name: bytes) -> int:
    return ENTRY_COST + len(name)


class Space:
    """The bytes every tree of a backend may hold (``limit``) and holds (``used``): file data, symlink targets,
    names, and :data:`INODE_COST` per object."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def check(self, n: int) -> None:
        """NFS3ERR_NOSPC (RFC 1813 section 2.6) unless ``n`` more bytes fit."""
        if n > 0 and self.used + n > self.limit:
            raise NFSError(Stat.NOSPC)

    def take(self, n: int) -> None:
        self.check(n)
        self.used += n

    def give(self, n: int) -> None:
        self.used -= n


class Attributes:
    """An object's attributes at one moment, with the :class:`os.stat_result` field names fattr3 reads
    (nfs3/interface.py)."""

    __slots__ = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks", "st_rdev", "st_ino", "st_dev",
                 "st_atime_ns", "st_mtime_ns", "st_ctime_ns")

    def __init__(self, inode: "Inode", dev: int) -> None:
        self.st_mode = inode.mode
        self.st_nlink = inode.nlink
        self.st_uid = inode.uid
        self.st_gid = inode.gid
        self.st_size = size = inode.size
        self.st_blocks = (size + 511) // 512
        self.st_rdev = inode.rdev
        self.st_ino = inode.fileid
        self.st_dev = dev
        self.st_atime_ns = inode.atime
        self.st_mtime_ns = inode.mtime
        self.st_ctime_ns = inode.ctime

    def __repr__(self) -> str:
        return (f"Attributes(ino={self.st_ino}, mode={self.st_mode:o}, nlink={self.st_nlink}, uid={self.st_uid}, "
                f"gid={self.st_gid}, size={self.st_size})")


class Inode:
    """A file, directory, symlink, device, FIFO or socket.  ``fileid`` may be used again once the object is gone;
    ``generation`` never is, so a handle names one object only.  A directory keeps its names in the order of
    their cookies: ``entries`` (name -> inode), ``cookie_of`` (name -> cookie), ``order`` (the cookies, ascending)
    and ``name_at`` (cookie -> name); a cookie is given once, when a name is added, and never again."""

    __slots__ = ("fileid", "generation", "mode", "nlink", "uid", "gid", "rdev", "atime", "mtime", "ctime", "data",
                 "target", "entries", "cookie_of", "order", "name_at", "next_cookie", "parent", "handle")

    def __init__(self, fileid: int, generation: int, mode: int, uid: int, gid: int, now: int) -> None:
        self.fileid = fileid
        self.generation = generation
        self.mode = mode
        self.nlink = 0
        self.uid = uid
        self.gid = gid
        self.rdev = 0
        self.atime = self.mtime = self.ctime = now
        self.data = bytearray() if mode & S_IFMT == stat.S_IFREG else None
        self.target = b""
        self.entries: Optional[dict[bytes, Inode]] = None
        self.parent: Optional[Inode] = None
        #: Its handle, made once (nfs3/memory/filesystem.py).
        self.handle: Optional[bytes] = None
        if mode & S_IFMT == stat.S_IFDIR:
            self.nlink = 1  # "."; its name in the parent makes 2
            self.entries = {}
            self.cookie_of: dict[bytes, int] = {}
            self.order: list[int] = []
            self.name_at: dict[int, bytes] = {}
            self.next_cookie = FIRST_COOKIE

    @property
    def kind(self) -> int:
        return self.mode & S_IFMT

    @property
    def size(self) -> int:
        if self.data is not None:
            return len(self.data)
        if self.entries is not None:
            return DIRENT_SIZE * (2 + len(self.entries))
        return len(self.target)

    def cost(self) -> int:
        """The bytes the object takes besides its names."""
        return INODE_COST + (len(self.data) if self.data is not None else 0) + len(self.target)

    def attributes(self, dev: int) -> Attributes:
        return Attributes(self, dev)


class Tree:
    """One export's objects: its root, every object by fileid, and the fileids free to be used again."""

    def __init__(self, dev: int, space: Space, now: int, root_mode: int = 0o755) -> None:
        self.dev = dev
        self.space = space
        self.inodes: dict[int, Inode] = {}
        #: Fileids of removed objects, used again (last freed first), as a filesystem reuses inode numbers.
        self.free_ids: list[int] = []
        self._next_id = 1
        self._generation = 0
        self.root = self._new(stat.S_IFDIR | root_mode, 0, 0, now)
        self.root.nlink = 2
        self.root.parent = self.root  # ".." of the root is the root: a client never climbs out of an export

    def _new(self, mode: int, uid: int, gid: int, now: int) -> Inode:
        self.space.take(INODE_COST)
        if self.free_ids:
            fileid = self.free_ids.pop()
        else:
            fileid = self._next_id
            self._next_id += 1
        self._generation += 1
        inode = self.inodes[fileid] = Inode(fileid, self._generation, mode, uid, gid, now)
        return inode

    def make(self, directory: Inode, name: bytes, mode: int, uid: int, gid: int, now: int, extra: int = 0) -> Inode:
        """A new object named ``name`` in ``directory``; NFS3ERR_NOSPC, with nothing made, unless it and ``extra``
        more bytes (the data or target it is made with) fit."""
        self.space.check(INODE_COST + entry_cost(name) + extra)
        inode = self._new(mode, uid, gid, now)
        self.enter(directory, name, inode, now)
        return inode

    def enter(self, directory: Inode, name: bytes, inode: Inode, now: int, paid: bool = False) -> None:
        """Name ``inode`` in ``directory``, with the next cookie of the directory (``paid``: the name's bytes
        are already taken)."""
        if not paid:
            self.space.take(entry_cost(name))
        cookie = directory.next_cookie
        directory.next_cookie = cookie + 1
        directory.entries[name] = inode
        directory.cookie_of[name] = cookie
        directory.order.append(cookie)  # the largest cookie yet: the order stays sorted
        directory.name_at[cookie] = name
        inode.nlink += 1
        if inode.entries is not None:
            directory.nlink += 1  # the child's ".."
            inode.parent = directory
        directory.mtime = directory.ctime = now

    def leave(self, directory: Inode, name: bytes, now: int) -> Inode:
        """Take ``name`` out of ``directory``; the object loses a link (:meth:`unlinked` forgets it once it has
        no name)."""
        inode = directory.entries.pop(name)
        cookie = directory.cookie_of.pop(name)
        del directory.name_at[cookie]
        order = directory.order
        del order[bisect.bisect_left(order, cookie)]
        self.space.give(entry_cost(name))
        inode.nlink -= 1
        if inode.entries is not None:
            directory.nlink -= 1
        directory.mtime = directory.ctime = now
        return inode

    def unlinked(self, inode: Inode, now: int) -> None:
        """``inode`` lost a name: a directory (which has only one) or a file with none left is gone, its handle
        stale from now on; another keeps going, with a new ctime."""
        if inode.entries is None and inode.nlink > 0:
            inode.ctime = now
            return
        inode.nlink = 0
        del self.inodes[inode.fileid]
        self.free_ids.append(inode.fileid)
        self.space.give(inode.cost())

    def fill(self, directory: Inode, content: Content, now: int) -> None:
        """Make ``content`` in ``directory``: files 0644 and directories 0755, root's."""
        for name, value in content.items():
            name = name.encode() if isinstance(name, str) else name
            if isinstance(value, Mapping):
                self.fill(self.make(directory, name, stat.S_IFDIR | 0o755, 0, 0, now), value, now)
                continue
            data = value.encode() if isinstance(value, str) else bytes(value)
            inode = self.make(directory, name, stat.S_IFREG | 0o644, 0, 0, now, len(data))
            self.space.take(len(data))
            inode.data[:] = data
