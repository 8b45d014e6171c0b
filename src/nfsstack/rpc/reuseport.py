"""One port served by several processes: a group of ``SO_REUSEPORT`` sockets, each client steered by its address.

Linux spreads the connections and datagrams for a port among the sockets of
a reuseport group (socket(7), ``SO_REUSEPORT``); by default by a hash of the
whole 4-tuple, so a client that reconnects from another port may reach
another process.  A classic BPF program attached to the group with
``SO_ATTACH_REUSEPORT_CBPF`` chooses instead: it returns the index of the
socket in the group, here the client's source address modulo the size of the
group, without its port.  A client then always reaches the same process,
whose duplicate-request cache knows its calls.

The index of a socket is its place in the order the group was formed (bind
for UDP, listen for TCP).  When a socket of the group closes, Linux moves the
last one into its place, re-steering that one's clients; so the process that
makes the group keeps every socket open for as long as it serves, and only
lends them to the processes that read from them (:mod:`nfsstack.workers`).
A socket whose reader died keeps its place, and what arrives for it waits in
its queue (the accept backlog, the receive buffer) for the next reader.
"""

from __future__ import annotations

import ctypes
import socket
from twisted.internet.error import CannotListenError

from nfsstack.rpc.address import netid_for
from nfsstack.rpc.service import RPCService, _bound_socket, default_addresses

#: socket(7) and asm-generic/socket.h.
SO_ATTACH_REUSEPORT_CBPF = 51

#: linux/filter.h: classic BPF opcodes.
BPF_LD, BPF_W, BPF_ABS = 0x00, 0x00, 0x20
BPF_ALU, BPF_XOR, BPF_MOD, BPF_K, BPF_X = 0x04, 0xA0, 0x90, 0x00, 0x08
BPF_MISC, BPF_TAX = 0x07, 0x00
BPF_RET, BPF_A = 0x06, 0x10
#: linux/filter.h: a load at this offset (and beyond) reads from the network header.
SKF_NET_OFF = -0x100000


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def steering_program(family: int, size: int) -> list[tuple[int, int, int, int]]:
    """The classic BPF program choosing a socket of a group of ``size``: the source address modulo ``size``.

    IPv4: the source address is the word at offset 12 of the header (RFC 791 section 3.1).  IPv6: the four words
    at offset 8 (RFC 8200 section 3), XORed together, so that clients differing only in the interface identifier
    or only in the prefix are both spread.
    """
    if size < 1:
        raise ValueError("a group has at least one socket")

    def load(offset: int) -> tuple[int, int, int, int]:
        return (BPF_LD | BPF_W | BPF_ABS, 0, 0, (SKF_NET_OFF + offset) & 0xFFFFFFFF)

    if family == socket.AF_INET:
        program = [load(12)]
    else:
        program = [load(8)]
        for offset in (12, 16, 20):
            program += [(BPF_MISC | BPF_TAX, 0, 0, 0), load(offset), (BPF_ALU | BPF_XOR | BPF_X, 0, 0, 0)]
    return program + [(BPF_ALU | BPF_MOD | BPF_K, 0, 0, size), (BPF_RET | BPF_A, 0, 0, 0)]


def attach_steering(sock: socket.socket, size: int) -> None:
    """Attach :func:`steering_program` to the reuseport group of ``sock`` (which must be bound, and listening if
    a stream socket)."""
    program = steering_program(sock.family, size)
    filters = (_SockFilter * len(program))(*[_SockFilter(*insn) for insn in program])
    fprog = _SockFprog(len(program), ctypes.cast(filters, ctypes.POINTER(_SockFilter)))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, bytes(fprog))


def _member(host: str, port: int, kind: int) -> socket.socket:
    """One socket of a group: SO_REUSEPORT, IPv6 ones v6-only, bound, listening if a stream socket."""
    return _bound_socket(host, port, kind, reuseport=True, backlog=1024)


class SocketGroup:
    """The ``size`` sockets of one address, port and transport, in the order of their places in the group.

    It stands where an RPC service keeps a listening port (``stopListening`` closes every socket).
    """

    def __init__(self, netid: str, host: str, kind: int, sockets: list[socket.socket]) -> None:
        self.netid, self.host, self.kind, self.sockets = netid, host, kind, sockets

    @property
    def family(self) -> int:
        return self.sockets[0].family

    def stopListening(self) -> None:
        for s in self.sockets:
            s.close()


def check_free(hosts: list[str], port: int) -> None:
    """Raise OSError (EADDRINUSE) if anything holds ``port`` on one of ``hosts``, TCP or UDP.

    A socket with ``SO_REUSEPORT`` joins the group of any other such socket of the same user on that port: without
    this look (a plain bind, as every other service makes), a second stack of the same user, or the workers of one
    that is still going away, would silently share the port instead of the start failing with "port in use".
    """
    for host in hosts:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind) as probe:
                if probe.family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if kind == socket.SOCK_STREAM:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))


def bind_groups(hosts: list[str], port: int, size: int) -> tuple[int, list[SocketGroup]]:
    """A :class:`SocketGroup` of ``size`` for TCP and for UDP on each of ``hosts``, all on one port (``port``, or
    for 0 a dynamic one free on every transport), each steered by :func:`attach_steering`; (the port, the groups).
    """
    if port:
        check_free(hosts, port)
    attempts = 1 if port else 32
    for attempt in range(attempts):
        groups: list[SocketGroup] = []
        chosen = port
        try:
            for host in hosts:
                for name, kind in (("tcp", socket.SOCK_STREAM), ("udp", socket.SOCK_DGRAM)):
                    group = SocketGroup(netid_for(name, host), host, kind, [])
                    groups.append(group)
                    for _ in range(size):
                        group.sockets.append(_member(host, chosen, kind))
                        chosen = group.sockets[-1].getsockname()[1]
                    attach_steering(group.sockets[0], size)
        except OSError:
            for group in groups:
                group.stopListening()
            if attempt == attempts - 1 or port:
                raise
            continue
        return chosen, groups
    raise AssertionError("unreachable")


class SharedPortService(RPCService):
    """An RPC service whose port is served by ``size`` other processes: it makes the socket groups and registers
    the programs with the portmapper, and never reads from the sockets itself; :attr:`groups` lends them."""

    def __init__(self, *args, size: int = 2, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.size = size
        self.groups: list[SocketGroup] = []

    def _listen(self) -> None:
        addresses = self.addresses or default_addresses()
        try:
            self.port, self.groups = bind_groups(addresses, self.requested_port, self.size)
        except OSError as e:
            raise CannotListenError(",".join(addresses), self.requested_port, e)
        for group in self.groups:
            self.listening.append((group.netid, group.host, group))
            if group.kind == socket.SOCK_STREAM:
                self.tcp = self.tcp or group
            else:
                self.udp = self.udp or group

    def member_sockets(self, index: int) -> list[tuple[SocketGroup, socket.socket]]:
        """The sockets of place ``index`` in every group: what worker ``index`` serves."""
        return [(group, group.sockets[index]) for group in self.groups]
