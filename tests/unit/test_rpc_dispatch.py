"""RPC messages and the dispatcher (RFC 5531 sections 8-9): every standard reply."""

import struct

import pytest
from hypothesis import given, strategies as st
from twisted.internet import defer

from nfsstack.rpc.drc import ReplyCache
from nfsstack.rpc.message import (
    AcceptStat, AcceptedError, AuthFlavor, AuthStat, Credential, DeniedError, OpaqueAuth, RejectStat,
    decode_call, decode_reply, encode_call,
)
from nfsstack.rpc.program import AuthDenied, GarbageArgs, Procedure, Program, null_procedure
from nfsstack.rpc.server import BadMessage, Dispatcher
from nfsstack.xdr import Packer, Unpacker, XDRError

PEER = ("127.0.0.1", 40000)
LOCAL = ("127.0.0.1", 111)


class Echo:
    """A test program 200000 v1..v2: NULL, ECHO(uint), FAIL, DEFER, COUNT (non-idempotent), DENY."""

    def __init__(self):
        self.count = 0
        self.pending = []
        u32 = Unpacker.unpack_uint
        p32 = Packer.pack_uint
        procs = {
            0: null_procedure(),
            1: Procedure("ECHO", lambda ctx, a: a, u32, p32),
            2: Procedure("FAIL", self.fail),
            3: Procedure("DEFER", self.later, u32, p32),
            4: Procedure("COUNT", self.bump, None, p32, idempotent=False),
            5: Procedure("DENY", self.deny),
            6: Procedure("WHO", lambda ctx, a: ctx.credential.uid if ctx.credential else 0xFFFFFFFF, None, p32),
            7: Procedure("PICKY", self.picky, u32, p32),
        }
        self.program = Program(200000, "echo", {1: procs, 2: procs})

    def fail(self, ctx, args):
        raise RuntimeError("boom")

    def later(self, ctx, value):
        d = defer.Deferred()
        self.pending.append((d, value))
        return d

    def bump(self, ctx, args):
        self.count += 1
        return self.count

    def deny(self, ctx, args):
        raise AuthDenied(AuthStat.AUTH_TOOWEAK)

    def picky(self, ctx, value):
        if value > 10:
            raise GarbageArgs("too big")
        return value


def call(prog=200000, vers=1, proc=0, args=b"", xid=7, cred=OpaqueAuth()):
    return encode_call(xid, prog, vers, proc, cred) + args


def u32(n):
    return struct.pack(">I", n)


@pytest.fixture
def echo():
    return Echo()


@pytest.fixture
def dispatcher(echo):
    return Dispatcher([echo.program])


def answer(dispatcher, message, peer=PEER):
    reply = dispatcher.handle(message, "tcp", peer, LOCAL)
    assert isinstance(reply, bytes)
    header = decode_reply(reply)
    return header, reply


def test_null_and_echo(dispatcher):
    header, reply = answer(dispatcher, call())
    assert header.error is None and header.xid == 7 and reply[header.offset:] == b""
    header, reply = answer(dispatcher, call(proc=1, args=u32(99)))
    assert Unpacker(reply, header.offset).unpack_uint() == 99


def test_prog_unavail(dispatcher):
    header, _ = answer(dispatcher, call(prog=123))
    assert isinstance(header.error, AcceptedError) and header.error.stat == AcceptStat.PROG_UNAVAIL


def test_prog_mismatch_carries_low_and_high(dispatcher):
    header, _ = answer(dispatcher, call(vers=9))
    assert header.error.stat == AcceptStat.PROG_MISMATCH
    assert (header.error.low, header.error.high) == (1, 2)


def test_proc_unavail(dispatcher):
    header, _ = answer(dispatcher, call(proc=99))
    assert header.error.stat == AcceptStat.PROC_UNAVAIL


def test_garbage_args(dispatcher):
    header, _ = answer(dispatcher, call(proc=1, args=b"\0\0"))
    assert header.error.stat == AcceptStat.GARBAGE_ARGS
    header, _ = answer(dispatcher, call(proc=7, args=u32(11)))
    assert header.error.stat == AcceptStat.GARBAGE_ARGS


def test_system_err_on_handler_exception(dispatcher):
    header, _ = answer(dispatcher, call(proc=2))
    assert header.error.stat == AcceptStat.SYSTEM_ERR
    assert dispatcher.errors["SYSTEM_ERR"] == 1


def test_handler_auth_error(dispatcher):
    header, _ = answer(dispatcher, call(proc=5))
    assert isinstance(header.error, DeniedError) and header.error.auth_stat == AuthStat.AUTH_TOOWEAK


def test_rpc_version_3_gets_rpc_mismatch(dispatcher):
    message = bytearray(call())
    message[8:12] = u32(3)
    header, _ = answer(dispatcher, bytes(message))
    assert header.error.stat == RejectStat.RPC_MISMATCH and (header.error.low, header.error.high) == (2, 2)
    # Even when the rest of the header is missing.
    header, _ = answer(dispatcher, u32(5) + u32(0) + u32(3))
    assert header.xid == 5 and header.error.stat == RejectStat.RPC_MISMATCH


def test_auth_sys_is_parsed(dispatcher):
    cred = Credential(1000, 100, (4, 24, 27), "client").to_auth()
    header, reply = answer(dispatcher, call(proc=6, cred=cred))
    assert Unpacker(reply, header.offset).unpack_uint() == 1000


def test_auth_sys_with_10000_gids_is_badcred(dispatcher):
    p = Packer()
    p.pack_uint(0)
    p.pack_string("m")
    p.pack_uint(0)
    p.pack_uint(0)
    p.pack_array(list(range(10000)), Packer.pack_uint)
    header, _ = answer(dispatcher, call(cred=OpaqueAuth(AuthFlavor.AUTH_SYS, p.getvalue())))
    assert header.error.stat == RejectStat.AUTH_ERROR and header.error.auth_stat == AuthStat.AUTH_BADCRED
    # 17 gids fit in 400 bytes but exceed AUTH_SYS's 16.
    cred = Credential(1, 1, tuple(range(17))).encode()
    header, _ = answer(dispatcher, call(cred=OpaqueAuth(AuthFlavor.AUTH_SYS, cred)))
    assert header.error.auth_stat == AuthStat.AUTH_BADCRED


def test_unknown_flavor_is_rejected(dispatcher):
    header, _ = answer(dispatcher, call(cred=OpaqueAuth(AuthFlavor.RPCSEC_GSS, b"x" * 8)))
    assert header.error.stat == RejectStat.AUTH_ERROR and header.error.auth_stat == AuthStat.AUTH_REJECTEDCRED


def test_truncated_headers_are_bad_messages(dispatcher):
    full = call(cred=Credential(0, 0, (), "host").to_auth())
    for n in (0, 3, 4, 11, 20, 31, 40, len(full) - 1):
        with pytest.raises(BadMessage):
            dispatcher.handle(full[:n], "tcp", PEER, LOCAL)


def test_a_reply_message_is_ignored(dispatcher):
    assert dispatcher.handle(u32(1) + u32(1) + b"\0" * 24, "udp", PEER, LOCAL) is None


def test_deferred_replies(dispatcher, echo):
    d1 = dispatcher.handle(call(proc=3, args=u32(1), xid=1), "tcp", PEER, LOCAL)
    d2 = dispatcher.handle(call(proc=3, args=u32(2), xid=2), "tcp", PEER, LOCAL)
    got = []
    d1.addCallback(got.append)
    d2.addCallback(got.append)
    (p1, v1), (p2, v2) = echo.pending
    p2.callback(v2 * 10)  # the second finishes first
    p1.callback(v1 * 10)
    assert [decode_reply(r).xid for r in got] == [2, 1]
    assert Unpacker(got[0], decode_reply(got[0]).offset).unpack_uint() == 20


def test_deferred_failure_is_system_err(dispatcher, echo):
    d = dispatcher.handle(call(proc=3, args=u32(1)), "tcp", PEER, LOCAL)
    got = []
    d.addCallback(got.append)
    echo.pending[0][0].errback(RuntimeError("disk on fire"))
    assert decode_reply(got[0]).error.stat == AcceptStat.SYSTEM_ERR


def test_duplicate_request_cache_replays_non_idempotent_calls(dispatcher, echo):
    first = dispatcher.handle(call(proc=4, xid=50), "udp", PEER, LOCAL)
    again = dispatcher.handle(call(proc=4, xid=50), "udp", PEER, LOCAL)
    assert first == again and echo.count == 1
    other_peer = dispatcher.handle(call(proc=4, xid=50), "udp", ("127.0.0.2", 40000), LOCAL)
    new_xid = dispatcher.handle(call(proc=4, xid=51), "udp", PEER, LOCAL)
    assert echo.count == 3 and other_peer != first and new_xid != first


def test_duplicate_of_a_call_in_progress_is_dropped():
    holder = []

    def slow(ctx, args):
        holder.append(defer.Deferred())
        return holder[-1]

    program = Program(300000, "slow", {1: {1: Procedure("SLOW", slow, idempotent=False)}})
    dispatcher = Dispatcher([program])
    dispatcher.handle(call(prog=300000, proc=1), "udp", PEER, LOCAL)
    assert dispatcher.handle(call(prog=300000, proc=1), "udp", PEER, LOCAL) is None
    holder[0].callback(None)
    replay = dispatcher.handle(call(prog=300000, proc=1), "udp", PEER, LOCAL)
    assert isinstance(replay, bytes) and decode_reply(replay).error is None and len(holder) == 1


def test_reply_cache_is_bounded_and_expires():
    now = [0.0]
    cache = ReplyCache(size=3, ttl=10, clock=lambda: now[0])
    for k in range(5):
        assert cache.begin(k) is None
        cache.finish(k, b"r%d" % k)
    assert len(cache) == 3 and cache.begin(4) == b"r4"
    now[0] = 11
    assert cache.begin(4) is None


@given(st.binary(max_size=120))
def test_fuzz_decode_call_raises_only_protocol_errors(data):
    from nfsstack.rpc.message import CallRejected
    try:
        decode_call(data)
    except (XDRError, CallRejected):
        pass


@given(st.binary(max_size=120))
def test_fuzz_dispatcher_never_crashes(data):
    dispatcher = Dispatcher([Echo().program])
    try:
        reply = dispatcher.handle(data, "udp", PEER, LOCAL)
    except BadMessage:
        return
    if reply is not None and not isinstance(reply, defer.Deferred):
        decode_reply(reply)


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
       st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
       st.lists(st.integers(0, 2**32 - 1), max_size=16), st.text(max_size=40))
def test_call_header_roundtrip(xid, prog, vers, proc, uid, gid, gids, machine):
    cred = Credential(uid, gid, tuple(gids), machine)
    header, offset = decode_call(encode_call(xid, prog, vers, proc, cred.to_auth()) + b"ARGS")
    assert (header.xid, header.prog, header.vers, header.proc) == (xid, prog, vers, proc)
    assert header.credential == cred


@given(st.binary(max_size=80))
def test_fuzz_decode_reply(data):
    try:
        decode_reply(data)
    except XDRError:
        pass


def test_a_retransmission_from_another_port_gets_the_first_reply():
    """A client reconnecting over TCP calls from a new port: the cache still knows its call (RFC 1813 3.3.12)."""
    from nfsstack.rpc.drc import request_key

    first = request_key(("10.0.0.1", 801), "tcp", 7, 100003, 3, 12, b"args")
    again = request_key(("10.0.0.1", 934), "tcp", 7, 100003, 3, 12, b"args")
    other = request_key(("10.0.0.2", 801), "tcp", 7, 100003, 3, 12, b"args")
    assert first == again and first != other


def test_the_reply_cache_answers_a_retransmission_only_to_the_same_caller(echo):
    """Same address, xid and arguments from another user or another flavour (a hostile neighbour behind the
    same address guessing a user's xid) runs anew instead of getting, or answering for, that user's reply;
    the same user's retransmission, even with a new AUTH_SYS stamp, gets the first reply."""
    from nfsstack.rpc.message import Credential

    dispatcher = Dispatcher([echo.program])
    alice = Credential(1000, 1000, (1000,), "client", stamp=1).to_auth()
    first = dispatcher.handle(call(proc=4, xid=60, cred=alice), "tcp", PEER, LOCAL)
    again = Credential(1000, 1000, (1000,), "client", stamp=2).to_auth()
    retransmitted = dispatcher.handle(call(proc=4, xid=60, cred=again), "tcp", ("127.0.0.1", 999), LOCAL)
    assert first == retransmitted and echo.count == 1
    mallory = Credential(1001, 1001, (1001,), "client").to_auth()
    for cred in (OpaqueAuth(), mallory):
        dispatcher.handle(call(proc=4, xid=60, cred=cred), "tcp", PEER, LOCAL)
    assert echo.count == 3
