"""A server started with fewer privileges than it expects never serves a client with the wrong identity.

The start the security review found: a plain user given ambient CAP_DAC_READ_SEARCH and CAP_NET_BIND_SERVICE
(what a hardened systemd unit might grant).  open_by_handle_at works, but setfsuid/setfsgid silently keep the
server's own ids, so a squashed root client read a root-only file and files were made as the server's uid.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from nfsstack.nfs3.client import Sattr3
from nfsstack.nfs3.codec import Stat
from nfsstack.rpc.message import decode_reply
from nfsstack.xdr import Packer, Unpacker
from tests.support import NfsClient, Stack, free_port, server_env, tcp_call

USER = 1000
NOBODY = 65534
AMBIENT = "+dac_read_search,+net_bind_service"

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                                reason="needs root and setpriv to start a server with fewer privileges")


def getport(pmap_port: int, prog: int, vers: int = 3) -> int:
    p = Packer()
    for v in (prog, vers, 6, 0):
        p.pack_uint(v)
    data = tcp_call(pmap_port, 100000, 2, 3, p.getvalue())
    return Unpacker(data, decode_reply(data).offset).unpack_uint()


def test_plain_user_with_read_search_never_serves_as_itself():
    top = Path(tempfile.mkdtemp(prefix="nfsstack-privileges-"))
    top.chmod(0o755)
    export = top / "export"
    export.mkdir()
    export.chmod(0o777)
    secret = export / "secret"
    secret.write_bytes(b"root only\n")
    secret.chmod(0o600)
    work = top / "work"
    work.mkdir()
    os.chown(work, USER, USER)
    (top / "exports").write_text(f"{export} 127.0.0.1(rw,insecure)\n")  # root_squash, the default
    port = free_port()
    # --partial: without it a stack that cannot serve files exits at start (test_health); with it the stack runs,
    # and either serves with the clients' identities or not at all.
    stack = Stack("--bind", "127.0.0.1", "--portmap-port", str(port), "--nfs-port", "0", "--status-port", "0",
                  "--partial",
                  "--exports", str(top / "exports"), "--state-dir", str(work / "state"), workdir=str(work),
                  prefix=("setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups",
                          f"--inh-caps={AMBIENT}", f"--ambient-caps={AMBIENT}"))
    stack.start(port, timeout=30)
    try:
        if getport(port, 100003) and getport(port, 100005):
            # The stack chose to serve: then a squashed root must be nobody, never the server's uid.
            c = NfsClient(str(export), port, uid=0)
            try:
                fh = c("LOOKUP", c.root, b"secret")
                assert fh.ok, fh.status
                r = c("READ", fh.object, 0, 100)
                assert not r.ok and r.status in (Stat.ACCES, Stat.PERM), (r.status, r.fields)
                r = c("CREATE", c.root, b"made", 0, Sattr3(mode=0o644))
                if r.ok:
                    assert (export / "made").stat().st_uid == NOBODY
                else:
                    assert not (export / "made").exists()
            finally:
                c.close()
        else:
            log = stack.log_text()
            assert "cannot act as its clients" in log and "CAP_SETUID" in log, log
    finally:
        stack.stop()
        shutil.rmtree(top, ignore_errors=True)
    assert "Traceback" not in stack.log_text(), stack.log_text()


CALLS_AS_SQUASHED_ROOT = r"""
import os, sys
from twisted.internet import defer
from nfsstack.exports import parse_exports
from nfsstack.exports.handles import HandleCodec
from nfsstack.exports.identity import can_switch
from nfsstack.exports.table import ExportTable
from nfsstack.nfs3.client import Sattr3
from nfsstack.rpc.message import Credential
from nfsstack.rpc.server import Dispatcher
from tests.unit.test_nfs3 import UNPRIVILEGED, Client, local_nfsd

export = sys.argv[1]
print("can_switch:", can_switch())
exports = parse_exports(f"{export} 127.0.0.1(rw,insecure)\n")
table = ExportTable(exports, HandleCodec(b"k" * 32))
nfsd = local_nfsd(table)
root = table.handle(next(iter(exports)), os.open(export, os.O_RDONLY))
fh = table.handle(next(iter(exports)), os.open(os.path.join(export, "secret"), os.O_PATH))
nfs = Client(Dispatcher([nfsd.program]), peer=UNPRIVILEGED, cred=Credential(0, 0, (), "test"))
print("LOOKUP:", nfs("LOOKUP", root, b"secret").status.name)
print("READ:", nfs("READ", fh, 0, 100).status.name)
print("CREATE:", nfs("CREATE", root, b"made", 0, Sattr3(mode=0o644)).status.name)
print("READ again:", nfs("READ", fh, 0, 100).status.name)
"""


def test_a_switch_that_did_not_happen_fails_the_call():
    """nfsd run in the same start with the start-up check bypassed: every call that would have run with the
    server's own ids fails (NFS3ERR_PERM), and the next call is checked again, not served as the server."""
    top = Path(tempfile.mkdtemp(prefix="nfsstack-privileges-"))
    top.chmod(0o755)
    export = top / "export"
    export.mkdir()
    export.chmod(0o777)
    (export / "secret").write_bytes(b"root only\n")
    (export / "secret").chmod(0o600)
    try:
        out = subprocess.run(["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups",
                              f"--inh-caps={AMBIENT}", f"--ambient-caps={AMBIENT}",
                              sys.executable, "-c", CALLS_AS_SQUASHED_ROOT, str(export)],
                             capture_output=True, text=True, env=server_env(), cwd=str(top), timeout=60)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].startswith("can_switch:") and lines[0] != "can_switch: None", lines
        assert lines[1:] == ["LOOKUP: PERM", "READ: PERM", "CREATE: PERM", "READ again: PERM"], out.stdout
        assert not (export / "made").exists()
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_a_server_started_with_supplementary_groups_lends_them_to_no_caller():
    """Started as root with groups (Docker's root has 0 to 27, "disk" among them), the stack serves a squashed
    caller, whose group list is empty, with no groups: a file only group 27 may read stays unreadable."""
    top = Path(tempfile.mkdtemp(prefix="nfsstack-privileges-"))
    top.chmod(0o755)
    export = top / "export"
    export.mkdir()
    secret = export / "video-only"
    secret.write_bytes(b"for group 27\n")
    os.chown(secret, 0, 27)
    secret.chmod(0o060)
    (top / "exports").write_text(f"{export} 127.0.0.1(rw,insecure,all_squash)\n")
    port = free_port()
    stack = Stack("--bind", "127.0.0.1", "--portmap-port", str(port), "--nfs-port", "0", "--status-port", "0",
                  "--exports", str(top / "exports"), "--state-dir", str(top / "state"), workdir=str(top),
                  prefix=("setpriv", "--groups", "0,6,27", "--"))
    stack.start(port, timeout=30)
    try:
        c = NfsClient(str(export), port, uid=USER)
        try:
            fh = c("LOOKUP", c.root, b"video-only")
            assert fh.ok, fh.status
            for _ in range(3):  # each worker's first calls, and later ones
                r = c("READ", fh.object, 0, 100)
                assert r.status == Stat.ACCES, (r.status, r.fields)
        finally:
            c.close()
    finally:
        stack.stop()
        shutil.rmtree(top, ignore_errors=True)
