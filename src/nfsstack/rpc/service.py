"""A Twisted service that serves RPC programs on one port over TCP and UDP.

It listens first, then registers every version of every program for each
netid it listens on with its registrar; on stop it unregisters, then stops
listening.  A dynamic port (0) takes the same number for TCP and UDP, and for
IPv4 and IPv6, as rpcbind users expect.

By default a service listens on all IPv4 addresses (``0.0.0.0``, netids tcp
and udp) and all IPv6 addresses (``::``, netids tcp6 and udp6), on separate
sockets (IPV6_V6ONLY), as rpcbind and the libtirpc daemons do: an IPv4 client
is then seen with its IPv4 address and calls on the netid of its family.
Without IPv6 (no ``::1``) the service listens on IPv4 only.  A service may
also serve a local (AF_UNIX) stream socket, as rpcbind serves
``/run/rpcbind.sock``; its callers are identified by their uid (SO_PEERCRED).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
import struct
from typing import Optional, Sequence, Union

from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from nfsstack.rpc.address import netid_for, uaddr
from nfsstack.rpc.ports import PortUnavailable, listen_failure
from nfsstack.rpc.program import Program
from nfsstack.rpc.server import (
    DEFAULT_MAX_RECORD,
    Dispatcher,
    ReplyBatcher,
    RPCDatagramProtocol,
    RPCStreamFactory,
    RPCStreamProtocol,
)

log = Logger(namespace="nfsstack.rpc")

#: The peer host of a call over a local (AF_UNIX) socket; the peer "port" is the caller's uid (-1 unknown).
LOCAL_PEER = "local"
#: The netid of rpcbind's local socket (netconfig(5): loopback, cots_ord).
LOCAL_NETID = "local"

_ipv6_checked: list = []


def ipv6_available() -> bool:
    """True if this host (network namespace) has IPv6: an AF_INET6 socket can bind ``::1``.

    Asked once per process; the first "no" is logged once.
    """
    if not _ipv6_checked:
        reason = None
        if not socket.has_ipv6:
            reason = "Python was built without IPv6"
        else:
            try:
                with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
                    s.bind(("::1", 0))
            except OSError as e:
                reason = e.strerror or str(e)
        if reason is not None:
            log.warn("IPv6 is not available ({reason}): listening on IPv4 only", reason=reason)
        _ipv6_checked.append(reason is None)
    return _ipv6_checked[0]


def parse_addresses(value: Union[str, Sequence[str], None]) -> list[str]:
    """The addresses of a ``--bind`` value (comma-separated IPv4 and IPv6 addresses); ValueError if one is not.

    Empty means the default: ``0.0.0.0`` and ``::``.
    """
    items = value.split(",") if isinstance(value, str) else list(value or ())
    out: list[str] = []
    for item in items:
        item = item.strip()
        if item.startswith("[") and item.endswith("]"):
            item = item[1:-1]
        if not item:
            continue
        try:
            address = str(ipaddress.ip_address(item))
        except ValueError:
            raise ValueError(f"{item!r} is not an IPv4 or IPv6 address") from None
        if address not in out:
            out.append(address)
    return out


def check_bind(value: str) -> str:
    """Coerce a ``--bind`` option: the addresses, checked, comma-separated again."""
    return ",".join(parse_addresses(value))


check_bind.coerceDoc = "Comma-separated IPv4/IPv6 addresses; empty = 0.0.0.0 and :: (IPv6 if available)."  # type: ignore[attr-defined]


def default_addresses() -> list[str]:
    return ["0.0.0.0", "::"] if ipv6_available() else ["0.0.0.0"]


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bound_socket(host: str, port: int, kind: int, reuseport: bool = False, backlog: int = 128) -> socket.socket:
    """A socket of ``kind`` bound to (host, port), IPv6 ones v6-only; listening (``backlog``) if a stream socket;
    with ``reuseport``, a member of the port's SO_REUSEPORT group (rpc/reuseport.py)."""
    s = socket.socket(_family(host), kind)
    try:
        if s.family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted's listenTCP does
        if reuseport:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((host, port))
        if kind == socket.SOCK_STREAM:
            s.listen(backlog)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


def socket_in_use(path: str, timeout: float = 1.0) -> bool:
    """True if something listens on the stream socket ``path`` (a live rpcbind), False if nobody does."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:
            return True
        return True


class _NetidFactory(RPCStreamFactory):
    """The service's stream factory for one more transport: its own netid, everything else shared
    (the connection set too, so ``max_connections`` and the counts cover every transport)."""

    def __init__(self, main: RPCStreamFactory, netid: str, protocol_class=RPCStreamProtocol) -> None:
        self.__dict__.update(main.__dict__)
        self.netid = netid
        self.protocol_class = protocol_class

    def buildProtocol(self, addr):
        if len(self.connections) >= self.max_connections:
            return super().buildProtocol(addr)  # refuses and counts
        return self.protocol_class(self)


class LocalStreamProtocol(RPCStreamProtocol):
    """A connection on a local socket: the peer is (``local``, the caller's uid from SO_PEERCRED)."""

    def connectionMade(self) -> None:
        super().connectionMade()
        uid = -1
        try:
            creds = self.transport.getHandle().getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                          struct.calcsize("3i"))
            uid = struct.unpack("3i", creds)[1]
        except (OSError, AttributeError, struct.error):
            pass
        self.peer = (LOCAL_PEER, uid)
        self.local = (LOCAL_PEER, 0)


def registered_versions(program: Program, netid: str) -> list[int]:
    """The versions of ``program`` registered on ``netid``: all but those it serves only on other netids.

    rpcbind, for one, registers itself with version 2 (the portmapper
    protocol, IPv4 only) on tcp and udp, and versions 3 and 4 on every netid
    (its :class:`Program` says so with ``only_on``).
    """
    return [v for v in sorted(program.versions) if v not in program.only_on or netid in program.only_on[v]]


class RPCService(service.Service):
    """Serves ``programs`` on ``port`` (TCP and UDP, on each address of ``interface``) and registers them.

    ``interface`` is an address, a comma-separated list, or a sequence of
    addresses; empty means all IPv4 and all IPv6 addresses.  ``unix_socket``
    is a path to serve as a local stream socket too (rpcbind's), if nobody
    else serves it.  ``reply_batcher`` holds its connections' late replies
    while a batch is open: the stack's one, or one of the service's own.
    ``gss`` is the process's RPCSEC_GSS engine (:func:`nfsstack.rpc.gss_server.load_gss_server`), shared by
    all its services, or None to refuse Kerberos calls.
    """

    #: The ``--bind`` option's check (twistd's coerce).
    check_bind = staticmethod(check_bind)

    def __init__(
        self,
        name: str,
        programs: Sequence[Program],
        port: int,
        interface: Union[str, Sequence[str]] = "",
        registrar=None,
        reactor=None,
        max_record: int = DEFAULT_MAX_RECORD,
        idle_timeout: float = 360.0,
        max_connections: int = 1024,
        unix_socket: Optional[str] = None,
        reply_batcher: Optional[ReplyBatcher] = None,
        gss=None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.setName(name)
        self.programs = list(programs)
        self.requested_port = port
        self.interface = interface
        self.addresses = parse_addresses(interface)  # empty: the default, decided at start
        self.registrar = registrar
        self.reactor = reactor
        self.dispatcher = Dispatcher(self.programs, gss=gss)
        self.max_record = max_record
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.unix_socket = unix_socket
        self.reply_batcher = reply_batcher if reply_batcher is not None else ReplyBatcher()
        self.port: Optional[int] = None
        #: The first TCP and UDP ports listened on (None when not listening).
        self.tcp = None
        self.udp = None
        #: Every listening port: (netid, host, twisted port).
        self.listening: list[tuple[str, str, object]] = []
        #: The local socket's listening port, if served.
        self.unix = None
        self.stream_factory: Optional[RPCStreamFactory] = None
        self._registered: list[tuple[int, int, str]] = []
        #: For the one line said when the port cannot be had (:func:`nfsstack.rpc.ports.listen_failure`): the
        #: option that sets it, the port a plain user gets with that option unset, what probably holds it.
        self.port_option = ""
        self.unprivileged_port: Optional[int] = None
        self.in_use_hint = ""
        #: Fires when every registration has been attempted.
        self.registered: defer.Deferred = defer.Deferred()

    def _listen(self) -> None:
        addresses = self.addresses or default_addresses()
        self.stream_factory = RPCStreamFactory(
            self.dispatcher,
            netid_for("tcp", addresses[0]),
            max_record=self.max_record,
            idle_timeout=self.idle_timeout,
            max_connections=self.max_connections,
            reply_batcher=self.reply_batcher,
        )
        attempts = 1 if self.requested_port else 32
        for attempt in range(attempts):
            sockets: list[tuple[str, str, socket.socket]] = []
            port = self.requested_port
            try:
                for host in addresses:
                    for kind, sock_type in (("tcp", socket.SOCK_STREAM), ("udp", socket.SOCK_DGRAM)):
                        s = _bound_socket(host, port, sock_type)
                        sockets.append((netid_for(kind, host), host, s))
                        port = s.getsockname()[1]
            except OSError as e:
                for _, _, s in sockets:
                    s.close()
                if attempt == attempts - 1 or (port and self.requested_port) or not sockets:
                    raise CannotListenError(host, self.requested_port, e)
                continue  # the dynamic port was taken on another transport: try another
            try:
                self._adopt(sockets)
            finally:
                for _, _, s in sockets:
                    s.close()  # Twisted holds duplicates
            self.port = port
            return

    def _adopt(self, sockets) -> None:
        for netid, host, s in sockets:
            if s.type == socket.SOCK_STREAM:
                factory = self.stream_factory
                if factory.netid != netid:
                    factory = _NetidFactory(self.stream_factory, netid)
                listening = self.reactor.adoptStreamPort(s.fileno(), s.family, factory)
                self.tcp = self.tcp or listening
            else:
                listening = self.reactor.adoptDatagramPort(s.fileno(), s.family,
                                                           RPCDatagramProtocol(self.dispatcher, netid))
                self.udp = self.udp or listening
            self.listening.append((netid, host, listening))

    def _listen_unix(self) -> None:
        path = self.unix_socket
        if not path:
            return
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                log.warn("{name}: not serving {path}: it exists and is no socket", name=self.name, path=path)
                return
            if socket_in_use(path):
                log.warn("{name}: not serving {path}: another rpcbind answers there", name=self.name, path=path)
                return
            log.info("{name}: replacing the stale socket {path} nobody listens on", name=self.name, path=path)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        factory = _NetidFactory(self.stream_factory, LOCAL_NETID, LocalStreamProtocol)
        try:
            self.unix = self.reactor.listenUNIX(path, factory, mode=0o666, wantPID=False)
        except CannotListenError as e:
            log.warn("{name}: cannot serve {path}: {error}", name=self.name, path=path, error=e.socketError)
            self.unix = None
            return
        os.chmod(path, 0o666)  # every user's daemons register here, as with rpcbind

    def startService(self) -> None:
        try:
            self._listen()
        except CannotListenError as e:
            # One line, said once by whoever starts the service (nfsstack.startup).
            line = listen_failure(self.name, self.requested_port, e.socketError, self.port_option,
                                  self.unprivileged_port, self.in_use_hint)
            raise PortUnavailable(line, e.interface, self.requested_port, e.socketError) from None
        self._listen_unix()
        super().startService()
        names = ", ".join(f"{p.name} {p.number} v{'/'.join(map(str, sorted(p.versions)))}" for p in self.programs)
        hosts = sorted({host for _, host, _ in self.listening}, key=lambda h: (":" in h, h))
        log.info("{names} listening on TCP and UDP port {port} of {hosts}{unix}", names=names, port=self.port,
                 hosts=", ".join(hosts), unix=f" and on {self.unix_socket}" if self.unix is not None else "")
        if self.registrar is None:
            self.registered.callback(None)
            return
        calls = []
        transports = [(netid, uaddr(host, self.port)) for netid, host, _ in self.listening]
        if self.unix is not None:
            transports.append((LOCAL_NETID, self.unix_socket))
        # rpcbind's order: for each program and version, the netids in the order listened on.
        for program in self.programs:
            for netid, address in transports:
                for vers in registered_versions(program, netid):
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
            for _, _, port in self.listening:
                stops.append(defer.maybeDeferred(port.stopListening))
            if self.unix is not None:
                stops.append(defer.maybeDeferred(self.unix.stopListening))  # removes the socket file
            self.listening = []
            self.tcp = self.udp = self.unix = None
            for conn in list(self.stream_factory.connections if self.stream_factory else ()):
                conn.transport.loseConnection()
            return defer.gatherResults(stops)

        return d.addBoth(stop_listening)
