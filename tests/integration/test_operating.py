"""Operating a running server as an nfs-utils admin would: the log, and the commands beside exportfs and nfsstat.

A real ``twistd -n nfsstack`` with three exports; the project's NFSv3 client (unprivileged source ports) makes
calls that succeed and calls that export policy refuses; ``nfsstack exports list|reload``, ``stat`` and
``clients`` are run as a user would and their output read.
"""

import json
import os
import subprocess
import sys

import pytest

from nfsstack.nfs3.client import Sattr3
from nfsstack.nfs3.codec import Stat
from tests.support import NfsClient, Stack, free_port, server_env

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (file handles)")


def nfsstack(*args: str, status_port: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nfsstack.cli", *args, "--port", str(status_port)],
                          capture_output=True, text=True, env=server_env(), timeout=60)


@pytest.fixture
def served(tmp_path):
    for name in ("rw", "ro", "secure"):
        (tmp_path / name).mkdir()
        (tmp_path / name).chmod(0o777)
    exports = tmp_path / "exports"
    exports.write_text(f"{tmp_path / 'rw'} 127.0.0.1(rw,insecure)\n{tmp_path / 'ro'} 127.0.0.1(ro,insecure)\n"
                       f"{tmp_path / 'secure'} 127.0.0.1(rw)\n")
    port, status_port = free_port(), free_port()
    stack = Stack("--bind", "127.0.0.1", "--nfs-port", "0", "--portmap-port", str(port), "--status-port",
                  str(status_port), "--exports", str(exports), "--state-dir", str(tmp_path / "state"),
                  workdir=str(tmp_path))
    stack.start(port, timeout=30)
    try:
        yield tmp_path, exports, port, status_port, stack
    finally:
        stack.stop()


def test_log_commands_and_reload(served):
    tmp, exports, port, status_port, stack = served
    rw = NfsClient(str(tmp / "rw"), port)
    ro = NfsClient(str(tmp / "ro"), port)
    try:
        for _ in range(3):  # refused by policy three times each: logged once each
            with pytest.raises(OSError, match="MNT"):
                NfsClient(str(tmp / "secure"), port)
            assert ro("CREATE", ro.root, b"no", 0, Sattr3()).status == Stat.ROFS
        made = rw("CREATE", rw.root, b"yes", 0, Sattr3(mode=0o644))
        assert made.ok
        old_handle = made.obj

        listed = nfsstack("exports", "list", status_port=status_port)
        assert listed.returncode == 0, listed.stderr
        rows = [line.split() for line in listed.stdout.splitlines()]
        assert [str(tmp / "ro"), "127.0.0.1", "ro,sync,root_squash,insecure"] in rows, listed.stdout
        as_json = json.loads(nfsstack("exports", "list", "--json", status_port=status_port).stdout)
        assert sorted(e["path"] for e in as_json) == sorted(str(tmp / n) for n in ("rw", "ro", "secure"))

        counted = json.loads(nfsstack("stat", "--json", status_port=status_port).stdout)
        calls = {(c["program"], c["procedure"]): c["calls"] for c in counted["calls"]}
        assert calls[("nfs", "CREATE")] == 4 and calls[("mountd", "MNT")] == 5, calls
        client = {c["client"]: c["calls"] for c in counted["clients"]}["127.0.0.1"]
        assert client["nfs"] >= 4 and client["mountd"] == 5, client
        assert {"procedure": "CREATE", "status": "ROFS", "count": 3} in counted["nfs_errors"], counted["nfs_errors"]
        table = nfsstack("stat", status_port=status_port)
        assert table.returncode == 0 and "NFS CALLS" in table.stdout and "CALLS PER CLIENT" in table.stdout
        assert "CREATE" in table.stdout and "ROFS" in table.stdout, table.stdout

        who = json.loads(nfsstack("clients", "--json", status_port=status_port).stdout)
        assert {"host": "127.0.0.1", "path": str(tmp / "rw")} in who["mounts"], who

        # exportfs -r: rw removed, ro made rw; the old rw handle is now STALE and that is logged.
        exports.write_text(f"{tmp / 'ro'} 127.0.0.1(rw,insecure)\n{tmp / 'secure'} 127.0.0.1(rw)\n")
        reloaded = nfsstack("exports", "reload", status_port=status_port)
        assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
        assert f"export removed: {tmp / 'rw'} 127.0.0.1(rw" in reloaded.stdout, reloaded.stdout
        assert f"export changed: {tmp / 'ro'} 127.0.0.1(ro," in reloaded.stdout, reloaded.stdout
        assert rw("GETATTR", old_handle).status == Stat.STALE
        assert ro("CREATE", ro.root, b"now", 0, Sattr3()).ok

        # A file with errors: every error said, non-zero exit, the exports in force unchanged.
        exports.write_text("relative *(rw)\n/srv *(bogus)\n")
        bad = nfsstack("exports", "reload", status_port=status_port)
        assert bad.returncode == 1 and ":1:" in bad.stderr and ":2:" in bad.stderr, bad.stderr
        assert "unchanged" in bad.stderr
        assert ro("CREATE", ro.root, b"still", 0, Sattr3()).ok
    finally:
        rw.close()
        ro.close()

    assert nfsstack("stat", status_port=free_port()).returncode == 1  # nobody there: an error, not a traceback
    log = stack.log_text()
    assert f"export {tmp / 'rw'} 127.0.0.1(rw,sync,root_squash,insecure)" in log, log  # the exports at start
    assert log.count("refused 127.0.0.1: mount request from an unprivileged port to a secure export") == 1, log
    assert log.count("refused 127.0.0.1: a change to a read-only export") == 1, log
    assert "refused 127.0.0.1: a handle of an export no longer exported" in log, log
    assert f"export removed: {tmp / 'rw'}" in log and "2 changed" in log, log
    assert "Traceback" not in log, log


def test_log_level_warn_keeps_warnings_only(tmp_path):
    (tmp_path / "secure").mkdir()
    exports = tmp_path / "exports"
    exports.write_text(f"{tmp_path / 'secure'} 127.0.0.1(rw)\n")
    port = free_port()
    stack = Stack("--bind", "127.0.0.1", "--nfs-port", "0", "--portmap-port", str(port), "--status-port", "0",
                  "--exports", str(exports), "--state-dir", str(tmp_path / "state"), "--log-level", "warn",
                  workdir=str(tmp_path))
    stack.start(port, timeout=30)
    try:
        with pytest.raises(OSError, match="MNT"):
            NfsClient(str(tmp_path / "secure"), port)
    finally:
        stack.stop()
    log = stack.log_text()
    assert "refused 127.0.0.1: mount request from an unprivileged port" in log, log
    assert f"export {tmp_path / 'secure'}" not in log and "no lock grace period" not in log, log
