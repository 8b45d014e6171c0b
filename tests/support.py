"""Helpers for tests that run the real server: processes, sockets, namespaces."""

from __future__ import annotations

import contextlib
import os
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


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1."""
    for _ in range(100):
        with socket.socket() as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


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


class Stack:
    """``twistd -n nfsstack`` in a subprocess (optionally inside a network namespace)."""

    def __init__(self, *args: str, netns: str | None = None, workdir: str | None = None) -> None:
        self.args = list(args)
        self.netns = netns
        self.workdir = workdir or tempfile.mkdtemp(prefix="nfsstack-test-")
        self.log = Path(self.workdir) / "twistd.log"
        self.proc: subprocess.Popen | None = None

    def start(self, ready_port: int = 111, timeout: float = 20.0) -> "Stack":
        cmd = [twistd(), "-n", "--pidfile=", f"--logfile={self.log}", "nfsstack", *self.args]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=server_env(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_text()}")
            if self._answers(ready_port):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not answer in {timeout} s:\n{self.log_text()}")

    def _answers(self, port: int) -> bool:
        if self.netns:
            r = subprocess.run(["ip", "netns", "exec", self.netns, "rpcinfo", "-T", "tcp", "127.0.0.1", "100000", "2"],
                               capture_output=True, timeout=10)
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
