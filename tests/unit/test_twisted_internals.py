"""What nfsstack.rpc.twisted_internals takes from Twisted's internals is still there, and still works.

Each test runs on a real loopback connection in the real reactor.  A Twisted
upgrade that renames or drops one of the undocumented attributes the RPC
server's fast paths use, or stops using one, fails here with a message that
names the attribute and the Twisted version.  It does not show up as slower
replies or as reordered bytes on the wire.
"""

from __future__ import annotations

import select
import socket

import pytest
import pytest_twisted
import twisted
from twisted.internet import defer, protocol, reactor, task, tcp, udp
from twisted.internet.testing import StringTransport

from nfsstack.rpc import twisted_internals
from nfsstack.rpc.twisted_internals import MAX_PARTS, RELIES_ON, WRITTEN_AGAINST, adapt, is_open, set_datagram_size

UPGRADE = (f"Twisted {twisted.__version__} is installed; nfsstack/rpc/twisted_internals.py was written against "
           f"Twisted {WRITTEN_AGAINST}. Adapt that module (only it) to this Twisted, or pin Twisted.")


def _check(obj, cls: str, name: str) -> None:
    if not hasattr(obj, name):
        pytest.fail(f"{cls} has no attribute {name!r} ({RELIES_ON[cls][name]}). {UPGRADE}", pytrace=False)


class _Server(protocol.Protocol):
    """Records what Twisted reads, chunk by chunk."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.made: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.made.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)


@pytest.fixture
def connection():
    """(Twisted's server end of a loopback TCP connection, its protocol, the client's plain blocking socket)."""
    server = _Server()
    port = reactor.listenTCP(0, protocol.Factory.forProtocol(lambda: server), interface="127.0.0.1")
    peer = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
    pytest_twisted.blockon(server.made)
    yield server.transport, server, peer
    peer.close()
    if server.transport.connected:
        server.transport.abortConnection()
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


def _recv_exactly(peer: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = peer.recv(n - len(data))
        assert chunk, f"connection closed after {len(data)} of {n} bytes"
        data += chunk
    return data


def _turn():
    return task.deferLater(reactor, 0.01, lambda: None)


@pytest_twisted.inlineCallbacks
def test_a_tcp_connection_has_every_attribute_the_adapter_relies_on(connection):
    transport, _, _ = connection
    cls = "twisted.internet.tcp.Connection"
    assert isinstance(transport, tcp.Connection), f"the TCP transport is a {type(transport)!r}. {UPGRADE}"
    for name in RELIES_ON[cls]:
        _check(transport, cls, name)
    kinds = {"socket": socket.socket, "dataBuffer": bytes, "_tempDataBuffer": list, "bufferSize": int}
    for name, kind in kinds.items():
        if not isinstance(getattr(transport, name), kind):
            pytest.fail(f"{cls}.{name} is a {type(getattr(transport, name)).__name__}, not a {kind.__name__} "
                        f"({RELIES_ON[cls][name]}). {UPGRADE}", pytrace=False)
    yield _turn()


@pytest_twisted.inlineCallbacks
def test_a_udp_port_has_every_attribute_the_adapter_relies_on():
    port = reactor.listenUDP(0, protocol.DatagramProtocol(), interface="127.0.0.1")
    try:
        assert isinstance(port, udp.Port), f"the UDP transport is a {type(port)!r}. {UPGRADE}"
        for name in RELIES_ON["twisted.internet.udp.Port"]:
            _check(port, "twisted.internet.udp.Port", name)
    finally:
        yield defer.maybeDeferred(port.stopListening)


@pytest_twisted.inlineCallbacks
def test_send_now_moves_bytes_straight_to_the_socket(connection):
    transport, _, peer = connection
    fast = adapt(transport)
    assert fast is not None and fast.idle() and is_open(transport)
    assert fast.send_now([b"abc", memoryview(b"def"), bytearray(b"g")]) == 7  # sendmsg, synchronously
    assert _recv_exactly(peer, 7) == b"abcdefg"
    many = [bytes([i % 256]) for i in range(MAX_PARTS + 100)]  # more parts than one sendmsg takes: one send
    assert fast.send_now(many) == len(many)
    assert _recv_exactly(peer, len(many)) == b"".join(many)
    assert fast.fileno == transport.socket.fileno()
    yield _turn()


@pytest_twisted.inlineCallbacks
def test_idle_and_send_now_follow_twisteds_write_buffers(connection):
    """A write through the transport is queued in Twisted's buffers until the reactor sends it: while it is,
    the adapter is not idle and sends nothing, so no byte overtakes it; once it has gone, the adapter is idle."""
    transport, _, peer = connection
    fast = adapt(transport)
    transport.write(b"queued")
    if fast.idle():
        pytest.fail(f"a write queued in Twisted's buffers is not seen in tcp.Connection.dataBuffer or "
                    f"._tempDataBuffer: the fast path would send ahead of it. {UPGRADE}", pytrace=False)
    assert fast.send_now([b"later"]) is None
    for _ in range(500):
        if fast.idle():
            break
        yield _turn()
    else:
        pytest.fail(f"tcp.Connection.dataBuffer/_tempDataBuffer never emptied after Twisted sent them. {UPGRADE}",
                    pytrace=False)
    assert fast.send_now([b"later"]) == 5
    assert _recv_exactly(peer, 11) == b"queuedlater"
    transport.loseConnection()
    assert transport.disconnecting and not fast.idle() and not is_open(transport)
    assert fast.send_now([b"never"]) is None


@pytest_twisted.inlineCallbacks
def test_recv_into_reads_straight_from_the_socket(connection):
    transport, server, peer = connection
    fast = adapt(transport)
    buf = bytearray(10)
    with pytest.raises(BlockingIOError):  # nothing waiting: the protocol stops reading and lets Twisted wait
        fast.recv_into(memoryview(buf))
    peer.sendall(b"0123456789")
    assert select.select([fast.fileno], [], [], 5)[0], "the bytes never arrived"
    n = fast.recv_into(memoryview(buf)[:6])  # before the reactor gets a turn: Twisted has read nothing
    assert (n, bytes(buf[:n])) == (6, b"012345")
    for _ in range(500):
        if b"".join(server.chunks) == b"6789":
            break
        yield _turn()
    assert b"".join(server.chunks) == b"6789"  # the rest is Twisted's, in order


@pytest_twisted.inlineCallbacks
def test_read_size_bounds_each_of_twisteds_reads(connection):
    transport, server, peer = connection
    adapt(transport, read_size=1000)
    data = bytes(range(256)) * 40
    peer.sendall(data)
    for _ in range(500):
        if sum(map(len, server.chunks)) >= len(data):
            break
        yield _turn()
    assert b"".join(server.chunks) == data
    if max(map(len, server.chunks)) > 1000:
        pytest.fail(f"Twisted read {max(map(len, server.chunks))} bytes at once after tcp.Connection.bufferSize "
                    f"was set to 1000: it no longer sizes its reads by bufferSize. {UPGRADE}", pytrace=False)


@pytest_twisted.inlineCallbacks
def test_datagram_size_lets_a_large_datagram_in_whole():
    got: defer.Deferred = defer.Deferred()

    class Receiver(protocol.DatagramProtocol):
        def datagramReceived(self, data, addr):
            if not got.called:
                got.callback(data)

    port = reactor.listenUDP(0, Receiver(), interface="127.0.0.1")
    try:
        set_datagram_size(port, 65536)
        data = bytes(range(256)) * 240  # 60 KiB: Twisted's default takes 8 KiB of it
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(data, ("127.0.0.1", port.getHost().port))
        received = yield got
        if received != data:
            pytest.fail(f"a {len(data)}-byte datagram arrived as {len(received)} bytes after udp.Port.maxPacketSize "
                        f"was set to 65536. {UPGRADE}", pytrace=False)
    finally:
        yield defer.maybeDeferred(port.stopListening)


def test_adapt_leaves_other_transports_alone():
    assert adapt(StringTransport()) is None
    assert twisted_internals.FastTCP.__slots__  # no per-instance dict: a connection's adapter stays small
