"""NSM (status, program 100024 version 1) wire types, from XNFS (C702) chapter 11."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from nfsstack.xdr import Packer, Unpacker

SM_PROG = 100024
SM_VERS = 1
SM_MAXSTRLEN = 1024
PRIV_SIZE = 16


class Proc(IntEnum):
    NULL = 0
    STAT = 1
    MON = 2
    UNMON = 3
    UNMON_ALL = 4
    SIMU_CRASH = 5
    NOTIFY = 6


STAT_SUCC, STAT_FAIL = 0, 1


@dataclass(frozen=True, slots=True)
class MyId:
    """Whom to call back when a monitored host reboots: host, program, version, procedure."""

    my_name: str
    my_prog: int
    my_vers: int
    my_proc: int


@dataclass(frozen=True, slots=True)
class Mon:
    """SM_MON's argument: the host to monitor, who to tell, and 16 opaque bytes to hand back."""

    mon_name: str
    my_id: MyId
    priv: bytes = b"\0" * PRIV_SIZE


@dataclass(frozen=True, slots=True)
class StatChge:
    """SM_NOTIFY's argument: the host that rebooted and its new state."""

    mon_name: str
    state: int


def unpack_name(u: Unpacker) -> str:
    return u.unpack_string(SM_MAXSTRLEN)


def unpack_my_id(u: Unpacker) -> MyId:
    return MyId(unpack_name(u), u.unpack_int(), u.unpack_int(), u.unpack_int())


def pack_my_id(p: Packer, m: MyId) -> None:
    p.pack_string(m.my_name)
    p.pack_int(m.my_prog)
    p.pack_int(m.my_vers)
    p.pack_int(m.my_proc)


def unpack_mon_id(u: Unpacker) -> tuple[str, MyId]:
    return unpack_name(u), unpack_my_id(u)


def unpack_mon(u: Unpacker) -> Mon:
    name, my_id = unpack_mon_id(u)
    return Mon(name, my_id, u.unpack_fopaque(PRIV_SIZE))


def pack_mon(p: Packer, m: Mon) -> None:
    p.pack_string(m.mon_name)
    pack_my_id(p, m.my_id)
    p.pack_fopaque(PRIV_SIZE, m.priv)


def unpack_stat_chge(u: Unpacker) -> StatChge:
    return StatChge(unpack_name(u), u.unpack_int())


def pack_stat_chge(p: Packer, s: StatChge) -> None:
    p.pack_string(s.mon_name)
    p.pack_int(s.state)


def pack_stat_res(p: Packer, result: tuple[int, int]) -> None:
    """sm_stat_res: stat_succ or stat_fail, and our state number."""
    p.pack_int(result[0])
    p.pack_int(result[1])


def pack_status(p: Packer, mon_name: str, state: int, priv: bytes) -> None:
    """The callback's argument (struct status): who rebooted, its state, the monitor's private bytes."""
    p.pack_string(mon_name)
    p.pack_int(state)
    p.pack_fopaque(PRIV_SIZE, priv)
