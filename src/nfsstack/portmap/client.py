"""The stack's one client of a portmapper (RFC 1833): GETPORT, SET and UNSET.

Two parts of the stack talk to a portmapper that is not this process's own:

* nlockmgr and status call back a client's lock manager and statd
  (:class:`nfsstack.rpc.remote.RemoteCaller`), and first ask that host's
  portmapper for the port with portmapper v2 GETPORT over UDP;
* ``--system-rpcbind`` registers the stack's ports with the distribution's
  rpcbind (:class:`nfsstack.portmap.registrar.RpcbindRegistrar`): rpcbind v4
  SET/UNSET, or portmapper v2 SET/UNSET when an old portmapper answers
  PROG_MISMATCH.

Both go through :class:`PortmapClient`, here.  Why in the portmap package and
not in :mod:`nfsstack.rpc`: the RPC core sits below the programs and imports
none of them (``tests/unit/test_layers.py``), while the portmapper's
structures (:class:`Mapping`, :class:`RPCB`), its version and procedure
numbers are this package's; the package owns both ends of its protocol, the
server (:mod:`nfsstack.portmap.program`) and this client, on one set of
codecs.  The RPC layer's :class:`RemoteCaller` knows nothing of portmappers:
it is handed a *port finder* (this client's :meth:`PortmapClient.getport`) by
the service assembly (:mod:`nfsstack.service`), which is the one place that
knows both layers.
"""

from __future__ import annotations

import os
from typing import Optional

from twisted.internet import defer

from nfsstack.portmap.types import PMAP_PORT, PMAP_PROG, PMAP_VERS, RPCB, RPCB_VERS4, Mapping
from nfsstack.rpc.address import NETIDS, parse_uaddr
from nfsstack.rpc.client import RPCDatagramClient, connect_tcp, connect_unix, udp_client
from nfsstack.rpc.message import AcceptedError, AcceptStat
from nfsstack.xdr import Packer, Unpacker

#: Procedure numbers, the same in portmapper v2 (PMAPPROC_*) and rpcbind v3/v4 (RPCBPROC_*; 3 is GETADDR there).
SET, UNSET, GETPORT = 1, 2, 3


def _encode(item) -> bytes:
    p = Packer()
    item.pack(p)
    return p.getvalue()


class PortmapClient:
    """Asks the portmapper on ``port`` of any host for a port; registers with this host's.

    SET and UNSET go to this host's rpcbind only: over its local socket
    ``socket_path`` when there is one, as libtirpc's ``rpcb_set`` does, else
    over TCP to ``local_host``.
    """

    def __init__(
        self,
        reactor,
        port: int = PMAP_PORT,
        local_host: str = "127.0.0.1",
        socket_path: Optional[str] = None,
        timeout: float = 10.0,
    ) -> None:
        self.reactor = reactor
        self.port = port
        self.local_host = local_host
        self.socket_path = socket_path
        self.timeout = timeout

    # -- GETPORT -------------------------------------------------------------------

    def getport(self, host: str, prog: int, vers: int, proto: str, timeout: float = 10.0,
                via: Optional[RPCDatagramClient] = None) -> defer.Deferred:
        """Portmapper v2 GETPORT over UDP to ``host``: fires with the port of (prog, vers) over ``proto``
        ("tcp" or "udp"), 0 if the host has none; fails with RPCTimeout or the RPC error.

        ``via`` is the datagram client to send from (a caller's reserved port); without one a fresh
        client on a dynamic port asks, and is closed after."""
        args = _encode(Mapping(prog, vers, NETIDS[proto].ipproto, 0))
        client = via if via is not None else udp_client(self.reactor, host, self.port)
        d = client.call(PMAP_PROG, PMAP_VERS, GETPORT, args, timeout=timeout, retransmit=1.0,
                        address=(host, self.port))
        d.addCallback(lambda body: Unpacker(body).unpack_uint())
        if via is None:
            d.addBoth(lambda result: (client.close(), result)[1])
        return d

    # -- SET and UNSET -------------------------------------------------------------

    def set(self, rpcb: RPCB) -> defer.Deferred:
        """Register ``rpcb`` with this host's rpcbind: fires with True when registered, False when refused."""
        return self._change(SET, rpcb)

    def unset(self, rpcb: RPCB) -> defer.Deferred:
        """Remove (prog, vers, netid) of ``rpcb``: fires with True when an entry was removed."""
        return self._change(UNSET, rpcb)

    def _connect(self) -> defer.Deferred:
        if self.socket_path and os.path.exists(self.socket_path):
            return connect_unix(self.reactor, self.socket_path, timeout=self.timeout)
        return connect_tcp(self.reactor, self.local_host, self.port, timeout=self.timeout)

    @defer.inlineCallbacks
    def _change(self, proc: int, rpcb: RPCB):
        client = yield self._connect()
        try:
            try:
                reply = yield client.call(PMAP_PROG, RPCB_VERS4, proc, _encode(rpcb), timeout=self.timeout,
                                          reactor=self.reactor)
            except AcceptedError as e:
                if e.stat != AcceptStat.PROG_MISMATCH or rpcb.netid not in ("tcp", "udp"):
                    raise
                # An old portmapper: v2 SET/UNSET by protocol number and port.
                port = parse_uaddr(rpcb.addr)[1] if rpcb.addr else 0
                mapping = Mapping(rpcb.prog, rpcb.vers, NETIDS[rpcb.netid].ipproto, port)
                reply = yield client.call(PMAP_PROG, PMAP_VERS, proc, _encode(mapping), timeout=self.timeout,
                                          reactor=self.reactor)
            return Unpacker(reply).unpack_bool()
        finally:
            client.close()
