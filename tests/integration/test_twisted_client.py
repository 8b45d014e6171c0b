"""The RPC client and server in one reactor (pytest-twisted): many calls in flight, replies out of order."""

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from nfsstack.portmap.client import PortmapClient
from nfsstack.portmap.program import Portmapper
from nfsstack.portmap.registrar import LocalRegistrar, RpcbindRegistrar
from nfsstack.portmap.registry import Registry
from nfsstack.rpc.client import connect_tcp, udp_client
from nfsstack.rpc.message import AcceptedError, AcceptStat
from nfsstack.rpc.program import Procedure, Program, null_procedure
from nfsstack.rpc.remote import NotRegistered, RemoteCaller
from nfsstack.rpc.service import RPCService
from nfsstack.xdr import Packer, Unpacker


def u32(n):
    p = Packer()
    p.pack_uint(n)
    return p.getvalue()


def sleepy_program():
    """Proc 1 answers its argument after argument milliseconds."""

    def sleep(ctx, ms):
        return task.deferLater(reactor, ms / 1000.0, lambda: ms)

    return Program(310000, "sleepy", {1: {0: null_procedure(), 1: Procedure("SLEEP", sleep, Unpacker.unpack_uint, Packer.pack_uint)}})


def gated_program(held):
    """Proc 1 answers its argument when the test fires the Deferred it left in ``held``."""

    def hold(ctx, n):
        d = defer.Deferred()
        held.append((n, d))
        return d

    return Program(310000, "gated", {1: {0: null_procedure(), 1: Procedure("HOLD", hold, Unpacker.unpack_uint, Packer.pack_uint)}})


@pytest_twisted.inlineCallbacks
def test_many_calls_in_flight_complete_out_of_order():
    """50 calls in flight on one connection; the server answers them in an order the test chooses
    (not the order they were sent, and not by timers, so a slow machine cannot reorder them)."""
    held = []
    service = RPCService("gated", [gated_program(held)], 0, interface="127.0.0.1", reactor=reactor)
    service.startService()
    try:
        client = yield connect_tcp(reactor, "127.0.0.1", service.port)
        finished = []
        calls = []
        for n in [200, 150, 100, 50, 0] * 10:
            d = client.call(310000, 1, 1, u32(n), timeout=10)
            d.addCallback(lambda body: Unpacker(body).unpack_uint())
            d.addCallback(lambda v: finished.append(v) or v)
            calls.append(d)
        for _ in range(500):  # at most 5 s for all 50 calls to reach the server
            if len(held) == 50:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        assert sorted(n for n, _ in held) == sorted([200, 150, 100, 50, 0] * 10)
        assert finished == []  # nothing answered before the server let it go
        for n, d in sorted(held, key=lambda item: item[0]):  # smallest first: the reverse of the sending order
            d.callback(n)
        results = yield defer.gatherResults(calls)
        assert results == [200, 150, 100, 50, 0] * 10  # each call got its own answer, matched by xid
        assert finished == sorted(finished) and finished[:10] == [0] * 10 and finished[-10:] == [200] * 10
        with pytest.raises(AcceptedError) as e:
            yield client.call(310000, 7, 0, timeout=5)
        assert e.value.stat == AcceptStat.PROG_MISMATCH and (e.value.low, e.value.high) == (1, 1)
        yield client.close()
    finally:
        yield service.stopService()


@pytest_twisted.inlineCallbacks
def test_late_replies_made_together_leave_in_one_send():
    """What a batch of io_uring completions does (nfs3/local/aiosync.py): replies made inside a block of the service's
    ``ReplyBatcher`` leave at its end, one send per connection, each call still getting its own answer in
    completion order."""
    held = []
    service = RPCService("gated", [gated_program(held)], 0, interface="127.0.0.1", reactor=reactor)
    service.startService()
    try:
        client = yield connect_tcp(reactor, "127.0.0.1", service.port)
        calls = [client.call(310000, 1, 1, u32(n), timeout=10).addCallback(lambda b: Unpacker(b).unpack_uint())
                 for n in range(20)]
        for _ in range(500):  # at most 5 s for all 20 calls to reach the server
            if len(held) == 20:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        (protocol,) = service.stream_factory.connections
        sends = []
        real_send = protocol._send
        protocol._send = lambda parts: (sends.append(len(parts)), real_send(parts))[1]
        with service.reply_batcher:
            with service.reply_batcher:  # nested: the outer block sends
                for n, d in reversed(held[10:]):
                    d.callback(n)
            assert sends == []  # nothing left inside the block
        assert sends == [20]  # ten replies, a record mark and a message each: one send
        for n, d in held[:10]:
            d.callback(n)
        assert sends == [20] + [2] * 10  # outside a block, each reply leaves at once
        results = yield defer.gatherResults(calls)
        assert results == list(range(20))
        yield client.close()
    finally:
        yield service.stopService()


@pytest_twisted.inlineCallbacks
def test_udp_call_answered_after_a_delay():
    service = RPCService("sleepy", [sleepy_program()], 0, interface="127.0.0.1", reactor=reactor)
    service.startService()
    try:
        udp = udp_client(reactor, "127.0.0.1", service.port)
        body = yield udp.call(310000, 1, 1, u32(10), timeout=5)
        assert Unpacker(body).unpack_uint() == 10
        udp.close()
    finally:
        yield service.stopService()


def started_portmapper():
    """The stack's portmapper on a test port of 127.0.0.1: (its registry, its started service)."""
    registry = Registry()
    portmap = RPCService("portmapper", [Portmapper(registry).program], 0, interface="127.0.0.1", reactor=reactor,
                         registrar=LocalRegistrar(registry))
    portmap.startService()
    return registry, portmap


@pytest_twisted.inlineCallbacks
def test_register_with_a_portmapper_over_tcp_then_unregister():
    """RpcbindRegistrar (the --system-rpcbind path) against our own portmapper on a test port."""
    registry, portmap = started_portmapper()
    registrar = RpcbindRegistrar(reactor, port=portmap.port, socket_path=None)
    echo = RPCService("echo", [sleepy_program()], 0, interface="127.0.0.1", reactor=reactor, registrar=registrar)
    echo.startService()
    try:
        yield echo.registered
        entries = {(r.prog, r.vers, r.netid): r for r in registry}
        assert entries[(310000, 1, "tcp")].addr == f"127.0.0.1.{echo.port >> 8}.{echo.port & 255}"
        assert (310000, 1, "udp") in entries and entries[(310000, 1, "tcp")].owner == "unknown"
        yield echo.stopService()
        assert not any(r.prog == 310000 for r in registry)
    finally:
        yield portmap.stopService()


@pytest_twisted.inlineCallbacks
def test_remote_calls_find_the_port_with_the_portmapper_client():
    """RemoteCaller (NLM and NSM callbacks) asks GETPORT through PortmapClient, then calls over UDP and TCP."""
    registry, portmap = started_portmapper()
    echo = RPCService("echo", [sleepy_program()], 0, interface="127.0.0.1", reactor=reactor,
                      registrar=LocalRegistrar(registry))
    echo.startService()
    finder = PortmapClient(reactor, port=portmap.port)
    remote = RemoteCaller(reactor, finder.getport)
    try:
        yield echo.registered
        assert (yield finder.getport("127.0.0.1", 310000, 1, "udp")) == echo.port
        assert (yield finder.getport("127.0.0.1", 310000, 1, "tcp", via=remote._datagram_client())) == echo.port
        assert (yield finder.getport("127.0.0.1", 310001, 1, "tcp")) == 0
        for proto in ("udp", "tcp"):
            body = yield remote.call("127.0.0.1", 310000, 1, 1, u32(3), proto=proto, timeout=5.0)
            assert Unpacker(body).unpack_uint() == 3
        with pytest.raises(NotRegistered):
            yield remote.call("127.0.0.1", 310001, 1, 1, u32(3), timeout=5.0)
    finally:
        remote.close()
        yield echo.stopService()
        yield portmap.stopService()
