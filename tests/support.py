"""Helpers for tests that run the real server: processes, sockets, namespaces."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from nfsstack.rpc.message import OpaqueAuth, decode_reply, encode_call
from nfsstack.rpc.record import frame

REPO = Path(__file__).resolve().parent.parent


def twistd() -> str:
    """The twistd of this Python (a venv's, or the system's)."""
    local = Path(sys.executable).parent / "twistd"
    return str(local) if local.exists() else (shutil.which("twistd") or "twistd")


def server_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


#: Ports handed out by :func:`free_port` in this process: never handed out twice, so two picks in a row
#: (a portmapper port and a status port, say) cannot be the same port.
_GIVEN: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1, below the kernel's ephemeral range.

    Below that range, because a server under test binds its other services to port 0 after the test
    picked this port and before the server binds it; the kernel never hands out a port below the
    ephemeral range for port 0, so it cannot take this one in between."""
    low = _ephemeral_low()
    first = 10000 if low > 11000 else 1024  # a machine whose ephemeral range starts low: what is below it
    if low <= first + 1:
        raise RuntimeError(f"no ports below the ephemeral range ({low}): widen net.ipv4.ip_local_port_range")
    rng = random.SystemRandom()
    for _ in range(1000):
        port = rng.randrange(first, low)
        if port in _GIVEN:
            continue
        try:
            with socket.socket() as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                t.bind(("127.0.0.1", port))
                u.bind(("127.0.0.1", port))
        except OSError:
            continue
        _GIVEN.add(port)
        return port
    raise RuntimeError("no free port")


def nfsd_served(pmap_port: int, deadline: float) -> None:
    """Wait (until ``deadline``) for nfsd, if registered with the portmapper on ``pmap_port``, to answer a NULL over
    TCP from 127.0.0.1 and from 127.0.0.2: with ``--workers`` its worker processes start after the portmapper
    answers, and the two addresses reach two of them.  An nfsd not on loopback is not waited for."""
    from nfsstack.xdr import Packer, Unpacker

    p = Packer()
    for v in (100003, 3, 6, 0):
        p.pack_uint(v)
    try:
        data = tcp_call(pmap_port, 100000, 2, 3, p.getvalue(), timeout=2)
    except OSError:
        return
    reply = decode_reply(data)
    port = Unpacker(data, reply.offset).unpack_uint() if reply.error is None else 0
    for source in ("127.0.0.1", "127.0.0.2"):
        while port and time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1, source_address=(source, 0)) as s:
                    s.sendall(frame(call_message(100003, 3, 0)))
                    recv_record(s)
                break
            except socket.timeout:
                continue  # queued for a worker that is starting
            except OSError:
                return


def call_message(prog, vers, proc, args=b"", xid=1, cred=OpaqueAuth()) -> bytes:
    return encode_call(xid, prog, vers, proc, cred) + args


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return data


def recv_record(sock: socket.socket) -> bytes:
    parts = []
    while True:
        header = struct.unpack(">I", recv_exact(sock, 4))[0]
        parts.append(recv_exact(sock, header & 0x7FFFFFFF))
        if header & 0x80000000:
            return b"".join(parts)


def tcp_call(port, prog, vers, proc, args=b"", host="127.0.0.1", xid=1, timeout=5.0):
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(frame(call_message(prog, vers, proc, args, xid)))
        return recv_record(s)


def udp_call(port, prog, vers, proc, args=b"", host="127.0.0.1", xid=1, timeout=5.0):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(call_message(prog, vers, proc, args, xid), (host, port))
        return s.recvfrom(65536)[0]


def is_closed(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True if the peer closes (or resets) the connection within ``timeout`` without replying."""
    sock.settimeout(timeout)
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def null_ok(port: int) -> bool:
    reply = decode_reply(tcp_call(port, 100000, 2, 0))
    udp = decode_reply(udp_call(port, 100000, 2, 0))
    return reply.error is None and udp.error is None


def reachable(path: str) -> tuple[str, ...]:
    """A Stack prefix that lets a plain user run the interpreter at ``path``: when a directory above it may not
    be searched by others (a pyenv under /root, mode 0700), a private mount namespace puts a tmpfs (0755) over
    that directory, with only the interpreter's subtree bound into it; nothing outside the server's namespace
    changes."""
    parts = Path(path).parts
    for depth in range(1, len(parts) - 1):
        closed = Path(*parts[:depth + 1])
        if not os.stat(closed).st_mode & 0o001:
            inner = closed / parts[depth + 1]
            script = (f'd=$(mktemp -d) && mount --bind {inner} "$d" && mount -t tmpfs -o mode=0755 tmpfs {closed} '
                      f'&& mkdir {inner} && mount --move "$d" {inner} && rmdir "$d" && exec "$0" "$@"')
            return ("unshare", "--mount", "--propagation", "private", "sh", "-c", script)
    return ()


class Stack:
    """``twistd -n nfsstack`` in a subprocess (optionally inside a network namespace)."""

    def __init__(self, *args: str, netns: str | None = None, workdir: str | None = None,
                 prefix: tuple[str, ...] = (), env: dict | None = None) -> None:
        self.args = list(args)
        self.env = dict(env or {})  # besides server_env()
        self.netns = netns
        self.prefix = list(prefix)  # a command twistd runs under, e.g. setpriv with fewer privileges
        self.workdir = workdir or tempfile.mkdtemp(prefix="nfsstack-test-")
        self.log = Path(self.workdir) / "twistd.log"
        self.proc: subprocess.Popen | None = None

    def start(self, ready_port: int = 111, timeout: float = 20.0) -> "Stack":
        cmd = [*self.prefix, twistd(), "-n", "--pidfile=", f"--logfile={self.log}", "nfsstack", *self.args]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, env={**server_env(), **self.env}, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_text()}")
            if self._answers(ready_port):
                if not self.netns:
                    nfsd_served(ready_port, deadline)
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not answer in {timeout} s:\n{self.log_text()}")

    def _answers(self, port: int) -> bool:
        if self.netns:
            cmd = ["rpcinfo", "-T", "tcp", "127.0.0.1", "100000", "2"]
            if port != 111:  # rpcinfo asks the portmapper on 111 where 100000 is, unless given its address (-a)
                cmd = ["rpcinfo", "-a", f"127.0.0.1.{port >> 8}.{port & 0xFF}", "-T", "tcp", "100000", "2"]
            r = subprocess.run(["ip", "netns", "exec", self.netns, *cmd], capture_output=True, timeout=10)
            return r.returncode == 0
        try:
            return decode_reply(tcp_call(port, 100000, 2, 0, timeout=1)).error is None
        except OSError:
            return False

    def log_text(self) -> str:
        try:
            return self.log.read_text()
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def can_make_netns() -> bool:
    if os.geteuid() != 0 or not shutil.which("ip"):
        return False
    name = f"nfsstack-probe-{os.getpid()}"
    ok = subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return ok


@contextlib.contextmanager
def netns():
    """A fresh network namespace with loopback up; deleted afterwards."""
    name = f"nfsstack-{uuid.uuid4().hex[:10]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        # Processes still in the namespace keep it alive; kill them first.
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def in_netns(name: str, *cmd: str, timeout: float = 30.0, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", name, *cmd], capture_output=True, text=True, timeout=timeout, check=check)


class NfsClient:
    """A blocking NFSv3 client for tests: finds mountd and nfsd through the portmapper at ``pmap_port``,
    mounts ``export``, and calls procedures with the project's codec over TCP or UDP (with retransmission)."""

    def __init__(self, export: str, pmap_port: int = 111, host: str = "127.0.0.1", proto: str = "tcp",
                 uid: int = 0, timeout: float = 10.0, gss_service: int | None = None,
                 gss_target: str = "nfs@nfsserver") -> None:
        """``gss_service`` (a :class:`nfsstack.rpc.gss.GssService`): nfsd is called with RPCSEC_GSS and that
        service, on a context made at once with the process's Kerberos ticket (KRB5CCNAME, KRB5_CONFIG) for
        ``gss_target``; the portmapper and mountd are called with AUTH_SYS as Linux does."""
        from nfsstack.rpc.message import Credential

        self.host, self.proto, self.timeout = host, proto, timeout
        self.cred = Credential(uid, uid, (uid,), "test").to_auth()
        self.xid = int.from_bytes(os.urandom(4), "big")
        self.pmap_port = pmap_port
        self.gss = None
        self.root = self._mount(export)
        self.sock = self._connect(self._getport(100003, 3))
        if gss_service is not None:
            self.gss = self.gss_session(gss_service, gss_target)

    def gss_session(self, service: int, target: str = "nfs@nfsserver"):
        """A new RPCSEC_GSS context with nfsd (NULL INIT, CONTINUE_INIT while the mechanism asks)."""
        from nfsstack.rpc.gss_client import GssSession

        session = GssSession(target, service)
        while True:
            self.xid = (self.xid + 1) & 0xFFFFFFFF
            if session.init_reply(self.exchange(session.init_message(self.xid, 100003, 3))):
                return session

    def exchange(self, message: bytes, timeout: float | None = None) -> bytes:
        """Send one call message to nfsd as it is and return the reply with its xid (raises socket.timeout)."""
        xid = message[:4]
        self.sock.settimeout(timeout or self.timeout)
        try:
            if self.proto == "tcp":
                self.sock.sendall(frame(message))
                while True:
                    data = recv_record(self.sock)
                    if data[:4] == xid:
                        return data
            self.sock.send(message)
            while True:
                data = self.sock.recv(70000)
                if data[:4] == xid:
                    return data
        finally:
            self.sock.settimeout(self.timeout)

    def _connect(self, port: int) -> socket.socket:
        if self.proto == "tcp":
            s = socket.create_connection((self.host, port), timeout=self.timeout)
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.connect((self.host, port))
        s.settimeout(self.timeout)
        return s

    def _rpc(self, sock: socket.socket, prog: int, vers: int, proc: int, args: bytes, udp: bool) -> tuple[bytes, int]:
        if self.gss is not None and prog == 100003:
            return self._gss_rpc(proc, args, udp), 0
        self.xid = (self.xid + 1) & 0xFFFFFFFF
        msg = encode_call(self.xid, prog, vers, proc, self.cred) + args
        deadline = time.monotonic() + self.timeout
        if not udp:
            sock.sendall(frame(msg))
            while True:
                data = recv_record(sock)
                reply = decode_reply(data)
                if reply.xid == self.xid:
                    break
        else:
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no reply to procedure {proc}")
                sock.send(msg)
                sock.settimeout(1.0)
                try:
                    data = sock.recv(70000)
                except socket.timeout:
                    continue  # retransmit, as a client does
                reply = decode_reply(data)
                if reply.xid == self.xid:
                    break
            sock.settimeout(self.timeout)
        if reply.error is not None:
            raise reply.error
        return data, reply.offset

    def _gss_rpc(self, proc: int, args: bytes, udp: bool) -> bytes:
        """An nfsd call with RPCSEC_GSS: its results, the reply's verifier checked and unwrapped.  Over UDP a
        retransmission has the same xid and a new sequence number, as RFC 2203 section 5.3.3.1 has a client
        do (the same one again would be dropped as a replay); the reply may answer any of them."""
        self.xid = (self.xid + 1) & 0xFFFFFFFF
        deadline = time.monotonic() + self.timeout
        sent = []
        while True:
            message, seq = self.gss.call_message(self.xid, 100003, 3, proc, args)
            sent.append(seq)
            try:
                reply = self.exchange(message, 1.0 if udp else self.timeout)
                break
            except socket.timeout:
                if not udp or time.monotonic() > deadline:
                    raise TimeoutError(f"no reply to procedure {proc}") from None
        from nfsstack.rpc.gss_client import GssReplyError

        for seq in reversed(sent):
            try:
                return self.gss.reply_results(reply, seq)
            except GssReplyError:
                if seq == sent[0]:
                    raise
        raise AssertionError("unreachable")

    def _getport(self, prog: int, vers: int) -> int:
        from nfsstack.xdr import Packer, Unpacker

        p = Packer()
        for v in (prog, vers, 6 if self.proto == "tcp" else 17, 0):
            p.pack_uint(v)
        with socket.create_connection((self.host, self.pmap_port), timeout=self.timeout) as s:
            data, off = self._rpc(s, 100000, 2, 3, p.getvalue(), False)
        return Unpacker(data, off).unpack_uint()

    def _mount(self, export: str) -> bytes:
        from nfsstack.xdr import Packer, Unpacker

        p = Packer()
        p.pack_string(export)
        with socket.create_connection((self.host, self._getport(100005, 3)), timeout=self.timeout) as s:
            data, off = self._rpc(s, 100005, 3, 1, p.getvalue(), False)
        u = Unpacker(data, off)
        status = u.unpack_uint()
        if status:
            raise OSError(f"MNT {export}: status {status}")
        return u.unpack_opaque(64)

    def __call__(self, proc: str, *args):
        from nfsstack.nfs3.client import PROC, decode, encode

        data, off = self._rpc(self.sock, 100003, 3, PROC[proc], encode(proc, *args), self.proto == "udp")
        return decode(proc, data, off)

    def close(self) -> None:
        self.sock.close()


class SourceClient(NfsClient):
    """An NfsClient whose nfsd connection comes from address ``source`` (127.0.0.2 is loopback too); mount and the
    portmapper are called as usual.  :meth:`reconnect` opens a new connection (from a new port)."""

    def __init__(self, source: str, *args, **kwargs) -> None:
        self.source = source
        super().__init__(*args, **kwargs)

    def _connect(self, port: int) -> socket.socket:
        s = socket.create_connection((self.host, port), timeout=self.timeout, source_address=(self.source, 0))
        s.settimeout(self.timeout)
        self.nfs_port = port
        return s

    def reconnect(self) -> None:
        self.sock.close()
        self.sock = self._connect(self.nfs_port)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class FuzzInput:
    """Choices read off a fuzzer's bytes (one ``st.binary`` draw per example, as libFuzzer's FuzzedDataProvider):
    one draw is cheap enough for the 20,000 examples of the "long" profile, where a strategy per field costs
    milliseconds an example, and hypothesis still shrinks the bytes (fewer actions; a zero byte picks the first,
    plainest choice).  Past the end of the bytes every choice is 0."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def more(self) -> bool:
        return self.pos < len(self.data)

    def byte(self) -> int:
        b = self.data[self.pos] if self.pos < len(self.data) else 0
        self.pos += 1
        return b

    def pick(self, choices):
        return choices[self.byte() % len(choices)]

    def bytes(self, limit: int) -> bytes:
        n = self.byte() % (limit + 1)
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def number(self, small: int, edges) -> int:
        """0..``small`` (7 times in 8), or one of ``edges``."""
        kind, value = self.byte(), self.byte()
        return value % (small + 1) if kind < 224 else edges[value % len(edges)]

    def mutate(self, body: bytes) -> bytes:
        """``body`` as it is (7 times in 8), or cut, with a byte flipped, extended, or replaced by the next bytes."""
        how, where = self.byte(), self.byte()
        if how < 224:
            return body
        how %= 4
        if how == 0:
            return body[:where % max(len(body), 1)]
        if how == 1 and body:
            i = where % len(body)
            return body[:i] + bytes([body[i] ^ (self.byte() | 1)]) + body[i + 1:]
        if how == 2:
            return body + self.bytes(12)
        return self.bytes(120)


# -- IPv6 and rpcbind's local socket (appended for the IPv6 tests) ---------------------------------------------


def free_port_dual() -> int:
    """A port free for TCP and UDP on both 127.0.0.1 and ::1."""
    for _ in range(100):
        port = free_port()
        ok = True
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET6, kind) as s:
                try:
                    s.bind(("::1", port))
                except OSError:
                    ok = False
        if ok:
            return port
    raise RuntimeError("no free port")


#: A Stack ``prefix`` giving the server a private mount namespace with a fresh tmpfs on /run, so the
#: rpcbind socket it serves there is the test's, never the machine's.
PRIVATE_RUN = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
               'mount -t tmpfs tmpfs /run && exec "$0" "$@"')


def in_stack_ns(stack: "Stack", *cmd: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run ``cmd`` in the server's network and mount namespaces (its /run), e.g. ``rpcinfo`` without a host."""
    return subprocess.run(["nsenter", "--target", str(stack.proc.pid), "--mount", "--net", *cmd],
                          capture_output=True, text=True, timeout=timeout)


class NfsClientAnyFamily(NfsClient):
    """:class:`NfsClient` that also speaks UDP to an IPv6 host (``host="::1"``)."""

    def _connect(self, port: int) -> socket.socket:
        if self.proto == "tcp" or ":" not in self.host:
            return super()._connect(port)
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.connect((self.host, port))
        s.settimeout(self.timeout)
        return s
