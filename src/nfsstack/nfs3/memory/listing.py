"""READDIR and READDIRPLUS of a memory directory (RFC 1813 sections 3.3.16-17), encoded by
:mod:`nfsstack.nfs3.entries` (``entry3``, ``entryplus3``).

Cookies are the directory's own: "." is 1, ".." 2, and every name gets the next number of its directory when it
is added (:class:`~nfsstack.nfs3.memory.inodes.Inode`), never used again.  A listing goes on after a cookie with
the names whose cookies are larger, so a cookie stays good while other names come and go, and that of a removed
name goes on from where it was.  A cookie the directory never gave is NFS3ERR_BAD_COOKIE.
"""

from __future__ import annotations

import bisect
from typing import Callable, Iterator

from nfsstack.nfs3 import entries
from nfsstack.nfs3.codec import NFSError, Stat
from nfsstack.nfs3.interface import Listing
from nfsstack.nfs3.memory.inodes import DOT, DOTDOT, Inode


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
    return entries.listing(((inode.fileid, name, at, inode.attributes(fsid) if plus else None,
                             handle(inode) if plus else None)
                            for inode, name, at in entries_after(directory, cookie)), dircount, room, plus, fsid)
