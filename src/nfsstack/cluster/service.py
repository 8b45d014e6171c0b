"""Port 1110: nfsd-status (TCP, HTTP/1.1) and nfsd-keepalive (UDP), the stack's health and membership channel.

``GET /status`` answers the stack's status as JSON, ``GET /metrics`` the
Prometheus text format, ``GET /healthz`` 200 while every configured service
serves (503 and the ones that do not, else: a partial stack), ``GET /stat`` the call counters as
``nfsstack stat`` shows them; ``POST /exports/reload`` reads the exports file
again (``nfsstack exports reload``, as ``exportfs -r``), for callers on this
machine only.  Keepalives (:mod:`nfsstack.cluster.
keepalive`) are answered, sent to the configured peers every interval, and
kept in a :class:`~nfsstack.cluster.members.Members` table.

Both bind only where configured (loopback by default) and take only callers
from the configured networks; with a shared key, keepalives without the
right MAC are dropped and counted, as are malformed ones.  The status never
shows the key.  An HTTP client gets ``header_timeout`` seconds to send a
whole request, and the number of connections is capped, in all and per
client address, so a slowloris cannot take the service down.
"""

from __future__ import annotations

import collections
import ipaddress
import json
import secrets
from typing import Callable, Iterable, Optional

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.application import service
from twisted.internet import defer, protocol, task
from twisted.web import http, resource, server

from nfsstack.cluster import keepalive as ka
from nfsstack.cluster.members import Members
from nfsstack.logs import logger
from nfsstack.rpc.address import parse_address
from nfsstack.rpc.twisted_internals import is_open

log = logger("nfsstack.cluster")


#: Callers on this machine: the only ones that may change the running server over HTTP.
LOCAL = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]


def parse_networks(text: str) -> list:
    return [ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip()]


def allowed(networks: list, host: str) -> bool:
    addr = parse_address(host)
    return addr is not None and any(addr.version == net.version and addr in net for net in networks)


def parse_peer(text: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port``."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest.lstrip(":") or ka.PORT)
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, ka.PORT


class KeepaliveProtocol(protocol.DatagramProtocol):
    """Takes keepalives, answers them, and sends ours to the peers."""

    noisy = False

    def __init__(self, node: "Node") -> None:
        self.node = node

    def datagramReceived(self, data: bytes, addr) -> None:
        node = self.node
        host = addr[0]
        if not allowed(node.networks, host):
            node.datagrams["refused"] += 1
            return
        if len(data) > ka.MAX_DATAGRAM:
            node.datagrams["oversized"] += 1
            return
        try:
            k = ka.decode(data, node.key)
        except ka.BadKeepalive as e:
            node.datagrams["bad_mac" if "MAC" in str(e) else "malformed"] += 1
            return
        if k.sender == node.name and k.boot == node.boot:
            node.datagrams["own"] += 1  # our own, looped back
            return
        if node.members.seen(k, host) is None:
            node.datagrams["table_full"] += 1
            return
        node.datagrams["valid"] += 1
        if not k.is_answer:
            self.send(addr, ka.ANSWER)

    def send(self, addr, flags: int = 0) -> None:
        node = self.node
        node.seq += 1
        try:
            self.transport.write(ka.encode(ka.Keepalive(ka.PEER, node.name, node.seq, node.boot, flags), node.key),
                                 addr)
        except OSError as e:
            log.debug("keepalive to {addr} failed: {e}", addr=addr, e=e)


class StatusChannel(http.HTTPChannel):
    """HTTP with a deadline for each whole request, so a client sending a byte now and then is dropped."""

    header_timeout = 10.0

    def connectionMade(self) -> None:
        super().connectionMade()
        self._deadline = None
        self._arm()

    def _arm(self) -> None:
        from twisted.internet import reactor

        self._disarm()
        self._deadline = reactor.callLater(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        self.transport.abortConnection()

    def allHeadersReceived(self) -> None:
        self._disarm()
        super().allHeadersReceived()

    def requestDone(self, request) -> None:
        super().requestDone(request)
        if self.transport is not None and is_open(self.transport):
            self._arm()

    def connectionLost(self, reason) -> None:
        self._disarm()
        super().connectionLost(reason)


class StatusSite(server.Site):
    """The HTTP site, taking callers only from the allowed networks, with caps on connections."""

    protocol = StatusChannel
    max_connections = 128
    max_per_client = 16

    def __init__(self, root, networks: list, **kw) -> None:
        super().__init__(root, **kw)
        self.networks = networks
        self.open: collections.Counter = collections.Counter()
        self.refused = 0

    def buildProtocol(self, addr):
        host = getattr(addr, "host", "")
        if (not allowed(self.networks, host) or sum(self.open.values()) >= self.max_connections
                or self.open[host] >= self.max_per_client):
            self.refused += 1
            return None
        channel = super().buildProtocol(addr)
        self.open[host] += 1
        lost = channel.connectionLost

        def counted(reason, host=host, lost=lost):
            self.open[host] -= 1
            if self.open[host] <= 0:
                del self.open[host]
            lost(reason)

        channel.connectionLost = counted
        return channel


def _refreshed(refresh: Optional[Callable[[], defer.Deferred]], request, render: Callable[[], bytes]):
    """``render()``, once ``refresh()`` (if any: the counters of nfsd's worker processes are asked for) has fired."""
    if refresh is None:
        return render()
    gone: list = []
    request.notifyFinish().addErrback(gone.append)

    def answer(_) -> None:
        if not gone:
            request.write(render())
            request.finish()

    def failed(failure) -> None:
        log.failure("{path} failed", failure, path=request.path)
        if not gone:
            request.setResponseCode(500)
            request.finish()

    refresh().addCallback(answer).addErrback(failed)
    return server.NOT_DONE_YET


class _Json(resource.Resource):
    isLeaf = True

    def __init__(self, produce: Callable[[], dict], refresh=None) -> None:
        super().__init__()
        self.produce = produce
        self.refresh = refresh

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")
        return _refreshed(self.refresh, request,
                          lambda: json.dumps(self.produce(), indent=1, sort_keys=True).encode() + b"\n")


class _Action(resource.Resource):
    """A POST that changes the running server: only callers on this machine (loopback), whatever the allowed
    networks; ``act()`` answers a dict (or a Deferred of one) with "ok" true or false."""

    isLeaf = True

    def __init__(self, act: Optional[Callable[[], object]], unavailable: str) -> None:
        super().__init__()
        self.act = act
        self.unavailable = unavailable

    def render_POST(self, request):
        request.setHeader(b"content-type", b"application/json")
        host = getattr(request.getClientAddress(), "host", "")
        if not allowed(LOCAL, host):
            request.setResponseCode(403)
            return b'{"ok": false, "error": "only from this machine"}\n'
        if self.act is None:
            request.setResponseCode(409)
            return json.dumps({"ok": False, "error": self.unavailable}).encode() + b"\n"

        def answer(result: dict) -> None:
            if not result.get("ok"):
                request.setResponseCode(409)
            request.write(json.dumps(result, indent=1, sort_keys=True).encode() + b"\n")
            request.finish()

        def failed(failure) -> None:
            log.failure("{path} failed", failure, path=request.path)
            request.setResponseCode(500)
            request.write(b'{"ok": false, "error": "internal error"}\n')
            request.finish()

        defer.maybeDeferred(self.act).addCallbacks(answer, failed)
        return server.NOT_DONE_YET


class _Metrics(resource.Resource):
    isLeaf = True

    def __init__(self, registry, refresh=None) -> None:
        super().__init__()
        self.registry = registry
        self.refresh = refresh

    def render_GET(self, request):
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return _refreshed(self.refresh, request, lambda: generate_latest(self.registry))


class _Health(resource.Resource):
    isLeaf = True

    def __init__(self, down: Callable[[], list[str]]) -> None:
        super().__init__()
        self.down = down

    def render_GET(self, request) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        down = self.down()
        if down:
            request.setResponseCode(503)
            return ("not serving: " + ", ".join(down) + "\n").encode()
        return b"ok\n"


class Node:
    """This server's identity and keepalive state on port 1110."""

    def __init__(self, name: str, networks: list, key: Optional[bytes], interval: float, misses: int, clock,
                 peers: Iterable[tuple[str, int]] = ()) -> None:
        self.name = name
        self.networks = networks
        self.key = key
        self.boot = secrets.token_bytes(8)
        self.seq = 0
        self.peers = list(peers)
        self.datagrams: collections.Counter = collections.Counter()
        self.members = Members(clock, interval, misses, on_change=self._changed)
        for host, _ in self.peers:
            self.members.expect_peer(host)

    @staticmethod
    def _changed(member, change: str) -> None:
        log.info("{kind} {id} ({addr}) is {change}", kind=member.kind, id=member.id, addr=member.address,
                 change=change)

    def counts(self) -> dict:
        members = collections.Counter((m["kind"], m["state"]) for m in self.members.table())
        return {"members": dict(members), "datagrams": dict(self.datagrams)}


class ClusterService(service.Service):
    """Listens on TCP (status) and UDP (keepalive) at each bind address; sends keepalives and sweeps the table."""

    name = "cluster"

    def __init__(self, node: Node, port: int, binds: list[str], report: Callable[[], dict],
                 down: Callable[[], list[str]], registry, reactor=None, stat: Optional[Callable[[], dict]] = None,
                 reload: Optional[Callable[[], object]] = None,
                 refresh: Optional[Callable[[], defer.Deferred]] = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.node = node
        self.port = port
        self.binds = binds
        self.reactor = reactor
        root = resource.Resource()
        # refresh: what must be asked for before a report, or None (the counters of nfsd's worker processes).
        root.putChild(b"status", _Json(report, refresh))
        root.putChild(b"metrics", _Metrics(registry, refresh))
        root.putChild(b"healthz", _Health(down))
        root.putChild(b"stat", _Json(stat or (lambda: {}), refresh))
        exports = resource.Resource()
        exports.putChild(b"reload", _Action(reload, "no exports file to reload: the stack serves its default "
                                                    "export (start it with --exports FILE)"))
        root.putChild(b"exports", exports)
        self.site = StatusSite(root, node.networks, timeout=30)
        self.site.displayTracebacks = False
        self.site.log = lambda request: None  # no access log on every scrape
        self.keepalives: list[KeepaliveProtocol] = []
        self.listening: list = []
        self._loop: Optional[task.LoopingCall] = None

    def startService(self) -> None:
        try:
            for bind in self.binds:
                self.listening.append(self.reactor.listenTCP(self.port, self.site, interface=bind))
            for bind in self.binds:
                keepalive = KeepaliveProtocol(self.node)
                self.listening.append(self.reactor.listenUDP(self.port, keepalive, interface=bind))
                self.keepalives.append(keepalive)
        except Exception:
            # Not half-listening: the stack reports this service down (or stops), not up on some addresses.
            for port in self.listening:
                port.stopListening()
            self.listening, self.keepalives = [], []
            raise
        super().startService()
        log.info("nfsd-status (TCP) and nfsd-keepalive (UDP) on port {port} at {binds}", port=self.port,
                 binds=", ".join(self.binds))
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.reactor
        self._loop.start(self.node.members.interval, now=True)

    def _tick(self) -> None:
        for host, port in self.node.peers:
            self.keepalives[0].send((host, port))  # from the first bind address
        self.node.members.sweep()

    @property
    def ports(self) -> list[int]:
        return [p.getHost().port for p in self.listening]

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        stops = [defer.maybeDeferred(p.stopListening) for p in self.listening]
        self.listening = []
        return defer.gatherResults(stops)
