"""NLM wire types: versions 1 and 3 (32-bit ranges) and 4 (64-bit), from XNFS (C702) chapters 10-11.

Each codec takes ``wide``: True for NLM v4 (uint64 offsets and lengths, int32
svid), False for v1/v3 (uint32 offsets and lengths, int uppid).  Encoders and
decoders both exist for every structure: the server decodes calls and encodes
replies, and as a caller of the client's lock manager (GRANTED, the _RES
callbacks) it does the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Optional

from nfsstack.xdr import Packer, Unpacker

NLM_PROG = 100021
LM_MAXSTRLEN = 1024
MAXNETOBJ_SZ = 1024
U32_MAX = 0xFFFFFFFF


class NlmStat(IntEnum):
    """nlm_stats (v1/v3: 0-4) and nlm4_stats (v4 adds 5-9)."""

    GRANTED = 0
    DENIED = 1
    DENIED_NOLOCKS = 2
    BLOCKED = 3
    DENIED_GRACE_PERIOD = 4
    DEADLCK = 5
    ROFS = 6
    STALE_FH = 7
    FBIG = 8
    FAILED = 9


def cast_status(stat: NlmStat, wide: bool) -> NlmStat:
    """v1/v3 know only 0-4: the v4-only errors become what knfsd sends there (lockd's cast_status)."""
    if wide or stat <= NlmStat.DENIED_GRACE_PERIOD:
        return stat
    if stat == NlmStat.DEADLCK:
        return NlmStat.DENIED
    return NlmStat.DENIED_NOLOCKS


class Proc(IntEnum):
    NULL = 0
    TEST = 1
    LOCK = 2
    CANCEL = 3
    UNLOCK = 4
    GRANTED = 5
    TEST_MSG = 6
    LOCK_MSG = 7
    CANCEL_MSG = 8
    UNLOCK_MSG = 9
    GRANTED_MSG = 10
    TEST_RES = 11
    LOCK_RES = 12
    CANCEL_RES = 13
    UNLOCK_RES = 14
    GRANTED_RES = 15
    SHARE = 20
    UNSHARE = 21
    NM_LOCK = 22
    FREE_ALL = 23


@dataclass(frozen=True, slots=True)
class NlmLock:
    """nlm_lock / nlm4_lock: who (caller_name, oh, svid) locks what (fh) where (offset, length; 0 = to EOF)."""

    caller_name: str
    fh: bytes
    oh: bytes
    svid: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class Holder:
    """nlm_holder: the lock that keeps a TEST from succeeding."""

    exclusive: bool
    svid: int
    oh: bytes
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class LockArgs:
    cookie: bytes
    block: bool
    exclusive: bool
    alock: NlmLock
    reclaim: bool = False
    state: int = 0


@dataclass(frozen=True, slots=True)
class TestArgs:
    """nlm_testargs; also the arguments of GRANTED."""

    cookie: bytes
    exclusive: bool
    alock: NlmLock


@dataclass(frozen=True, slots=True)
class CancArgs:
    cookie: bytes
    block: bool
    exclusive: bool
    alock: NlmLock


@dataclass(frozen=True, slots=True)
class UnlockArgs:
    cookie: bytes
    alock: NlmLock


@dataclass(frozen=True, slots=True)
class NlmShare:
    caller_name: str
    fh: bytes
    oh: bytes
    mode: int  # fsh_mode: what others are denied (DR=1, DW=2)
    access: int  # fsh_access: what the owner does (R=1, W=2)


@dataclass(frozen=True, slots=True)
class ShareArgs:
    cookie: bytes
    share: NlmShare
    reclaim: bool = False


@dataclass(frozen=True, slots=True)
class Notify:
    """nlm_notify: FREE_ALL's host name and its new NSM state."""

    name: str
    state: int


@dataclass(frozen=True, slots=True)
class Res:
    """nlm_res: a cookie and a status (LOCK, CANCEL, UNLOCK, GRANTED and their _RES)."""

    cookie: bytes
    stat: NlmStat


@dataclass(frozen=True, slots=True)
class TestRes:
    cookie: bytes
    stat: NlmStat
    holder: Optional[Holder] = None


@dataclass(frozen=True, slots=True)
class ShareRes:
    cookie: bytes
    stat: NlmStat
    sequence: int = 0


# -- pieces -------------------------------------------------------------------------


def _netobj(u: Unpacker) -> bytes:
    return u.unpack_opaque(MAXNETOBJ_SZ)


def _range(u: Unpacker, wide: bool) -> tuple[int, int]:
    if wide:
        return u.unpack_uhyper(), u.unpack_uhyper()
    return u.unpack_uint(), u.unpack_uint()


def _pack_range(p: Packer, offset: int, length: int, wide: bool) -> None:
    if wide:
        p.pack_uhyper(min(offset, (1 << 64) - 1))
        p.pack_uhyper(min(length, (1 << 64) - 1))
    else:
        p.pack_uint(min(offset, U32_MAX))
        p.pack_uint(min(length, U32_MAX))


def unpack_lock(u: Unpacker, wide: bool) -> NlmLock:
    name = u.unpack_string(LM_MAXSTRLEN)
    fh = _netobj(u)
    oh = _netobj(u)
    svid = u.unpack_int()
    offset, length = _range(u, wide)
    return NlmLock(name, fh, oh, svid, offset, length)


def pack_lock(p: Packer, lock: NlmLock, wide: bool) -> None:
    p.pack_string(lock.caller_name)
    p.pack_opaque(lock.fh)
    p.pack_opaque(lock.oh)
    p.pack_int(lock.svid)
    _pack_range(p, lock.offset, lock.length, wide)


# -- arguments ------------------------------------------------------------------------


def unpack_lockargs(u: Unpacker, wide: bool) -> LockArgs:
    cookie = _netobj(u)
    block, exclusive = u.unpack_bool(), u.unpack_bool()
    alock = unpack_lock(u, wide)
    return LockArgs(cookie, block, exclusive, alock, u.unpack_bool(), u.unpack_int())


def pack_lockargs(p: Packer, a: LockArgs, wide: bool) -> None:
    p.pack_opaque(a.cookie)
    p.pack_bool(a.block)
    p.pack_bool(a.exclusive)
    pack_lock(p, a.alock, wide)
    p.pack_bool(a.reclaim)
    p.pack_int(a.state)


def unpack_testargs(u: Unpacker, wide: bool) -> TestArgs:
    cookie = _netobj(u)
    exclusive = u.unpack_bool()
    return TestArgs(cookie, exclusive, unpack_lock(u, wide))


def pack_testargs(p: Packer, a: TestArgs, wide: bool) -> None:
    p.pack_opaque(a.cookie)
    p.pack_bool(a.exclusive)
    pack_lock(p, a.alock, wide)


def unpack_cancargs(u: Unpacker, wide: bool) -> CancArgs:
    cookie = _netobj(u)
    block, exclusive = u.unpack_bool(), u.unpack_bool()
    return CancArgs(cookie, block, exclusive, unpack_lock(u, wide))


def pack_cancargs(p: Packer, a: CancArgs, wide: bool) -> None:
    p.pack_opaque(a.cookie)
    p.pack_bool(a.block)
    p.pack_bool(a.exclusive)
    pack_lock(p, a.alock, wide)


def unpack_unlockargs(u: Unpacker, wide: bool) -> UnlockArgs:
    cookie = _netobj(u)
    return UnlockArgs(cookie, unpack_lock(u, wide))


def pack_unlockargs(p: Packer, a: UnlockArgs, wide: bool) -> None:
    p.pack_opaque(a.cookie)
    pack_lock(p, a.alock, wide)


def unpack_shareargs(u: Unpacker, wide: bool = False) -> ShareArgs:
    cookie = _netobj(u)
    name = u.unpack_string(LM_MAXSTRLEN)
    fh, oh = _netobj(u), _netobj(u)
    mode, access = u.unpack_uint(), u.unpack_uint()
    if mode > 3 or access > 3:
        raise ValueError(f"share mode {mode} / access {access}")
    return ShareArgs(cookie, NlmShare(name, fh, oh, mode, access), u.unpack_bool())


def pack_shareargs(p: Packer, a: ShareArgs, wide: bool = False) -> None:
    p.pack_opaque(a.cookie)
    s = a.share
    p.pack_string(s.caller_name)
    p.pack_opaque(s.fh)
    p.pack_opaque(s.oh)
    p.pack_uint(s.mode)
    p.pack_uint(s.access)
    p.pack_bool(a.reclaim)


def unpack_notify(u: Unpacker, wide: bool = False) -> Notify:
    return Notify(u.unpack_string(LM_MAXSTRLEN), u.unpack_int())


def pack_notify(p: Packer, n: Notify, wide: bool = False) -> None:
    p.pack_string(n.name)
    p.pack_int(n.state)


# -- results --------------------------------------------------------------------------


def pack_res(p: Packer, r: Res, wide: bool) -> None:
    p.pack_opaque(r.cookie)
    p.pack_uint(cast_status(r.stat, wide))


def unpack_res(u: Unpacker, wide: bool) -> Res:
    return Res(_netobj(u), NlmStat(u.unpack_uint()))


def pack_testres(p: Packer, r: TestRes, wide: bool) -> None:
    p.pack_opaque(r.cookie)
    stat = cast_status(r.stat, wide)
    p.pack_uint(stat)
    if stat == NlmStat.DENIED:
        h = r.holder or Holder(True, 0, b"", 0, 0)
        p.pack_bool(h.exclusive)
        p.pack_int(h.svid)
        p.pack_opaque(h.oh)
        _pack_range(p, h.offset, h.length, wide)


def unpack_testres(u: Unpacker, wide: bool) -> TestRes:
    cookie = _netobj(u)
    stat = NlmStat(u.unpack_uint())
    holder = None
    if stat == NlmStat.DENIED:
        exclusive = u.unpack_bool()
        svid = u.unpack_int()
        oh = _netobj(u)
        offset, length = _range(u, wide)
        holder = Holder(exclusive, svid, oh, offset, length)
    return TestRes(cookie, stat, holder)


def pack_shareres(p: Packer, r: ShareRes, wide: bool = False) -> None:
    p.pack_opaque(r.cookie)
    p.pack_uint(cast_status(r.stat, wide))
    p.pack_int(r.sequence)


def unpack_shareres(u: Unpacker, wide: bool = False) -> ShareRes:
    return ShareRes(_netobj(u), NlmStat(u.unpack_uint()), u.unpack_int())
