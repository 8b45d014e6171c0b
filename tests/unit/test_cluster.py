"""Port 1110 in process: the keepalive datagram, the members table, the metrics text."""

import hashlib
import hmac
import struct

from hypothesis import given, strategies as st
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import task

from nfsstack.cluster import keepalive as ka
from nfsstack.cluster.members import Members
from nfsstack.cluster.metrics import CallStats, StackCollector, registry
from nfsstack.cluster.service import allowed, parse_networks, parse_peer
from nfsstack.xdr import XDRError

KEY = b"k" * 32


def test_roundtrip_with_and_without_a_key():
    k = ka.Keepalive(ka.PEER, "node-a", 7, b"\1" * 8, ka.ANSWER)
    assert ka.decode(ka.encode(k)) == k
    assert ka.decode(ka.encode(k, KEY), KEY) == k
    assert ka.decode(ka.encode(k, KEY)) == k, "without a key of our own the MAC is not checked"


@given(st.integers(0, 200))
def test_any_change_breaks_the_mac(where):
    data = bytearray(ka.encode(ka.Keepalive(ka.CLIENT, "client", 1, b"\2" * 8), KEY))
    where %= len(data)
    data[where] ^= 0x40
    try:
        ka.decode(bytes(data), KEY)
    except ka.BadKeepalive:
        return
    raise AssertionError(f"a flipped byte at {where} was accepted")


def test_refusals():
    good = ka.encode(ka.Keepalive(ka.CLIENT, "c", 1, b"\0" * 8))
    for bad in (b"", b"x" * 600, good[:-4], good + b"\0\0\0\0", b"\0" * 40):
        try:
            ka.decode(bad)
        except ka.BadKeepalive:
            continue
        raise AssertionError(bad)
    try:
        ka.decode(good, KEY)
    except ka.BadKeepalive as e:
        assert "MAC" in str(e)
    else:
        raise AssertionError("a keepalive without a MAC was accepted with a key set")


@given(st.binary(max_size=600))
def test_fuzz_decode_random_bytes(data):
    """Any bytes at all: a keepalive or BadKeepalive, nothing else."""
    try:
        ka.decode(data, KEY if len(data) % 2 else None)
    except ka.BadKeepalive:
        pass


SENDERS = st.one_of(st.sampled_from(["node-a", "c", "", "a\0b", "a\nb", "\r", "n" * 255, "n" * 256, "\udcff"]),
                    st.text(max_size=300))
KEEPALIVES = st.builds(ka.Keepalive, st.sampled_from([ka.CLIENT, ka.PEER, 0, 3, 0xFFFFFFFF]), SENDERS,
                       st.one_of(st.integers(0, 10), st.integers(0, 2**64 - 1)), st.binary(min_size=8, max_size=8),
                       st.one_of(st.sampled_from([0, ka.ANSWER]), st.integers(0, 2**32 - 1)))
FIELDS = {"magic": 0, "version": 4, "kind": 8, "flags": 12}


@given(KEEPALIVES, st.sampled_from([None, KEY]), st.sampled_from([None, KEY, b"other" * 7]),
       st.one_of(st.just(None), st.tuples(st.sampled_from(["cut", "flip", "extend"]), st.integers(0, 600),
                                          st.binary(min_size=1, max_size=40)),
                 st.tuples(st.sampled_from(sorted(FIELDS)), st.integers(0, 2**32 - 1))))
def test_fuzz_decode_keepalives(k, send_key, our_key, mutation):
    """Keepalives with the right magic and version and fields valid or not (kind, flags, sender ids empty, with
    NUL or newline, at and past 255 bytes, not UTF-8; any seq), with or without a MAC, sent with the right key, a
    wrong one or none, then maybe cut, flipped, extended or with a header field replaced: decode answers with a
    Keepalive or BadKeepalive, nothing else; it accepts a well-formed one as sent, with its MAC checked when we
    have a key, and refuses anything whose MAC does not match our key."""
    try:
        data = ka.encode(k, send_key)
    except (XDRError, ValueError, UnicodeError):  # a sender the encoder refuses (too long for XDR): nothing sent
        return
    original = data
    if mutation is not None:
        what, *how = mutation
        if what in FIELDS:
            at = FIELDS[what]
            data = data[:at] + struct.pack(">I", how[0]) + data[at + 4:]
        elif what == "cut":
            data = data[:how[0] % max(len(data), 1)]
        elif what == "flip":
            i = how[0] % len(data)
            data = data[:i] + bytes([data[i] ^ (how[1][0] or 1)]) + data[i + 1:]
        else:
            data = data + how[1]
    try:
        got = ka.decode(data, our_key)
    except ka.BadKeepalive:
        got = None
    well_formed = (k.kind in (ka.CLIENT, ka.PEER) and k.sender and not any(c in k.sender for c in "\0\n\r")
                   and len(k.sender.encode("utf-8", "surrogateescape")) <= ka.MAX_SENDER
                   and len(original) <= ka.MAX_DATAGRAM)
    mac_ok = our_key is None or our_key == send_key
    if data == original and well_formed and mac_ok:
        assert got == k, "a well-formed keepalive with the right MAC is accepted as sent"
    if got is not None:
        assert got.kind in (ka.CLIENT, ka.PEER) and len(got.boot) == 8
        assert got.sender and not any(c in got.sender for c in "\0\n\r"), "a sender id that is no node name"
        if our_key is not None:
            body, mac = data[:-36], data[-32:]
            assert len(data) >= 36 and hmac.compare_digest(mac, hmac.new(our_key, body, hashlib.sha256).digest()), \
                "accepted with a key: the datagram ends with the HMAC of what precedes it"
        m = Members(lambda: 0.0, 1.0, 3, limit=4)
        assert m.seen(got, "10.0.0.9") is not None


def test_members_alive_stale_restarted():
    clock = task.Clock()
    changes = []
    m = Members(clock.seconds, interval=1.0, misses=3, on_change=lambda member, c: changes.append((member.id, c)))
    m.expect_peer("10.0.0.2")
    assert m.table()[0]["state"] == "unknown"
    m.seen(ka.Keepalive(ka.PEER, "b", 1, b"\1" * 8), "10.0.0.2")
    assert [(r["id"], r["state"], r["configured"]) for r in m.table()] == [("b", "alive", True)]
    clock.advance(2.9)
    assert m.sweep() == []
    clock.advance(0.2)
    assert [x.id for x in m.sweep()] == ["b"]
    m.seen(ka.Keepalive(ka.PEER, "b", 1, b"\2" * 8), "10.0.0.2")
    assert m.get("peer", "b").restarts == 1
    assert changes == [("b", "alive"), ("b", "stale"), ("b", "restarted")]


def test_members_table_is_bounded():
    clock = task.Clock()
    m = Members(clock.seconds, 1.0, 1, limit=3)
    for i in range(3):
        assert m.seen(ka.Keepalive(ka.CLIENT, f"c{i}", 1, b"\0" * 8), "10.0.0.9")
    assert m.seen(ka.Keepalive(ka.CLIENT, "c3", 1, b"\0" * 8), "10.0.0.9") is None
    clock.advance(5)
    m.sweep()
    assert m.seen(ka.Keepalive(ka.CLIENT, "c3", 1, b"\0" * 8), "10.0.0.9") is not None and len(m) == 3


def test_networks_and_peers():
    nets = parse_networks("127.0.0.0/8, ::1/128,10.99.0.0/24")
    assert allowed(nets, "127.0.0.1") and allowed(nets, "::ffff:10.99.0.7") and allowed(nets, "::1")
    assert not allowed(nets, "10.99.1.1") and not allowed(nets, "nonsense")
    assert parse_peer("10.0.0.1") == ("10.0.0.1", 1110)
    assert parse_peer("10.0.0.1:2000") == ("10.0.0.1", 2000)
    assert parse_peer("[fd00::1]:1111") == ("fd00::1", 1111)
    assert parse_peer("fd00::1") == ("fd00::1", 1110)


def test_metrics_text_parses():
    calls = CallStats()
    for seconds in (0.00005, 0.003, 0.2, 7.0):
        calls("nfs", "READ", seconds)
    source = lambda: {"rpc_errors": {("nfsd", "GARBAGE_ARGS"): 2}, "nfs_failures": {("LOOKUP", "NOENT"): 5},  # noqa
                      "bytes_read": 10, "bytes_written": 20, "connections": {"nfsd": 3},
                      "locks": {"granted": 1, "waiting": 0, "grace": True}, "members": {("peer", "alive"): 1},
                      "datagrams": {"malformed": 9}}
    from prometheus_client import generate_latest

    text = generate_latest(registry(StackCollector(calls, source))).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    hist = families["nfsstack_rpc_call_seconds"]
    buckets = {s.labels["le"]: s.value for s in hist.samples if s.name.endswith("_bucket")}
    assert buckets["0.0001"] == 1 and buckets["5.0"] == 3 and buckets["+Inf"] == 4
    assert [s.value for s in families["nfsstack_rpc_calls"].samples if s.name.endswith("_total")] == [4]
    assert families["nfsstack_keepalive_datagrams"].samples[0].labels == {"result": "malformed"}
    assert "nfsstack_up 1.0" in text


def test_metrics_say_which_service_is_not_serving():
    """A gauge per configured service, and nfsstack_up 0 when any is down (a partial stack)."""
    from prometheus_client import generate_latest

    def text(services):
        return generate_latest(registry(StackCollector(CallStats(), lambda: {"services": services}))).decode()

    partial = text({"portmapper": True, "nfsd": False, "nfsd-status": True})
    assert 'nfsstack_service_up{service="nfsd"} 0.0' in partial
    assert 'nfsstack_service_up{service="portmapper"} 1.0' in partial and "nfsstack_up 0.0" in partial
    assert "nfsstack_up 1.0" in text({"portmapper": True, "nfsd": True, "nfsd-status": True})


def test_status_text_lists_the_nfsd_workers(capsys):
    """``nfsstack status`` (text) shows each nfsd worker /status lists: pid, answering or not, its calls."""
    from nfsstack import cli

    report = {
        "node": "n", "boot_time": "t", "boot_verifier": "00", "nsm_state": 1, "services": [], "not_serving": [],
        "exports": [], "mounts": [], "locks": {}, "keepalive": {"interval": 5, "stale_after": 15, "members": []},
        "workers": [
            {"worker": 0, "pid": 4101, "restarts": 0, "answering": True, "rpc_calls": 1234, "tcp_connections": 3},
            {"worker": 1, "pid": 4102, "restarts": 2, "answering": False, "rpc_calls": 0, "tcp_connections": 0},
        ],
    }
    cli.show_status(report)
    out = capsys.readouterr().out
    assert "NFSD WORKERS (1 of 2 answering)" in out
    lines = {line.split()[1]: line.split() for line in out.splitlines() if line.strip().startswith(("0 ", "1 "))}
    assert lines["4101"] == ["0", "4101", "answering", "1234", "3", "0"]
    assert lines["4102"] == ["1", "4102", "NOT", "ANSWERING", "-", "-", "2"]
    report["workers"] = []
    cli.show_status(report)
    assert "NFSD WORKERS" not in capsys.readouterr().out
