"""How a service registers its ports: one interface, two implementations.

:class:`LocalRegistrar` writes into the stack's own portmapper registry;
:class:`RpcbindRegistrar` talks RPC to an rpcbind that is already running (the
distribution's), over its local socket when there is one, as libtirpc's
``rpcb_set`` does, else over TCP to 127.0.0.1 (with the stack's one portmapper
client, :mod:`nfsstack.portmap.client`).
"""

from __future__ import annotations

import os
from typing import Optional

from twisted.internet import defer
from zope.interface import Interface, implementer

from nfsstack.logs import logger
from nfsstack.portmap.client import PortmapClient
from nfsstack.portmap.registry import SUPERUSER, Registration, Registry
from nfsstack.portmap.types import PMAP_PORT, RPCB

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


@implementer(IPortRegistrar)
class RpcbindRegistrar:
    """Registers with an rpcbind already running on this host (rpcbind v4 SET, else portmapper v2 SET),
    through the stack's one portmapper client (:class:`nfsstack.portmap.client.PortmapClient`)."""

    def __init__(
        self,
        reactor,
        host: str = "127.0.0.1",
        port: int = PMAP_PORT,
        socket_path: Optional[str] = "/run/rpcbind.sock",
        timeout: float = 10.0,
    ) -> None:
        self.client = PortmapClient(reactor, port=port, local_host=host, socket_path=socket_path, timeout=timeout)

    def register(self, prog: int, vers: int, netid: str, addr: str) -> defer.Deferred:
        return self.client.set(RPCB(prog, vers, netid, addr, str(os.getuid())))

    def unregister(self, prog: int, vers: int, netid: str) -> defer.Deferred:
        return self.client.unset(RPCB(prog, vers, netid, "", str(os.getuid())))
