"""READDIR and READDIRPLUS entries on the wire (RFC 1813 sections 3.3.16-17), for backends that list from their
own data: :func:`listing` encodes as many entries as the client's counts allow, as ``entry3`` or ``entryplus3``.

The local backend encodes its own (:mod:`nfsstack.nfs3.local.readdir`), interleaved with getdents and its caches;
a backend that has its entries at hand (a tree in memory, a zip file, a listing fetched from the network) gives
them here.
"""

from __future__ import annotations

import struct
from typing import Any, Iterable, Optional

from nfsstack.nfs3.codec import NFSError, Stat, fattr3
from nfsstack.nfs3.interface import Listing

_HEAD = struct.Struct(">IQI")  # value follows, fileid, name length
_COOKIE = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")
_TRUE, _FALSE = b"\0\0\0\1", b"\0\0\0\0"


def entry(fileid: int, name: bytes, cookie: int) -> bytes:
    """One ``entry3`` (without the attributes and handle of ``entryplus3``), its value-follows word first."""
    n = len(name)
    return _HEAD.pack(1, fileid, n) + name + _PAD[n & 3] + _COOKIE.pack(cookie)


def plus_part(attributes: Optional[Any], fsid: int, handle: Optional[bytes]) -> bytes:
    """What ``entryplus3`` adds to an entry: its post_op_attr and post_op_fh3."""
    part = _TRUE + fattr3(attributes, fsid) if attributes is not None else _FALSE
    if handle is None:
        return part + _FALSE
    return part + _TRUE + _U32.pack(len(handle)) + handle + _PAD[len(handle) & 3]


def listing(entries: Iterable[tuple], dircount: int, room: int, plus: bool, fsid: int) -> Listing:
    """The entries of one reply: ``entries`` yields ``(fileid, name, cookie, attributes, handle)`` in cookie order
    from where the client asked, ``cookie`` being the one that resumes after that entry (attributes and handle are
    only read with ``plus``, and may be None).  As many as fit ``room`` bytes (and, for READDIRPLUS, ``dircount``
    bytes of fileids, names and cookies); none fitting is NFS3ERR_TOOSMALL."""
    parts: list[bytes] = []
    size = names = 0
    eof = True
    for fileid, name, cookie, attributes, handle in entries:
        one = entry(fileid, name, cookie)
        names += 20 + len(name) + (-len(name) & 3)
        if plus:
            one += plus_part(attributes, fsid, handle)
        if size + len(one) > room or names > dircount:
            eof = False
            break
        size += len(one)
        parts.append(one)
    if not parts and not eof:
        raise NFSError(Stat.TOOSMALL)
    return Listing([b"".join(parts)] if parts else [], eof)
