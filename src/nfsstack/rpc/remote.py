"""Calls to RPC services on other hosts, at the port their portmapper gives.

nlockmgr calls back a client's lock manager (GRANTED, the _RES replies of
the _MSG procedures) and status sends SM_NOTIFY to a client's statd after a
restart: both find the service's port on the client's own portmapper first.
As a kernel server does, calls leave from a reserved port (below 1024) when
this process may bind one.

How the port is found is not this module's business: the RPC layer sits below
the programs and imports none of them, the portmapper included.  A
:class:`RemoteCaller` is handed a *port finder* by the service assembly: the
portmapper package's one client (``PortmapClient(reactor).getport`` of
:mod:`nfsstack.portmap.client`), which asks GETPORT from the datagram client
it is given (``via``), so the question leaves from the same reserved port as
the call.
"""

from __future__ import annotations

import errno
import socket
from typing import Callable, Optional

from twisted.internet import defer, error

from nfsstack.logs import logger
from nfsstack.rpc.client import RPCDatagramClient, connect_tcp
from nfsstack.rpc.message import AUTH_NULL, OpaqueAuth

log = logger("nfsstack.rpc.remote")

#: ``find_port(host, prog, vers, proto, timeout, via=datagram_client)``: a Deferred of the port of (prog, vers)
#: over ``proto`` ("tcp" or "udp") on ``host``, 0 if the host has none.
PortFinder = Callable[..., defer.Deferred]


class NotRegistered(Exception):
    """The host's portmapper does not know the program (GETPORT answered 0)."""


def _reserved_port(kind: int, host: str = "") -> Optional[int]:
    """A free port in 600..1023 for ``kind`` (SOCK_STREAM or SOCK_DGRAM), or None (not root, or none free)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for port in range(1023, 599, -1):
        with socket.socket(family, kind) as s:
            try:
                s.bind((host, port))
            except OSError as e:
                if e.errno in (errno.EACCES, errno.EPERM):
                    return None
                continue
            return port
    return None


class RemoteCaller:
    """Calls (host, program, version, procedure) over UDP or TCP at the port ``find_port`` gives."""

    def __init__(self, reactor, find_port: PortFinder, cred: OpaqueAuth = AUTH_NULL) -> None:
        self.reactor = reactor
        self.find_port = find_port
        self.cred = cred
        self._udp: Optional[RPCDatagramClient] = None

    def _datagram_client(self) -> RPCDatagramClient:
        if self._udp is None or self._udp.transport is None:
            client = RPCDatagramClient("", 0, self.reactor)
            port = _reserved_port(socket.SOCK_DGRAM)
            try:
                self.reactor.listenUDP(port or 0, client)
            except error.CannotListenError:
                self.reactor.listenUDP(0, client)
            self._udp = client
        return self._udp

    def getport(self, host: str, prog: int, vers: int, proto: str, timeout: float = 10.0) -> defer.Deferred:
        return self.find_port(host, prog, vers, proto, timeout, via=self._datagram_client())

    @defer.inlineCallbacks
    def call(self, host: str, prog: int, vers: int, proc: int, args: bytes, proto: str = "udp",
             timeout: float = 10.0):
        """The reply body of the call; fails with NotRegistered, RPCTimeout, or the RPC error."""
        port = yield self.getport(host, prog, vers, proto, timeout)
        if not port:
            raise NotRegistered(f"{host} has no program {prog} version {vers} over {proto}")
        if proto == "udp":
            body = yield self._datagram_client().call(prog, vers, proc, args, self.cred, timeout=timeout,
                                                      retransmit=min(2.0, timeout), address=(host, port))
            return body
        bind = _reserved_port(socket.SOCK_STREAM)
        try:
            client = yield connect_tcp(self.reactor, host, port, timeout=timeout,
                                       bind_address=("", bind) if bind else None)
        except error.ConnectError:
            if not bind:
                raise
            client = yield connect_tcp(self.reactor, host, port, timeout=timeout)  # the reserved port was busy
        try:
            body = yield client.call(prog, vers, proc, args, self.cred, timeout=timeout, reactor=self.reactor)
        finally:
            client.close()
        return body

    def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
