"""Real clients (rpcinfo from Debian's rpcbind package) against the stack's portmapper on port 111.

Each test runs the stack inside a network namespace it creates, so port 111
never collides with anything on the machine.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.support import REPO, Stack, can_make_netns, in_netns, server_env

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not can_make_netns(), reason="needs root and ip netns"),
    pytest.mark.skipif(shutil.which("rpcinfo") is None, reason="needs rpcinfo (Debian package rpcbind)"),
]


def rpcinfo(ns, *args, check=True):
    r = in_netns(ns, "rpcinfo", *args)
    if check:
        assert r.returncode == 0, f"rpcinfo {' '.join(args)}: {r.stdout}{r.stderr}"
    return r


def echo_service(ns, *args):
    """Start tests/integration/echo_service.py in the namespace; return (process, port)."""
    p = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.integration.echo_service", *args],
        cwd=REPO, env=server_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    line = p.stdout.readline()
    m = re.match(r"registered (\d+) (\d+)", line)
    assert m, f"echo service said {line!r}"
    assert m.group(2) == "8", "expected 2 versions x 4 netids (tcp, udp, tcp6, udp6) registered"
    return p, int(m.group(1))


def portmap_rows(text):
    return {tuple(line.split()[:4]) for line in text.splitlines()[1:] if line.strip()}


def test_rpcinfo_p_lists_every_service(stack, ns):
    rows = portmap_rows(rpcinfo(ns, "-p", "127.0.0.1").stdout)
    assert {r for r in rows if r[0] == "100000"} == {("100000", v, p, "111") for v in "234" for p in ("tcp", "udp")}
    mountd = {r for r in rows if r[0] == "100005"}
    assert {(r[1], r[2]) for r in mountd} == {(v, p) for v in "123" for p in ("tcp", "udp")}
    assert len({r[3] for r in mountd}) == 1, "one port for TCP and UDP"
    nfs = {r for r in rows if r[0] == "100003"}
    assert nfs == {("100003", "3", "tcp", "2049"), ("100003", "3", "udp", "2049")}
    nlm = {r for r in rows if r[0] == "100021"}
    assert {(r[1], r[2]) for r in nlm} == {(v, p) for v in "134" for p in ("tcp", "udp")}
    status = {r for r in rows if r[0] == "100024"}
    assert {(r[1], r[2]) for r in status} == {("1", "tcp"), ("1", "udp")}
    acl = {r for r in rows if r[0] == "100227"}
    assert acl == {("100227", "3", "tcp", "2049"), ("100227", "3", "udp", "2049")}, "NFS_ACL beside nfsd, on 2049"
    assert {r[0] for r in rows} == {"100000", "100003", "100005", "100021", "100024", "100227"}


def test_nfs_acl_is_registered_beside_nfsd_and_answers(stack, ns):
    """NFS_ACL v3 (100227) on nfsd's port, on every netid nfsd is registered on, and answering NULL there."""
    summary = rpcinfo(ns, "-s", "127.0.0.1").stdout
    assert re.search(r"^\s*100227\s+3\s+udp6,tcp6,udp,tcp\s+nfs_acl\s", summary, re.M), summary
    nfs = re.search(r"^\s*100003\s+3\s+(\S+)\s", summary, re.M)
    assert nfs and nfs.group(1) == "udp6,tcp6,udp,tcp", summary
    for netid in ("tcp", "udp"):
        answer = rpcinfo(ns, "-T", netid, "127.0.0.1", "100227", "3").stdout
        assert "program 100227 version 3 ready and waiting" in answer
    dump = rpcinfo(ns, "127.0.0.1").stdout
    assert re.search(r"100227\s+3\s+tcp\s+0\.0\.0\.0\.8\.1\s", dump), dump
    v2 = rpcinfo(ns, "-T", "tcp", "127.0.0.1", "100227", "2", check=False)  # NFSv2's ACLs are not served
    assert v2.returncode != 0 and "version mismatch" in (v2.stdout + v2.stderr).lower(), v2.stdout + v2.stderr


def test_rpcinfo_null_calls(stack, ns):
    assert "program 100000 version 4 ready and waiting" in rpcinfo(ns, "-T", "tcp", "127.0.0.1", "100000", "4").stdout
    assert "program 100000 version 3 ready and waiting" in rpcinfo(ns, "-T", "udp", "127.0.0.1", "100000", "3").stdout
    assert "version 2 ready and waiting" in rpcinfo(ns, "-u", "127.0.0.1", "100000", "2").stdout
    assert "version 2 ready and waiting" in rpcinfo(ns, "-t", "127.0.0.1", "100000", "2").stdout


def test_rpcinfo_summary_dump_and_stats(stack, ns):
    summary = rpcinfo(ns, "-s", "127.0.0.1").stdout
    assert re.search(r"^\s*100000\s+4,3,2\s+udp6,tcp6,udp,tcp\s+portmapper\s+superuser\s*$", summary, re.M), summary
    dump = rpcinfo(ns, "127.0.0.1").stdout  # rpcbind v3/v4 DUMP
    assert re.search(r"100000\s+4\s+tcp\s+0\.0\.0\.0\.0\.111\s+portmapper\s+superuser", dump), dump
    rpcinfo(ns, "-p", "127.0.0.1")
    stats = rpcinfo(ns, "-m", "127.0.0.1").stdout
    for heading in ("PORTMAP (version 2) statistics", "RPCBIND (version 3) statistics", "RPCBIND (version 4) statistics"):
        assert heading in stats
    # The v2 DUMP we just made is counted: the DUMP column of the v2 table is at least 1.
    lines = stats.splitlines()
    i = lines.index("PORTMAP (version 2) statistics")
    assert lines[i + 1].split()[4] == "DUMP" and int(lines[i + 2].split()[4]) >= 1
    listing = rpcinfo(ns, "-l", "127.0.0.1", "100000", "2").stdout
    assert "inet/tcp/cots_ord" in listing and "127.0.0.1.0.111" in listing


def test_registered_service_is_shown_and_removed_on_stop(stack, ns):
    p, port = echo_service(ns)
    try:
        rows = portmap_rows(rpcinfo(ns, "-p", "127.0.0.1").stdout)
        for v in ("1", "2"):
            for proto in ("tcp", "udp"):
                assert ("300123", v, proto, str(port)) in rows
        assert "program 300123 version 2 ready and waiting" in rpcinfo(ns, "-T", "tcp", "127.0.0.1", "300123", "2").stdout
        assert "program 300123 version 1 ready and waiting" in rpcinfo(ns, "-T", "udp", "127.0.0.1", "300123", "1").stdout
        assert re.search(r"300123\s+2,1\s+udp6,tcp6,udp,tcp\s+-\s+unknown", rpcinfo(ns, "-s", "127.0.0.1").stdout)
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(15)
    rows = portmap_rows(rpcinfo(ns, "-p", "127.0.0.1").stdout)
    assert not any(r[0] == "300123" for r in rows), rows


def test_dead_service_is_dropped_on_lookup(stack, ns):
    p, port = echo_service(ns)
    p.kill()  # no chance to unregister
    p.wait(15)
    time.sleep(0.2)
    r = rpcinfo(ns, "-T", "tcp", "127.0.0.1", "300123", "1", check=False)
    assert r.returncode != 0 and "not registered" in (r.stdout + r.stderr).lower(), r.stdout + r.stderr
    rows = portmap_rows(rpcinfo(ns, "-p", "127.0.0.1").stdout)
    assert not any(row[0] == "300123" for row in rows), rows


def test_stops_cleanly_and_frees_port_111(stack, ns):
    # twistd shuts down, then exits by the signal it received (Twisted >= 23).
    assert stack.stop() in (0, -signal.SIGTERM)
    assert "Server Shut Down." in stack.log_text()
    assert rpcinfo(ns, "-p", "127.0.0.1", check=False).returncode != 0
    again = Stack(netns=ns).start()
    try:
        assert portmap_rows(rpcinfo(ns, "-p", "127.0.0.1").stdout)
    finally:
        again.stop()


def test_system_rpcbind_mode_registers_with_debian_rpcbind(ns):
    """Beside the distribution's rpcbind: the stack does not take port 111, registers nfs, mountd, nlockmgr and
    status there with its own ports, and takes them away when it stops.

    The rpcbind is one this test starts, in the test's network namespace and in a mount namespace of its own with a
    private /run: its socket, /run/rpcbind.sock there, is no other rpcbind's, and the stack is given it by that
    process's root (/proc/PID/root/run/rpcbind.sock).  That this rpcbind is the one answering on port 111, and the
    stack the one listening on the ports registered, is checked by the pids owning the sockets."""
    if shutil.which("rpcbind") is None:
        pytest.skip("needs rpcbind")
    rpcbind = subprocess.Popen(
        ["ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private", "sh", "-c",
         "mount -t tmpfs tmpfs /run && exec rpcbind -f"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(100):
            if rpcinfo(ns, "-p", "127.0.0.1", check=False).returncode == 0:
                break
            assert rpcbind.poll() is None, "rpcbind exited"
            time.sleep(0.1)
        else:
            raise AssertionError("rpcbind did not answer")
        owners = in_netns(ns, "ss", "-ltnpH", "sport = :111").stdout
        assert f"pid={rpcbind.pid}," in owners, f"port 111 is not the rpcbind this test started: {owners}"
        before = portmap_rows(rpcinfo(ns, "-p", "127.0.0.1").stdout)
        assert {r[0] for r in before} == {"100000"}, before
        sock = f"/proc/{rpcbind.pid}/root/run/rpcbind.sock"
        assert os.path.exists(sock), "rpcbind's socket in its private /run"
        stack = Stack("--system-rpcbind", f"--rpcbind-socket={sock}", netns=ns).start()
        try:
            for _ in range(100):  # start() returns when port 111 answers: rpcbind's, at once
                rows = portmap_rows(rpcinfo(ns, "-p", "127.0.0.1").stdout)
                ours = {r for r in rows if r[0] != "100000"}
                if {r[0] for r in ours} >= {"100003", "100005", "100021", "100024", "100227"}:
                    break
                assert stack.proc.poll() is None, f"the stack must run beside rpcbind:\n{stack.log_text()}"
                time.sleep(0.1)
            assert {r[0] for r in ours} == {"100003", "100005", "100021", "100024", "100227"}, rows
            assert {r for r in ours if r[0] == "100003"} == {("100003", "3", "tcp", "2049"),
                                                            ("100003", "3", "udp", "2049")}
            listening = in_netns(ns, "ss", "-ltunpH").stdout
            for prog in ("100005", "100021", "100024"):
                for _, _, proto, port in (r for r in ours if r[0] == prog):
                    sockets = [line for line in listening.splitlines()
                               if line.startswith(proto) and re.search(rf":{port}\s", line)]
                    assert sockets and all(f"pid={stack.proc.pid}," in line or "twistd" in line for line in sockets), \
                        f"{prog} {proto} port {port} is not the stack's: {sockets}"
            assert {r[3] for r in rows if r[0] == "100000"} == {"111"}
            assert "program 100005 version 3 ready and waiting" in rpcinfo(ns, "-T", "tcp", "127.0.0.1", "100005",
                                                                           "3").stdout
            p, port = echo_service(ns)
            rows = portmap_rows(rpcinfo(ns, "-p", "127.0.0.1").stdout)
            assert ("300123", "2", "udp", str(port)) in rows
            p.send_signal(signal.SIGTERM)
            p.wait(15)
            rows = portmap_rows(rpcinfo(ns, "-p", "127.0.0.1").stdout)
            assert not any(r[0] == "300123" for r in rows)
        finally:
            stack.stop()
        assert "Address already in use" not in stack.log_text()
        after = portmap_rows(rpcinfo(ns, "-p", "127.0.0.1").stdout)
        assert {r[0] for r in after} == {"100000"}, f"registrations left behind at stop: {after}"
        assert rpcbind.poll() is None, "rpcbind still runs: the registrations were taken away, not lost with it"
    finally:
        rpcbind.kill()
        rpcbind.wait()
