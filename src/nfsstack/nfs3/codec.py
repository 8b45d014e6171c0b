"""NFSv3 on the wire (RFC 1813 sections 2.5-3.3): status codes, fattr3, sattr3, wcc data, and the procedures'
argument decoders.  One set of types for the server and the client (:mod:`nfsstack.nfs3.client`).

fattr3 and wcc_attr are packed with one precompiled struct each: they are in
almost every reply.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Optional

from nfsstack.xdr import Packer, Unpacker, XDRError

#: Largest READ and WRITE over TCP (FSINFO rtmax/wtmax): the kernel client then uses 1 MiB requests.
RTMAX = WTMAX = 1 << 20
#: Over UDP a reply must fit one datagram: 32 KiB, as knfsd allows.
UDP_XFER = 32 * 1024
#: FSINFO's preferred READDIR size.
DTPREF = 64 * 1024
#: The largest file offset (and FSINFO maxfilesize): what Linux's off_t holds.
MAX_OFFSET = (1 << 63) - 1
NFS_PROG = 100003
NFS_V3 = 3
FHSIZE3 = 64
NAME_MAX = 255
#: Upper bound for decoding names and paths: longer names are decoded (to answer NAMETOOLONG), not stored.
MAX_NAME_DECODE = 4096
MAX_PATH = 4096


class Stat(IntEnum):
    """nfsstat3 (RFC 1813 section 2.6)."""

    OK = 0
    PERM = 1
    NOENT = 2
    IO = 5
    NXIO = 6
    ACCES = 13
    EXIST = 17
    XDEV = 18
    NODEV = 19
    NOTDIR = 20
    ISDIR = 21
    INVAL = 22
    FBIG = 27
    NOSPC = 28
    ROFS = 30
    MLINK = 31
    NAMETOOLONG = 63
    NOTEMPTY = 66
    DQUOT = 69
    STALE = 70
    REMOTE = 71
    BADHANDLE = 10001
    NOT_SYNC = 10002
    BAD_COOKIE = 10003
    NOTSUPP = 10004
    TOOSMALL = 10005
    SERVERFAULT = 10006
    BADTYPE = 10007
    JUKEBOX = 10008


ERRNO_TO_STAT = {
    errno.EPERM: Stat.PERM, errno.ENOENT: Stat.NOENT, errno.EIO: Stat.IO, errno.ENXIO: Stat.NXIO,
    errno.EACCES: Stat.ACCES, errno.EEXIST: Stat.EXIST, errno.EXDEV: Stat.XDEV, errno.ENODEV: Stat.NODEV,
    errno.ENOTDIR: Stat.NOTDIR, errno.EISDIR: Stat.ISDIR, errno.EINVAL: Stat.INVAL, errno.EFBIG: Stat.FBIG,
    errno.ENOSPC: Stat.NOSPC, errno.EROFS: Stat.ROFS, errno.EMLINK: Stat.MLINK,
    errno.ENAMETOOLONG: Stat.NAMETOOLONG, errno.ENOTEMPTY: Stat.NOTEMPTY, errno.EDQUOT: Stat.DQUOT,
    errno.ESTALE: Stat.STALE, errno.EOPNOTSUPP: Stat.NOTSUPP, errno.ENOTSUP: Stat.NOTSUPP,
    errno.ETXTBSY: Stat.ACCES, errno.EAGAIN: Stat.JUKEBOX, errno.ELOOP: Stat.INVAL, errno.EOVERFLOW: Stat.INVAL,
    errno.EBUSY: Stat.ACCES, errno.ENOMEM: Stat.JUKEBOX, errno.EBADF: Stat.IO, errno.EMFILE: Stat.JUKEBOX,
    errno.ENFILE: Stat.JUKEBOX,
}


def stat_of(error: OSError) -> Stat:
    return ERRNO_TO_STAT.get(error.errno, Stat.IO)


class NFSError(Exception):
    """A procedure fails with ``status``; the handler still sends the reply's attributes."""

    def __init__(self, status: Stat) -> None:
        super().__init__(status.name)
        self.status = status


class Ftype(IntEnum):
    REG = 1
    DIR = 2
    BLK = 3
    CHR = 4
    LNK = 5
    SOCK = 6
    FIFO = 7


FTYPE = {stat.S_IFREG: Ftype.REG, stat.S_IFDIR: Ftype.DIR, stat.S_IFBLK: Ftype.BLK, stat.S_IFCHR: Ftype.CHR,
         stat.S_IFLNK: Ftype.LNK, stat.S_IFSOCK: Ftype.SOCK, stat.S_IFIFO: Ftype.FIFO}
S_IFMT_OF = {v: k for k, v in FTYPE.items()}

_FATTR3 = struct.Struct(">5I2Q2I2Q6I")
_WCC_ATTR = struct.Struct(">Q4I")
_TRUE = b"\0\0\0\1"
_FALSE = b"\0\0\0\0"


def _split(ns: int) -> tuple[int, int]:
    s, n = divmod(ns, 1_000_000_000)
    return s & 0xFFFFFFFF, n


_FTYPE_OF_MODE = {mode: int(kind) for mode, kind in FTYPE.items()}


def fattr3(st: os.stat_result, fsid: int) -> bytes:
    """fattr3 (RFC 1813 section 2.6) of a stat result."""
    rdev = st.st_rdev
    mode = st.st_mode
    a_s, a_n = divmod(st.st_atime_ns, 1_000_000_000)
    m_s, m_n = divmod(st.st_mtime_ns, 1_000_000_000)
    c_s, c_n = divmod(st.st_ctime_ns, 1_000_000_000)
    return _FATTR3.pack(
        _FTYPE_OF_MODE.get(mode & 0o170000, 1), mode & 0o7777, st.st_nlink & 0xFFFFFFFF,
        st.st_uid, st.st_gid, st.st_size, st.st_blocks * 512, os.major(rdev) if rdev else 0,
        os.minor(rdev) if rdev else 0, fsid, st.st_ino, a_s & 0xFFFFFFFF, a_n, m_s & 0xFFFFFFFF, m_n,
        c_s & 0xFFFFFFFF, c_n,
    )


def post_op_attr(p: Packer, st: Optional[os.stat_result], fsid: int) -> None:
    if st is None:
        p.pack_raw(_FALSE)
    else:
        p.pack_raw(_TRUE)
        p.pack_raw(fattr3(st, fsid))


def wcc_data(p: Packer, before: Optional[os.stat_result], after: Optional[os.stat_result], fsid: int) -> None:
    if before is None:
        p.pack_raw(_FALSE)
    else:
        m = _split(before.st_mtime_ns)
        c = _split(before.st_ctime_ns)
        p.pack_raw(_TRUE)
        p.pack_raw(_WCC_ATTR.pack(before.st_size, m[0], m[1], c[0], c[1]))
    post_op_attr(p, after, fsid)


def post_op_fh(p: Packer, handle: Optional[bytes]) -> None:
    if handle is None:
        p.pack_raw(_FALSE)
    else:
        p.pack_raw(_TRUE)
        p.pack_opaque(handle)


# -- sattr3 -------------------------------------------------------------------

DONT_CHANGE, SET_TO_SERVER_TIME, SET_TO_CLIENT_TIME = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Sattr:
    """sattr3: each field None when it is not to be set; times are ns, or "now" for server time."""

    mode: Optional[int] = None
    uid: Optional[int] = None
    gid: Optional[int] = None
    size: Optional[int] = None
    atime: Optional[int | str] = None
    mtime: Optional[int | str] = None


def _time(u: Unpacker) -> Optional[int | str]:
    how = u.unpack_uint()
    if how == DONT_CHANGE:
        return None
    if how == SET_TO_SERVER_TIME:
        return "now"
    if how == SET_TO_CLIENT_TIME:
        s, ns = u.unpack_uint(), u.unpack_uint()
        return s * 1_000_000_000 + min(ns, 999_999_999)
    raise XDRError(f"time_how {how}")


def unpack_sattr(u: Unpacker) -> Sattr:
    mode = u.unpack_uint() if u.unpack_bool() else None
    uid = u.unpack_uint() if u.unpack_bool() else None
    gid = u.unpack_uint() if u.unpack_bool() else None
    size = u.unpack_uhyper() if u.unpack_bool() else None
    return Sattr(mode, uid, gid, size, _time(u), _time(u))


def pack_sattr(p: Packer, a: Sattr) -> None:
    """sattr3 as a client sends it (the inverse of :func:`unpack_sattr`)."""
    for value in (a.mode, a.uid, a.gid):
        p.pack_bool(value is not None)
        if value is not None:
            p.pack_uint(value)
    p.pack_bool(a.size is not None)
    if a.size is not None:
        p.pack_uhyper(a.size)
    for t in (a.atime, a.mtime):
        if t is None:
            p.pack_uint(0)
        elif t == "now":
            p.pack_uint(1)
        else:
            p.pack_uint(2)
            p.pack_uint(t // 1_000_000_000)
            p.pack_uint(t % 1_000_000_000)


def unpack_fh(u: Unpacker) -> bytes:
    return u.unpack_opaque(FHSIZE3)


def unpack_name(u: Unpacker) -> bytes:
    return u.unpack_opaque(MAX_NAME_DECODE)


def unpack_diropargs(u: Unpacker) -> tuple[bytes, bytes]:
    return unpack_fh(u), unpack_name(u)


def check_name(name: bytes) -> None:
    """A single path component: not empty, no '/' or NUL, at most 255 bytes."""
    if len(name) > NAME_MAX:
        raise NFSError(Stat.NAMETOOLONG)
    if not name or b"/" in name or b"\0" in name:
        raise NFSError(Stat.INVAL)


# ACCESS bits (RFC 1813 section 3.3.4)
ACCESS_READ = 0x01
ACCESS_LOOKUP = 0x02
ACCESS_MODIFY = 0x04
ACCESS_EXTEND = 0x08
ACCESS_DELETE = 0x10
ACCESS_EXECUTE = 0x20



def access_bits(read: bool, write: bool, execute: bool, is_dir: bool) -> int:
    """The ACCESS bits (RFC 1813 section 3.3.4) of read, write and execute (search) permission on an object:
    DELETE only on a directory one may write and search."""
    granted = ACCESS_READ if read else 0
    if write:
        granted |= ACCESS_MODIFY | ACCESS_EXTEND
        if is_dir and execute:
            granted |= ACCESS_DELETE
    if execute:
        granted |= ACCESS_LOOKUP if is_dir else ACCESS_EXECUTE
    return granted


# stable_how
UNSTABLE, DATA_SYNC, FILE_SYNC = 0, 1, 2
# createmode3
UNCHECKED, GUARDED, EXCLUSIVE = 0, 1, 2


# -- the procedures' argument decoders (RFC 1813 section 3.3) ---------------------


def unpack_setattr(u: Unpacker):
    handle = unpack_fh(u)
    attrs = unpack_sattr(u)
    guard = None
    if u.unpack_bool():
        s, ns = u.unpack_uint(), u.unpack_uint()
        guard = s * 1_000_000_000 + ns
    return handle, attrs, guard


def unpack_fh_uint(u: Unpacker):
    return unpack_fh(u), u.unpack_uint()


#: offset and count of READ3args and COMMIT3args; offset, count and stable of WRITE3args: each in one unpack.
_RANGE = struct.Struct(">QI")
_WRITE_HEAD = struct.Struct(">QII")


def unpack_range(u: Unpacker):
    handle = u.unpack_opaque(FHSIZE3)
    offset, count = u.unpack_struct(_RANGE)
    return handle, offset, count


def unpack_write(u: Unpacker):
    handle = u.unpack_opaque(FHSIZE3)
    offset, count, stable = u.unpack_struct(_WRITE_HEAD)
    if stable not in (UNSTABLE, DATA_SYNC, FILE_SYNC):
        raise XDRError(f"stable_how {stable}")
    data = u.unpack_opaque_view(WTMAX)
    return handle, offset, count, stable, data


def unpack_create(u: Unpacker):
    where = unpack_diropargs(u)
    mode = u.unpack_uint()
    if mode in (UNCHECKED, GUARDED):
        return where, mode, unpack_sattr(u)
    if mode == EXCLUSIVE:
        return where, mode, u.unpack_fopaque(8)
    raise XDRError(f"createmode3 {mode}")


def unpack_mkdir(u: Unpacker):
    return unpack_diropargs(u), unpack_sattr(u)


def unpack_symlink(u: Unpacker):
    where = unpack_diropargs(u)
    attrs = unpack_sattr(u)
    return where, attrs, u.unpack_opaque(MAX_PATH)


def unpack_mknod(u: Unpacker):
    where = unpack_diropargs(u)
    ftype = u.unpack_uint()
    device = (0, 0)
    attrs = Sattr()
    if ftype in (Ftype.CHR, Ftype.BLK):
        attrs = unpack_sattr(u)
        device = (u.unpack_uint(), u.unpack_uint())
    elif ftype in (Ftype.SOCK, Ftype.FIFO):
        attrs = unpack_sattr(u)
    return where, ftype, attrs, device


def unpack_rename(u: Unpacker):
    return unpack_diropargs(u), unpack_diropargs(u)


def unpack_link(u: Unpacker):
    return unpack_fh(u), unpack_diropargs(u)


def unpack_readdir(u: Unpacker):
    return unpack_fh(u), u.unpack_uhyper(), u.unpack_fopaque(8), u.unpack_uint(), None


def unpack_readdirplus(u: Unpacker):
    return unpack_fh(u), u.unpack_uhyper(), u.unpack_fopaque(8), u.unpack_uint(), u.unpack_uint()
