"""Port 1110 in process: the keepalive datagram, the members table, the metrics text."""

from hypothesis import given, strategies as st
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import task

from nfsstack.cluster import keepalive as ka
from nfsstack.cluster.members import Members
from nfsstack.cluster.metrics import CallStats, StackCollector, registry
from nfsstack.cluster.service import allowed, parse_networks, parse_peer

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
def test_fuzz_decode(data):
    try:
        ka.decode(data, KEY if len(data) % 2 else None)
    except ka.BadKeepalive:
        pass


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
