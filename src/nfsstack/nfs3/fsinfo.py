"""The procedures about the filesystem an object lives on: FSSTAT, FSINFO and PATHCONF (RFC 1813 sections
3.3.18-3.3.20)."""

from __future__ import annotations

from nfsstack.nfs3.codec import DTPREF, MAX_OFFSET
from nfsstack.nfs3.frame import Call

_FSF3_LINK, _FSF3_SYMLINK, _FSF3_HOMOGENEOUS, _FSF3_CANSETTIME = 0x1, 0x2, 0x8, 0x10


def _watched(call: Call, handle: bytes, sys_on_root: bool = False):
    obj, attrs = call.resolve(handle, sys_on_root=sys_on_root)
    call.watch(obj, attrs)
    return obj


def fsstat3(call: Call, handle: bytes):
    """FSSTAT (section 3.3.18): bytes and files, total, free and available to the caller."""
    sizes = yield call.fs.fsstat(call, _watched(call, handle))

    def pack(p) -> None:
        call.pack_attr(p, 0)
        for n in (sizes.tbytes, sizes.fbytes, sizes.abytes, sizes.tfiles, sizes.ffiles, sizes.afiles):
            p.pack_uhyper(n)
        p.pack_uint(0)  # invarsec: the figures may change at any time

    return pack


def fsinfo3(call: Call, handle: bytes):
    """FSINFO (section 3.3.19): transfer sizes of this transport (1 MiB over TCP, 32 KiB over UDP).  AUTH_SYS
    may ask of the export's root on a Kerberos export (RFC 2623 section 2.3.2, as knfsd)."""
    _watched(call, handle, sys_on_root=True)
    xfer = call.xfer

    def pack(p) -> None:
        call.pack_attr(p, 0)
        for n in (xfer, xfer, 4096, xfer, xfer, 4096, DTPREF):  # rtmax, rtpref, rtmult, wt..., dtpref
            p.pack_uint(n)
        p.pack_uhyper(MAX_OFFSET)  # maxfilesize
        p.pack_uint(0)
        p.pack_uint(1)  # time_delta: nanoseconds
        p.pack_uint(_FSF3_LINK | _FSF3_SYMLINK | _FSF3_HOMOGENEOUS | _FSF3_CANSETTIME)

    return pack


def pathconf3(call: Call, handle: bytes):
    """PATHCONF (section 3.3.20)."""
    limits = yield call.fs.pathconf(call, _watched(call, handle))

    def pack(p) -> None:
        call.pack_attr(p, 0)
        p.pack_uint(min(max(limits.linkmax, 1), 0xFFFFFFFF))
        p.pack_uint(limits.name_max)
        for flag in (True, True, False, True):  # no_trunc, chown_restricted, case_insensitive, preserving
            p.pack_bool(flag)

    return pack
