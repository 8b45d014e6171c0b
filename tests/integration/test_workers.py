"""``--workers 2``: nfsd in two worker processes on one port, each client steered to one by its address.

A real ``twistd -n nfsstack`` on loopback (high ports).  Clients bind their source address (127.0.0.1 and
127.0.0.2, both loopback) to reach one worker or the other: the steering program takes the address modulo 2.
Which worker served whom is read from ``/status`` (each worker's pid and calls).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from nfsstack.exports.handles import kernel_handles_work
from nfsstack.nfs3.client import PROC, Sattr3, encode
from nfsstack.nfs3.codec import Stat
from nfsstack.rpc.message import decode_reply, encode_call
from nfsstack.rpc.record import frame
from tests.support import NfsClient, SourceClient, Stack, free_port, recv_record

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not kernel_handles_work("/"), reason="needs root")

A, B = "127.0.0.1", "127.0.0.2"


def start(tmp_path, *extra, exports_text=None):
    export = tmp_path / "export"
    export.mkdir(exist_ok=True)
    exports = tmp_path / "exports"
    exports.write_text(exports_text or f"{export} 127.0.0.0/8(rw,insecure,no_root_squash)\n")
    port, status_port = free_port(), free_port()
    stack = Stack("--bind", "127.0.0.1", "--portmap-port", str(port), "--nfs-port", "0", "--status-port",
                  str(status_port), "--exports", str(exports), "--state-dir", str(tmp_path / "state"),
                  "--grace-time", "0", "--workers", "2", *extra, workdir=str(tmp_path))
    stack.start(port)
    deadline = time.monotonic() + 20
    while "--workers" not in extra and time.monotonic() < deadline:  # both serving
        workers = ask(status_port)["workers"]
        if workers and all(w["answering"] for w in workers):
            break
        time.sleep(0.1)
    return stack, port, status_port, export


def ask(status_port: int, path: str = "/status"):
    with urllib.request.urlopen(f"http://127.0.0.1:{status_port}{path}", timeout=10) as r:
        body = r.read()
    return json.loads(body) if path != "/metrics" else body.decode()


def worker_calls(status_port: int) -> dict[int, int]:
    return {w["worker"]: w["rpc_calls"] for w in ask(status_port)["workers"]}


@pytest.fixture
def served(tmp_path):
    stack, port, status_port, export = start(tmp_path)
    try:
        yield stack, port, status_port, export
    finally:
        stack.stop()
    assert "Traceback" not in stack.log_text(), stack.log_text()[-3000:]


def test_each_address_has_its_worker_across_reconnects(served):
    stack, port, status_port, export = served
    a = SourceClient(A, str(export), port)
    b = SourceClient(B, str(export), port)
    workers = ask(status_port)["workers"]
    assert len(workers) == 2 and all(w["answering"] for w in workers)
    assert len({w["pid"] for w in workers}) == 2 and stack.proc.pid not in {w["pid"] for w in workers}
    before = worker_calls(status_port)
    for _ in range(5):  # five connections from five ports, all to one worker
        assert a("GETATTR", a.root).ok
        a.reconnect()
    after_a = worker_calls(status_port)
    grown = [w for w in after_a if after_a[w] != before[w]]
    assert len(grown) == 1 and after_a[grown[0]] - before[grown[0]] == 5, (before, after_a)
    for _ in range(3):
        assert b("GETATTR", b.root).ok
        b.reconnect()
    after_b = worker_calls(status_port)
    other = [w for w in after_b if after_b[w] != after_a[w]]
    assert other != grown and len(other) == 1 and after_b[other[0]] - after_a[other[0]] == 3, (after_a, after_b)
    a.close()
    b.close()


def test_two_clients_on_two_workers_see_each_others_changes_at_once(served):
    """What one worker caches (kept descriptors, handles, listings) does not hide what another worker did."""
    stack, port, status_port, export = served
    a = SourceClient(A, str(export), port)
    b = SourceClient(B, str(export), port)
    # B caches first: the directory listed, the file looked up and read.
    d = a("MKDIR", a.root, b"shared", Sattr3(mode=0o777)).obj
    assert b("LOOKUP", b.root, b"shared").ok
    names = lambda c: sorted(e.name for e in c("READDIRPLUS", d, 0, b"\0" * 8, 8192, 32768).entries)  # noqa: E731
    assert names(b) == [b".", b".."]
    f = a("CREATE", d, b"f", 0, Sattr3(mode=0o666)).obj
    assert names(b) == [b".", b"..", b"f"], "B lists the file A just made"
    assert b("LOOKUP", d, b"f").ok
    assert a("WRITE", f, 0, b"first", 2).ok
    assert b("GETATTR", f).obj_attributes.size == 5
    assert b("READ", f, 0, 100).data == b"first"
    assert a("WRITE", f, 0, b"SECOND!", 2).ok
    assert b("GETATTR", f).obj_attributes.size == 7, "B sees the new size at once"
    assert b("READ", f, 0, 100).data == b"SECOND!", "B reads what A wrote at once"
    assert a("RENAME", d, b"f", d, b"g").ok
    assert b("LOOKUP", d, b"f").status == Stat.NOENT
    assert b("LOOKUP", d, b"g").ok
    assert names(b) == [b".", b"..", b"g"]
    assert a("REMOVE", d, b"g").ok
    assert b("LOOKUP", d, b"g").status == Stat.NOENT
    assert b("GETATTR", f).status == Stat.STALE, "B's handle of the removed file is stale at once"
    assert names(b) == [b".", b".."]
    # And a local process's change, seen by both.
    (export / "shared" / "local").write_bytes(b"from the server's own disk")
    for c in (a, b):
        fh = c("LOOKUP", d, b"local").object
        assert c("READ", fh, 0, 100).data == b"from the server's own disk"
    a.close()
    b.close()


def remove_call(client: NfsClient, directory: bytes, name: bytes, xid: int) -> bytes:
    return frame(encode_call(xid, 100003, 3, PROC["REMOVE"], client.cred) + encode("REMOVE", directory, name))


def test_a_remove_retransmitted_on_a_new_connection_gets_its_first_answer(served):
    """The REMOVE's reply is lost with its connection; the client reconnects (another port, same address, so the
    same worker) and retransmits with the same xid: the first answer (OK), not NOENT."""
    from nfsstack.nfs3.client import decode

    stack, port, status_port, export = served
    a = SourceClient(A, str(export), port)
    for n in range(3):
        name = f"victim{n}".encode()
        assert a("CREATE", a.root, name, 0, Sattr3(mode=0o644)).ok
        xid = 0x5EED0000 + n
        first = a._connect(a.nfs_port)
        first.sendall(remove_call(a, a.root, name, xid))
        for _ in range(100):  # the server has done it; the reply is in flight
            if not (export / name.decode()).exists():
                break
            time.sleep(0.02)
        first_port = first.getsockname()[1]
        first.close()  # the reply is never read
        assert not (export / name.decode()).exists()
        again = a._connect(a.nfs_port)
        assert again.getsockname()[1] != first_port
        # As a client does: the same call again until answered.  A retransmission that arrives while the first
        # is still in progress (its directory sync not finished) is dropped, as knfsd drops it (rpc/drc.py).
        again.settimeout(1.0)
        record = None
        for _ in range(10):
            again.sendall(remove_call(a, a.root, name, xid))
            try:
                record = recv_record(again)
                break
            except TimeoutError:
                continue
        assert record is not None, "no answer to the retransmitted REMOVE in 10 s"
        reply = decode_reply(record)
        assert reply.xid == xid and reply.error is None
        result = decode("REMOVE", record, reply.offset)
        assert result.status == Stat.OK, f"retransmitted REMOVE answered {result.status.name}"
        again.close()
    a.close()


def test_an_exports_reload_reaches_every_worker(tmp_path):
    keep, drop = tmp_path / "export", tmp_path / "dropped"
    keep.mkdir()
    drop.mkdir()
    text = f"{keep} 127.0.0.0/8(rw,insecure,no_root_squash)\n{drop} 127.0.0.0/8(rw,insecure,no_root_squash)\n"
    stack, port, status_port, _ = start(tmp_path, exports_text=text)
    try:
        clients = [SourceClient(source, str(drop), port) for source in (A, B)]
        for c in clients:
            assert c("GETATTR", c.root).ok
        (tmp_path / "exports").write_text(f"{keep} 127.0.0.0/8(rw,insecure,no_root_squash)\n")
        stack.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        refused = set()
        while time.monotonic() < deadline and len(refused) < 2:
            for i, c in enumerate(clients):
                if not c("GETATTR", c.root).ok:
                    refused.add(i)
            time.sleep(0.1)
        assert refused == {0, 1}, "both workers refuse the export removed from the file"
        kept = SourceClient(B, str(keep), port)
        assert kept("GETATTR", kept.root).ok
        for c in clients + [kept]:
            c.close()
        log = stack.log_text()
        assert log.count("exports read again: 1 exports") == 2, "both workers reloaded"
    finally:
        stack.stop()


def test_metrics_and_stat_count_the_calls_of_every_worker(served):
    stack, port, status_port, export = served
    a = SourceClient(A, str(export), port)
    b = SourceClient(B, str(export), port)
    calls = {A: 7, B: 11}
    before = worker_calls(status_port)
    for c in (a, b):
        for _ in range(calls[c.source]):
            assert c("FSINFO", c.root).ok
    stat = ask(status_port, "/stat")
    fsinfo = [row["calls"] for row in stat["calls"] if (row["program"], row["procedure"]) == ("nfs", "FSINFO")]
    assert fsinfo == [18], stat["calls"]
    assert sorted(w["rpc_calls"] - before[w["worker"]] for w in stat["workers"]) == [7, 11]
    metrics = ask(status_port, "/metrics")
    line = [m for m in metrics.splitlines() if m.startswith("nfsstack_rpc_calls_total{") and 'procedure="FSINFO"' in m]
    assert len(line) == 1 and float(line[0].split()[-1]) == 18, line
    assert "nfsstack_nfsd_workers_not_answering 0.0" in metrics
    shown = subprocess.run([sys.executable, "-m", "nfsstack.cli", "stat", "--json", "--port", str(status_port)],
                           capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)["calls"]
    assert [r["calls"] for r in rows if r["procedure"] == "FSINFO"] == [18]
    a.close()
    b.close()


def test_the_status_command_lists_the_workers(served):
    """``nfsstack status`` shows each nfsd worker: its pid, whether it answers, and its calls."""
    stack, port, status_port, export = served
    a = SourceClient(A, str(export), port)
    for _ in range(3):
        assert a("GETATTR", a.root).ok
    workers = ask(status_port)["workers"]
    shown = subprocess.run([sys.executable, "-m", "nfsstack.cli", "status", "--port", str(status_port)],
                           capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "NFSD WORKERS (2 of 2 answering)" in out, out
    rows = {line.split()[1]: line.split() for line in out.splitlines()
            if line.startswith("  ") and len(line.split()) == 6 and line.split()[2] == "answering"}
    assert set(rows) == {str(w["pid"]) for w in workers}, out
    calls = sorted(int(row[3]) for row in rows.values())
    assert calls[-1] >= 3, out  # A's worker served its GETATTRs (and MNT's calls)
    a.close()


def test_one_worker_is_todays_single_process(tmp_path):
    stack, port, status_port, export = start(tmp_path, "--workers", "1")
    try:
        c = SourceClient(A, str(export), port)
        assert c("GETATTR", c.root).ok
        assert ask(status_port)["workers"] == []
        shown = subprocess.run([sys.executable, "-m", "nfsstack.cli", "status", "--port", str(status_port)],
                               capture_output=True, text=True, timeout=30)
        assert shown.returncode == 0 and "SERVICES" in shown.stdout, shown.stderr
        assert "NFSD WORKERS" not in shown.stdout, "no worker processes: no section"
        children = subprocess.run(["pgrep", "-P", str(stack.proc.pid)], capture_output=True, text=True).stdout
        assert children.split() == [], "no worker process"
        assert ask(status_port, "/stat")["calls"]
        c.close()
    finally:
        stack.stop()
