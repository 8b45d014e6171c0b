"""Port 1110 between two stacks: two network namespaces joined by a veth pair, each a test host of its own.

A (10.99.0.1) and B (10.99.0.2) run whole stacks configured as each other's peers, with a shared HMAC key.
Each shows the other alive; B stopped shows stale on A within the timeout, and alive again after its restart,
with a new boot verifier. ``nfsstack status`` and ``--json``, ``/metrics`` (parsed by prometheus_client, and
by promtool when it is installed), ``/healthz``; bad input: 10,000 random datagrams, keepalives with a wrong
HMAC or from a network not allowed, and a slowloris client, with the status service answering throughout.
"""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from tests.support import REPO, Stack, can_make_netns, in_netns, server_env

pytestmark = [pytest.mark.netns, pytest.mark.skipif(not can_make_netns(), reason="needs root and ip netns")]

A, B, OUTSIDER = "10.99.0.1", "10.99.0.2", "10.99.0.3"
INTERVAL, MISSES = 0.5, 3


def run(*cmd):
    subprocess.run(cmd, check=True, capture_output=True)


@contextlib.contextmanager
def two_hosts():
    """Namespaces a and b joined by veth; b also has OUTSIDER, an address a does not allow."""
    tag = uuid.uuid4().hex[:6]
    a, b = f"nfsa-{tag}", f"nfsb-{tag}"
    run("ip", "netns", "add", a)
    run("ip", "netns", "add", b)
    try:
        run("ip", "link", "add", f"va{tag}", "netns", a, "type", "veth", "peer", "name", f"vb{tag}", "netns", b)
        for ns, dev, addrs in ((a, f"va{tag}", [A]), (b, f"vb{tag}", [B, OUTSIDER])):
            run("ip", "-n", ns, "link", "set", "lo", "up")
            for addr in addrs:
                run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
        yield a, b
    finally:
        for ns in (a, b):
            for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), 9)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def stack(ns, name, peer, key_file, workdir):
    return Stack("--node-name", name, "--status-bind", "0.0.0.0", "--status-allow", f"127.0.0.0/8,{A}/32,{B}/32",
                 "--peers", peer, "--keepalive-interval", str(INTERVAL), "--keepalive-misses", str(MISSES),
                 "--keepalive-key", key_file, "--grace-time", "0", netns=ns, workdir=workdir)


def cli(ns, *args, timeout=30):
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "nfsstack.cli", *args],
                          capture_output=True, text=True, env=server_env(), timeout=timeout)


def report(ns):
    r = cli(ns, "status", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def member(ns, kind, id_):
    for m in report(ns)["keepalive"]["members"]:
        if m["kind"] == kind and m["id"] == id_:
            return m
    return None


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


@pytest.fixture(scope="module")
def cluster():
    with two_hosts() as (a, b):
        key = tempfile.NamedTemporaryFile("wb", suffix=".key", delete=False)
        key.write(os.urandom(32).hex().encode())
        key.close()
        dirs = [tempfile.mkdtemp(prefix="nfsstack-cluster-") for _ in range(2)]
        sa = stack(a, "node-a", B, key.name, dirs[0]).start()
        sb = stack(b, "node-b", A, key.name, dirs[1]).start()
        try:
            yield a, b, sa, sb, key.name, dirs
        finally:
            sa.stop()
            if sb.proc is not None:
                sb.stop()
        for s in (sa, sb):
            assert "Traceback" not in s.log_text(), s.log_text()


def test_peers_see_each_other_go_stale_and_come_back(cluster):
    a, b, sa, sb, key, dirs = cluster
    wait_for(lambda: (member(a, "peer", "node-b") or {}).get("state") == "alive", 10, "A sees B alive")
    wait_for(lambda: (member(b, "peer", "node-a") or {}).get("state") == "alive", 10, "B sees A alive")
    before = member(a, "peer", "node-b")
    assert before["address"] == B and before["configured"] and before["boot_verifier"] == report(b)["boot_verifier"]
    assert member(a, "peer", B) is None, "the configured placeholder became node-b"

    sb.stop()
    stale = wait_for(lambda: (lambda m: m if m["state"] == "stale" else None)(member(a, "peer", "node-b")),
                     INTERVAL * MISSES + 10, "A sees B stale")
    # by A's own clock: stale only once MISSES keepalives in a row failed to come, not at the first one missed
    assert stale["last_seen_seconds_ago"] >= INTERVAL * MISSES, stale
    assert "peer node-b (10.99.0.2) is stale" in sa.log_text()

    sb2 = stack(b, "node-b", A, key, dirs[1]).start()
    try:
        after = wait_for(lambda: (lambda m: m if m["state"] == "alive" else None)(member(a, "peer", "node-b")),
                         10, "A sees B alive again")
        assert after["boot_verifier"] != before["boot_verifier"] and after["restarts"] == 1
        assert after["boot_verifier"] == report(b)["boot_verifier"]
        assert "peer node-b (10.99.0.2) is restarted" in sa.log_text()
    finally:
        sb2.stop()
    sb.proc = None  # the fixture's B is already stopped


def test_status_command_and_json(cluster):
    a, b, sa, sb, key, dirs = cluster
    r = cli(a, "status")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "node node-a" in out and "SERVICES" in out and "EXPORTS" in out and "CLIENTS AND PEERS" in out
    for name in ("portmapper", "nfs", "mountd", "nlockmgr", "status", "nfsd-status", "nfsd-keepalive"):
        assert f"\n  {name} " in out, name
    rep = report(a)
    assert {s["service"] for s in rep["services"]} >= {"portmapper", "nfsd", "mountd", "nlockmgr", "status"}
    assert rep["keepalive"]["hmac"] is True
    key_text = open(key).read().strip()
    whole = json.dumps(rep)
    assert key_text not in whole and key_text[:16] not in whole, "the key never shows"


def test_metrics_and_health(cluster):
    a, *_ = cluster
    script = ("import urllib.request as u;"
              "print(u.urlopen('http://127.0.0.1:1110/metrics', timeout=10).read().decode())")
    r = in_netns(a, sys.executable, "-c", script)
    assert r.returncode == 0, r.stderr
    from prometheus_client.parser import text_string_to_metric_families

    names = {f.name for f in text_string_to_metric_families(r.stdout)}
    assert {"nfsstack_up", "nfsstack_rpc_calls", "nfsstack_rpc_call_seconds", "nfsstack_keepalive_members",
            "nfsstack_nfs_read_bytes", "nfsstack_tcp_connections"} <= names
    if shutil.which("promtool"):
        check = subprocess.run(["promtool", "check", "metrics"], input=r.stdout, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    health = in_netns(a, sys.executable, "-c", "import urllib.request as u;"
                      "r=u.urlopen('http://127.0.0.1:1110/healthz', timeout=10); print(r.status, r.read().decode())")
    assert health.stdout.split() == ["200", "ok"]


# Bad keepalives from netns b, 10,000 per run, in bursts of 50: after each burst the script waits until A's own
# counters (GET /status) show every datagram of it read and dropped, so the socket buffer never overflows and
# the counts are exact whatever the machine's speed. It prints what it expects in each counter (by the rules of
# keepalive.decode: a longer datagram is oversized, one with a missing or wrong MAC bad_mac, anything else
# malformed; from a network not allowed, refused) and what A counted.
FLOOD = r"""
import json, os, random, socket, sys, time, urllib.request
sys.path[:0] = sys.argv[4:6]
from nfsstack.cluster import keepalive as ka
target, source, outsider = (sys.argv[1], 1110), sys.argv[2], sys.argv[3] == "outsider"
BAD = ("malformed", "oversized", "bad_mac", "refused")


def counted():
    with urllib.request.urlopen(f"http://{target[0]}:1110/status", timeout=10) as r:
        datagrams = json.load(r)["keepalive"]["datagrams"]
    return {k: datagrams.get(k, 0) for k in BAD}


def expected(data):
    if outsider:
        return "refused"
    if len(data) > ka.MAX_DATAGRAM:
        return "oversized"
    try:
        ka.decode(data, b"not the key of node-a, nor the wrong one")
    except ka.BadKeepalive as e:
        return "bad_mac" if "MAC" in str(e) else "malformed"
    raise AssertionError("a datagram of the flood decodes")


rnd = random.Random(3)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((source, 0))
good = ka.encode(ka.Keepalive(ka.CLIENT, "mallory", 1, b"\7" * 8), b"wrong key, wrong key")
before = counted()
sent = dict.fromkeys(BAD, 0)
for i in range(10000):
    kind = i % 4
    if kind == 0:
        data = os.urandom(rnd.randrange(0, 700))
    elif kind == 1:
        data = good
    elif kind == 2:
        data = bytearray(good); data[rnd.randrange(len(data))] ^= 1; data = bytes(data)
    else:
        data = ka.encode(ka.Keepalive(ka.CLIENT, "mallory-%d" % i, i, os.urandom(8)))  # no MAC at all
    s.sendto(data, target)
    sent[expected(data)] += 1
    if i % 50 == 49:
        for _ in range(1000):
            now = counted()
            if sum(now.values()) - sum(before.values()) >= i + 1:
                break
            time.sleep(0.01)
        else:
            break  # A stopped counting: what it counted is reported, and the test compares
print(json.dumps({"sent": sent, "counted": {k: now[k] - before[k] for k in BAD}}))
"""


def test_bad_datagrams_and_a_slowloris_change_nothing(cluster):
    a, b, sa, sb, key, dirs = cluster
    before = report(a)
    members_before = {(m["kind"], m["id"]) for m in before["keepalive"]["members"]}
    # a header sent a byte every 0.5 s, never finished: the server closes the connection before the last byte
    script = ("import socket, time\n"
              "s = socket.create_connection(('127.0.0.1', 1110))\n"
              "try:\n"
              "    for c in b'GET /status HTTP/1.1\\r\\nHost: x\\r\\nX-Slow: ' + b'a' * 100:\n"
              "        s.send(bytes([c])); time.sleep(0.5)\n"
              "    print('never closed')\n"
              "except OSError:\n"
              "    print('closed')\n")
    loris = subprocess.Popen(["ip", "netns", "exec", a, sys.executable, "-c", script], stdout=subprocess.PIPE,
                             text=True)
    try:
        totals = dict.fromkeys(("malformed", "oversized", "bad_mac", "refused"), 0)
        for source, target in ((B, A), (OUTSIDER, A)):
            r = subprocess.run(["ip", "netns", "exec", b, sys.executable, "-c", FLOOD, target, source,
                                "outsider" if source == OUTSIDER else "member", str(REPO / "src"), str(REPO)],
                               capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr
            out = json.loads(r.stdout)
            # every datagram read by A and dropped in the counter it belongs to: none lost, none let through
            assert out["counted"] == out["sent"] and sum(out["sent"].values()) == 10000, out
            for k, n in out["counted"].items():
                totals[k] += n
            assert cli(a, "status", "--json").returncode == 0, "the status answers during the flood"
        assert all(totals.values()), totals  # each kind seen
        assert totals["refused"] == 10000, "the outsider's datagrams are refused by network"
        after = report(a)
        assert {(m["kind"], m["id"]) for m in after["keepalive"]["members"]} == members_before
        r = cli(a, "keepalive", "127.0.0.1", "--count", "2", "--interval", "0.3", "--id", "laptop",
                "--key-file", key)
        assert r.returncode == 0 and "node-a is alive" in r.stdout, r.stdout + r.stderr
        assert member(a, "client", "laptop")["state"] == "alive"
        bad = cli(a, "keepalive", "127.0.0.1", "--count", "1", "--interval", "0.5", "--id", "nokey")
        assert bad.returncode == 1 and member(a, "client", "nokey") is None
    finally:
        out, _ = loris.communicate(timeout=120)
    assert out.strip() == "closed", out


def test_status_refuses_networks_not_allowed(cluster):
    a, b, *_ = cluster
    script = ("import socket\ns = socket.socket(); s.bind(('%s', 0)); s.settimeout(5)\n"
              "try:\n    s.connect(('%s', 1110)); s.sendall(b'GET /status HTTP/1.0\\r\\n\\r\\n'); "
              "print(repr(s.recv(100)))\nexcept OSError as e:\n    print('refused', e)\n") % (OUTSIDER, A)
    r = in_netns(b, sys.executable, "-c", script)
    assert r.stdout.startswith("refused") or r.stdout.strip() == "b''", r.stdout
    r = in_netns(b, sys.executable, "-c", script.replace(OUTSIDER, B))
    assert "200 OK" in r.stdout, r.stdout
