"""IPv6 and rpcbind's local socket, with real clients (rpcinfo, showmount) and the project's NFS client.

The stack listens on IPv4 and IPv6 by default and registers tcp, udp, tcp6 and udp6 as rpcbind does; ``--bind``
takes a list; and it serves rpcbind's local socket, which ``rpcinfo`` without a host uses.  Every server runs in
a network namespace of the test's own (or on loopback addresses only).
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

from nfsstack.nfs3.client import Sattr3
from tests.support import (
    PRIVATE_RUN,
    REPO,
    NfsClientAnyFamily,
    Stack,
    can_make_netns,
    free_port_dual,
    in_netns,
    in_stack_ns,
    server_env,
    twistd,
)

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not can_make_netns(), reason="needs root and ip netns"),
    pytest.mark.skipif(any(shutil.which(n) is None for n in ("rpcinfo", "showmount", "nsenter")),
                       reason="needs rpcinfo (rpcbind), showmount (nfs-common) and nsenter"),
]


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="this machine has no ::1")


def rpcinfo(ns, *args):
    r = in_netns(ns, "rpcinfo", *args)
    assert r.returncode == 0, f"rpcinfo {' '.join(args)}: {r.stdout}{r.stderr}"
    return r.stdout


def dump_rows(text):
    """rpcinfo's rpcbind DUMP: {(program, version, netid, address)}."""
    rows = set()
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) >= 4:
            rows.add(tuple(f[:4]))
    return rows


def portmap_rows(text):
    return {tuple(line.split()[:4]) for line in text.splitlines()[1:] if line.strip()}


@needs_ipv6
def test_registers_tcp6_and_udp6_as_rpcbind_does(stack, ns):
    rows = dump_rows(rpcinfo(ns, "127.0.0.1"))
    pm = {(r[1], r[2], r[3]) for r in rows if r[0] == "100000"}
    # rpcbind: v2 (portmapper, IPv4 only) on tcp and udp; v3 and v4 on every netid.
    assert pm == ({(v, n, "0.0.0.0.0.111") for v in "234" for n in ("tcp", "udp")}
                  | {(v, n, "::.0.111") for v in "34" for n in ("tcp6", "udp6")}), rows
    nfs = {(r[1], r[2], r[3]) for r in rows if r[0] == "100003"}
    assert nfs == {("3", "tcp", "0.0.0.0.8.1"), ("3", "udp", "0.0.0.0.8.1"),
                   ("3", "tcp6", "::.8.1"), ("3", "udp6", "::.8.1")}, rows
    for prog, versions in (("100005", "123"), ("100021", "134"), ("100024", "1")):
        got = {(r[1], r[2]) for r in rows if r[0] == prog}
        assert got == {(v, n) for v in versions for n in ("tcp", "udp", "tcp6", "udp6")}, (prog, rows)
        ports = {tuple(r[3].split(".")[-2:]) for r in rows if r[0] == prog}
        assert len(ports) == 1, f"one port for TCP, UDP, IPv4 and IPv6: {rows}"
    # Over `ip netns exec` the machine's /run is shared: its rpcbind socket is not ours to serve.
    assert "not serving /run/rpcbind.sock: this network namespace" in stack.log_text()


@needs_ipv6
def test_rpcinfo_and_showmount_over_ipv6(stack, ns):
    # Portmapper v2 DUMP over IPv6 answers, and lists only tcp and udp (v2 is IPv4-only, as rpcbind's).
    rows = portmap_rows(rpcinfo(ns, "-p", "::1"))
    assert ("100003", "3", "tcp", "2049") in rows and ("100000", "2", "udp", "111") in rows
    assert {r[2] for r in rows} == {"tcp", "udp"}, rows
    assert "program 100003 version 3 ready and waiting" in rpcinfo(ns, "-T", "tcp6", "::1", "100003", "3")
    assert "program 100005 version 3 ready and waiting" in rpcinfo(ns, "-T", "udp6", "::1", "100005", "3")
    assert "program 100000 version 4 ready and waiting" in rpcinfo(ns, "-T", "udp6", "::1", "100000", "4")
    # GETADDRLIST over tcp6: the wildcard IPv6 registration answered with the address the client used.
    listing = rpcinfo(ns, "-l", "::1", "100003", "3")
    assert re.search(r"inet6/tcp/cots_ord\s+::1\.8\.1", listing), listing
    shown = in_netns(ns, "showmount", "-e", "::1")
    assert shown.returncode == 0 and re.search(r"^/\S+/export\s", shown.stdout, re.M), shown.stdout + shown.stderr


GETADDR = r"""
import socket, struct, sys
sys.path[:0] = sys.argv[1:3]
from tests.support import call_message, recv_record, tcp_call, udp_call
from nfsstack.rpc.message import decode_reply
from nfsstack.portmap.types import RPCB
from nfsstack.xdr import Packer, Unpacker
p = Packer(); RPCB(100003, 3, "", "", "").pack(p)
for host, call in (("127.0.0.1", tcp_call), ("::1", tcp_call), ("127.0.0.1", udp_call)):
    data = call(111, 100000, 3, 3, p.getvalue(), host=host)
    print(host, call.__name__, Unpacker(data, decode_reply(data).offset).unpack_string(200))
# UDP over IPv6 (udp_call is IPv4 only)
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(5)
s.sendto(call_message(100000, 4, 3, p.getvalue()), ("::1", 111))
data = s.recv(65536)
print("::1 udp_call", Unpacker(data, decode_reply(data).offset).unpack_string(200))
"""


@needs_ipv6
def test_getaddr_answers_in_the_family_of_the_query(stack, ns):
    r = in_netns(ns, sys.executable, "-c", GETADDR, str(REPO / "src"), str(REPO))
    assert r.returncode == 0, r.stderr
    answers = dict(line.rsplit(" ", 1) for line in r.stdout.splitlines())
    assert answers == {"127.0.0.1 tcp_call": "127.0.0.1.8.1", "::1 tcp_call": "::1.8.1",
                       "127.0.0.1 udp_call": "127.0.0.1.8.1", "::1 udp_call": "::1.8.1"}, r.stdout


@needs_ipv6
def test_nfs_over_ipv6_matches_exports_by_ipv6_address(tmp_path):
    """The peer is seen as ::1: an export to ::1 only admits the IPv6 client and refuses 127.0.0.1."""
    v6, v4 = tmp_path / "v6", tmp_path / "v4"
    v6.mkdir(), v4.mkdir()
    exports = tmp_path / "exports"
    exports.write_text(f"{v6} ::1(rw,insecure,no_root_squash)\n{v4} 127.0.0.1(rw,insecure,no_root_squash)\n")
    port = free_port_dual()
    stack = Stack("--exports", str(exports), "--portmap-port", str(port), "--nfs-port", "0",
                  "--bind", "127.0.0.1,::1", "--status-port", "0", "--state-dir", str(tmp_path / "state")
                  ).start(ready_port=port)
    try:
        for proto in ("tcp", "udp"):
            c = NfsClientAnyFamily(str(v6), port, host="::1", proto=proto)
            try:
                made = c("CREATE", c.root, f"over-{proto}6".encode(), 0, Sattr3(mode=0o644))
                assert made.ok, made.status
                assert c("WRITE", made.obj, 0, b"hello over IPv6", 2).ok
                assert c("READ", made.obj, 0, 100).data == b"hello over IPv6"
            finally:
                c.close()
            assert (v6 / f"over-{proto}6").read_bytes() == b"hello over IPv6"
        with pytest.raises(OSError, match="MNT"):
            NfsClientAnyFamily(str(v6), port, host="127.0.0.1")
        with pytest.raises(OSError, match="MNT"):
            NfsClientAnyFamily(str(v4), port, host="::1")
        NfsClientAnyFamily(str(v4), port, host="127.0.0.1").close()
    finally:
        stack.stop()
    assert "Traceback" not in stack.log_text(), stack.log_text()


MNT_FROM = r"""
import socket, sys
sys.path[:0] = sys.argv[4:6]
from tests.support import call_message, recv_record
from nfsstack.rpc.message import decode_reply
from nfsstack.xdr import Packer, Unpacker
p = Packer(); p.pack_string(sys.argv[2])
s = socket.socket(socket.AF_INET6); s.bind(("::1", int(sys.argv[3]))); s.connect(("::1", int(sys.argv[1])))
from nfsstack.rpc.record import frame
s.sendall(frame(call_message(100005, 3, 1, p.getvalue())))
data = recv_record(s)
print(Unpacker(data, decode_reply(data).offset).unpack_uint())
"""


@needs_ipv6
@pytest.mark.skipif(os.geteuid() != 0, reason="binds a privileged port")
def test_secure_export_checks_the_ipv6_source_port(ns, tmp_path):
    data = tmp_path / "secure"
    data.mkdir()
    exports = tmp_path / "exports"
    exports.write_text(f"{data} ::1(rw)\n")
    stack = Stack("--exports", str(exports), "--state-dir", str(tmp_path / "state"), netns=ns).start()
    try:
        m = re.search(r"100005\s+3\s+tcp6\s+::\.(\d+)\.(\d+)", rpcinfo(ns, "127.0.0.1"))
        mountd = int(m.group(1)) * 256 + int(m.group(2))

        def mnt(source_port):
            r = in_netns(ns, sys.executable, "-c", MNT_FROM, str(mountd), str(data), str(source_port),
                         str(REPO / "src"), str(REPO))
            assert r.returncode == 0, r.stderr
            return int(r.stdout)

        assert mnt(812) == 0, "a privileged IPv6 source port mounts a secure export"
        assert mnt(0) == 13, "an unprivileged one gets EACCES"
    finally:
        stack.stop()


@needs_ipv6
def test_bind_takes_a_list_of_addresses(ns, tmp_path):
    stack = Stack("--bind", "127.0.0.1, ::1", "--state-dir", str(tmp_path / "state"), netns=ns).start()
    try:
        rows = dump_rows(rpcinfo(ns, "127.0.0.1"))
        assert ("3", "tcp", "127.0.0.1.8.1") in {r[1:] for r in rows if r[0] == "100003"}
        assert {r[1:] for r in rows if r[0] == "100003"} == {("3", "tcp", "127.0.0.1.8.1"),
                                                             ("3", "udp", "127.0.0.1.8.1"),
                                                             ("3", "tcp6", "::1.8.1"), ("3", "udp6", "::1.8.1")}
        assert "ready and waiting" in rpcinfo(ns, "-T", "tcp6", "::1", "100003", "3")
    finally:
        stack.stop()
    only6 = Stack6("--bind", "::1", "--state-dir", str(tmp_path / "state"), netns=ns).start()
    try:
        rows = dump_rows(rpcinfo(ns, "::1"))
        assert {r[2] for r in rows} == {"tcp6", "udp6"}, rows
        assert in_netns(ns, "rpcinfo", "-T", "tcp", "127.0.0.1", "100000", "2").returncode != 0
    finally:
        only6.stop()
    bad = subprocess.run([twistd(), "-n", "--pidfile=", "nfsstack", "--bind", "127.0.0.1,no-such-address"],
                         capture_output=True, text=True, timeout=60, env=server_env(), cwd=tmp_path)
    assert bad.returncode != 0 and "no-such-address" in bad.stdout + bad.stderr, bad.stdout + bad.stderr


class Stack6(Stack):
    """A stack that answers over IPv6 only: ready when rpcbind v4 answers on ::1."""

    def _answers(self, port):
        return in_netns(self.netns, "rpcinfo", "-T", "tcp6", "::1", "100000", "4").returncode == 0


def test_without_ipv6_falls_back_to_ipv4_with_one_log_line(ns, tmp_path):
    in_netns(ns, "sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=1", check=True)
    in_netns(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", check=True)
    assert "::1" not in in_netns(ns, "ip", "addr", "show", "lo").stdout
    stack = Stack("--state-dir", str(tmp_path / "state"), netns=ns).start()
    try:
        rows = dump_rows(rpcinfo(ns, "127.0.0.1"))
        assert {r[2] for r in rows} == {"tcp", "udp"}, rows
        assert ("100003", "3", "tcp", "0.0.0.0.8.1") in rows
    finally:
        stack.stop()
    log = stack.log_text()
    assert log.count("IPv6 is not available") == 1, log
    assert "Traceback" not in log, log


# -- rpcbind's local socket -----------------------------------------------------------------------------------


@pytest.fixture
def private_run_stack(ns, tmp_path):
    s = Stack("--state-dir", str(tmp_path / "state"), netns=ns, prefix=PRIVATE_RUN).start()
    yield s
    s.stop()
    assert "Traceback" not in s.log_text(), s.log_text()


def test_rpcinfo_without_a_host_uses_the_local_socket(private_run_stack, ns):
    s = private_run_stack
    listing = in_stack_ns(s, "ls", "-l", "/run/rpcbind.sock")
    assert listing.returncode == 0 and listing.stdout.startswith("srw-rw-rw-"), listing.stdout + listing.stderr
    dump = in_stack_ns(s, "rpcinfo")
    assert dump.returncode == 0, dump.stderr
    rows = dump_rows(dump.stdout)
    assert {("100000", v, "local", "/run/rpcbind.sock") for v in "34"} <= rows, dump.stdout
    assert {("100003", "3", n, a) for n, a in (("tcp", "0.0.0.0.8.1"), ("tcp6", "::.8.1"))} <= rows, dump.stdout
    p = in_stack_ns(s, "rpcinfo", "-p")
    assert p.returncode == 0, p.stderr
    assert ("100003", "3", "tcp", "2049") in portmap_rows(p.stdout), p.stdout
    # What the two commands really used: the local socket (and no IP connection at all).
    if shutil.which("strace"):
        traced = in_stack_ns(s, "strace", "-f", "-e", "trace=connect", "rpcinfo", "-p")
        assert 'sun_path="/run/rpcbind.sock"' in traced.stderr and "AF_INET" not in traced.stderr, traced.stderr


LOCAL_SET = r"""
import socket, sys
sys.path[:0] = sys.argv[1:3]
from tests.support import call_message, recv_record
from nfsstack.rpc.message import decode_reply
from nfsstack.rpc.record import frame
from nfsstack.portmap.types import RPCB
from nfsstack.xdr import Packer, Unpacker
def call(proc, rpcb):
    s = socket.socket(socket.AF_UNIX); s.connect("/run/rpcbind.sock")
    p = Packer(); rpcb.pack(p)
    s.sendall(frame(call_message(100000, 4, proc, p.getvalue())))
    data = recv_record(s); return Unpacker(data, decode_reply(data).offset).unpack_bool()
print(call(1, RPCB(300111, 1, "tcp", "0.0.0.0.4.1", "claimed-owner")),
      call(1, RPCB(300111, 1, "local", "/run/my-daemon.sock", "claimed-owner")),
      call(2, RPCB(int(sys.argv[3]), 1, "", "", "")))
"""


def test_local_set_owner_is_the_peer_uid(private_run_stack, ns):
    s = private_run_stack
    py = os.path.realpath(sys.executable)
    r = in_stack_ns(s, "setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups", py, "-c", LOCAL_SET,
                    str(REPO / "src"), str(REPO), "100003")
    assert r.returncode == 0, r.stderr
    # SET of tcp and of the local netid accepted; UNSET of the stack's nfs by uid 1000 refused (not the owner).
    assert r.stdout.split() == ["True", "True", "False"], r.stdout
    rows = in_stack_ns(s, "rpcinfo").stdout
    assert re.search(r"300111\s+1\s+tcp\s+0\.0\.0\.0\.4\.1\s+-\s+1000\s*$", rows, re.M), rows
    assert re.search(r"300111\s+1\s+local\s+/run/my-daemon\.sock\s+-\s+1000\s*$", rows, re.M), rows
    assert re.search(r"100003\s+3\s+tcp6", rows), "uid 1000 could not remove the superuser's nfs"
    # root over the local socket is the superuser: may remove anyone's registration.
    r = in_stack_ns(s, py, "-c", LOCAL_SET, str(REPO / "src"), str(REPO), "300111")
    assert r.stdout.split() == ["True", "True", "True"], r.stdout + r.stderr
    assert "300111" not in in_stack_ns(s, "rpcinfo").stdout


def test_socket_removed_at_stop_and_stale_one_replaced(ns, tmp_path):
    holder = subprocess.Popen(["ip", "netns", "exec", ns, *PRIVATE_RUN[:-1],
                               'mount -t tmpfs tmpfs /run && exec "$0" "$@"', "sleep", "600"])
    try:
        def run(*cmd):
            return subprocess.run(["nsenter", "--target", str(holder.pid), "--mount", "--net", *cmd],
                                  capture_output=True, text=True, timeout=60)

        deadline = time.monotonic() + 10
        while run("findmnt", "-n", "/run").returncode != 0:  # the tmpfs is mounted
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # A stale socket: bound, then closed without unlink (what a SIGKILLed rpcbind leaves).
        py = os.path.realpath(sys.executable)
        assert run(py, "-c", "import socket; s=socket.socket(socket.AF_UNIX); s.bind('/run/rpcbind.sock')"
                   ).returncode == 0
        assert run("test", "-S", "/run/rpcbind.sock").returncode == 0
        prefix = ("nsenter", "--target", str(holder.pid), "--mount")
        stack = Stack("--state-dir", str(tmp_path / "state"), netns=ns, prefix=prefix).start()
        try:
            r = run("rpcinfo", "-p")
            assert r.returncode == 0 and "nfs" in r.stdout, r.stdout + r.stderr
            assert "replacing the stale socket /run/rpcbind.sock" in stack.log_text()
        finally:
            stack.stop()
        assert run("test", "-e", "/run/rpcbind.sock").returncode != 0, "the socket file is removed at stop"
        # A live one (another rpcbind's) is never taken over.
        live = subprocess.Popen(["nsenter", "--target", str(holder.pid), "--mount", "--net", py, "-c",
                                 "import socket,time; s=socket.socket(socket.AF_UNIX); "
                                 "s.bind('/run/rpcbind.sock'); s.listen(); time.sleep(600)"])
        try:
            deadline = time.monotonic() + 10
            while run("test", "-S", "/run/rpcbind.sock").returncode != 0:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            before = run("stat", "-c", "%i", "/run/rpcbind.sock").stdout
            stack = Stack("--state-dir", str(tmp_path / "state"), netns=ns, prefix=prefix).start()
            try:
                assert "not serving /run/rpcbind.sock: another rpcbind answers there" in stack.log_text()
            finally:
                stack.stop()
            assert run("stat", "-c", "%i", "/run/rpcbind.sock").stdout == before, "the live socket is untouched"
        finally:
            live.kill()
            live.wait()
    finally:
        holder.kill()
        holder.wait()
