"""Transport addresses as ONC RPC names them: netids, universal addresses, socket addresses.

Everything here is about addresses, not about any one program, so the RPC
core (:mod:`nfsstack.rpc.service` registers ``uaddr``\\ s on ``netid``\\ s) and
the programs above it (the portmapper, the cluster's network filters) share
one copy.  Nothing here imports anything of nfsstack: the RPC layer sits
below the programs and never reaches up to them (see ``tests/unit/test_layers.py``).

Universal addresses (section 2.2 of RFC 1833 and RFC 5665): ``h1.h2.h3.h4.p1.p2``
for IPv4, ``x:x::x.p1.p2`` for IPv6, where ``p1.p2`` are the port's high and
low bytes in decimal.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from functools import lru_cache

IPPROTO_TCP = 6
IPPROTO_UDP = 17

#: NC_TPI_* transport semantics of a netconfig entry.
NC_TPI_CLTS = 1
NC_TPI_COTS = 2
NC_TPI_COTS_ORD = 3


@dataclass(frozen=True, slots=True)
class Netid:
    """A netconfig(5) entry, as much of it as rpcbind needs."""

    name: str
    family: int
    socktype: int
    protofmly: str
    proto: str
    semantics: int
    ipproto: int


NETIDS: dict[str, Netid] = {
    "tcp": Netid("tcp", socket.AF_INET, socket.SOCK_STREAM, "inet", "tcp", NC_TPI_COTS_ORD, IPPROTO_TCP),
    "udp": Netid("udp", socket.AF_INET, socket.SOCK_DGRAM, "inet", "udp", NC_TPI_CLTS, IPPROTO_UDP),
    "tcp6": Netid("tcp6", socket.AF_INET6, socket.SOCK_STREAM, "inet6", "tcp", NC_TPI_COTS_ORD, IPPROTO_TCP),
    "udp6": Netid("udp6", socket.AF_INET6, socket.SOCK_DGRAM, "inet6", "udp", NC_TPI_CLTS, IPPROTO_UDP),
}

PROT_TO_NETID = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp"}


def netid_for(kind: str, host: str) -> str:
    """The netid of a "tcp" or "udp" transport bound to ``host``."""
    return kind + "6" if ":" in host else kind


# -- host strings ---------------------------------------------------------------


def parse_address(host: str):
    """The IP address of a peer's host string (a scope id dropped, IPv4-mapped IPv6 as IPv4), or None."""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr


@lru_cache(maxsize=4096)
def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback addresses."""
    addr = parse_address(host)
    return addr is not None and addr.is_loopback


def is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


# -- universal addresses --------------------------------------------------------


def uaddr(host: str, port: int) -> str:
    """The universal address of ``host`` and ``port``."""
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} out of range")
    host = host or "0.0.0.0"
    return f"{host}.{port >> 8}.{port & 0xFF}"


def parse_uaddr(text: str) -> tuple[str, int]:
    """Split a universal address into (host, port); ValueError if it is not one."""
    head, sep, low = text.rpartition(".")
    host, sep2, high = head.rpartition(".")
    if not sep or not sep2 or not host:
        raise ValueError(f"not a universal address: {text!r}")
    if not (high.isdigit() and low.isdigit()) or len(high) > 3 or len(low) > 3:
        raise ValueError(f"not a universal address: {text!r}")
    hi, lo = int(high), int(low)
    if hi > 255 or lo > 255:
        raise ValueError(f"not a universal address: {text!r}")
    ipaddress.ip_address(host)  # raises ValueError
    return host, (hi << 8) | lo


# -- socket addresses (what a netbuf carries: UADDR2TADDR, TADDR2UADDR) ----------

_SOCKADDR_IN = struct.Struct("=H2s4s8x")  # family in host order, port and address in network order
_SOCKADDR_IN6 = struct.Struct("=H2sI16sI")


def taddr_from_uaddr(text: str) -> bytes:
    """The sockaddr bytes of a universal address (as a netbuf carries them)."""
    host, port = parse_uaddr(text)
    addr = ipaddress.ip_address(host)
    if addr.version == 4:
        return _SOCKADDR_IN.pack(socket.AF_INET, struct.pack(">H", port), addr.packed)
    return _SOCKADDR_IN6.pack(socket.AF_INET6, struct.pack(">H", port), 0, addr.packed, 0)


def uaddr_from_taddr(buf: bytes) -> str:
    """The universal address of a sockaddr; ValueError if it is none we know."""
    if len(buf) >= 2:
        family = struct.unpack_from("=H", buf)[0]
        if family == socket.AF_INET and len(buf) >= 8:
            port = struct.unpack_from(">H", buf, 2)[0]
            return uaddr(str(ipaddress.IPv4Address(buf[4:8])), port)
        if family == socket.AF_INET6 and len(buf) >= 24:
            port = struct.unpack_from(">H", buf, 2)[0]
            return uaddr(str(ipaddress.IPv6Address(buf[8:24])), port)
    raise ValueError("not an inet or inet6 socket address")
