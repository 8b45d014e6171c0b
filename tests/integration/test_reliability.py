"""Reliability under load and faults, against a real ``twistd -n nfsstack`` on loopback (high ports, no namespace).

- 64 TCP and 16 UDP clients at once, each creating, writing, reading back and verifying, renaming, listing and
  removing files for a bounded time, with the exports reloaded (SIGHUP) every 3 s: no wrong byte, no unanswered
  call, no unexpected status, bounded memory.
- SIGKILL in the middle of a write-heavy run: every byte the client saw committed (COMMIT, or FILE_SYNC) is on
  disk; after the restart the handles still work and the new write verifier makes the client resend what it had
  not committed, ending with correct files.
- A full filesystem (a small tmpfs the test mounts) gives NFS3ERR_NOSPC, and the server goes on once space is free.
"""

import contextlib
import os
import random
import signal
import socket
import subprocess
import threading
import time

import pytest

from nfsstack.exports.handles import kernel_handles_work
from nfsstack.nfs3.client import Sattr3
from nfsstack.nfs3.codec import Stat
from tests.support import NfsClient, Stack, free_port, rss_mib

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not kernel_handles_work("/"), reason="needs root")

TCP_CLIENTS, UDP_CLIENTS, SECONDS = 64, 16, 15.0
#: Files each client writes, reads back and verifies at least (it goes on past the deadline until it has).
MIN_FILES = 2


def start_stack(tmp_path, export, *extra, clients="127.0.0.1"):
    port = free_port()
    exports = tmp_path / "exports"
    exports.write_text(f"{export} {clients}(rw,insecure,no_root_squash)\n")
    stack = Stack("--bind", "127.0.0.1", "--portmap-port", str(port), "--nfs-port", "0", "--status-port", "0",
                  "--exports", str(exports), "--state-dir", str(tmp_path / "state"), "--grace-time", "0", *extra,
                  workdir=str(tmp_path))
    return stack.start(port), port


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.ops = 0
        self.bytes = 0
        self.problems: list[str] = []
        self.verified: dict[str, int] = {}  # files each client read back right, renamed, listed and removed

    def problem(self, text):
        with self.lock:
            if len(self.problems) < 50:
                self.problems.append(text)


def worker(export, port, proto, index, deadline, tally: Tally):
    rnd = random.Random(index)
    try:
        c = NfsClient(export, port, proto=proto, timeout=20.0)
    except Exception as e:  # noqa: BLE001 (reported, then the test fails on it)
        tally.problem(f"{proto}{index}: mount failed: {e!r}")
        return
    limit = 60_000 if proto == "tcp" else 30_000
    ops = moved = verified = 0
    try:
        d = c("MKDIR", c.root, f"{proto}-{index}".encode(), Sattr3(mode=0o755))
        if not d.ok:
            tally.problem(f"{proto}{index}: MKDIR {d.status.name}")
            return
        d = d.obj
        n = 0
        while time.monotonic() < deadline or n < MIN_FILES:
            n += 1
            name = f"f{n}".encode()
            data = os.urandom(rnd.randrange(1, limit))
            r = c("CREATE", d, name, 1, Sattr3(mode=0o644))
            if not r.ok:
                tally.problem(f"{proto}{index}: CREATE {r.status.name}")
                return
            fh = r.obj
            stable = rnd.choice((0, 2))
            for off in range(0, len(data), 16384):
                w = c("WRITE", fh, off, data[off : off + 16384], stable)
                if not w.ok or w.count != len(data[off : off + 16384]):
                    tally.problem(f"{proto}{index}: WRITE {w.status.name}")
                    return
                ops += 1
            if stable == 0 and not c("COMMIT", fh, 0, 0).ok:
                tally.problem(f"{proto}{index}: COMMIT failed")
                return
            got, off = b"", 0
            while off < len(data):
                r = c("READ", fh, off, 32768)
                if not r.ok:
                    tally.problem(f"{proto}{index}: READ {r.status.name}")
                    return
                got += r.data
                off += r.count
                if r.eof:
                    break
            if got != data:
                tally.problem(f"{proto}{index}: file {n} read back wrong ({len(got)} of {len(data)} bytes)")
                return
            if not c("RENAME", d, name, d, name + b".done").ok:
                tally.problem(f"{proto}{index}: RENAME failed")
                return
            listing = c("READDIRPLUS", d, 0, b"\0" * 8, 8192, 32768)
            names = {e.name for e in listing.entries}
            if not listing.ok or name + b".done" not in names or name in names:
                tally.problem(f"{proto}{index}: READDIRPLUS shows {sorted(names)[:5]}")
                return
            if not c("REMOVE", d, name + b".done").ok:
                tally.problem(f"{proto}{index}: REMOVE failed")
                return
            ops += 6
            moved += 2 * len(data)
            verified += 1
    except Exception as e:  # noqa: BLE001 (timeouts and RPC errors are what this test looks for)
        tally.problem(f"{proto}{index}: {e!r}")
    finally:
        c.close()
        with tally.lock:
            tally.ops += ops
            tally.bytes += moved
            tally.verified[f"{proto}{index}"] = verified


def test_64_tcp_and_16_udp_clients(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    stack, port = start_stack(tmp_path, export)
    try:
        tally = Tally()
        deadline = time.monotonic() + SECONDS
        threads = [threading.Thread(target=worker, args=(str(export), port, "tcp", i, deadline, tally))
                   for i in range(TCP_CLIENTS)]
        threads += [threading.Thread(target=worker, args=(str(export), port, "udp", 1000 + i, deadline, tally))
                    for i in range(UDP_CLIENTS)]
        peak = 0.0
        reloads = 0
        for t in threads:
            t.start()
        next_reload = time.monotonic() + 2
        while any(t.is_alive() for t in threads):
            peak = max(peak, rss_mib(stack.proc.pid))
            if time.monotonic() > next_reload and time.monotonic() < deadline:
                stack.proc.send_signal(signal.SIGHUP)  # exports reloaded while the clients are busy
                reloads += 1
                next_reload += 3
            time.sleep(0.5)
        for t in threads:
            t.join()
        assert tally.problems == [], tally.problems
        short = {c: n for c, n in tally.verified.items() if n < MIN_FILES}
        assert len(tally.verified) == TCP_CLIENTS + UDP_CLIENTS and not short, f"clients that fell short: {short}"
        assert peak < 200, f"server RSS reached {peak:.0f} MiB"
        # Every SIGHUP was a reload that took (a line "reloaded FILE: 1 exports" each), none refused.
        done = f"reloaded {tmp_path / 'exports'}: 1 exports"
        for _ in range(100):  # the last one may still be in the thread that reads the file
            if stack.log_text().count(done) >= reloads:
                break
            time.sleep(0.1)
        logged = stack.log_text().count(done)
        assert reloads >= 3 and logged == reloads, f"{logged} reloads logged for {reloads} SIGHUPs:\n" + "\n".join(
            line for line in stack.log_text().splitlines() if "reloaded" in line)
        assert "not reloaded" not in stack.log_text()
        print(f"\n{TCP_CLIENTS} TCP + {UDP_CLIENTS} UDP clients, {SECONDS:.0f} s: {tally.ops} operations, "
              f"{tally.bytes / 1e6:.1f} MB written and verified, {reloads} exports reloads, peak RSS {peak:.0f} MiB")
        leftovers = [p for d in export.iterdir() for p in d.iterdir()]
        assert leftovers == [], leftovers[:5]
    finally:
        stack.stop()
    assert "Traceback" not in stack.log_text(), stack.log_text()[-3000:]


def test_sigkill_in_the_middle_of_writes_loses_nothing_committed(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    stack, port = start_stack(tmp_path, export)
    files = 2000  # more than fit in the 1.5 s before the kill
    size = 256 * 1024
    chunk = 32 * 1024

    def content(i):
        return random.Random(i).randbytes(size)

    expected = {}
    committed: dict[int, set[int]] = {}  # offsets of chunks known to be on disk
    handles: dict[int, bytes] = {}
    c = NfsClient(str(export), port, timeout=5.0)
    killer = threading.Timer(1.5, lambda: stack.proc.send_signal(signal.SIGKILL))
    killer.start()
    verifier = None
    killed_at = None
    try:
        for i in range(files):
            expected[i], committed[i] = content(i), set()
            handles[i] = c("CREATE", c.root, f"f{i}".encode(), 0, Sattr3(mode=0o644)).obj
            stable = 2 if i % 2 else 0
            pending = []
            for off in range(0, size, chunk):
                w = c("WRITE", handles[i], off, expected[i][off : off + chunk], stable)
                assert w.ok
                verifier = w.verf
                (committed[i].add if stable == 2 else pending.append)(off)
            if i % 4 == 0:
                continue  # left uncommitted: after the crash the client must resend it
            r = c("COMMIT", handles[i], 0, 0)
            assert r.ok
            if r.verf == verifier:
                committed[i].update(pending)
    except (OSError, ConnectionError, TimeoutError):
        killed_at = i
    finally:
        killer.cancel()
        c.close()
    stack.proc.kill()
    stack.proc.wait(10)
    assert killed_at is not None, "the run ended before the server was killed: make it longer"
    on_disk_checked = 0
    for i in handles:
        path = export / f"f{i}"
        content = path.read_bytes() if path.exists() else b""
        for off in committed[i]:
            assert content[off : off + chunk] == expected[i][off : off + chunk], f"f{i} lost committed bytes at {off}"
            on_disk_checked += chunk
    assert on_disk_checked > 0

    stack, port = start_stack(tmp_path, export)
    try:
        c = NfsClient(str(export), port)
        resent = 0
        for i, fh in handles.items():
            assert c("GETATTR", fh).ok, "a handle from before the crash works after it"
            w = c("WRITE", fh, 0, expected[i][:chunk], 0)
            assert w.ok and w.verf != verifier, "a new write verifier after the restart"
            missing = [off for off in range(0, size, chunk) if off not in committed[i]]
            for off in missing:  # what a client does: resend every write not committed under the old verifier
                assert c("WRITE", fh, off, expected[i][off : off + chunk], 0).ok
                resent += chunk
            assert c("COMMIT", fh, 0, 0).verf == w.verf
        for i in handles:
            assert (export / f"f{i}").read_bytes() == expected[i], f"f{i} is not right after the resend"
        assert resent > 0
        print(f"\nkilled during file {killed_at}: {on_disk_checked} committed bytes on disk, {resent} resent")
        c.close()
    finally:
        stack.stop()


@contextlib.contextmanager
def small_tmpfs(path, size="2m"):
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "nfsstack-test", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_filesystem_gives_nospc_and_recovers(tmp_path):
    with small_tmpfs(tmp_path / "small") as export:
        export.chmod(0o777)
        stack, port = start_stack(tmp_path, export)
        try:
            c = NfsClient(str(export), port)
            fh = c("CREATE", c.root, b"filler", 0, Sattr3(mode=0o644)).obj
            block = os.urandom(64 * 1024)
            statuses = []
            for n in range(100):
                w = c("WRITE", fh, n * len(block), block, 2)
                statuses.append(w.status)
                if not w.ok:
                    assert w.file_wcc[1] is not None, "the error reply carries the file's attributes"
                    break
            assert statuses[-1] == Stat.NOSPC, statuses[-3:]
            assert c("GETATTR", fh).ok
            assert c("REMOVE", c.root, b"filler").ok
            small = c("CREATE", c.root, b"after", 0, Sattr3(mode=0o644)).obj
            assert c("WRITE", small, 0, b"there is room again", 2).ok
            c.close()
        finally:
            stack.stop()
        assert "Traceback" not in stack.log_text(), stack.log_text()[-3000:]


def test_pipelined_large_reads_to_a_slow_reader_are_exact(tmp_path):
    """32 READs of 1 MiB sent at once by a client that does not read for a while: the replies (from the page
    cache, inline) outgrow the socket buffer and queue in the transport, and every byte still arrives right."""
    from nfsstack.nfs3.client import PROC, decode, encode
    from nfsstack.rpc.message import decode_reply, encode_call
    from nfsstack.rpc.record import frame
    from tests.support import recv_record

    export = tmp_path / "export"
    export.mkdir()
    data = os.urandom(32 << 20)
    (export / "big").write_bytes(data)
    stack, port = start_stack(tmp_path, export)
    try:
        c = NfsClient(str(export), port, timeout=30.0)
        fh = c("LOOKUP", c.root, b"big").object
        sock = c.sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        calls = b"".join(frame(encode_call(1000 + i, 100003, 3, PROC["READ"], c.cred)
                               + encode("READ", fh, i << 20, 1 << 20)) for i in range(32))
        sock.sendall(calls)
        time.sleep(1.0)  # the server writes what the socket takes and queues the rest
        got = {}
        for _ in range(32):
            record = recv_record(sock)
            reply = decode_reply(record)
            assert reply.error is None, reply.error
            r = decode("READ", record, reply.offset)
            assert r.ok, r.status
            got[reply.xid - 1000] = r.data
        assert sorted(got) == list(range(32))
        for i in range(32):
            assert got[i] == data[i << 20:(i + 1) << 20], f"READ {i} differs"
        assert stack.proc.poll() is None
        assert "Unhandled Error" not in stack.log_text() and "Traceback" not in stack.log_text()
        c.close()
    finally:
        stack.stop()


def test_sigkill_of_an_nfsd_worker_under_load_is_survived(tmp_path):
    """--workers 2: SIGKILL one worker while clients of both write.  The stack restarts it (the log says which,
    its pid, how it died), its clients reconnect to the restarted one (their address steers them there) and go
    on; every file a client saw committed is on disk right, and everything read back is right."""
    import json
    import urllib.request

    from tests.support import SourceClient

    export = tmp_path / "export"
    export.mkdir()
    status_port = free_port()
    stack, port = start_stack(tmp_path, export, "--workers", "2", "--status-port", str(status_port),
                              clients="127.0.0.0/8")

    def workers():
        with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/status", timeout=10) as r:
            return {w["worker"]: w for w in json.loads(r.read())["workers"]}

    size, chunk = 192 * 1024, 16 * 1024
    committed: dict[str, bytes] = {}  # file -> content the client saw committed under one verifier
    recovered: dict[str, int] = {}  # client -> files committed after it lost its connection
    tally = Tally()
    stop = threading.Event()

    def load(name, source):
        c = SourceClient(source, str(export), port, timeout=5.0)
        n, broken = 0, False
        made = c("MKDIR", c.root, name.encode(), Sattr3(mode=0o755))
        if not made.ok:
            tally.problem(f"{name}: MKDIR {made.status.name}")
            return
        d = made.obj
        while not stop.is_set():
            n += 1
            data = random.Random(f"{name}{n}").randbytes(size)
            try:
                fh = c("CREATE", d, f"f{n}".encode(), 0, Sattr3(mode=0o644)).obj
                verfs = {c("WRITE", fh, off, data[off:off + chunk], 0).verf for off in range(0, size, chunk)}
                r = c("COMMIT", fh, 0, 0)
                if not r.ok or verfs != {r.verf}:
                    continue  # the server restarted in between: the client writes the file again (a new one here)
                got = b"".join(c("READ", fh, off, 65536).data for off in range(0, size, 65536))
                if got != data:
                    tally.problem(f"{name}: f{n} read back wrong")
                    return
                committed[f"{name}/f{n}"] = data
                if broken:
                    recovered[name] = recovered.get(name, 0) + 1
            except (OSError, ConnectionError, TimeoutError):
                broken = True
                deadline = time.monotonic() + 20
                while True:  # reconnect, as a client does
                    try:
                        c.reconnect()
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            tally.problem(f"{name}: could not reconnect")
                            return
                        time.sleep(0.2)
        c.close()

    try:
        before = workers()
        clients = [(f"a{i}", "127.0.0.1") for i in range(3)] + [(f"b{i}", "127.0.0.2") for i in range(3)]
        threads = [threading.Thread(target=load, args=client) for client in clients]
        for t in threads:
            t.start()
        time.sleep(2.0)
        victim = before[1]["pid"]  # 127.0.0.1's worker: the address modulo 2
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (workers()[1]["pid"] in (victim, None) or len(recovered) < 3):
            time.sleep(0.2)
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(30)
        after = workers()
        assert after[1]["pid"] != victim and after[1]["restarts"] == 1 and after[1]["answering"], after
        assert after[0]["pid"] == before[0]["pid"] and after[0]["restarts"] == 0, "the other worker served on"
        assert tally.problems == [], tally.problems
        assert set(recovered) == {"a0", "a1", "a2"}, f"the killed worker's clients recovered: {recovered}"
        for path, data in committed.items():
            assert (export / path).read_bytes() == data, f"{path}: committed bytes lost or wrong"
        assert f"nfsd worker 1 (pid {victim}) was killed by signal 9" in stack.log_text()
        print(f"\n{len(committed)} files committed and checked; after the kill: {recovered}")
    finally:
        stop.set()
        stack.stop()
    assert "Traceback" not in stack.log_text(), stack.log_text()[-3000:]
