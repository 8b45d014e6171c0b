"""Portmapper v2 and rpcbind v3/v4 wire types (RFC 1833).

Netids, universal addresses and the socket addresses a netbuf carries are the
RPC layer's (:mod:`nfsstack.rpc.address`); this module holds the portmapper's
own structures.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

from nfsstack.xdr import Packer, Unpacker, XDRError

PMAP_PROG = 100000
PMAP_PORT = 111
PMAP_VERS = 2
RPCB_VERS = 3
RPCB_VERS4 = 4

#: Bounds on the strings rpcbind exchanges: generous for real use, small for an attacker.
MAX_NETID = 64
MAX_UADDR = 128
MAX_OWNER = 256
#: The args of a remote call (CALLIT) and the results it brings back.
MAX_RMTCALL_ARGS = 8800
#: A netbuf carries a socket address (sockaddr_in6 is 28 bytes).
MAX_NETBUF = 128


# -- netbuf (UADDR2TADDR, TADDR2UADDR) -----------------------------------------


@dataclass(frozen=True, slots=True)
class Netbuf:
    """struct netbuf { unsigned int maxlen; opaque buf<>; } (RFC 1833 section 2.1)."""

    maxlen: int
    buf: bytes

    def pack(self, p: Packer) -> None:
        p.pack_uint(self.maxlen)
        p.pack_opaque(self.buf)

    @classmethod
    def unpack(cls, u: Unpacker) -> "Netbuf":
        maxlen = u.unpack_uint()
        return cls(maxlen, u.unpack_opaque(MAX_NETBUF))


# -- portmapper v2 (RFC 1833 section 3) -------------------------------------

_MAPPING = struct.Struct(">4I")


@dataclass(frozen=True, slots=True)
class Mapping:
    """struct mapping { prog, vers, prot, port }."""

    prog: int
    vers: int
    prot: int
    port: int

    def pack(self, p: Packer) -> None:
        p.pack_struct(_MAPPING, self.prog, self.vers, self.prot, self.port)

    @classmethod
    def unpack(cls, u: Unpacker) -> "Mapping":
        return cls(*u.unpack_struct(_MAPPING))


@dataclass(frozen=True, slots=True)
class CallArgs:
    """struct call_args (v2) and rpcb_rmtcallargs (v3/v4): a call to forward."""

    prog: int
    vers: int
    proc: int
    args: bytes

    def pack(self, p: Packer) -> None:
        p.pack_uint(self.prog)
        p.pack_uint(self.vers)
        p.pack_uint(self.proc)
        p.pack_opaque(self.args)

    @classmethod
    def unpack(cls, u: Unpacker) -> "CallArgs":
        prog, vers, proc = u.unpack_uint(), u.unpack_uint(), u.unpack_uint()
        return cls(prog, vers, proc, u.unpack_opaque(MAX_RMTCALL_ARGS))


@dataclass(frozen=True, slots=True)
class CallResult:
    """struct call_result { port; res<> } (v2)."""

    port: int
    result: bytes

    def pack(self, p: Packer) -> None:
        p.pack_uint(self.port)
        p.pack_opaque(self.result)

    @classmethod
    def unpack(cls, u: Unpacker) -> "CallResult":
        port = u.unpack_uint()
        return cls(port, u.unpack_opaque(MAX_RMTCALL_ARGS * 8))


# -- rpcbind v3/v4 (RFC 1833 section 2) --------------------------------------


@dataclass(frozen=True, slots=True)
class RPCB:
    """struct rpcb { prog, vers, netid, addr, owner }."""

    prog: int
    vers: int
    netid: str
    addr: str
    owner: str

    def pack(self, p: Packer) -> None:
        p.pack_uint(self.prog)
        p.pack_uint(self.vers)
        p.pack_string(self.netid)
        p.pack_string(self.addr)
        p.pack_string(self.owner)

    @classmethod
    def unpack(cls, u: Unpacker) -> "RPCB":
        prog, vers = u.unpack_uint(), u.unpack_uint()
        return cls(prog, vers, u.unpack_string(MAX_NETID), u.unpack_string(MAX_UADDR), u.unpack_string(MAX_OWNER))


@dataclass(frozen=True, slots=True)
class RmtcallResult:
    """struct rpcb_rmtcallres { addr; results<> }."""

    addr: str
    result: bytes

    def pack(self, p: Packer) -> None:
        p.pack_string(self.addr)
        p.pack_opaque(self.result)


@dataclass(frozen=True, slots=True)
class RPCBEntry:
    """struct rpcb_entry (v4 GETADDRLIST)."""

    maddr: str
    netid: str
    semantics: int
    protofmly: str
    proto: str

    def pack(self, p: Packer) -> None:
        p.pack_string(self.maddr)
        p.pack_string(self.netid)
        p.pack_uint(self.semantics)
        p.pack_string(self.protofmly)
        p.pack_string(self.proto)

    @classmethod
    def unpack(cls, u: Unpacker) -> "RPCBEntry":
        maddr, netid = u.unpack_string(MAX_UADDR), u.unpack_string(MAX_NETID)
        sem = u.unpack_uint()
        return cls(maddr, netid, sem, u.unpack_string(MAX_NETID), u.unpack_string(MAX_NETID))


#: RPCBSTAT_HIGHPROC: the procedure counters each version's statistics carry.
RPCBSTAT_HIGHPROC = 13
STAT_VERSIONS = (PMAP_VERS, RPCB_VERS, RPCB_VERS4)


@dataclass(slots=True)
class AddrStat:
    """struct rpcbs_addrlist entry: GETPORT/GETADDR outcomes for one (prog, vers, netid)."""

    prog: int
    vers: int
    netid: str
    success: int = 0
    failure: int = 0

    def pack(self, p: Packer) -> None:
        p.pack_uint(self.prog)
        p.pack_uint(self.vers)
        p.pack_int(self.success)
        p.pack_int(self.failure)
        p.pack_string(self.netid)


@dataclass(slots=True)
class RmtcallStat:
    """struct rpcbs_rmtcalllist entry: CALLIT/INDIRECT outcomes."""

    prog: int
    vers: int
    proc: int
    netid: str
    indirect: int
    success: int = 0
    failure: int = 0

    def pack(self, p: Packer) -> None:
        p.pack_uint(self.prog)
        p.pack_uint(self.vers)
        p.pack_uint(self.proc)
        p.pack_int(self.success)
        p.pack_int(self.failure)
        p.pack_int(self.indirect)
        p.pack_string(self.netid)


@dataclass(slots=True)
class VersionStat:
    """struct rpcb_stat: one rpcbind version's counters."""

    info: list[int]
    setinfo: int = 0
    unsetinfo: int = 0
    addrinfo: Optional[dict] = None
    rmtinfo: Optional[dict] = None

    def pack(self, p: Packer) -> None:
        for n in self.info:
            p.pack_int(n)
        p.pack_int(self.setinfo)
        p.pack_int(self.unsetinfo)
        p.pack_list(list((self.addrinfo or {}).values()), lambda p, s: s.pack(p))
        p.pack_list(list((self.rmtinfo or {}).values()), lambda p, s: s.pack(p))


def unpack_stat_byvers(u: Unpacker) -> list[dict]:
    """Decode rpcb_stat_byvers, as a client (``rpcinfo -m``) reads it."""

    def addr(u: Unpacker) -> tuple:
        prog, vers, ok, bad = u.unpack_uint(), u.unpack_uint(), u.unpack_int(), u.unpack_int()
        return (prog, vers, ok, bad, u.unpack_string(MAX_NETID))

    def rmt(u: Unpacker) -> tuple:
        fields = [u.unpack_uint() for _ in range(3)] + [u.unpack_int() for _ in range(3)]
        return tuple(fields) + (u.unpack_string(MAX_NETID),)

    out = []
    for _ in STAT_VERSIONS:
        info = [u.unpack_int() for _ in range(RPCBSTAT_HIGHPROC)]
        setinfo, unsetinfo = u.unpack_int(), u.unpack_int()
        out.append(
            {
                "info": info,
                "setinfo": setinfo,
                "unsetinfo": unsetinfo,
                "addrinfo": u.unpack_list(addr, 10000),
                "rmtinfo": u.unpack_list(rmt, 10000),
            }
        )
    return out


def check_port(port: int) -> int:
    if not 0 <= port <= 0xFFFF:
        raise XDRError(f"port {port} out of range")
    return port
