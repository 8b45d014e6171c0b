"""A small RPC client on the same codecs as the server (RFC 5531).

Used to register with a system rpcbind, to forward CALLIT, and for NLM/NSM
callbacks.  ``call`` sends the encoded arguments and returns a Deferred that
fires with the reply's result bytes, or fails with an :class:`RPCError`.
"""

from __future__ import annotations

import random
from typing import Optional

from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import IReactorTCP, IReactorUDP

from nfsstack.logs import logger
from nfsstack.rpc.message import (
    AUTH_NULL,
    OpaqueAuth,
    RPCError,
    decode_reply,
    encode_call,
)
from nfsstack.rpc.record import RecordReader, RecordTooLarge, frame
from nfsstack.xdr import XDRError

log = logger("nfsstack.rpc.client")


class RPCTimeout(RPCError):
    """No reply came in time."""


class _Calls:
    """Pending calls by xid."""

    def __init__(self) -> None:
        self.xid = random.getrandbits(32)
        self.pending: dict[int, defer.Deferred] = {}

    def next_xid(self) -> int:
        self.xid = (self.xid + 1) & 0xFFFFFFFF
        return self.xid

    def reply(self, data: bytes) -> None:
        try:
            header = decode_reply(data)
        except XDRError as e:
            log.debug("undecodable reply: {e}", e=e)
            return
        d = self.pending.pop(header.xid, None)
        if d is None:
            return
        if header.error is not None:
            d.errback(header.error)
        else:
            d.callback(data[header.offset :])

    def fail_all(self, reason: Exception) -> None:
        pending, self.pending = self.pending, {}
        for d in pending.values():
            d.errback(reason)


class RPCClientProtocol(protocol.Protocol):
    """An RPC client over one TCP connection; many calls may be in flight."""

    def __init__(self, max_record: int = 16 << 20) -> None:
        self._calls = _Calls()
        self._reader = RecordReader(max_record)
        self.connected_d: defer.Deferred = defer.Deferred()
        self.lost_d: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.connected_d.callback(self)

    def dataReceived(self, data: bytes) -> None:
        try:
            records = self._reader.feed(data)
        except RecordTooLarge as e:
            self.transport.abortConnection()
            self._calls.fail_all(RPCError(str(e)))
            return
        for record in records:
            self._calls.reply(record)

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        self._calls.fail_all(error.ConnectionLost(str(reason.value)))
        self.lost_d.callback(None)

    def call(
        self,
        prog: int,
        vers: int,
        proc: int,
        args: bytes = b"",
        cred: OpaqueAuth = AUTH_NULL,
        timeout: Optional[float] = None,
        reactor=None,
    ) -> defer.Deferred:
        xid = self._calls.next_xid()
        d = defer.Deferred()
        self._calls.pending[xid] = d
        self.transport.write(frame(encode_call(xid, prog, vers, proc, cred) + args))
        if timeout is not None:
            if reactor is None:
                from twisted.internet import reactor
            d.addTimeout(timeout, reactor, onTimeoutCancel=lambda r, t: self._timed_out(xid, t))
        return d

    def _timed_out(self, xid: int, timeout: float):
        self._calls.pending.pop(xid, None)
        raise RPCTimeout(f"no reply in {timeout} s")

    def close(self) -> defer.Deferred:
        self.transport.loseConnection()
        return self.lost_d


class RPCDatagramClient(protocol.DatagramProtocol):
    """An RPC client over UDP, retransmitting with the same xid until a reply or the timeout."""

    def __init__(self, host: str, port: int, reactor=None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.host = host
        self.port = port
        self._calls = _Calls()

    def datagramReceived(self, data: bytes, addr) -> None:
        self._calls.reply(data)

    def call(
        self,
        prog: int,
        vers: int,
        proc: int,
        args: bytes = b"",
        cred: OpaqueAuth = AUTH_NULL,
        timeout: float = 10.0,
        retransmit: float = 1.0,
        address: Optional[tuple[str, int]] = None,
    ) -> defer.Deferred:
        """Call ``prog`` at the client's server, or at ``address`` if given."""
        target = address or (self.host, self.port)
        xid = self._calls.next_xid()
        message = encode_call(xid, prog, vers, proc, cred) + args
        d = defer.Deferred()
        self._calls.pending[xid] = d
        deadline = self.reactor.seconds() + timeout

        def send() -> None:
            if xid not in self._calls.pending or self.transport is None:
                return
            if self.reactor.seconds() >= deadline:
                self._calls.pending.pop(xid, None)
                d.errback(RPCTimeout(f"no reply in {timeout} s"))
                return
            try:
                self.transport.write(message, target)
            except OSError as e:
                self._calls.pending.pop(xid, None)
                d.errback(e)
                return
            self.reactor.callLater(min(retransmit, max(0.0, deadline - self.reactor.seconds())), send)

        send()
        return d

    def close(self) -> None:
        self._calls.fail_all(error.ConnectionLost("client closed"))
        if self.transport is not None:
            self.transport.stopListening()


def _connecting_factory() -> tuple[protocol.ClientFactory, defer.Deferred]:
    """A factory whose Deferred fires with the connected RPCClientProtocol, or fails."""
    factory = protocol.ClientFactory()
    factory.noisy = False
    d: defer.Deferred = defer.Deferred()

    def build(addr):
        p = RPCClientProtocol()
        p.connected_d.chainDeferred(d)
        return p

    def failed(connector, reason):
        if not d.called:
            d.errback(reason)

    factory.buildProtocol = build
    factory.clientConnectionFailed = failed
    return factory, d


def connect_tcp(reactor: IReactorTCP, host: str, port: int, timeout: float = 10.0, bind_address=None) -> defer.Deferred:
    """Connect over TCP; fires with an :class:`RPCClientProtocol`."""
    factory, d = _connecting_factory()
    reactor.connectTCP(host, port, factory, timeout=timeout, bindAddress=bind_address)
    return d


def connect_unix(reactor, path: str, timeout: float = 10.0) -> defer.Deferred:
    """Connect to a local stream socket (rpcbind's ``/run/rpcbind.sock``)."""
    factory, d = _connecting_factory()
    reactor.connectUNIX(path, factory, timeout=timeout)
    return d


def udp_client(reactor: IReactorUDP, host: str, port: int, interface: str = "") -> RPCDatagramClient:
    """An :class:`RPCDatagramClient` on a fresh UDP port."""
    client = RPCDatagramClient(host, port, reactor)
    reactor.listenUDP(0, client, interface=interface)
    return client
