"""RPCSEC_GSS (RFC 2203) with Kerberos 5: the codecs, the sequence window, and the engine in the dispatcher.

The engine tests run a throwaway KDC (tests/kdc.py) for the client's ticket and the server's keytab, then
talk to a :class:`Dispatcher` in this process through the project's GSS client (rpc/gss_client.py), so every
rule of the RFC is checked without sockets; tests/integration/test_kerberos.py does it over real sockets.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from nfsstack.rpc.drc import ReplyCache
from nfsstack.rpc.gss import (
    GSS_S_COMPLETE, GSS_S_CONTINUE_NEEDED, MAX_TOKEN, MAXSEQ, SEQ_WINDOW, GssCredential, GssInitResult, GssProc, GssService, decode_init_arg,
    decode_integ_data, encode_init_arg, encode_integ_data, integ_body, split_data,
)
from nfsstack.rpc.gss_server import GssContext
from nfsstack.rpc.message import (
    AcceptedError, AcceptStat, AuthFlavor, AuthStat, DeniedError, OpaqueAuth, Pseudoflavor, decode_reply, encode_call,
)
from nfsstack.rpc.program import Procedure, Program, null_procedure
from nfsstack.rpc.server import BadMessage, Dispatcher
from nfsstack.xdr import Packer, Unpacker, XDRError
from tests import kdc as kdc_module
from tests.support import FuzzInput

PEER = ("127.0.0.1", 40000)
LOCAL = ("127.0.0.1", 2049)
PROG, VERS = 200000, 1


# -- the codecs (no GSS-API) -----------------------------------------------------------------------------------


@given(st.sampled_from(list(GssProc)), st.integers(0, 2**32 - 1), st.sampled_from(list(GssService)),
       st.binary(max_size=64))
def test_credential_roundtrip(proc, seq, service, handle):
    cred = GssCredential(proc, seq, service, handle)
    assert GssCredential.decode(cred.encode()) == cred


def test_credential_of_another_version_or_with_trailing_bytes_is_malformed():
    body = GssCredential(GssProc.DATA, 1, GssService.NONE, b"h" * 16).encode()
    with pytest.raises(XDRError):
        GssCredential.decode(struct.pack(">I", 2) + body[4:])
    with pytest.raises(XDRError):
        GssCredential.decode(body + b"\0\0\0\0")


def test_init_arg_and_result_roundtrip_and_bounds():
    assert decode_init_arg(Unpacker(encode_init_arg(b"token"))) == b"token"
    with pytest.raises(XDRError):
        decode_init_arg(Unpacker(struct.pack(">I", MAX_TOKEN + 1) + b"\0" * (MAX_TOKEN + 4)))
    result = GssInitResult(b"h" * 16, GSS_S_COMPLETE, 0, SEQ_WINDOW, b"tok")
    assert GssInitResult.decode(Unpacker(result.encode())) == result


def test_integ_data_carries_the_sequence_number_and_it_must_match():
    body = integ_body(9, b"ARGS")
    databody, checksum = decode_integ_data(Unpacker(encode_integ_data(body, b"mic")), 100)
    assert (databody, checksum) == (body, b"mic")
    assert split_data(databody, 9) == b"ARGS"
    with pytest.raises(XDRError):
        split_data(databody, 10)


@given(st.binary(max_size=120))
def test_fuzz_gss_credential_decoder(data):
    try:
        GssCredential.decode(data)
    except XDRError:
        pass


@given(st.binary(max_size=200))
def test_fuzz_gss_init_arg_and_result_decoders(data):
    for decode in (decode_init_arg, GssInitResult.decode, lambda u: decode_integ_data(u, 100)):
        try:
            decode(Unpacker(data))
        except XDRError:
            pass


# -- the sequence window (RFC 2203 section 5.3.3.1) ----------------------------------------------------------


def test_window_admits_new_numbers_once_and_drops_those_below_it():
    context = GssContext(None, b"h", 1e9, 0.0)
    assert context.admit(5) and not context.admit(5)
    assert context.admit(3) and not context.admit(3)  # late but inside the window: once
    assert context.admit(5 + SEQ_WINDOW)
    assert not context.admit(5)  # the window has passed it
    assert context.admit(6 + 1)  # still inside: never seen
    assert not context.admit(7)


def test_window_jumps_far_ahead_at_once():
    context = GssContext(None, b"h", 1e9, 0.0)
    assert context.admit(1) and context.admit(MAXSEQ - 1)
    assert not context.admit(1) and not context.admit(MAXSEQ - 1)
    assert context.admit(MAXSEQ - 2) and context.seen.bit_length() <= SEQ_WINDOW


@given(st.lists(st.integers(0, 400), max_size=60))
def test_window_never_admits_a_number_twice(numbers):
    context = GssContext(None, b"h", 1e9, 0.0)
    admitted = [n for n in numbers if context.admit(n)]
    assert len(admitted) == len(set(admitted))


# -- the engine in the dispatcher, with a real KDC --------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Who:
    """A program 200000 v1: NULL, WHO (the principal and flavour the handler saw), ECHO (opaque), BUMP
    (non-idempotent: counts its runs), BIG (100,000 bytes: more than a UDP datagram holds)."""

    def __init__(self) -> None:
        self.runs = 0

        def who(ctx, args):
            return f"{ctx.header.principal} {ctx.header.pseudoflavor}".encode()

        def bump(ctx, args):
            self.runs += 1
            return self.runs

        pack_opaque = Packer.pack_opaque
        procs = {
            0: null_procedure(),
            1: Procedure("WHO", who, None, pack_opaque),
            2: Procedure("ECHO", lambda ctx, a: a, lambda u: u.unpack_opaque(1 << 20), pack_opaque),
            3: Procedure("BUMP", bump, None, Packer.pack_uint, idempotent=False),
            4: Procedure("BIG", lambda ctx, a: b"b" * 100_000, None, pack_opaque),
        }
        self.program = Program(PROG, "who", {VERS: procs})


@pytest.fixture(scope="module")
def realm(tmp_path_factory):
    missing = kdc_module.available()
    if missing:
        pytest.skip(missing)
    pytest.importorskip("gssapi")
    from tests.support import free_port

    top = tmp_path_factory.mktemp("realm")
    with kdc_module.KDC(top / "realm", port=free_port()) as kdc:
        keytab = kdc.keytab("server.keytab", "nfs/nfsserver")
        with kdc_module.client_env(kdc.kinit("alice", top / "alice.cc")):
            yield keytab


class Rig:
    """A dispatcher with the engine, a clock, and a client session."""

    def __init__(self, keytab: Path, service=GssService.NONE) -> None:
        from nfsstack.rpc.gss_server import load_gss_server

        self.clock = Clock()
        self.gss = load_gss_server(str(keytab), explicit=True, clock=self.clock)
        assert self.gss is not None
        self.who = Who()
        self.dispatcher = Dispatcher([self.who.program], ReplyCache(), gss=self.gss)
        self.xid = 100
        self.session = self.new_session(service)

    def handle(self, message: bytes):
        return self.dispatcher.handle(message, "tcp", PEER, LOCAL)

    def new_session(self, service=GssService.NONE):
        from nfsstack.rpc.gss_client import GssSession

        session = GssSession("nfs@nfsserver", service)
        self.xid += 1
        assert session.init_reply(self.handle(session.init_message(self.xid, PROG, VERS)))
        return session

    def message(self, proc: int, args: bytes = b"", session=None, **kw) -> tuple[bytes, int]:
        self.xid += 1
        return (session or self.session).call_message(self.xid, PROG, VERS, proc, args, **kw)

    def call(self, proc: int, args: bytes = b"", session=None, **kw) -> bytes:
        session = session or self.session
        message, seq = self.message(proc, args, session, **kw)
        reply = self.handle(message)
        assert reply is not None
        return session.reply_results(reply, seq, kw.get("service"))


def opaque(data: bytes) -> bytes:
    p = Packer()
    p.pack_opaque(data)
    return p.getvalue()


@pytest.mark.parametrize("service, flavour", [(GssService.NONE, Pseudoflavor.KRB5),
                                              (GssService.INTEGRITY, Pseudoflavor.KRB5I),
                                              (GssService.PRIVACY, Pseudoflavor.KRB5P)])
def test_each_service_reaches_the_handler_with_the_principal_and_flavour(realm, service, flavour):
    rig = Rig(realm, service)
    results = rig.call(1)
    assert Unpacker(results).unpack_opaque(100) == f"alice@NFSSTACK.TEST {int(flavour)}".encode()
    data = os.urandom(3000)
    assert Unpacker(rig.call(2, opaque(data))).unpack_opaque(1 << 20) == data


def test_privacy_hides_the_arguments_and_the_results(realm):
    rig = Rig(realm, GssService.PRIVACY)
    secret = b"the secret words " * 10
    message, seq = rig.message(2, opaque(secret))
    assert b"secret words" not in message
    reply = rig.handle(message)
    assert b"secret words" not in reply
    assert Unpacker(rig.session.reply_results(reply, seq)).unpack_opaque(1000) == secret


@pytest.mark.parametrize("service", [GssService.NONE, GssService.INTEGRITY, GssService.PRIVACY])
def test_a_reply_too_large_for_udp_is_system_err_with_the_verifier_the_client_checks(realm, service):
    """Over UDP, a reply larger than a datagram is answered SYSTEM_ERR (rather than nothing), and for an
    RPCSEC_GSS call with the checksum of its sequence number as the verifier, which the client checks on every
    accepted reply (RFC 2203 section 5.3.3.2): an AUTH_NONE verifier there reads as a forged reply."""
    from nfsstack.rpc.server import RPCDatagramProtocol

    rig = Rig(realm, service)
    sent = []

    class Transport:
        def write(self, data, peer):
            sent.append(data)

    udp = RPCDatagramProtocol(rig.dispatcher)
    udp.transport = Transport()
    message, seq = rig.message(4)
    udp.datagramReceived(message, PEER)
    assert len(sent) == 1 and len(sent[0]) < 1000
    header = decode_reply(sent[0])
    assert header.verf.flavor == AuthFlavor.RPCSEC_GSS  # the Linux client drops any other as garbage
    with pytest.raises(AcceptedError) as refused:
        rig.session.reply_results(sent[0], seq)  # the verifier checked first
    assert refused.value.stat == AcceptStat.SYSTEM_ERR
    assert len(Unpacker(rig.call(4)).unpack_opaque(1 << 20)) == 100_000  # over TCP it goes whole


def test_a_replayed_call_gets_no_reply_and_the_next_works(realm):
    rig = Rig(realm, GssService.INTEGRITY)
    message, seq = rig.message(3)
    assert rig.handle(message) is not None
    assert rig.handle(message) is None  # the same bytes, the same seq: dropped (RFC 2203 5.3.3.1)
    assert rig.who.runs == 1
    assert Unpacker(rig.call(3)).unpack_uint() == 2


def test_a_call_below_the_window_is_dropped(realm):
    rig = Rig(realm)
    old, _ = rig.message(1)
    for _ in range(SEQ_WINDOW):
        rig.call(1)
    assert rig.handle(old) is None


def test_a_retransmission_with_a_new_seq_gets_the_first_reply_sealed_anew(realm):
    """A client retransmits with the same xid, a new seq and a new wrapping: the DRC finds the first reply."""
    rig = Rig(realm, GssService.INTEGRITY)
    rig.xid += 1
    first, seq1 = rig.session.call_message(rig.xid, PROG, VERS, 3)
    again, seq2 = rig.session.call_message(rig.xid, PROG, VERS, 3)
    assert Unpacker(rig.session.reply_results(rig.handle(first), seq1)).unpack_uint() == 1
    assert Unpacker(rig.session.reply_results(rig.handle(again), seq2)).unpack_uint() == 1
    assert rig.who.runs == 1


def test_integrity_refuses_a_changed_body(realm):
    rig = Rig(realm, GssService.INTEGRITY)
    message, seq = rig.message(3)
    changed = bytearray(message)
    changed[-40] ^= 0x01  # inside databody_integ or its checksum
    reply = rig.handle(bytes(changed))
    with pytest.raises(AcceptedError) as refused:
        rig.session.reply_results(reply, seq)  # the verifier of the refusal checks out
    assert refused.value.stat == AcceptStat.GARBAGE_ARGS
    assert rig.who.runs == 0


def test_integrity_refuses_a_body_with_another_seq_inside(realm):
    rig = Rig(realm, GssService.INTEGRITY)
    message, seq = rig.message(3)
    head = message[:len(message) - len(rig.session.wrap(b"", seq))]
    forged = head + rig.session.wrap(b"", seq + 1)  # a good checksum of a body from another call
    with pytest.raises(AcceptedError) as refused:
        rig.session.reply_results(rig.handle(forged), seq)
    assert refused.value.stat == AcceptStat.GARBAGE_ARGS


def test_a_changed_header_is_credproblem(realm):
    rig = Rig(realm)
    message, _ = rig.message(1)
    changed = bytearray(message)
    changed[15] ^= 0x01  # the procedure number: covered by the header's checksum
    header = decode_reply(rig.handle(bytes(changed)))
    assert isinstance(header.error, DeniedError) and header.error.auth_stat == AuthStat.RPCSEC_GSS_CREDPROBLEM


def test_an_unknown_handle_is_credproblem_and_a_new_context_works(realm):
    rig = Rig(realm)
    rig.session.handle = b"\0" * 16
    message, _ = rig.message(1)
    header = decode_reply(rig.handle(message))
    assert header.error.auth_stat == AuthStat.RPCSEC_GSS_CREDPROBLEM
    fresh = rig.new_session()
    assert Unpacker(rig.call(1, session=fresh)).unpack_opaque(100).startswith(b"alice@")


def test_an_expired_context_is_ctxproblem(realm):
    rig = Rig(realm)
    rig.clock.now += 11 * 3600  # past the ticket's 10 hours, and idle: forgotten, or expired
    message, _ = rig.message(1)
    header = decode_reply(rig.handle(message))
    assert header.error.auth_stat in (AuthStat.RPCSEC_GSS_CTXPROBLEM, AuthStat.RPCSEC_GSS_CREDPROBLEM)
    rig2 = Rig(realm)
    rig2.gss.idle = 1e12
    rig2.clock.now += 11 * 3600
    message, _ = rig2.message(1)
    assert decode_reply(rig2.handle(message)).error.auth_stat == AuthStat.RPCSEC_GSS_CTXPROBLEM


def test_sequence_numbers_at_maxseq_are_ctxproblem(realm):
    rig = Rig(realm)
    message, _ = rig.message(1, seq=MAXSEQ)
    assert decode_reply(rig.handle(message)).error.auth_stat == AuthStat.RPCSEC_GSS_CTXPROBLEM


def test_destroy_then_a_data_call_is_refused(realm):
    rig = Rig(realm, GssService.INTEGRITY)
    rig.xid += 1
    message, seq = rig.session.destroy_message(rig.xid, PROG, VERS)
    rig.session.reply_results(rig.handle(message), seq, wrapped=False)
    assert not rig.gss.contexts
    message, _ = rig.message(1)
    assert decode_reply(rig.handle(message)).error.auth_stat == AuthStat.RPCSEC_GSS_CREDPROBLEM


def test_garbage_init_tokens_get_a_gss_error_and_the_engine_keeps_serving(realm):
    rig = Rig(realm)
    for token in (b"", b"garbage", os.urandom(300)):
        cred = GssCredential(GssProc.INIT, 0, GssService.NONE).encode()
        rig.xid += 1
        reply = rig.handle(encode_call(rig.xid, PROG, VERS, 0, OpaqueAuth(AuthFlavor.RPCSEC_GSS, cred))
                           + encode_init_arg(token))
        header = decode_reply(reply)
        assert header.error is None
        result = GssInitResult.decode(Unpacker(reply, header.offset))
        assert result.major != GSS_S_COMPLETE and result.handle == b""
    assert len(rig.gss.contexts) == 1
    assert Unpacker(rig.call(1)).unpack_opaque(100).startswith(b"alice@")


def test_init_outside_the_null_procedure_or_with_a_verifier_is_badcred(realm):
    rig = Rig(realm)
    cred = OpaqueAuth(AuthFlavor.RPCSEC_GSS, GssCredential(GssProc.INIT, 0, GssService.NONE).encode())
    reply = rig.handle(encode_call(5, PROG, VERS, 1, cred) + encode_init_arg(b"x"))
    assert decode_reply(reply).error.auth_stat == AuthStat.AUTH_BADCRED
    reply = rig.handle(encode_call(6, PROG, VERS, 0, cred, OpaqueAuth(AuthFlavor.RPCSEC_GSS, b"v")) + encode_init_arg(b"x"))
    assert decode_reply(reply).error.auth_stat == AuthStat.AUTH_BADCRED


def test_a_deferred_result_is_sealed(realm):
    from twisted.internet import defer

    rig = Rig(realm, GssService.PRIVACY)
    later = defer.Deferred()
    rig.who.program.versions[VERS][4] = Procedure("LATER", lambda ctx, a: later, None, Packer.pack_uint)
    message, seq = rig.message(4)
    replies = []
    rig.handle(message).addCallback(replies.append)
    later.callback(42)
    assert Unpacker(rig.session.reply_results(replies[0], seq)).unpack_uint() == 42


def test_a_context_is_answered_once_its_principal_is_looked_up(realm):
    """on_established hears each new context's principal; the creation's reply waits for what it returns (the
    stack's name-service lookup in a thread), and the context then serves calls."""
    from twisted.internet import defer

    from nfsstack.rpc.gss_client import GssSession

    rig = Rig(realm)
    heard, lookup = [], defer.Deferred()
    rig.gss.on_established = lambda principal: heard.append(principal) or lookup
    session = GssSession("nfs@nfsserver", GssService.NONE)
    rig.xid += 1
    later = rig.handle(session.init_message(rig.xid, PROG, VERS))
    assert isinstance(later, defer.Deferred) and heard == [f"alice@{heard[0].split('@')[1]}"]
    replies = []
    later.addCallback(replies.append)
    assert not replies
    lookup.callback(None)
    assert session.init_reply(replies[0])
    assert Unpacker(rig.call(1, session=session)).unpack_opaque(1024).startswith(b"alice@")
    rig.gss.on_established = lambda principal: None  # nothing to wait for: the reply at once
    assert rig.new_session()


def test_without_an_engine_rpcsec_gss_is_rejectedcred():
    cred = OpaqueAuth(AuthFlavor.RPCSEC_GSS, GssCredential(GssProc.INIT, 0, GssService.NONE).encode())
    reply = Dispatcher([Who().program]).handle(encode_call(5, PROG, VERS, 0, cred) + encode_init_arg(b"x"), "tcp",
                                               PEER, LOCAL)
    assert decode_reply(reply).error.auth_stat == AuthStat.AUTH_REJECTEDCRED


def test_a_missing_keytab_turns_kerberos_off(tmp_path):
    pytest.importorskip("gssapi")
    from nfsstack.rpc.gss_server import load_gss_server

    assert load_gss_server(str(tmp_path / "none.keytab"), explicit=True) is None
    (tmp_path / "empty.keytab").write_bytes(b"")
    assert load_gss_server(str(tmp_path / "empty.keytab")) is None


@pytest.fixture(scope="module")
def fuzz_rig(realm):
    return Rig(realm, GssService.INTEGRITY)


@given(st.binary(max_size=600))
def test_fuzz_gss_calls_through_the_dispatcher(fuzz_rig, data):
    """Whole RPCSEC_GSS call messages built from a good one and mutated: nothing escapes, every reply decodes."""
    rig = fuzz_rig
    fuzz = FuzzInput(data)
    proc = fuzz.pick([0, 1, 2, 3, 9])
    service = fuzz.pick(list(GssService))
    gss_proc = fuzz.pick([GssProc.DATA, GssProc.DATA, GssProc.INIT, GssProc.CONTINUE_INIT, 7])
    handle = fuzz.pick([rig.session.handle, b"", fuzz.bytes(40)])
    seq = fuzz.number(3, [0, MAXSEQ - 1, MAXSEQ, 2**32 - 1])
    seq = (rig.session.seq + seq) & 0xFFFFFFFF
    rig.session.seq += 4  # mostly new numbers, so calls that check out reach the program
    cred = GssCredential(gss_proc, seq, service, handle).encode()
    cred = fuzz.mutate(cred)
    args = fuzz.mutate(rig.session.wrap(opaque(fuzz.bytes(30)), seq, service)
                       if gss_proc == GssProc.DATA else encode_init_arg(fuzz.bytes(60)))
    p = Packer()
    p.pack_struct(struct.Struct(">6I"), 77, 0, 2, PROG, VERS, proc)
    OpaqueAuth(AuthFlavor.RPCSEC_GSS, cred).pack(p)
    head = p.getvalue()
    mic = rig.session.gss.get_signature(head) if fuzz.byte() & 1 else fuzz.bytes(60)
    verf = OpaqueAuth(fuzz.pick([AuthFlavor.RPCSEC_GSS, AuthFlavor.AUTH_NONE]), fuzz.mutate(mic))
    p.pack_raw(b"")
    verf.pack(p)
    message = fuzz.mutate(p.getvalue() + args)
    try:
        reply = rig.handle(message)
    except BadMessage:
        return
    if reply is not None:
        decode_reply(reply)


@pytest.fixture(scope="module")
def real_init_token(realm):
    from nfsstack.rpc.gss_client import GssSession

    return GssSession("nfs@nfsserver").gss.step()


@given(st.binary(max_size=40))
def test_fuzz_gss_init_tokens_near_a_real_one(fuzz_rig, real_init_token, data):
    """A real Kerberos AP-REQ with bytes changed, cut or extended: GSS_Accept_sec_context's errors come back in
    rpc_gss_init_res (or the token still does, or asks to continue), never as an exception, and no context is kept
    for a failure."""
    fuzz = FuzzInput(data)
    token = bytearray(real_init_token)
    for _ in range(1 + fuzz.byte() % 4):
        i = (fuzz.byte() << 8 | fuzz.byte()) % len(token)
        token[i] ^= fuzz.byte() | 1
    token = bytes(token)[:len(token) - fuzz.byte() % 3 * fuzz.byte()] + fuzz.bytes(8)
    cred = OpaqueAuth(AuthFlavor.RPCSEC_GSS, GssCredential(GssProc.INIT, 0, GssService.NONE).encode())
    before = len(fuzz_rig.gss.contexts)
    reply = fuzz_rig.handle(encode_call(9, PROG, VERS, 0, cred) + encode_init_arg(token))
    header = decode_reply(reply)
    assert header.error is None
    result = GssInitResult.decode(Unpacker(reply, header.offset))
    if result.major not in (GSS_S_COMPLETE, GSS_S_CONTINUE_NEEDED):
        assert result.handle == b"" and len(fuzz_rig.gss.contexts) == before


def test_without_the_gssapi_package_kerberos_is_off(monkeypatch, tmp_path):
    import sys

    from nfsstack.rpc.gss_server import load_gss_server

    (tmp_path / "server.keytab").write_bytes(b"\x05\x02")
    monkeypatch.setitem(sys.modules, "gssapi", None)  # import gssapi raises ImportError
    assert load_gss_server(str(tmp_path / "server.keytab"), explicit=True) is None


def test_one_principal_making_context_after_context_evicts_its_own_not_the_others(realm):
    """Each INIT from one service ticket makes a new context: a user doing it in a loop must not push every
    other client's context out of the table (bounded per principal, its least recently used first)."""
    from nfsstack.rpc.gss_server import MAX_PER_PRINCIPAL

    rig = Rig(realm)
    other = rig.session
    rig.gss.contexts[other.handle].principal = "bob@NFSSTACK.TEST"  # the one ticket here is alice's
    rig.gss.max_contexts = MAX_PER_PRINCIPAL + 8
    sessions = [rig.new_session() for _ in range(MAX_PER_PRINCIPAL + 20)]
    principals = [c.principal for c in rig.gss.contexts.values()]
    assert principals.count("alice@NFSSTACK.TEST") == MAX_PER_PRINCIPAL
    assert Unpacker(rig.call(1, session=other)).unpack_opaque(100).startswith(b"bob@")
    assert Unpacker(rig.call(1, session=sessions[-1])).unpack_opaque(100).startswith(b"alice@")
