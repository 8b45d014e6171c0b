"""exports(5) crossmnt, nohide and hide on real filesystems mounted below an export.

Every mount is made inside a mount namespace of the test's own (``unshare --mount --propagation private``, held
by a ``sleep``): the server runs in it (``nsenter``), the test looks at its files through
``/proc/PID/root``, and nothing leaks to the machine.  A second server started in the same namespace finds the
same filesystems, so handles can be shown to survive a restart.
"""

import os
import shutil
import signal
import subprocess
import time

import pytest

from nfsstack.exports.handles import kernel_handles_work
from nfsstack.nfs3.client import Sattr3
from nfsstack.nfs3.codec import Stat
from tests.support import NfsClient, Stack, free_port

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0 or not kernel_handles_work("/"), reason="needs root"),
    pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("nsenter") is None,
                       reason="needs unshare and nsenter"),
]

MiB = 1 << 20


class Namespace:
    """A private mount namespace where ``script`` (sh) mounted what the test needs, kept by a sleeping shell."""

    def __init__(self, script: str) -> None:
        self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-ec",
                                      script + "\ntouch /tmp/.nfsstack-crossmnt-ready-$$\nexec sleep 3600"])
        flag = f"/proc/{self.proc.pid}/root/tmp/.nfsstack-crossmnt-ready-{self.proc.pid}"
        deadline = time.monotonic() + 10
        while not os.path.exists(flag):
            assert self.proc.poll() is None, "the mount script failed"
            assert time.monotonic() < deadline, "the mount script did not finish"
            time.sleep(0.05)
        os.unlink(flag)

    def path(self, p) -> str:
        """``p`` as the namespace sees it."""
        return f"/proc/{self.proc.pid}/root{p}"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Server:
    def __init__(self, tmp_path, ns: Namespace, exports: str) -> None:
        self.tmp_path, self.ns = tmp_path, ns
        (tmp_path / "exports").write_text(exports)
        self.stack = None
        self.port = 0

    def start(self) -> "Server":
        self.port = free_port()
        self.stack = Stack("--bind", "127.0.0.1", "--portmap-port", str(self.port), "--nfs-port", "0",
                           "--status-port", "0", "--exports", str(self.tmp_path / "exports"),
                           "--state-dir", str(self.tmp_path / "state"), "--grace-time", "0",
                           workdir=str(self.tmp_path), prefix=("nsenter", "--target", str(self.ns.proc.pid), "--mount"))
        self.stack.start(self.port)
        return self

    def client(self, export) -> NfsClient:
        return NfsClient(str(export), self.port)

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.stop()


@pytest.fixture
def world(tmp_path):
    made = []

    def make(script: str, exports: str) -> Server:
        ns = Namespace(script)
        server = Server(tmp_path, ns, exports)
        made.append(server)
        return server.start()

    yield make
    for server in made:
        server.stop()
        server.ns.close()


def lookup(c, fh, name):
    r = c("LOOKUP", fh, name)
    assert r.ok, (name, r.status)
    return r.object, r.obj_attributes


def test_crossmnt_serves_the_filesystems_below_an_export_and_their_handles_survive_a_restart(tmp_path, world):
    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    (a / "sub" / "under").write_text("covered by the mount\n")
    outside = tmp_path / "outside"
    (outside / "kept").mkdir(parents=True)
    os.symlink(outside, a / "link")
    (tmp_path / "near").mkdir()  # on the export's own filesystem, outside it
    os.symlink(tmp_path / "near", a / "link2")
    (a / "bind").mkdir()
    server = world(f"mount -t tmpfs -o size=8m crossA {a}/sub\n"
                   f"echo on the submount > {a}/sub/f\nmkdir {a}/sub/deep {a}/sub/inner\n"
                   f"mount -t tmpfs -o size=4m crossB {a}/sub/inner\necho inner > {a}/sub/inner/g\n"
                   f"mount -t tmpfs -o size=2m elsewhere {outside}\necho secret > {outside}/s\nmkdir {outside}/kept\n"
                   f"mount --bind {outside}/kept {a}/bind\n",
                   f"{a} 127.0.0.1(rw,insecure,no_root_squash,crossmnt)\n")
    ns = server.ns
    c = server.client(a)
    root_attr = c("GETATTR", c.root).obj_attributes
    sub, sub_attr = lookup(c, c.root, b"sub")
    # The submount's root: its own fsid and inode number, as the server's namespace sees it.
    assert sub_attr.fsid != root_attr.fsid
    assert sub_attr.fileid == os.stat(ns.path(a / "sub")).st_ino
    assert sub[1:5] != c.root[1:5]  # another export id in the handle
    f, f_attr = lookup(c, sub, b"f")
    assert f_attr.fsid == sub_attr.fsid
    assert c("READ", f, 0, 100).data == b"on the submount\n"
    assert c("WRITE", f, 0, b"WRITTEN", 2).ok
    assert open(ns.path(a / "sub" / "f"), "rb").read() == b"WRITTENsubmount\n"
    made = c("CREATE", sub, b"new", 0, Sattr3(mode=0o644))
    assert made.ok and made.obj_attributes.fsid == sub_attr.fsid
    assert os.path.exists(ns.path(a / "sub" / "new"))
    assert sorted(os.listdir(a / "sub")) == ["under"]  # the directory underneath is untouched
    # FSSTAT answers for the filesystem the object is on.
    assert c("FSSTAT", f).tbytes == 8 * MiB and c("FSSTAT", c.root).tbytes != 8 * MiB
    # ".." from the submount's root goes back into the export, nested crossings too.
    up, up_attr = lookup(c, sub, b"..")
    assert up == c.root and up_attr.fsid == root_attr.fsid
    inner, inner_attr = lookup(c, sub, b"inner")
    assert inner_attr.fsid not in (root_attr.fsid, sub_attr.fsid) and c("FSSTAT", inner).tbytes == 4 * MiB
    g, _ = lookup(c, inner, b"g")
    assert c("READ", g, 0, 100).data == b"inner\n"
    assert lookup(c, inner, b"..")[0] == sub
    # A listing of the directory holding the mount point: the entry carries nothing that LOOKUP contradicts
    # (knfsd gives neither attributes nor handle for a mount point; the client LOOKUPs it).
    entry = {e.name: e for e in c("READDIRPLUS", c.root, 0, bytes(8), 4096, 65536).entries}[b"sub"]
    assert entry.handle in (None, sub) and (entry.attributes is None or entry.attributes == sub_attr)
    # mountd: a directory inside the crossed filesystem.
    deep = server.client(a / "sub" / "deep")
    assert deep.root == lookup(c, sub, b"deep")[0]
    deep.close()
    # A filesystem not below the export is never served, through a symlink neither.
    for link in ("link", "link2"):
        with pytest.raises(OSError, match="MNT"):
            server.client(a / link)
    # A directory of a filesystem mounted elsewhere, bound below the export: crossed, and ".." leads into the
    # export, not to where the directory lies.
    bound, bound_attr = lookup(c, c.root, b"bind")
    assert bound_attr.fsid != root_attr.fsid and lookup(c, bound, b"..")[0] == c.root
    assert c("LOOKUP", c.root, b"link").obj_attributes.type == 5  # the symlink itself
    # A forged handle naming the submount's export id: the MAC refuses it.
    forged = c.root[:1] + sub[1:5] + c.root[5:]
    assert c("GETATTR", forged).status == Stat.BADHANDLE
    c.close()

    # A new server in the same namespace: the handles it never handed out are found again.
    server.stop()
    server.start()
    c = server.client(a)
    assert c("READ", f, 0, 100).data == b"WRITTENsubmount\n"
    assert c("GETATTR", g).obj_attributes.fsid == inner_attr.fsid
    assert c("GETATTR", sub).obj_attributes.fsid == sub_attr.fsid
    assert lookup(c, c.root, b"sub")[0] == sub
    c.close()


def test_nohide_export_is_crossed_into_and_hidden_mounts_show_the_directory_underneath(tmp_path, world):
    a = tmp_path / "a"
    for d in ("nh", "plain", "shy"):
        (a / d).mkdir(parents=True)
        (a / d / "under").write_text(f"under {d}\n")
    server = world("".join(f"mount -t tmpfs -o size=4m x{d} {a}/{d}\necho on {d} > {a}/{d}/f\n"
                           for d in ("nh", "plain", "shy")),
                   f"{a} 127.0.0.1(rw,insecure,no_root_squash)\n"
                   f"{a / 'nh'} 127.0.0.1(rw,insecure,no_root_squash,nohide)\n"
                   f"{a / 'shy'} 127.0.0.1(rw,insecure,no_root_squash) 192.0.2.1(rw,nohide)\n")
    ns = server.ns
    c = server.client(a)
    root_attr = c("GETATTR", c.root).obj_attributes
    b = server.client(a / "nh")
    # nohide: LOOKUP of B's mount point through A gives B's root, with B's fsid; its files are B's.
    nh, nh_attr = lookup(c, c.root, b"nh")
    assert nh == b.root and nh_attr.fsid != root_attr.fsid
    f, _ = lookup(c, nh, b"f")
    assert c("READ", f, 0, 100).data == b"on nh\n"
    assert c("WRITE", f, 0, b"ON", 2).ok
    assert open(ns.path(a / "nh" / "f"), "rb").read() == b"ON nh\n"
    assert lookup(c, nh, b"..")[0] == c.root
    b.close()
    # Without nohide (for this client), and for a mount no line exports: the directory underneath, on A.
    for d in ("plain", "shy"):
        h, attr = lookup(c, c.root, d.encode())
        assert attr.fsid == root_attr.fsid and attr.fileid == os.stat(a / d).st_ino
        assert sorted(e.name for e in c("READDIR", h, 0, bytes(8), 4096).entries) == [b".", b"..", b"under"]
        under, _ = lookup(c, h, b"under")
        assert c("READ", under, 0, 100).data == f"under {d}\n".encode()
        assert c("GETATTR", h).obj_attributes.fileid == attr.fileid
        assert lookup(c, h, b"..")[0] == c.root
        with pytest.raises(OSError, match="MNT"):
            server.client(a / d / "f")  # inside the hidden filesystem: not exported by A
    c.close()



def test_a_lookup_crossing_into_an_export_is_refused_where_that_exports_flavours_refuse_the_call(tmp_path, world):
    """sec= holds across a crossing as on a handle: an AUTH_SYS LOOKUP of a Kerberos-only export's mount point
    gets NFS3ERR_ACCES, not that export's root handle and attributes; nor does ``..`` lead up into a
    Kerberos-only export (knfsd's nfsd_lookup: check_nfsd_access after crossing)."""
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a / "krb", a / "sys", b / "sys"):
        d.mkdir(parents=True)
    down = world(f"mount -t tmpfs -o size=4m xk {a}/krb\nmount -t tmpfs -o size=4m xs {a}/sys\n",
                 f"{a} 127.0.0.1(rw,insecure,no_root_squash,crossmnt)\n"
                 f"{a / 'krb'} 127.0.0.1(rw,insecure,no_root_squash,sec=krb5p)\n")
    c = down.client(a)
    r = c("LOOKUP", c.root, b"krb")
    assert r.status == Stat.ACCES and "object" not in r.fields, r
    _, sys_attr = lookup(c, c.root, b"sys")  # crossmnt into a mount no line names: A's own flavours, admitted
    assert sys_attr.fsid != c("GETATTR", c.root).obj_attributes.fsid
    c.close()
    down.stop()
    # Up: a nohide sec=sys export below a Kerberos-only one.
    up = world(f"mount -t tmpfs -o size=4m xb {b}/sys\n",
               f"{b} 127.0.0.1(rw,insecure,no_root_squash,sec=krb5)\n"
               f"{b / 'sys'} 127.0.0.1(rw,insecure,no_root_squash,nohide)\n")
    s = up.client(b / "sys")
    assert s("GETATTR", s.root).ok
    r = s("LOOKUP", s.root, b"..")
    assert r.status == Stat.ACCES and "object" not in r.fields, r
    s.close()
