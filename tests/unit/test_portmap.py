"""The portmapper program in-process: rpcbind's rules (RFC 1833, REFERENCE.md)."""

import socket

import pytest
from hypothesis import given, note, strategies as st
from twisted.internet import defer
from twisted.python.failure import Failure

from nfsstack.portmap.program import Portmapper
from nfsstack.portmap.registry import Registry, address_is_bound
from nfsstack.portmap.types import RPCB, CallArgs, Mapping, Netbuf, RPCBEntry, unpack_stat_byvers
from nfsstack.rpc.address import parse_uaddr, taddr_from_uaddr, uaddr, uaddr_from_taddr
from nfsstack.rpc.message import AcceptStat, AuthStat, Credential, OpaqueAuth, decode_reply, encode_call
from nfsstack.rpc.server import Dispatcher
from nfsstack.xdr import Packer, Unpacker
from tests.support import FuzzInput

ROOT_LOCAL = ("127.0.0.1", 800)  # privileged source port: the superuser
USER_LOCAL = ("127.0.0.1", 40000)
REMOTE = ("192.0.2.7", 800)


def enc(item):
    p = Packer()
    item.pack(p)
    return p.getvalue()


class PM:
    def __init__(self, alive=lambda reg: True, **kw):
        self.registry = Registry(is_alive=alive)
        self.pm = Portmapper(self.registry, **kw)
        self.dispatcher = Dispatcher([self.pm.program])
        self.xid = 0

    def raw(self, vers, proc, args=b"", peer=ROOT_LOCAL, netid="tcp", cred=OpaqueAuth(), local=("127.0.0.1", 111)):
        self.xid += 1
        return self.dispatcher.handle(encode_call(self.xid, 100000, vers, proc, cred) + args, netid, peer, local)

    def call(self, vers, proc, args=b"", **kw):
        reply = self.raw(vers, proc, args, **kw)
        header = decode_reply(reply)
        if header.error is not None:
            raise header.error
        return Unpacker(reply, header.offset)


def test_v2_set_getport_unset_dump():
    pm = PM()
    assert pm.call(2, 1, enc(Mapping(300000, 1, 6, 2000))).unpack_bool()
    assert pm.call(2, 1, enc(Mapping(300000, 1, 17, 2001))).unpack_bool()
    assert pm.call(2, 3, enc(Mapping(300000, 1, 6, 0))).unpack_uint() == 2000
    assert pm.call(2, 3, enc(Mapping(300000, 1, 17, 0))).unpack_uint() == 2001
    dump = pm.call(2, 4).unpack_list(Mapping.unpack, 100)
    assert Mapping(300000, 1, 6, 2000) in dump and Mapping(300000, 1, 17, 2001) in dump
    # v2 UNSET ignores the protocol and removes both.
    assert pm.call(2, 2, enc(Mapping(300000, 1, 6, 0))).unpack_bool()
    assert pm.call(2, 3, enc(Mapping(300000, 1, 17, 0))).unpack_uint() == 0
    assert not pm.call(2, 2, enc(Mapping(300000, 1, 6, 0))).unpack_bool()


def test_identical_set_is_true_conflicting_set_is_false():
    pm = PM()
    assert pm.call(2, 1, enc(Mapping(300000, 1, 6, 2000))).unpack_bool()
    assert pm.call(2, 1, enc(Mapping(300000, 1, 6, 2000))).unpack_bool()
    assert not pm.call(2, 1, enc(Mapping(300000, 1, 6, 2002))).unpack_bool()
    assert not pm.call(4, 1, enc(RPCB(300000, 1, "tcp", "0.0.0.0.7.210", ""))).unpack_bool()


@pytest.mark.parametrize("vers,proc,args", [
    (2, 1, enc(Mapping(300000, 1, 6, 2000))),
    (2, 2, enc(Mapping(300000, 1, 6, 0))),
    (3, 1, enc(RPCB(300000, 1, "tcp", "0.0.0.0.7.208", ""))),
    (4, 2, enc(RPCB(300000, 1, "tcp", "", ""))),
])
def test_set_and_unset_only_from_loopback(vers, proc, args):
    pm = PM()
    with pytest.raises(Exception) as e:
        pm.call(vers, proc, args, peer=REMOTE)
    assert getattr(e.value, "auth_stat", None) == AuthStat.AUTH_TOOWEAK
    assert len(pm.registry) == 0


def test_unset_only_by_owner_or_superuser():
    pm = PM()
    user = Credential(1000, 1000).to_auth()
    other = Credential(1001, 1001).to_auth()
    assert pm.call(4, 1, enc(RPCB(300000, 1, "udp", "127.0.0.1.8.0", "")), peer=USER_LOCAL, cred=user).unpack_bool()
    assert pm.call(4, 9, enc(RPCB(300000, 1, "udp", "", "")), netid="udp").unpack_string(100) == "127.0.0.1.8.0"
    dump = pm.call(3, 4).unpack_list(RPCB.unpack, 100)
    assert dump == [RPCB(300000, 1, "udp", "127.0.0.1.8.0", "1000")]
    assert not pm.call(4, 2, enc(RPCB(300000, 1, "udp", "", "")), peer=USER_LOCAL, cred=other).unpack_bool()
    assert not pm.call(4, 2, enc(RPCB(300000, 1, "", "", "")), peer=USER_LOCAL).unpack_bool()  # "unknown"
    assert len(pm.registry) == 1
    assert pm.call(4, 2, enc(RPCB(300000, 1, "", "", "")), peer=USER_LOCAL, cred=user).unpack_bool()
    assert len(pm.registry) == 0
    # The superuser (privileged port) may remove anyone's entry.
    pm.call(4, 1, enc(RPCB(300000, 1, "udp", "127.0.0.1.8.0", "")), peer=USER_LOCAL, cred=user)
    assert pm.call(4, 2, enc(RPCB(300000, 1, "", "", "")), peer=ROOT_LOCAL).unpack_bool()


def test_getaddr_uses_the_netid_of_the_query_and_fills_wildcards():
    pm = PM()
    pm.call(3, 1, enc(RPCB(300000, 1, "tcp", "0.0.0.0.3.232", "")))
    ask = enc(RPCB(300000, 1, "udp", "", ""))  # the netid field is not what counts
    assert pm.call(3, 3, ask, netid="tcp", local=("127.0.0.5", 111)).unpack_string(100) == "127.0.0.5.3.232"
    assert pm.call(3, 3, ask, netid="udp").unpack_string(100) == ""
    # A UDP socket bound to the wildcard: the address is the one routed back to the caller.
    assert pm.call(3, 3, ask, netid="tcp", local=("0.0.0.0", 111)).unpack_string(100) == "127.0.0.1.3.232"


def test_getaddr_any_version_but_getversaddr_exact():
    pm = PM()
    pm.call(4, 1, enc(RPCB(300000, 3, "tcp", "127.0.0.1.3.232", "")))
    assert pm.call(4, 3, enc(RPCB(300000, 1, "", "", ""))).unpack_string(100) == "127.0.0.1.3.232"
    assert pm.call(4, 9, enc(RPCB(300000, 1, "", "", ""))).unpack_string(100) == ""
    assert pm.call(2, 3, enc(Mapping(300000, 1, 6, 0))).unpack_uint() == 1000


def test_dead_registrations_answer_zero_and_are_dropped():
    """A port nobody holds any more: GETPORT 0, GETADDR "" (rpcbind's is_bound)."""
    pm = PM(alive=address_is_bound)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        pm.call(4, 1, enc(RPCB(300001, 1, "tcp", uaddr("127.0.0.1", port), "")))
        assert pm.call(2, 3, enc(Mapping(300001, 1, 6, 0))).unpack_uint() == port
    assert pm.call(2, 3, enc(Mapping(300001, 1, 6, 0))).unpack_uint() == 0
    assert pm.call(4, 3, enc(RPCB(300001, 1, "", "", ""))).unpack_string(100) == ""
    assert len(pm.registry) == 0


def test_gettime_and_address_translation():
    pm = PM()
    pm.pm.clock = lambda: 1234567890.5
    assert pm.call(3, 6).unpack_uint() == 1234567890
    nb = Netbuf.unpack(pm.call(3, 7, enc_string("127.0.0.1.0.111")))
    assert nb.maxlen == 16 and nb.buf[2:8] == b"\0\x6f\x7f\0\0\1"
    assert pm.call(3, 8, enc(nb)).unpack_string(100) == "127.0.0.1.0.111"
    assert Netbuf.unpack(pm.call(4, 7, enc_string("nonsense"))).buf == b""
    assert pm.call(4, 8, enc(Netbuf(3, b"abc"))).unpack_string(100) == ""
    nb6 = Netbuf.unpack(pm.call(4, 7, enc_string("::1.8.1")))
    assert pm.call(4, 8, enc(nb6)).unpack_string(100) == "::1.8.1"


def enc_string(s):
    p = Packer()
    p.pack_string(s)
    return p.getvalue()


def test_getaddrlist_and_getstat():
    pm = PM()
    pm.call(4, 1, enc(RPCB(300000, 1, "tcp", "0.0.0.0.3.232", "")))
    pm.call(4, 1, enc(RPCB(300000, 1, "udp", "0.0.0.0.3.232", "")))
    entries = pm.call(4, 11, enc(RPCB(300000, 1, "", "", ""))).unpack_list(RPCBEntry.unpack, 10)
    assert {(e.netid, e.maddr, e.protofmly, e.proto) for e in entries} == {
        ("tcp", "127.0.0.1.3.232", "inet", "tcp"), ("udp", "127.0.0.1.3.232", "inet", "udp")}
    pm.call(2, 3, enc(Mapping(300000, 1, 6, 0)))
    pm.call(2, 3, enc(Mapping(399999, 1, 6, 0)))
    stats = unpack_stat_byvers(pm.call(4, 12))
    v2, v3, v4 = stats
    assert v4["setinfo"] == 2 and v4["info"][1] == 2 and v4["info"][11] == 1 and v4["info"][12] == 1
    assert v2["info"][3] == 2
    assert sorted((a[0], a[2], a[3]) for a in v2["addrinfo"]) == [(300000, 1, 0), (399999, 0, 1)]


def test_remote_calls_are_off_by_default():
    pm = PM()
    for vers, proc in ((2, 5), (3, 5), (4, 5), (4, 10)):
        reply = decode_reply(pm.raw(vers, proc, enc(CallArgs(300000, 1, 0, b"")), netid="udp"))
        assert reply.error.stat == AcceptStat.PROC_UNAVAIL


def test_remote_calls_when_enabled():
    sent = []

    def forwarder(port, prog, vers, proc, args, cred):
        sent.append((port, prog, vers, proc, args))
        return defer.succeed(b"R" * (len(args) * 100))

    pm = PM(remote_calls=True, forwarder=forwarder)
    pm.call(2, 1, enc(Mapping(300000, 1, 17, 2000)))
    for prog in (100000, 100003, 100005, 100021, 100024):
        pm.call(2, 1, enc(Mapping(prog, 1, 17, 2001)))
        assert pm.raw(2, 5, enc(CallArgs(prog, 1, 0, b"")), netid="udp", peer=REMOTE).result is None
    assert sent == []
    got = []
    pm.raw(2, 5, enc(CallArgs(300000, 1, 0, b"ab")), netid="udp", peer=REMOTE).addCallback(got.append)
    header = decode_reply(got[0])
    u = Unpacker(got[0], header.offset)
    assert u.unpack_uint() == 2000 and u.unpack_opaque(1000) == b"R" * 200
    # A result far larger than the request is not relayed (no amplification).
    got = []
    pm.raw(2, 5, enc(CallArgs(300000, 1, 0, b"x" * 40)), netid="udp", peer=REMOTE).addCallback(got.append)
    assert got == [None]


FUZZ_PROGS = [300000] * 6 + [300001, 100000, 100003, 100021, 0, 0xFFFFFFFF]  # mostly one: calls meet
FUZZ_NETIDS = ["tcp", "udp"] * 3 + ["tcp6", "udp6", "", "local", "x" * 64, "x" * 65]
FUZZ_UADDRS = ["0.0.0.0.7.208"] * 3 + ["127.0.0.1.8.0", "::1.8.1", "::.3.232", "127.0.0.1.0.0", "", "nonsense",
               "1.2.3.4.256.1", "127.0.0.1.-1.0", "fe80::1%lo.1.1", "x" * 128, "x" * 129]
FUZZ_OWNERS = ["", "superuser", "1000", "x" * 257]
FUZZ_PEERS = [ROOT_LOCAL, USER_LOCAL, REMOTE, ("::1", 700), ("::ffff:127.0.0.1", 40001)]
FUZZ_LOCALS = [("127.0.0.1", 111), ("0.0.0.0", 111), ("::", 111), ("127.0.0.5", 111)]
FUZZ_CREDS = [OpaqueAuth(), Credential(1000, 1000).to_auth(), Credential(0, 0).to_auth(),
              Credential(1001, 1001).to_auth()]
#: (version, procedure) of every procedure, the usual ones most often, and some that do not exist.
FUZZ_CALLS = ([(2, 1), (2, 3), (3, 1), (4, 1), (4, 3), (4, 11)] * 3
              + [(v, p) for v in (2, 3, 4) for p in range(13)] + [(2, 99), (5, 0), (4, 13)])


def _fuzz_portmap_args(f, vers, proc):
    """Well-formed arguments of ``proc`` of ``vers`` (absent procedures get some anyway)."""
    prog, pvers = f.pick(FUZZ_PROGS), f.pick([1, 1, 1, 1, 2, 3, 0xFFFFFFFF])
    if vers == 2 and proc in (1, 2, 3):
        return Mapping(prog, pvers, f.pick([6, 17, 6, 17, 0, 99]), f.pick([2000, 2001, 0, 111, 65535, 65536]))
    if proc in (1, 2, 3, 9, 11):
        return RPCB(prog, pvers, f.pick(FUZZ_NETIDS), f.pick(FUZZ_UADDRS), f.pick(FUZZ_OWNERS))
    if proc in (5, 10):
        return CallArgs(prog, pvers, f.byte() % 4, f.bytes(200))
    if proc == 7:
        return f.pick(FUZZ_UADDRS)
    if proc == 8:
        buf = f.bytes(40) if f.byte() >= 192 else taddr_from_uaddr(f.pick(FUZZ_UADDRS[:7]))
        return Netbuf(f.pick([len(buf), 0, 16, 0xFFFFFFFF]), buf)
    return None


def _encode_arg(arg):
    p = Packer()
    if isinstance(arg, str):
        p.pack_string(arg)
    elif arg is not None:
        arg.pack(p)
    return p.getvalue()


@given(st.binary(min_size=60, max_size=500))
def test_fuzz_portmap_dispatch(blob):
    """Sequences of portmapper v2 and rpcbind v3/v4 calls with mostly well-formed arguments (some mutated), from
    loopback and remote callers, as root or users, with remote calls on or off and registrations alive or dead:
    no call ends in SYSTEM_ERR (a handler that raised), each is answered with a reply that decodes, and a late
    reply (CALLIT) fails only by not being sent."""
    f = FuzzInput(blob)
    flags = f.byte()
    sent = []

    def forwarder(port, prog, vers, proc, args, cred):
        sent.append(port)
        if flags & 2:
            return defer.fail(OSError("unreachable"))
        return defer.succeed(b"R" * (f.byte() * 4))

    pm = PM(alive=lambda reg: reg.port % 3 != 0, remote_calls=bool(flags & 1), forwarder=forwarder)
    for step in range(100):
        if not f.more():
            break
        vers, proc = f.pick(FUZZ_CALLS)
        arg = _fuzz_portmap_args(f, vers, proc)
        body = f.mutate(_encode_arg(arg))
        peer, local, cred, netid = f.pick(FUZZ_PEERS), f.pick(FUZZ_LOCALS), f.pick(FUZZ_CREDS), f.pick(
            ["tcp", "udp", "tcp6", "udp6"])
        note(f"{step}: {netid} {peer}->{local} v{vers} proc {proc} {arg!r} as {body!r}")
        reply = pm.raw(vers, proc, body, peer=peer, netid=netid, cred=cred, local=local)
        if isinstance(reply, defer.Deferred):
            late = []
            reply.addBoth(late.append)
            assert late and not isinstance(late[0], Failure), late
            reply = late[0]
        assert pm.dispatcher.errors["SYSTEM_ERR"] == 0, f"step {step}: a handler raised (see the log)"
        if reply is not None:
            decode_reply(reply)
        elif proc not in (5, 10):
            raise AssertionError(f"step {step}: no reply")


@given(st.sampled_from(["127.0.0.1", "0.0.0.0", "::1", "fe80::1", "10.1.2.3"]), st.integers(0, 65535))
def test_uaddr_roundtrip(host, port):
    assert parse_uaddr(uaddr(host, port)) == (host, port)
    assert uaddr_from_taddr(taddr_from_uaddr(uaddr(host, port))) == uaddr(host, port)


@pytest.mark.parametrize("bad", ["", "1.2.3", "127.0.0.1.256.1", "127.0.0.1.a.b", "x.y.1.1", "127.0.0.1.-1.0"])
def test_bad_uaddrs(bad):
    with pytest.raises(ValueError):
        parse_uaddr(bad)
