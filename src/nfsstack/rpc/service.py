"""A Twisted service that serves RPC programs on one port over TCP and UDP.

It listens first, then registers every version of every program for both
netids with its registrar; on stop it unregisters, then stops listening.  A
dynamic port (0) takes the same number for TCP and UDP, as rpcbind users
expect.
"""

from __future__ import annotations

from typing import Optional, Sequence

from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from nfsstack.portmap.types import netid_for, uaddr
from nfsstack.rpc.program import Program
from nfsstack.rpc.server import (
    DEFAULT_MAX_RECORD,
    Dispatcher,
    RPCDatagramProtocol,
    RPCStreamFactory,
)

log = Logger(namespace="nfsstack.rpc")


class RPCService(service.Service):
    """Serves ``programs`` on ``port`` (TCP and UDP) and registers them."""

    def __init__(
        self,
        name: str,
        programs: Sequence[Program],
        port: int,
        interface: str = "",
        registrar=None,
        reactor=None,
        max_record: int = DEFAULT_MAX_RECORD,
        idle_timeout: float = 360.0,
        max_connections: int = 1024,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.setName(name)
        self.programs = list(programs)
        self.requested_port = port
        self.interface = interface
        self.registrar = registrar
        self.reactor = reactor
        self.dispatcher = Dispatcher(self.programs)
        self.max_record = max_record
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.port: Optional[int] = None
        self.tcp = None
        self.udp = None
        self.stream_factory: Optional[RPCStreamFactory] = None
        self._registered: list[tuple[int, int, str]] = []
        #: Added to the error logged when the port is taken.
        self.listen_hint = ""
        #: Fires when every registration has been attempted.
        self.registered: defer.Deferred = defer.Deferred()

    def _listen(self) -> None:
        interface = self.interface
        self.stream_factory = RPCStreamFactory(
            self.dispatcher,
            netid_for("tcp", interface),
            max_record=self.max_record,
            idle_timeout=self.idle_timeout,
            max_connections=self.max_connections,
        )
        attempts = 1 if self.requested_port else 32
        for attempt in range(attempts):
            tcp = self.reactor.listenTCP(self.requested_port, self.stream_factory, interface=interface)
            port = tcp.getHost().port
            try:
                udp = self.reactor.listenUDP(
                    port, RPCDatagramProtocol(self.dispatcher, netid_for("udp", interface)), interface=interface
                )
            except CannotListenError:
                tcp.stopListening()
                if attempt == attempts - 1:
                    raise
                continue
            self.tcp, self.udp, self.port = tcp, udp, port
            return

    def startService(self) -> None:
        try:
            self._listen()
        except CannotListenError as e:
            log.error("{name}: cannot listen on port {port}: {error}{hint}", name=self.name, port=self.requested_port,
                      error=e.socketError, hint=self.listen_hint)
            raise
        super().startService()
        names = ", ".join(f"{p.name} {p.number} v{'/'.join(map(str, sorted(p.versions)))}" for p in self.programs)
        log.info("{names} listening on TCP and UDP port {port}", names=names, port=self.port)
        if self.registrar is None:
            self.registered.callback(None)
            return
        address = uaddr(self.interface or "0.0.0.0", self.port)
        calls = []
        for program in self.programs:
            for vers in sorted(program.versions):
                for kind in ("tcp", "udp"):
                    netid = netid_for(kind, self.interface)
                    calls.append(self._register(program, vers, netid, address))
        defer.gatherResults(calls).addBoth(lambda _: self.registered.callback(None))

    def _register(self, program: Program, vers: int, netid: str, address: str) -> defer.Deferred:
        key = (program.number, vers, netid)

        def done(ok: bool) -> None:
            if ok:
                self._registered.append(key)
            else:
                log.error(
                    "portmapper refused {name} {prog} v{vers} {netid} at {addr}",
                    name=program.name, prog=program.number, vers=vers, netid=netid, addr=address,
                )

        def failed(f) -> None:
            log.error(
                "could not register {name} {prog} v{vers} {netid}: {err}",
                name=program.name, prog=program.number, vers=vers, netid=netid, err=f.value,
            )

        return self.registrar.register(program.number, vers, netid, address).addCallbacks(done, failed)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        calls = []
        if self.registrar is not None:
            for prog, vers, netid in self._registered:
                calls.append(self.registrar.unregister(prog, vers, netid).addErrback(
                    lambda f: log.warn("unregister failed: {err}", err=f.value)))
        self._registered = []
        d = defer.gatherResults(calls)

        def stop_listening(_):
            stops = []
            for port in (self.tcp, self.udp):
                if port is not None:
                    stops.append(defer.maybeDeferred(port.stopListening))
            self.tcp = self.udp = None
            for conn in list(self.stream_factory.connections if self.stream_factory else ()):
                conn.transport.loseConnection()
            return defer.gatherResults(stops)

        return d.addBoth(stop_listening)
