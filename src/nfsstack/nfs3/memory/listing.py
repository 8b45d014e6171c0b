"""READDIR and READDIRPLUS of a memory directory (RFC 1813 sections 3.3.16-17), encoded as the local backend
encodes them (``entry3``, ``entryplus3``: nfs3/local/readdir.py).

Cookies are the directory's own: "." is 1, ".." 2, and every name gets the next number of its directory when it
is added (:class:`~nfsstack.nfs3.memory.inodes.Inode`), never used again.  A listing goes on after a cookie with
the names whose cookies are larger, so a cookie stays good while other names come and go, and that of a removed
name goes on from where it was.  A cookie the directory never gave is NFS3ERR_BAD_COOKIE.
"""

from __future__ import annotations

import bisect
import struct
from typing import Callable, Iterator

from nfsstack.nfs3.codec import NFSError, Stat, fattr3
from nfsstack.nfs3.interface import Listing
from nfsstack.nfs3.memory.inodes import DOT, DOTDOT, Inode

_TRUE = b"\0\0\0\1"
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")
_ENTRY_HEAD = struct.Struct(">IQI")  # value follows, fileid, name length
_COOKIE = struct.Struct(">Q")
_U32 = struct.Struct(">I")


def entries_after(directory: Inode, cookie: int) -> Iterator[tuple[Inode, bytes, int]]:
    """(object, name, cookie) of each entry after ``cookie``, in cookie order; "." and ".." first."""
    if cookie >= directory.next_cookie and cookie > DOTDOT:
        raise NFSError(Stat.BAD_COOKIE)
    if cookie < DOT:
        yield directory, b".", DOT
    if cookie < DOTDOT:
        yield directory.parent, b"..", DOTDOT
    order, name_at, entries = directory.order, directory.name_at, directory.entries
    i = bisect.bisect_right(order, cookie)
    while i < len(order):
        at = order[i]
        name = name_at[at]
        yield entries[name], name, at
        i += 1


def listing(directory: Inode, cookie: int, dircount: int, room: int, fsid: int, plus: bool,
            handle: Callable[[Inode], bytes]) -> Listing:
    """The entries after ``cookie`` that fit: their fileids, names and cookies in ``dircount`` bytes (counted
    as the local backend counts them), everything in ``room``; NFS3ERR_TOOSMALL if not one does."""
    parts: list[bytes] = []
    size = names = 0
    eof = True
    pack_head, pack_cookie = _ENTRY_HEAD.pack, _COOKIE.pack
    for inode, name, at in entries_after(directory, cookie):
        n = len(name)
        entry = pack_head(1, inode.fileid, n) + name + _PAD[n & 3] + pack_cookie(at)
        names += 20 + n + (-n & 3)
        if plus:
            fh = handle(inode)
            entry += (_TRUE + fattr3(inode.attributes(fsid), fsid) + _TRUE + _U32.pack(len(fh)) + fh
                      + _PAD[len(fh) & 3])
        if size + len(entry) > room or names > dircount:
            eof = False
            break
        size += len(entry)
        parts.append(entry)
    if not parts and not eof:
        raise NFSError(Stat.TOOSMALL)
    return Listing([b"".join(parts)] if parts else [], eof)
