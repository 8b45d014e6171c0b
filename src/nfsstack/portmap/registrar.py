"""How a service registers its ports: one interface, two implementations.

:class:`LocalRegistrar` writes into the stack's own portmapper registry;
:class:`RpcbindRegistrar` talks RPC to an rpcbind that is already running (the
distribution's), over its local socket when there is one, as libtirpc's
``rpcb_set`` does, else over TCP to 127.0.0.1.
"""

from __future__ import annotations

import os
from typing import Optional

from twisted.internet import defer
from zope.interface import Interface, implementer

from nfsstack.logs import logger
from nfsstack.portmap.registry import SUPERUSER, Registration, Registry
from nfsstack.portmap.types import PMAP_PROG, PMAP_PORT, RPCB, RPCB_VERS4, Mapping, NETIDS, parse_uaddr
from nfsstack.rpc.client import connect_tcp, connect_unix
from nfsstack.rpc.message import AcceptedError, AcceptStat
from nfsstack.xdr import Packer, Unpacker

log = logger("nfsstack.portmap")


class IPortRegistrar(Interface):
    """Registers (program, version, netid) -> universal address with a portmapper."""

    def register(prog: int, vers: int, netid: str, addr: str) -> defer.Deferred:
        """Fires with True when registered, False when refused."""

    def unregister(prog: int, vers: int, netid: str) -> defer.Deferred:
        """Fires with True when an entry was removed."""


@implementer(IPortRegistrar)
class LocalRegistrar:
    """Registers in this process's own portmapper."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def register(self, prog: int, vers: int, netid: str, addr: str) -> defer.Deferred:
        ok = self.registry.set(Registration(prog, vers, netid, addr, SUPERUSER), internal=True)
        return defer.succeed(ok)

    def unregister(self, prog: int, vers: int, netid: str) -> defer.Deferred:
        return defer.succeed(self.registry.unset(prog, vers, netid, SUPERUSER))


def _encode(item) -> bytes:
    p = Packer()
    item.pack(p)
    return p.getvalue()


@implementer(IPortRegistrar)
class RpcbindRegistrar:
    """Registers with an rpcbind already running on this host (rpcbind v4 SET, else portmapper v2 SET)."""

    def __init__(
        self,
        reactor,
        host: str = "127.0.0.1",
        port: int = PMAP_PORT,
        socket_path: Optional[str] = "/run/rpcbind.sock",
        timeout: float = 10.0,
    ) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.socket_path = socket_path
        self.timeout = timeout

    def _connect(self) -> defer.Deferred:
        if self.socket_path and os.path.exists(self.socket_path):
            return connect_unix(self.reactor, self.socket_path, timeout=self.timeout)
        return connect_tcp(self.reactor, self.host, self.port, timeout=self.timeout)

    @defer.inlineCallbacks
    def _call(self, proc: int, rpcb: RPCB):
        client = yield self._connect()
        try:
            try:
                reply = yield client.call(PMAP_PROG, RPCB_VERS4, proc, _encode(rpcb), timeout=self.timeout, reactor=self.reactor)
            except AcceptedError as e:
                if e.stat != AcceptStat.PROG_MISMATCH or rpcb.netid not in ("tcp", "udp"):
                    raise
                # An old portmapper: v2 SET/UNSET by protocol number and port.
                port = parse_uaddr(rpcb.addr)[1] if rpcb.addr else 0
                mapping = Mapping(rpcb.prog, rpcb.vers, NETIDS[rpcb.netid].ipproto, port)
                reply = yield client.call(PMAP_PROG, 2, proc, _encode(mapping), timeout=self.timeout, reactor=self.reactor)
            return Unpacker(reply).unpack_bool()
        finally:
            client.close()

    def register(self, prog: int, vers: int, netid: str, addr: str) -> defer.Deferred:
        return self._call(1, RPCB(prog, vers, netid, addr, str(os.getuid())))

    def unregister(self, prog: int, vers: int, netid: str) -> defer.Deferred:
        return self._call(2, RPCB(prog, vers, netid, "", str(os.getuid())))
