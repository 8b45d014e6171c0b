"""A plain user's stack listens on the documented high ports (issue 20, point 2), real processes.

Each stack runs as uid 65534 in a network namespace of its own (so the fixed ports never collide with anything
on the machine), started by root with ``setpriv``:

* with no capabilities at all: which services a plain user can serve depends on the backend (today the portmapper
  and port 1110 only), so the test asserts on ports, registrations and log lines, never on NFS calls;
* with every capability the file services need (CAP_DAC_READ_SEARCH, CAP_SETUID, CAP_SETGID) but not
  CAP_NET_BIND_SERVICE: mountd, nfsd, nlockmgr and status are built, and register their high ports.

The portmapper is asked over TCP at 127.0.0.1:10111 from inside the namespace (``rpcinfo -p`` takes a host
only, and asks port 111).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support import REPO, Stack, can_make_netns, in_netns, netns, reachable, server_env, twistd

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not can_make_netns() or not shutil.which("setpriv"),
                       reason="needs root, ip netns and setpriv to start a plain user's server"),
]

NOBODY = 65534
#: The documented ports (README "Running", nfsstack.tap.UNPRIVILEGED_PORTS).
PORTMAP, NFS, MOUNTD, NLM, STATD = 10111, 12049, 12050, 12051, 12052
FILE_CAPS = "+dac_read_search,+setuid,+setgid"


def plain_user(caps: str = "") -> tuple[str, ...]:
    """setpriv as uid/gid 65534 with no groups, and no capabilities but the ambient ``caps``."""
    ids = (f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
    if caps:
        return ("setpriv", *ids, f"--inh-caps={caps}", f"--ambient-caps={caps}")
    return (*reachable(twistd()), "setpriv", *ids, "--inh-caps=-all", "--bounding-set=-all")


@pytest.fixture
def workdir():
    """The server's working directory, the plain user's: the default export ./export and the state directory
    are made there (pytest's tmp_path lies in a directory only root may enter)."""
    top = tempfile.mkdtemp(prefix="nfsstack-ports-")
    os.chmod(top, 0o755)
    os.chown(top, NOBODY, NOBODY)
    yield top
    shutil.rmtree(top, ignore_errors=True)


DUMP = r"""
import dataclasses, json, sys
from nfsstack.portmap.types import RPCB, Mapping
from nfsstack.rpc.message import decode_reply
from nfsstack.xdr import Unpacker
from tests.support import tcp_call

port = int(sys.argv[1])
out = {}
for vers, kind in ((2, Mapping), (3, RPCB)):
    data = tcp_call(port, 100000, vers, 4)
    u = Unpacker(data, decode_reply(data).offset)
    rows = []
    while u.unpack_bool():
        rows.append(dataclasses.astuple(kind.unpack(u)))
    out[vers] = rows
print(json.dumps(out))
"""


def dump(ns: str, port: int) -> dict:
    """The portmapper's registrations, asked inside ``ns``: {2: [[prog, vers, prot, port]...], 3: [[prog, vers,
    netid, uaddr, owner]...]}."""
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", DUMP, str(port)], capture_output=True,
                       text=True, env=server_env(), cwd=REPO, timeout=30)
    assert r.returncode == 0, r.stderr
    return {int(k): v for k, v in json.loads(r.stdout).items()}


def listening(ns: str) -> set[int]:
    """The TCP and UDP ports something listens on in ``ns``."""
    out = in_netns(ns, "ss", "-H", "-l", "-t", "-u", "-n", check=True).stdout
    return {int(line.split()[4].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()}


def uaddr_port(uaddr: str) -> int:
    hi, lo = uaddr.rsplit(".", 2)[1:]
    return int(hi) << 8 | int(lo)


def started(ns: str, workdir: str, prefix: tuple[str, ...], *args: str) -> Stack:
    return Stack(*args, netns=ns, workdir=workdir, prefix=prefix).start(PORTMAP, timeout=30)


def surveyed(workdir: str, prefix: tuple[str, ...]) -> tuple[dict, set, str]:
    """Start a stack under ``prefix``, take its portmapper's table and the ports it listens on, stop it: (table,
    ports, log), the log checked for tracebacks."""
    with netns() as ns:
        stack = started(ns, workdir, prefix)
        try:
            table = dump(ns, PORTMAP)
            ports = listening(ns)
        finally:
            stack.stop()
    log = stack.log_text()
    assert "Traceback" not in log, log
    return table, ports, log


def test_a_plain_user_without_capabilities_serves_every_service_on_high_ports(workdir):
    """Default options: every port the stack listens on and registers is a high one (the local backend runs
    without open_by_handle_at, every client acting as this user)."""
    table, ports, log = surveyed(workdir, plain_user())
    assert ports == {PORTMAP, NFS, MOUNTD, NLM, STATD, 1110}, ports
    # Its own registrations: v2 on tcp and udp, v3/v4 on every netid, all at 10111.
    assert {(prot, port) for prog, _, prot, port in table[2] if prog == 100000} == {(6, PORTMAP), (17, PORTMAP)}
    assert all(port > 1023 for _, _, _, port in table[2]), table
    assert all(uaddr_port(r[3]) > 1023 for r in table[3] if r[2] != "local"), table
    assert {r[2] for r in table[3] if r[0] == 100000} >= {"tcp", "udp"}, table
    assert not any(r[2] == "local" for r in table[3]), "a plain user's stack must not serve /run/rpcbind.sock"
    export = Path(workdir) / "export"
    assert (f"listening on high ports (portmapper {PORTMAP}, nfsd {NFS}, mountd {MOUNTD}, nlockmgr {NLM}, "
            f"status {STATD})") in log, log
    assert (f"mount -t nfs -o vers=3,proto=tcp,port={NFS},mountport={MOUNTD},mountproto=tcp,nolock "
            f"127.0.0.1:{export} DIR") in log, log
    assert "portmapper on port 111" in log, log


def test_a_plain_user_without_net_bind_service_registers_every_service_on_its_high_port(workdir):
    table, ports, log = surveyed(workdir, plain_user(FILE_CAPS))
    assert ports == {PORTMAP, NFS, MOUNTD, NLM, STATD, 1110}, ports
    registered = {(prog, prot): port for prog, _, prot, port in table[2]}
    expected = {100000: PORTMAP, 100003: NFS, 100005: MOUNTD, 100021: NLM, 100024: STATD, 100227: NFS}
    for prog, port in expected.items():
        assert registered.get((prog, 6)) == port and registered.get((prog, 17)) == port, (prog, table)
    for prog, _, netid, uaddr, _ in table[3]:
        assert uaddr_port(uaddr) == expected[prog], (prog, netid, uaddr)


def exit_status(stack: Stack, port: int) -> int:
    """How a stack that should not start ends: it exits, before or after its portmapper answers."""
    try:
        stack.start(port, timeout=30)
    except RuntimeError as e:
        assert "server exited" in str(e), e
    else:
        try:
            stack.proc.wait(30)
        except subprocess.TimeoutExpired:
            stack.stop()
            raise AssertionError(f"the stack kept running:\n{stack.log_text()}") from None
    return stack.proc.returncode


def test_a_plain_user_asking_for_a_privileged_nfsd_port_gets_one_line_with_the_hint(workdir):
    """nfsd on 1023 (2049 itself is above 1023: anyone may listen there)."""
    with netns() as ns:
        stack = Stack("--status-port", "0", "--nfs-port", "1023", netns=ns, workdir=workdir,
                      prefix=plain_user(FILE_CAPS))
        assert exit_status(stack, PORTMAP) != 0, stack.log_text()
    line = ("nfsd: port 1023 needs root or CAP_NET_BIND_SERVICE; leave --nfs-port unset for 12049, "
            "or choose one above 1023")
    assert f"[nfsstack#error] {line}\n" in stack.log_text(), stack.log_text()


def test_a_plain_user_asking_for_port_111_gets_one_line_with_the_hint(workdir):
    with netns() as ns:
        stack = Stack("--status-port", "0", "--portmap-port", "111", netns=ns, workdir=workdir,
                      prefix=plain_user())
        assert exit_status(stack, 111) != 0, stack.log_text()
    line = ("portmapper: port 111 needs root or CAP_NET_BIND_SERVICE; leave --portmap-port unset for 10111, "
            "or choose one above 1023")
    assert f"[nfsstack#error] {line}\n" in stack.log_text(), stack.log_text()
