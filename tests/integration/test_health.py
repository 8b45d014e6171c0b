"""Honest health (issue 20, point 5), with real processes: a service that cannot start makes twistd exit 1 with
one line naming it, the reason and what to do, unless ``--partial`` asked for a partial stack; then ``/healthz``
answers 503 naming every configured service that is not serving, ``/metrics`` has a gauge per service,
``/status`` lists them and ``nfsstack status`` exits non-zero."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support import Stack, free_port, server_env, twistd

NOBODY = 65534
USER = 1000
#: What test_privileges grants: file handles work, acting as the clients does not (nfsd cannot run).
AMBIENT = "+dac_read_search,+net_bind_service"

needs_setpriv = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("unshare"),
                                   reason="needs root, setpriv and unshare to start a server with fewer privileges")


def _hidden_ancestor(path: Path) -> tuple[Path, Path] | None:
    """The first directory above ``path`` that other users cannot enter, and its child on the way to ``path``
    (for a pyenv under /root: /root and /root/.pyenv); None when every one can be entered."""
    path = path.resolve()
    chain = [*reversed(path.parents), path]
    for parent, child in itertools.pairwise(chain):
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return parent, child
    return None


def plain_user(scratch: Path, *setpriv_args: str) -> tuple[str, ...]:
    """A Stack ``prefix``: a private mount and network namespace in which this Python can be run by anyone (a
    directory that hides it, such as /root, is covered by a tmpfs holding only the way to it, made on the
    empty directory ``scratch``), then setpriv."""
    script = ""
    hidden = _hidden_ancestor(Path(sys.prefix))
    if hidden is not None:
        top, child = hidden
        script = (f'mount -t tmpfs -o mode=0755 tmpfs "{scratch}" && mkdir "{scratch}/{child.name}" && '
                  f'mount --rbind "{child}" "{scratch}/{child.name}" && mount --rbind "{scratch}" "{top}" && ')
    return ("unshare", "--mount", "--net", "--propagation", "private", "sh", "-c", script + 'exec "$0" "$@"',
            "setpriv", *setpriv_args)


def owned_dir(uid: int) -> Path:
    top = Path(tempfile.mkdtemp(prefix="nfsstack-health-"))
    top.chmod(0o755)
    work = top / "work"
    work.mkdir()
    os.chown(work, uid, uid)
    return work


def run_to_exit(prefix: tuple[str, ...], args: list[str], workdir: Path, timeout: float = 20.0):
    """Run twistd -n nfsstack to its end: (exit status, seconds it took, its log, what it printed)."""
    log = workdir / "twistd.log"
    started = time.monotonic()
    out = subprocess.run([*prefix, twistd(), "-n", "--pidfile=", f"--logfile={log}", "nfsstack", *args],
                         capture_output=True, text=True, env=server_env(), cwd=workdir, timeout=timeout,
                         check=False)
    return out.returncode, time.monotonic() - started, log.read_text() if log.exists() else "", out.stdout + out.stderr


def the_one_line(status: int, seconds: float, log: str, said: str) -> str:
    """A start that failed as it should: exit 1 within seconds, no traceback, and its one error line."""
    assert status == 1, (status, log, said)
    assert seconds < 20, seconds
    assert "Traceback" not in log + said, log + said
    (line,) = error_lines(log)
    return line


def error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "#error]" in line or "#critical]" in line]


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def nfsstack_status(port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nfsstack.cli", "status", "--port", str(port), *args],
                          capture_output=True, text=True, env=server_env(), timeout=60, check=False)


def service_gauges(metrics: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    gauges = {s.labels["service"]: s.value for s in families["nfsstack_service_up"].samples}
    gauges[""] = families["nfsstack_up"].samples[0].value
    return gauges


@needs_setpriv
def test_a_plain_user_asking_for_a_privileged_port_exits_with_one_line_naming_the_port():
    """No capabilities at all, and port 111 asked for (by default a plain user gets high ports): the portmapper
    cannot have it; twistd exits 1 within seconds, with one error line naming the service, the port and the way
    out, and no traceback."""
    work = owned_dir(NOBODY)
    (work.parent / "mnt").mkdir()
    try:
        status, seconds, log, said = run_to_exit(
            plain_user(work.parent / "mnt", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                       "--inh-caps=-all"), ["--portmap-port", "111"], work)
    finally:
        shutil.rmtree(work.parent, ignore_errors=True)
    line = the_one_line(status, seconds, log, said)
    assert "portmapper: port 111 needs root or CAP_NET_BIND_SERVICE; leave --portmap-port unset for 10111" in line, line
    assert "rpcbind running" not in line, line  # EACCES is not "is rpcbind running?"


def _cannot_act_as_clients(*extra: str) -> tuple[Stack, Path]:
    """A plain user with CAP_DAC_READ_SEARCH and CAP_NET_BIND_SERVICE (test_privileges' start): file handles
    work, acting as the clients does not, so mountd, nfsd, nlockmgr and status cannot run."""
    work = owned_dir(USER)
    export = work.parent / "export"
    export.mkdir()
    (work.parent / "exports").write_text(f"{export} 127.0.0.1(rw,insecure)\n")
    stack = Stack("--bind", "127.0.0.1", "--portmap-port", str(free_port()), "--nfs-port", "0",
                  "--status-port", str(free_port()), "--exports", str(work.parent / "exports"),
                  "--state-dir", str(work / "state"), *extra, workdir=str(work),
                  prefix=("setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups",
                          f"--inh-caps={AMBIENT}", f"--ambient-caps={AMBIENT}"))
    return stack, work


@needs_setpriv
def test_a_start_where_nfsd_cannot_run_exits_with_one_line():
    stack, work = _cannot_act_as_clients()
    try:
        status, seconds, log, said = run_to_exit(stack.prefix, stack.args, work)
    finally:
        shutil.rmtree(work.parent, ignore_errors=True)
    line = the_one_line(status, seconds, log, said)
    assert "mountd, nfsd, nlockmgr and status cannot run" in line, line
    assert "cannot act as its clients" in line and "CAP_SETUID and CAP_SETGID" in line, line


@needs_setpriv
def test_a_partial_stack_started_on_purpose_says_what_is_not_serving():
    """The same start with --partial keeps running and serves the portmapper; /healthz answers 503 naming
    mountd, nfsd, nlockmgr and status, /metrics has them at 0 and nfsstack_up 0, /status lists them with why,
    and ``nfsstack status`` exits 1 naming them."""
    stack, work = _cannot_act_as_clients("--partial")
    status_port = int(stack.args[stack.args.index("--status-port") + 1])
    stack.start(int(stack.args[stack.args.index("--portmap-port") + 1]), timeout=30)
    try:
        code, body = http_get(status_port, "/healthz")
        assert code == 503, (code, body)
        first = body.splitlines()[0]
        assert first.startswith("not serving: ")
        assert set(first[len("not serving: "):].split(", ")) == {"mountd", "nfsd", "nlockmgr", "status"}, body
        code, metrics = http_get(status_port, "/metrics")
        assert code == 200
        gauges = service_gauges(metrics)
        assert gauges == {"": 0, "portmapper": 1, "mountd": 0, "nfsd": 0, "nlockmgr": 0, "status": 0,
                          "nfsd-status": 1}, gauges
        code, report = http_get(status_port, "/status")
        report = json.loads(report)
        assert {s["service"] for s in report["not_serving"]} == {"mountd", "nfsd", "nlockmgr", "status"}, report
        assert all("cannot act as its clients" in s["reason"] for s in report["not_serving"]), report
        out = nfsstack_status(status_port)
        assert out.returncode == 1, out
        assert "NOT SERVING: mountd, nfsd, nlockmgr, status" in out.stdout, out.stdout
        assert "not serving: nfsd: " in out.stderr, out.stderr
        assert nfsstack_status(status_port, "--json").returncode == 1
        assert stack.proc.poll() is None  # still running
    finally:
        stack.stop()
        log = stack.log_text()
        shutil.rmtree(work.parent, ignore_errors=True)
    assert "Traceback" not in log, log
    (line,) = error_lines(log)
    assert "mountd, nfsd, nlockmgr and status cannot run" in line and "(--partial)" in line, line


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (file handles)")
def test_a_port_in_use_stops_the_start_or_with_partial_is_reported(tmp_path):
    """nfsd's port taken (as by knfsd): without --partial the process exits 1 with one line naming nfsd, the
    port and knfsd; with it the rest serves and /healthz names nfsd alone."""
    nfs_port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", nfs_port))
        holder.listen()
        pmap, status_port = free_port(), free_port()
        args = ["--bind", "127.0.0.1", "--portmap-port", str(pmap), "--nfs-port", str(nfs_port),
                "--status-port", str(status_port), "--state-dir", str(tmp_path / "state")]
        status, seconds, log, said = run_to_exit((), args, tmp_path)
        line = the_one_line(status, seconds, log, said)
        assert f"nfsd: port {nfs_port} is in use" in line, line
        stack = Stack(*args, "--partial", workdir=str(tmp_path))
        stack.start(pmap, timeout=30)
        try:
            assert http_get(status_port, "/healthz") == (503, "not serving: nfsd\n")
            gauges = service_gauges(http_get(status_port, "/metrics")[1])
            assert gauges["nfsd"] == 0 and gauges["mountd"] == 1 and gauges[""] == 0, gauges
            out = nfsstack_status(status_port)
            assert out.returncode == 1 and "NOT SERVING: nfsd" in out.stdout, out
        finally:
            stack.stop()
        assert "Traceback" not in stack.log_text(), stack.log_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (file handles)")
def test_a_whole_stack_is_healthy(tmp_path):
    """A root start: /healthz 200, every service's gauge 1 and nfsstack_up 1, nfsstack status exits 0."""
    pmap, status_port = free_port(), free_port()
    stack = Stack("--bind", "127.0.0.1", "--portmap-port", str(pmap), "--nfs-port", "0", "--status-port",
                  str(status_port), "--state-dir", str(tmp_path / "state"), workdir=str(tmp_path))
    stack.start(pmap, timeout=30)
    try:
        assert http_get(status_port, "/healthz") == (200, "ok\n")
        gauges = service_gauges(http_get(status_port, "/metrics")[1])
        assert gauges == {"": 1, "portmapper": 1, "mountd": 1, "nfsd": 1, "nlockmgr": 1, "status": 1,
                          "nfsd-status": 1}, gauges
        out = nfsstack_status(status_port)
        assert out.returncode == 0 and "NOT SERVING" not in out.stdout and not out.stderr, out
    finally:
        stack.stop()
    assert not error_lines(stack.log_text()), stack.log_text()
