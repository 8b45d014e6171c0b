"""nfsd in process (RFC 1813 section 3.3): every procedure through the dispatcher, on real directories.

The calls go through the same Dispatcher the server uses, from a privileged
or unprivileged "port" and with AUTH_SYS credentials of root or a user, and
the replies are decoded with the project's client codec.
"""

import errno
import fcntl
import os
import stat
import time

import pytest
from hypothesis import given, strategies as st
from twisted.internet import defer

from nfsstack.nfs3.local import dirsync
from nfsstack.exports import parse_exports
from nfsstack.exports.handles import HandleCodec, kernel_handles_work, open_kernel_handle
from nfsstack.exports.identity import ROOT
from nfsstack.exports.mounts import filesystem_type
from nfsstack.exports.table import ExportTable
from nfsstack.nfs3.client import PROC, Sattr3, decode, encode
from nfsstack.nfs3.codec import RTMAX, UDP_XFER, Stat, pack_sattr, unpack_sattr
from nfsstack.nfs3.local import filesystem as local_fs
from nfsstack.nfs3.program import SMALL_IO, Nfsd
from nfsstack.rpc.message import Credential, decode_reply, encode_call
from nfsstack.rpc.server import Dispatcher, joined
from nfsstack.xdr import Packer, Unpacker, XDRError

pytestmark = pytest.mark.skipif(not kernel_handles_work("/"), reason="needs root (open_by_handle_at)")

PRIVILEGED = ("127.0.0.1", 700)
UNPRIVILEGED = ("127.0.0.1", 40000)
ROOT_CRED = Credential(0, 0, (), "test")
USER = Credential(1000, 1000, (1000,), "test")
NOBODY = 65534


def local_nfsd(table):
    """nfsd over the local backend, its thread pool running each task at once."""
    in_thread = lambda f, *a: defer.maybeDeferred(f, *a)  # noqa: E731
    return Nfsd(table, local_fs.LocalFilesystem(table, in_thread), in_thread=in_thread)


def settled(reply):
    """The reply as bytes; a blocking procedure's Deferred has fired already (the env runs them inline)."""
    if isinstance(reply, defer.Deferred):
        fired = []
        reply.addBoth(fired.append)
        reply = fired[0]
    return joined(reply)


class Client:
    """Calls nfsd's procedures through the dispatcher and decodes the results."""

    def __init__(self, dispatcher, peer=PRIVILEGED, cred=ROOT_CRED, netid="tcp"):
        self.dispatcher, self.peer, self.cred, self.netid = dispatcher, peer, cred, netid
        self.xid = 0

    def __call__(self, proc, *args, cred=None, peer=None, netid=None):
        self.xid += 1
        cred = cred or self.cred
        msg = encode_call(self.xid, 100003, 3, PROC[proc], cred.to_auth()) + encode(proc, *args)
        reply = self.dispatcher.handle(msg, netid or self.netid, peer or self.peer, ("127.0.0.1", 2049))
        while reactor_later:
            reactor_later.pop(0)()
        reply = settled(reply)
        header = decode_reply(reply)
        assert header.error is None, header.error
        return decode(proc, reply, header.offset)


class Ring:
    """Stands for io_uring's open (nfs3/local/aiosync.py): the open runs as the identity at submission, and its
    Deferred fires later, as the ring's completion does."""

    can_open = True
    can_write = True

    def __init__(self):
        self.opened = []
        self.written = []  # (offset, length) of each write it made
        self.room = True

    def openat(self, dirfd, name, flags, mode):
        d = defer.Deferred()
        try:
            fd = os.open(name, flags, mode, dir_fd=dirfd)
        except OSError as e:
            failure = e
            self.opened.append(None)
            reactor_later.append(lambda: d.errback(failure))
        else:
            self.opened.append(name)
            reactor_later.append(lambda: d.callback(fd))
        return d

    def pwrite(self, fd, data, offset):
        if not self.room:
            raise OSError(errno.EAGAIN, "no room for another asynchronous operation")
        d = defer.Deferred()
        n = os.pwrite(fd, data, offset)
        self.written.append((offset, n))
        reactor_later.append(lambda: d.callback(n))
        return d

    def __call__(self, fd, datasync=False):
        (os.fdatasync if datasync else os.fsync)(fd)
        return defer.succeed(None)


#: Completions of the fake ring, run by the Client after the dispatcher returns (as the reactor would).
reactor_later = []


@pytest.fixture
def env(tmp_path, request):
    for name in ("data", "ro", "squash", "other", "outside"):
        (tmp_path / name).mkdir()
        (tmp_path / name).chmod(0o777)
    (tmp_path / "ro" / "readme").write_text("read only\n")
    (tmp_path / "outside" / "secret").write_text("secret\n")
    exports = parse_exports(
        f"{tmp_path / 'data'} 127.0.0.1(rw,no_root_squash)\n"
        f"{tmp_path / 'ro'} 127.0.0.1(ro,insecure)\n"
        f"{tmp_path / 'squash'} 127.0.0.1(rw,insecure)\n"
        f"{tmp_path / 'other'} 127.0.0.1(rw,no_root_squash)\n"
    )
    table = ExportTable(exports, HandleCodec(b"k" * 32))
    nfsd = local_nfsd(table)
    if getattr(request, "param", "inline") == "ring":
        nfsd.fs.kernel_io = Ring()
        nfsd.fs.create_cost = 1.0  # creates have been slow: their opens go to the ring
    roots = {}
    for export in exports:
        fd = os.open(export.path, os.O_RDONLY)
        roots[os.path.basename(export.path)] = table.handle(export, fd)
        os.close(fd)
    yield tmp_path, table, nfsd, Client(Dispatcher([nfsd.program])), roots
    assert nfsd.fs.caller.ids.current == ROOT, "every call ends as root"
    nfsd.fs.files.close()
    nfsd.fs.lister.listings.close()
    table.close()


def lookup(nfs, dirfh, name, **kw):
    r = nfs("LOOKUP", dirfh, name, **kw)
    assert r.ok, r.status
    return r.object


def create(nfs, dirfh, name, mode=0o644, **kw):
    r = nfs("CREATE", dirfh, name, 0, Sattr3(mode=mode), **kw)
    assert r.ok, r.status
    return r.obj


# -- handles ----------------------------------------------------------------------


def test_getattr_of_the_root(env):
    tmp, _, _, nfs, roots = env
    r = nfs("GETATTR", roots["data"])
    st = os.stat(tmp / "data")
    assert r.ok and r.obj_attributes.fileid == st.st_ino and r.obj_attributes.type == 2
    assert r.obj_attributes.mode == 0o777 and r.obj_attributes.mtime == st.st_mtime_ns


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "extend", "random"])
def test_forged_or_truncated_handles_are_badhandle(env, damage):
    _, _, _, nfs, roots = env
    fh = roots["data"]
    bad = {
        "flip": fh[:-1] + bytes([fh[-1] ^ 1]),
        "truncate": fh[:-3],
        "empty": b"",
        "extend": fh + b"\1",
        "random": os.urandom(len(fh)),
    }[damage]
    assert nfs("GETATTR", bad).status == Stat.BADHANDLE
    r = nfs("LOOKUP", bad, b"x")
    assert r.status == Stat.BADHANDLE and r.dir_attributes is None


def test_handle_of_a_removed_file_is_stale(env):
    tmp, _, _, nfs, roots = env
    fh = create(nfs, roots["data"], b"gone")
    os.unlink(tmp / "data" / "gone")
    assert nfs("GETATTR", fh).status == Stat.STALE


def test_a_validly_signed_handle_outside_its_export_is_stale(env):
    tmp, table, _, nfs, _ = env
    export = table.exports.find(str(tmp / "data"))
    fd = os.open(tmp / "outside", os.O_RDONLY)
    try:
        forged = table.handle(export, fd, "secret")  # same filesystem, this export's id, a good MAC
    finally:
        os.close(fd)
    assert nfs("GETATTR", forged).status == Stat.STALE
    assert nfs("READ", forged, 0, 100).status == Stat.STALE


def forget_places(path):
    """Have the kernel forget its cached directory entries (and inodes), as after the server's reboot: the whole
    machine's, which costs only time.  Skipped where a filesystem never forgets them (tmpfs: they are its files)."""
    kind = filesystem_type(os.stat(path).st_dev)
    if kind in ("tmpfs", "ramfs"):
        pytest.skip(f"{path} lies on {kind}, whose directory entries are never evicted")
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")


def test_a_file_whose_place_the_kernel_forgot_is_served(env):
    """After a reboot, or once memory pressure evicted its directory entry, a file opened by its handle is
    connected to no directory (its path is "/"): a handle a client kept across the reboot still reads it."""
    tmp, table, _, nfs, _ = env
    (tmp / "data" / "sub").mkdir()
    (tmp / "data" / "sub" / "kept").write_text("kept\n")
    export = table.exports.find(str(tmp / "data"))
    fd = os.open(tmp / "data" / "sub", os.O_RDONLY)
    try:
        fh = table.handle(export, fd, "kept")
    finally:
        os.close(fd)
    forget_places(tmp / "data")
    decoded = table.codec.decode(fh)
    fd = open_kernel_handle(table.root(export)[0], decoded.handle_type, decoded.data)
    try:
        assert os.readlink(f"/proc/self/fd/{fd}") == "/", "the kernel still knows where the file lies"
    finally:
        os.close(fd)
    table.recheck = 0  # the descriptor kept by the first call is looked at again by the second
    for _ in range(2):
        r = nfs("GETATTR", fh)
        assert r.ok and r.obj_attributes.size == 5, r.status
    r = nfs("READ", fh, 0, 100)
    assert r.ok and r.data == b"kept\n", r.status


def test_a_file_linked_from_outside_its_export_is_served(env):
    """A file with a second name outside the export (a hard link: a `git clone` links its objects) is opened by
    its handle under whichever name the kernel has at hand, here the one outside: it still lies inside."""
    tmp, table, _, nfs, roots = env
    (tmp / "data" / "sub").mkdir()
    (tmp / "data" / "sub" / "linked").write_text("linked\n")
    os.link(tmp / "data" / "sub" / "linked", tmp / "outside" / "linked")
    sub = lookup(nfs, roots["data"], b"sub")
    fh = lookup(nfs, sub, b"linked")
    export = table.exports.find(str(tmp / "data"))
    decoded = table.codec.decode(fh)
    fd = open_kernel_handle(table.root(export)[0], decoded.handle_type, decoded.data)
    try:
        assert os.readlink(f"/proc/self/fd/{fd}") == str(tmp / "outside" / "linked"), "the kernel gave the inside name"
    finally:
        os.close(fd)
    table.recheck = 0
    for _ in range(2):
        r = nfs("GETATTR", fh)
        assert r.ok and r.obj_attributes.nlink == 2, r.status
    r = nfs("READ", fh, 0, 100)
    assert r.ok and r.data == b"linked\n", r.status
    os.unlink(tmp / "data" / "sub" / "linked")  # its one name now lies outside: moved out of the export
    assert nfs("GETATTR", fh).status == Stat.STALE


def test_subtree_check_makes_a_file_whose_place_is_not_known_stale(tmp_path):
    """Under ``subtree_check`` a file is served only where the kernel shows it inside: after the caches are
    dropped, a file with a second name outside and one with one name are stale, until a LOOKUP of the name finds
    the file again; under ``no_subtree_check`` both are served."""
    (tmp_path / "data").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "data" / "plain").write_text("plain\n")
    (tmp_path / "data" / "linked").write_text("linked\n")
    os.link(tmp_path / "data" / "linked", tmp_path / "outside" / "linked")
    (tmp_path / "data" / "forgotten").write_text("forgotten\n")
    served = {}
    for check in ("subtree_check", "no_subtree_check"):
        exports = parse_exports(f"{tmp_path / 'data'} 127.0.0.1(rw,no_root_squash,{check})\n")
        table = ExportTable(exports, HandleCodec(b"k" * 32))
        nfsd = local_nfsd(table)
        try:
            export = next(iter(exports))
            root = table.handle(export, table.root(export)[0])
            handles = {name: table.handle(export, table.root(export)[0], name)
                       for name in ("plain", "linked", "forgotten")}
            forget_places(tmp_path / "data")
            nfs = Client(Dispatcher([nfsd.program]))
            assert lookup(nfs, root, b"plain") == handles["plain"]  # its place known again
            served[check] = {name: nfs("GETATTR", fh).status for name, fh in handles.items()}
            assert lookup(nfs, root, b"forgotten") == handles["forgotten"]  # found again by its name
            assert nfs("GETATTR", handles["forgotten"]).ok
        finally:
            nfsd.fs.close()
            table.close()
    assert served["no_subtree_check"] == {"plain": Stat.OK, "linked": Stat.OK, "forgotten": Stat.OK}
    assert served["subtree_check"] == {"plain": Stat.OK, "linked": Stat.STALE, "forgotten": Stat.STALE}


def test_handles_survive_rename(env):
    tmp, _, _, nfs, roots = env
    d = nfs("MKDIR", roots["data"], b"d1", Sattr3(mode=0o755)).obj
    f = create(nfs, d, b"f")
    assert nfs("RENAME", roots["data"], b"d1", roots["data"], b"d2").ok
    assert nfs("GETATTR", f).ok and nfs("LOOKUP", d, b"f").ok
    assert (tmp / "data" / "d2" / "f").exists()


# -- names and the edges of an export ---------------------------------------------


def test_dotdot_stops_at_the_export_root(env):
    _, _, _, nfs, roots = env
    assert lookup(nfs, roots["data"], b"..") == roots["data"]
    sub = nfs("MKDIR", roots["data"], b"sub", Sattr3()).obj
    assert lookup(nfs, sub, b"..") == roots["data"]
    r = nfs("READDIRPLUS", roots["data"], 0, b"\0" * 8, 4096, 65536)
    dotdot = [e for e in r.entries if e.name == b".."][0]
    assert dotdot.handle == roots["data"]


def test_a_symlink_out_of_the_export_is_only_a_symlink(env):
    tmp, _, _, nfs, roots = env
    os.symlink(str(tmp / "outside"), tmp / "data" / "escape")
    r = nfs("LOOKUP", roots["data"], b"escape")
    assert r.ok and r.obj_attributes.type == 5  # NF3LNK: the client resolves it, on its own side
    assert nfs("READLINK", r.object).data == str(tmp / "outside").encode()
    assert nfs("LOOKUP", r.object, b"secret").status == Stat.NOTDIR
    assert nfs("READ", r.object, 0, 100).status == Stat.INVAL


@pytest.mark.parametrize("name,status", [
    (b"a/b", Stat.INVAL), (b"a\0b", Stat.INVAL), (b"x" * 256, Stat.NAMETOOLONG), (b"", Stat.INVAL),
])
def test_bad_names(env, name, status):
    tmp, _, _, nfs, roots = env
    r = nfs("CREATE", roots["data"], name, 0, Sattr3())
    assert r.status == status
    before, after = r.dir_wcc
    assert before is not None and after is not None, "the error reply carries the directory's wcc"
    assert nfs("LOOKUP", roots["data"], name).status == status
    assert nfs("MKDIR", roots["data"], name, Sattr3()).status == status
    assert os.listdir(tmp / "data") == []


def test_a_255_byte_name_works(env):
    tmp, _, _, nfs, roots = env
    create(nfs, roots["data"], b"n" * 255)
    assert os.listdir(tmp / "data") == ["n" * 255]


def test_rename_and_link_across_exports_is_xdev(env):
    _, _, _, nfs, roots = env
    f = create(nfs, roots["data"], b"f")
    r = nfs("RENAME", roots["data"], b"f", roots["other"], b"f")
    assert r.status == Stat.XDEV and r.fromdir_wcc[0] is not None
    assert nfs("LINK", f, roots["other"], b"f").status == Stat.XDEV


# -- export options on every call -------------------------------------------------


def test_secure_export_refuses_unprivileged_ports(env):
    _, _, _, nfs, roots = env
    assert nfs("GETATTR", roots["data"], peer=UNPRIVILEGED).status == Stat.PERM
    assert nfs("GETATTR", roots["ro"], peer=UNPRIVILEGED).ok  # insecure


def test_a_client_no_export_admits_gets_nothing(env):
    _, _, _, nfs, roots = env
    assert nfs("GETATTR", roots["data"], peer=("10.1.2.3", 700)).status == Stat.ACCES
    assert nfs("READDIR", roots["data"], 0, b"\0" * 8, 4096, peer=("10.1.2.3", 700)).status == Stat.ACCES


def test_ro_export_refuses_changes_with_rofs(env):
    tmp, _, _, nfs, roots = env
    r = nfs("CREATE", roots["ro"], b"new", 0, Sattr3())
    assert r.status == Stat.ROFS and r.dir_wcc[1] is not None
    f = lookup(nfs, roots["ro"], b"readme")
    assert nfs("WRITE", f, 0, b"x", 2).status == Stat.ROFS
    assert nfs("SETATTR", f, Sattr3(mode=0o600)).status == Stat.ROFS
    assert nfs("REMOVE", roots["ro"], b"readme").status == Stat.ROFS
    assert nfs("READ", f, 0, 100).data == b"read only\n"
    access = nfs("ACCESS", f, 0x3F).access
    assert access & 0x01 and not access & (0x04 | 0x08 | 0x10)
    assert (tmp / "ro" / "readme").read_text() == "read only\n"


@pytest.mark.parametrize("env", ["inline", "ring"], indirect=True)
def test_root_squash_makes_root_nobody(env):
    tmp, _, _, nfs, roots = env
    f = create(nfs, roots["squash"], b"by-root")
    assert os.stat(tmp / "squash" / "by-root").st_uid == NOBODY
    assert nfs("SETATTR", f, Sattr3(uid=0)).status == Stat.PERM
    assert nfs("MKNOD", roots["squash"], b"dev", 4, Sattr3(mode=0o600), (1, 3)).status == Stat.PERM
    assert nfs("MKNOD", roots["squash"], b"fifo", 7, Sattr3(mode=0o600)).ok
    assert stat.S_ISFIFO(os.lstat(tmp / "squash" / "fifo").st_mode)


def test_no_root_squash_keeps_root(env):
    tmp, _, _, nfs, roots = env
    f = create(nfs, roots["data"], b"f")
    assert nfs("SETATTR", f, Sattr3(uid=1234, gid=4321)).ok
    st = os.stat(tmp / "data" / "f")
    assert (st.st_uid, st.st_gid) == (1234, 4321)
    assert nfs("MKNOD", roots["data"], b"null", 4, Sattr3(mode=0o666), (1, 3)).ok
    assert os.stat(tmp / "data" / "null").st_rdev == os.makedev(1, 3)


# -- permissions are the kernel's ---------------------------------------------------


@pytest.mark.parametrize("env", ["inline", "ring"], indirect=True)
def test_a_user_is_refused_where_the_mode_bits_refuse(env):
    tmp, _, _, nfs, roots = env
    secret = create(nfs, roots["data"], b"secret", mode=0o600)
    pub = create(nfs, roots["data"], b"public", mode=0o644)
    nfs("WRITE", secret, 0, b"root only", 2)
    assert nfs("READ", secret, 0, 100, cred=USER).status == Stat.ACCES
    assert nfs("READ", pub, 0, 100, cred=USER).ok
    assert nfs("WRITE", pub, 0, b"x", 2, cred=USER).status == Stat.ACCES
    assert nfs("ACCESS", secret, 0x3F, cred=USER).access == 0
    assert nfs("ACCESS", pub, 0x3F, cred=USER).access == 0x01
    closed = nfs("MKDIR", roots["data"], b"closed", Sattr3(mode=0o755)).obj
    assert nfs("CREATE", closed, b"x", 0, Sattr3(), cred=USER).status == Stat.ACCES
    mine = nfs("MKDIR", roots["data"], b"mine", Sattr3(mode=0o755, uid=1000, gid=1000)).obj
    f = create(nfs, mine, b"f", mode=0o600, cred=USER)
    assert os.stat(tmp / "data" / "mine" / "f").st_uid == 1000
    assert nfs("WRITE", f, 0, b"mine", 2, cred=USER).ok
    assert nfs("SETATTR", f, Sattr3(uid=0), cred=USER).status == Stat.PERM
    assert nfs("ACCESS", mine, 0x3F, cred=USER).access == 0x01 | 0x02 | 0x04 | 0x08 | 0x10


@pytest.mark.parametrize("env", ["inline", "ring"], indirect=True)
def test_the_owner_may_write_a_file_it_made_read_only(env):
    _, _, _, nfs, roots = env
    mine = nfs("MKDIR", roots["data"], b"mine", Sattr3(mode=0o777)).obj
    f = create(nfs, mine, b"f", mode=0o444, cred=USER)
    assert nfs("WRITE", f, 0, b"cached data", 0, cred=USER).ok  # knfsd's owner override


@pytest.mark.parametrize("env", ["inline", "ring"], indirect=True)
def test_created_modes_ignore_the_server_umask(env):
    tmp, _, nfsd, nfs, roots = env
    old = os.umask(0o077)
    try:
        nfsd.fs.caller.umask = 0o077
        create(nfs, roots["data"], b"f", mode=0o664)
        nfs("MKDIR", roots["data"], b"d", Sattr3(mode=0o775))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp / "data" / "f").st_mode) == 0o664
    assert stat.S_IMODE(os.stat(tmp / "data" / "d").st_mode) == 0o775


# -- data ---------------------------------------------------------------------------


@pytest.mark.parametrize("env", ["inline", "ring"], indirect=True)
def test_write_read_commit(env):
    tmp, _, nfsd, nfs, roots = env
    f = create(nfs, roots["data"], b"f")
    data = os.urandom(300_000)
    w = nfs("WRITE", f, 0, data, 0)
    assert w.ok and w.count == len(data) and w.committed == 0 and w.verf == nfsd.write_verifier
    before, after = w.file_wcc
    assert before.size == 0 and after.size == len(data)
    if isinstance(nfsd.fs.kernel_io, Ring):  # a large WRITE's data went by the ring, the small one below in place
        assert nfsd.fs.kernel_io.written == [(0, len(data))]
    c = nfs("COMMIT", f, 0, 0)
    assert c.ok and c.verf == w.verf
    assert nfs("WRITE", f, len(data), b"tail", 2).committed == 2
    r = nfs("READ", f, 0, len(data) + 100)
    assert r.data == data + b"tail" and r.eof and r.count == len(data) + 4
    assert (tmp / "data" / "f").read_bytes() == data + b"tail"
    r = nfs("READ", f, 10, 5)
    assert r.data == data[10:15] and not r.eof


def _open_on(name: str) -> list[str]:
    """What this process's descriptors open on files called ``name`` (a deleted one ends in " (deleted)")."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if os.path.basename(target).startswith(name):
            out.append(target)
    return out


@pytest.mark.parametrize("env", ["inline", "ring"], indirect=True)
def test_the_writes_after_a_create_go_through_the_descriptor_it_opened(env):
    tmp, _, nfsd, nfs, roots = env
    f = create(nfs, roots["data"], b"kept", mode=0o444, cred=USER)  # read-only: only its owner writes it
    assert len(nfsd.fs.files) == 1 and nfsd.fs.files.hits == 0
    w = nfs("WRITE", f, 0, b"first ", 0, cred=USER)
    assert w.ok and w.count == 6 and w.file_wcc[0].size == 0 and w.file_wcc[1].size == 6
    assert nfs("WRITE", f, 6, b"second", 0, cred=USER).ok
    assert nfsd.fs.files.hits == 2 and nfsd.fs.files.misses == 0
    assert nfs("COMMIT", f, 0, 0, cred=USER).ok
    assert (tmp / "data" / "kept").read_bytes() == b"first second"


def test_a_kept_descriptor_serves_no_other_caller(env):
    tmp, _, nfsd, nfs, roots = env
    f = create(nfs, roots["data"], b"roots", mode=0o644)  # root's descriptor is kept
    assert len(nfsd.fs.files) == 1
    assert nfs("WRITE", f, 0, b"intruder", 2, cred=USER).status == Stat.ACCES
    assert (tmp / "data" / "roots").read_bytes() == b""
    assert nfs("WRITE", f, 0, b"root", 2).ok


def test_a_permission_change_retires_a_kept_descriptor(env):
    tmp, _, nfsd, nfs, roots = env
    f = create(nfs, roots["data"], b"shared", mode=0o666)
    other = Credential(1001, 1001, (1001,), "test")
    assert nfs("WRITE", f, 0, b"one", 0, cred=other).ok  # opened for user 1001, and kept
    assert nfs("WRITE", f, 3, b"two", 0, cred=other).ok
    assert nfsd.fs.files.hits == 1
    os.chmod(tmp / "data" / "shared", 0o644)  # on the server: 1001 may no longer write
    assert nfs("WRITE", f, 6, b"three", 0, cred=other).status == Stat.ACCES
    assert (tmp / "data" / "shared").read_bytes() == b"onetwo"


def test_the_reads_of_a_file_go_through_one_descriptor_kept_for_their_caller(env):
    """The first READ opens the file as its caller and keeps the descriptor; the next READs of that caller use
    it, another caller does not (the kernel decides for it), and a permission change retires it."""
    tmp, _, nfsd, nfs, roots = env
    (tmp / "data" / "mine").write_bytes(b"0123456789")
    os.chown(tmp / "data" / "mine", 1000, 1000)
    os.chmod(tmp / "data" / "mine", 0o600)
    f = lookup(nfs, roots["data"], b"mine")
    assert nfs("READ", f, 0, 4, cred=USER).data == b"0123"
    assert len(nfsd.fs.files) == 1 and _open_on("mine")
    hits = nfsd.fs.files.hits
    assert nfs("READ", f, 4, 4, cred=USER).data == b"4567"
    assert nfs("READ", f, 8, 4, cred=USER).data == b"89"
    assert nfsd.fs.files.hits == hits + 2
    other = Credential(1001, 1001, (1001,), "test")
    assert nfs("READ", f, 0, 4, cred=other).status == Stat.ACCES  # 0600: not through 1000's descriptor
    assert nfs("READ", f, 0, 4, cred=USER).data == b"0123"
    os.chmod(tmp / "data" / "mine", 0o000)  # on the server: only the owner override lets 1000 read now
    assert nfs("READ", f, 0, 4, cred=other).status == Stat.ACCES
    assert nfs("READ", f, 0, 4, cred=USER).data == b"0123"
    assert nfs("REMOVE", roots["data"], b"mine").ok
    assert _open_on("mine") == [] and len(nfsd.fs.files) == 0


def test_remove_closes_the_kept_descriptor(env):
    tmp, _, nfsd, nfs, roots = env
    f = create(nfs, roots["data"], b"doomed-file")
    assert nfs("WRITE", f, 0, b"x" * 5000, 0).ok
    assert _open_on("doomed-file")
    assert nfs("REMOVE", roots["data"], b"doomed-file").ok
    assert _open_on("doomed-file") == [] and len(nfsd.fs.files) == 0  # its blocks are free


@pytest.mark.parametrize("env", ["ring"], indirect=True)
def test_a_large_write_the_full_ring_refuses_is_written_by_the_pool(env):
    tmp, _, nfsd, nfs, roots = env
    f = create(nfs, roots["data"], b"f")
    pool = []
    nfsd.in_thread = lambda fn, *a: (pool.append(fn), defer.maybeDeferred(fn, *a))[1]
    nfsd.fs.kernel_io.room = False
    data = os.urandom(200_000)
    w = nfs("WRITE", f, 4096, data, 2)  # FILE_SYNC: written and synced
    assert w.ok and w.count == len(data) and w.committed == 2
    assert w.file_wcc[1].size == 4096 + len(data)
    assert nfsd.fs.kernel_io.written == [] and len(pool) == 1  # the whole call ran in the pool
    assert (tmp / "data" / "f").read_bytes() == bytes(4096) + data
    nfsd.fs.kernel_io.room = True
    w = nfs("WRITE", f, 0, data, 2)  # by the ring, then synced, before the reply
    assert w.ok and w.count == len(data) and w.committed == 2
    assert nfsd.fs.kernel_io.written == [(0, len(data))] and len(pool) == 1
    assert (tmp / "data" / "f").read_bytes() == data + data[len(data) - 4096:]


def test_a_huge_read_is_clamped_to_rtmax(env):
    tmp, _, _, nfs, roots = env
    (tmp / "data" / "big").write_bytes(b"z" * (RTMAX + 5000))
    f = lookup(nfs, roots["data"], b"big")
    r = nfs("READ", f, 0, 1 << 30)
    assert r.ok and r.count == RTMAX and not r.eof
    info = nfs("FSINFO", roots["data"])
    assert info.rtmax == info.wtmax == RTMAX
    r = nfs("READ", f, 0, 1 << 30, netid="udp")
    assert r.count == UDP_XFER
    assert nfs("FSINFO", roots["data"], netid="udp").rtmax == UDP_XFER
    assert nfs("READ", f, 1 << 62, 100).data == b""


def test_a_large_read_runs_inline_from_the_page_cache_and_in_the_pool_when_the_disk_is_needed(env, monkeypatch):
    """A READ over SMALL_IO tries preadv2(RWF_NOWAIT) inline; if the kernel would wait (EAGAIN), or has only part
    of the range cached, the whole call runs again in the pool.  The data is right on every path."""
    monkeypatch.setattr(local_fs, "all_cached", lambda fd, offset, length: None)  # cachestat cannot say
    tmp, _, nfsd, nfs, roots = env
    pooled = []
    nfsd.in_thread = lambda f, *a: (pooled.append(a[1][1:]), defer.maybeDeferred(f, *a))[1]
    data = os.urandom(4 * SMALL_IO + 123)
    (tmp / "data" / "big").write_bytes(data)
    f = lookup(nfs, roots["data"], b"big")
    real = os.preadv
    probe = os.open(tmp / "data" / "big", os.O_RDONLY)
    try:
        real(probe, [bytearray(10)], 0, os.RWF_NOWAIT)
    except OSError as e:  # tmpfs and others refuse the flag: a filesystem whose page cache answers it is played
        assert e.errno == errno.EOPNOTSUPP
        refusing = os.preadv

        def real(fd, bufs, off, flags=0):
            return refusing(fd, bufs, off, flags & ~os.RWF_NOWAIT)

        monkeypatch.setattr(os, "preadv", real)
    finally:
        os.close(probe)
    r = nfs("READ", f, 0, 2 * SMALL_IO)
    assert r.data == data[:2 * SMALL_IO] and not r.eof and pooled == []
    r = nfs("READ", f, 3 * SMALL_IO, 2 * SMALL_IO)  # a short read at the end of the file is not "part cached"
    assert r.data == data[3 * SMALL_IO:] and r.eof and pooled == []

    def would_block(fd, bufs, off, flags=0):
        raise BlockingIOError(errno.EAGAIN, "would block")

    monkeypatch.setattr(os, "preadv", would_block)
    r = nfs("READ", f, 100, 2 * SMALL_IO)
    assert r.data == data[100:100 + 2 * SMALL_IO] and pooled == [(100, 2 * SMALL_IO)]
    # only the first 1000 bytes cached: not a short read at EOF, so the pool reads it all
    monkeypatch.setattr(os, "preadv", lambda fd, bufs, off, flags=0: real(fd, [memoryview(bufs[0])[:1000]], off, flags))
    r = nfs("READ", f, 0, 3 * SMALL_IO)
    assert r.data == data[:3 * SMALL_IO] and pooled[-1] == (0, 3 * SMALL_IO) and len(pooled) == 2
    assert nfs("READ", f, 0, 100).data == data[:100] and len(pooled) == 2  # a small READ never tries the pool
    refusals = []

    def refuse(fd, bufs, off, flags=0):
        refusals.append(1)
        raise OSError(errno.EOPNOTSUPP, "not supported")

    monkeypatch.setattr(os, "preadv", refuse)
    assert nfs("READ", f, 0, 2 * SMALL_IO).data == data[:2 * SMALL_IO] and len(pooled) == 3
    assert nfs("READ", f, 0, 2 * SMALL_IO).data == data[:2 * SMALL_IO] and len(pooled) == 4
    assert refusals == [1] and len(nfsd.fs._nowait_refused) == 1  # the filesystem's refusal is remembered: not asked again


def test_a_large_read_the_page_cache_holds_leaves_as_a_file_slice(env, monkeypatch):
    """cachestat(2) says every page of the range is cached: the READ answers inline with a FileSlice (sendfile
    over TCP), whose bytes are the file's; over UDP, or when a page is missing, it reads as before."""
    from nfsstack.nfs3.local import as_caller
    from nfsstack.rpc import fileslice

    tmp, _, nfsd, nfs, roots = env
    pooled, answers, made = [], [], []
    nfsd.in_thread = lambda f, *a: (pooled.append(a[1][1:]), defer.maybeDeferred(f, *a))[1]
    monkeypatch.setattr(local_fs, "all_cached",
                        lambda *a: (answers.append(as_caller.all_cached(*a)), answers[-1])[1])
    real_init = fileslice.FileSlice.__init__
    monkeypatch.setattr(fileslice.FileSlice, "__init__", lambda self, *a: (made.append(a[1:]), real_init(self, *a))[1])
    data = os.urandom(4 * SMALL_IO + 123)
    (tmp / "data" / "big").write_bytes(data)
    with open(tmp / "data" / "big", "rb") as fh:
        assert fh.read() == data  # into the page cache
    f = lookup(nfs, roots["data"], b"big")
    r = nfs("READ", f, 100, 2 * SMALL_IO)
    if answers[-1] is None:
        pytest.skip("this kernel has no cachestat(2)")
    assert answers[-1] is True and made == [(100, 2 * SMALL_IO)] and pooled == []
    assert r.data == data[100:100 + 2 * SMALL_IO] and not r.eof and r.count == 2 * SMALL_IO
    r = nfs("READ", f, 3 * SMALL_IO, 2 * SMALL_IO)  # to the end of the file: the slice stops there
    assert r.data == data[3 * SMALL_IO:] and r.eof and made[-1] == (3 * SMALL_IO, SMALL_IO + 123)
    r = nfs("READ", f, 0, UDP_XFER, netid="udp")
    assert r.data == data[:UDP_XFER] and len(made) == 2
    with open(tmp / "data" / "big", "rb") as fh:
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    r = nfs("READ", f, 0, 2 * SMALL_IO)
    assert r.data == data[:2 * SMALL_IO] and (answers[-1] is False) == (len(made) == 2)


def test_write_count_larger_than_data_is_inval(env):
    _, _, _, nfs, roots = env
    f = create(nfs, roots["data"], b"f")
    assert nfs("WRITE", f, 0, b"abc", 0, 10).status == Stat.INVAL


def test_setattr_size_times_and_guard(env):
    tmp, _, _, nfs, roots = env
    f = create(nfs, roots["data"], b"f")
    nfs("WRITE", f, 0, b"hello world", 2)
    ctime = nfs("GETATTR", f).obj_attributes.ctime
    assert nfs("SETATTR", f, Sattr3(size=5), ctime + 1).status == Stat.NOT_SYNC
    r = nfs("SETATTR", f, Sattr3(size=5, mtime=981173106_000000000), ctime)
    assert r.ok and r.obj_wcc[1].size == 5 and r.obj_wcc[1].mtime == 981173106_000000000
    assert (tmp / "data" / "f").read_bytes() == b"hello"
    d = nfs("MKDIR", roots["data"], b"d", Sattr3()).obj
    assert nfs("SETATTR", d, Sattr3(size=0)).status == Stat.ISDIR


@pytest.mark.parametrize("env", ["inline", "ring"], indirect=True)
def test_create_modes(env):
    tmp, _, _, nfs, roots = env
    create(nfs, roots["data"], b"f")
    (tmp / "data" / "f").write_text("keep me")
    r = nfs("CREATE", roots["data"], b"f", 1, Sattr3())
    assert r.status == Stat.EXIST and r.dir_wcc[0] is not None
    assert nfs("CREATE", roots["data"], b"f", 0, Sattr3()).ok  # UNCHECKED: an existing file stays
    assert (tmp / "data" / "f").read_text() == "keep me"
    assert nfs("CREATE", roots["data"], b"f", 0, Sattr3(size=0)).ok
    assert (tmp / "data" / "f").read_text() == ""
    verf = b"\x12\x34\x56\x78\x9a\xbc\xde\xf0"
    first = nfs("CREATE", roots["data"], b"x", 2, verf)
    again = nfs("CREATE", roots["data"], b"x", 2, verf)  # a retransmission: the same file
    assert first.ok and again.ok and first.obj == again.obj
    assert nfs("CREATE", roots["data"], b"x", 2, b"\0" * 8).status == Stat.EXIST


def test_remove_rmdir_and_their_errors_carry_wcc(env):
    tmp, _, _, nfs, roots = env
    r = nfs("REMOVE", roots["data"], b"missing")
    assert r.status == Stat.NOENT and r.dir_wcc[0] is not None and r.dir_wcc[1] is not None
    d = nfs("MKDIR", roots["data"], b"d", Sattr3()).obj
    create(nfs, d, b"f")
    assert nfs("RMDIR", roots["data"], b"d").status == Stat.NOTEMPTY
    assert nfs("REMOVE", roots["data"], b"d").status == Stat.ISDIR
    assert nfs("RMDIR", d, b"..").status == Stat.NOTEMPTY
    assert nfs("REMOVE", d, b"f").ok
    r = nfs("RMDIR", roots["data"], b"d")
    assert r.ok and r.dir_wcc[1].nlink == 2
    assert os.listdir(tmp / "data") == []


def test_symlink_link_mknod(env):
    tmp, _, _, nfs, roots = env
    f = create(nfs, roots["data"], b"f")
    r = nfs("SYMLINK", roots["data"], b"s", Sattr3(), b"f")
    assert r.ok and r.obj_attributes.type == 5 and os.readlink(tmp / "data" / "s") == "f"
    assert nfs("READLINK", r.obj).data == b"f"
    assert nfs("READLINK", f).status == Stat.INVAL
    r = nfs("LINK", f, roots["data"], b"hard")
    assert r.ok and r.file_attributes.nlink == 2
    assert os.stat(tmp / "data" / "hard").st_ino == os.stat(tmp / "data" / "f").st_ino
    assert nfs("LINK", f, roots["data"], b"hard").status == Stat.EXIST
    assert nfs("MKNOD", roots["data"], b"sock", 6, Sattr3(mode=0o600)).ok
    assert stat.S_ISSOCK(os.lstat(tmp / "data" / "sock").st_mode)
    assert nfs("MKNOD", roots["data"], b"reg", 1, Sattr3()).status == Stat.BADTYPE


def test_setattr_of_a_symlink_changes_the_link_not_its_target(env):
    """chown -h and touch -h: the owner and times of the symlink itself change, and the reply says so (an lchown
    of /proc/self/fd/N changed procfs's magic link and reported success)."""
    tmp, _, _, nfs, roots = env
    create(nfs, roots["data"], b"target")
    link = nfs("SYMLINK", roots["data"], b"link", Sattr3(), b"target").obj
    r = nfs("SETATTR", link, Sattr3(uid=1234, gid=4321))
    assert r.ok and (r.obj_wcc[1].uid, r.obj_wcc[1].gid) == (1234, 4321)
    assert (os.lstat(tmp / "data" / "link").st_uid, os.lstat(tmp / "data" / "link").st_gid) == (1234, 4321)
    assert os.stat(tmp / "data" / "target").st_uid == 0
    r = nfs("SETATTR", link, Sattr3(atime=1_000_000_000_000_000_000, mtime=2_000_000_000_000_000_000))
    assert r.ok and os.lstat(tmp / "data" / "link").st_mtime_ns == 2_000_000_000_000_000_000
    assert os.stat(tmp / "data" / "target").st_mtime_ns != 2_000_000_000_000_000_000
    assert nfs("SETATTR", link, Sattr3(uid=0), cred=USER).status == Stat.PERM  # not the owner's to give away


def test_setattr_syncs_the_object_changed_and_nothing_when_it_sets_nothing(env, monkeypatch):
    """On a sync export (the default), SETATTR's change is on stable storage before the reply, as knfsd's
    nfsd_setattr makes it: a file by its own fsync, a directory by the directory's, a symlink (which the server
    cannot open to sync) by a syncfs of its filesystem, never a sync(2) of the host's every filesystem.  A
    SETATTR that sets nothing, or only a mode on a symlink (Linux keeps none), syncs nothing: a client looping
    on it does not make the server sync."""
    tmp, _, _, nfs, roots = env
    (tmp / "data" / "f").write_text("x")
    (tmp / "data" / "d").mkdir()
    os.symlink("f", tmp / "data" / "l")
    handles = {name: lookup(nfs, roots["data"], name.encode()) for name in ("f", "d", "l")}
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(("fsync", os.fstat(fd).st_ino)))
    monkeypatch.setattr(os, "sync", lambda: synced.append(("sync", None)))
    monkeypatch.setattr(dirsync, "syncfs", lambda fd: synced.append(("syncfs", os.fstat(fd).st_dev)))
    ino = {name: os.lstat(tmp / "data" / name).st_ino for name in ("f", "d", "l")}
    dev = os.stat(tmp / "data").st_dev
    for name, attrs in (("f", Sattr3(mode=0o600)), ("d", Sattr3(mode=0o700)), ("l", Sattr3(uid=1234))):
        synced.clear()
        assert nfs("SETATTR", handles[name], attrs).ok
        assert synced == ([("syncfs", dev)] if name == "l" else [("fsync", ino[name])]), (name, synced)
    synced.clear()
    assert nfs("SETATTR", handles["f"], Sattr3()).ok and nfs("SETATTR", handles["l"], Sattr3(mode=0o600)).ok
    assert synced == []


def test_truncating_setattr_syncs_through_the_descriptor_it_wrote(env, monkeypatch):
    """A SETATTR of a size fsyncs the file through the descriptor the truncation was made with: a server that
    may write a file but not read it (a plain user's, a mode 0200 file) syncs it all the same, and opens it no
    second time."""
    tmp, _, _, nfs, roots = env
    (tmp / "data" / "f").write_text("x" * 100)
    fh = lookup(nfs, roots["data"], b"f")
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE))
    assert nfs("SETATTR", fh, Sattr3(size=10)).ok
    assert synced == [os.O_WRONLY]
    assert (tmp / "data" / "f").stat().st_size == 10


@pytest.mark.parametrize("env", ["inline", "ring"], indirect=True)
def test_creates_sync_what_they_change_after_making_it(env, monkeypatch):
    """On a sync export every CREATE, MKDIR and MKNOD syncs its directory; one that changes the new object
    after making it (a size, an owner, a mode the server's umask took off, an EXCLUSIVE CREATE's verifier; an
    UNCHECKED CREATE's truncation of an existing file) syncs the object too, as knfsd's nfsd_create_setattr
    commits both: on XFS and older ext4 the directory's sync does not carry the object's own changes.  A file
    is synced through the descriptor that wrote it (a server may write a file it may not read).  The usual
    CREATE, which its open makes whole, syncs the directory only.  Inline and by the ring's open."""
    tmp, _, nfsd, nfs, roots = env
    nfsd.fs.caller.umask = 0o022
    data = tmp / "data"
    (data / "existing").write_text("x" * 100)
    synced, modes = [], {}

    def fsync(fd):
        st = os.fstat(fd)
        synced.append(("fsync", st.st_ino))
        if stat.S_ISREG(st.st_mode):
            modes[st.st_ino] = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "sync", lambda: synced.append(("sync", None)))
    monkeypatch.setattr(dirsync, "syncfs", lambda fd: synced.append(("syncfs", os.fstat(fd).st_dev)))
    d = os.stat(data).st_ino
    cases = [
        ("plain", "CREATE", (0, Sattr3(mode=0o644)), False),
        ("sized", "CREATE", (0, Sattr3(mode=0o644, size=10)), True),
        ("owned", "CREATE", (0, Sattr3(mode=0o644, uid=4321)), True),
        ("widened", "CREATE", (1, Sattr3(mode=0o666)), True),  # the umask took 022 off: set after
        ("existing", "CREATE", (0, Sattr3(size=0)), True),
        ("exclusive", "CREATE", (2, b"verifier"), True),
        ("subdir", "MKDIR", (Sattr3(mode=0o755),), False),
        ("owned-dir", "MKDIR", (Sattr3(mode=0o755, gid=4321),), True),
    ]
    for name, proc, args, altered in cases:
        synced.clear()
        r = nfs(proc, roots["data"], name.encode(), *args)
        assert r.ok, (name, r.status)
        ino = os.lstat(data / name).st_ino
        expected = [("fsync", d)] + ([("fsync", ino)] if altered else [])
        assert sorted(synced) == sorted(expected), (name, synced, expected)
    for name in ("existing", "exclusive"):
        assert modes[os.stat(data / name).st_ino] == os.O_WRONLY, f"{name}: not synced through its writer"
    synced.clear()
    assert nfs("MKNOD", roots["data"], b"fifo", 7, Sattr3(mode=0o644, uid=4321)).ok  # NF3FIFO, then an owner
    assert sorted(synced) == sorted([("fsync", d), ("syncfs", os.stat(data).st_dev)]), synced
    assert (data / "existing").stat().st_size == 0 and (data / "sized").stat().st_size == 10


def test_a_create_is_answered_once_both_its_syncs_have_ended(env):
    """A CREATE that syncs its file and its directory answers when both have ended, even when one fails first:
    the reply releases the call's descriptors, which the other sync may still be using.  A failed sync answers
    NFS3ERR_IO."""
    tmp, _, nfsd, nfs, roots = env

    class Held:
        """Syncs whose end the test decides."""

        can_open = can_write = False

        def __init__(self):
            self.started = []

        def __call__(self, fd, datasync=False):
            d = defer.Deferred()
            self.started.append((fd, os.fstat(fd), d))
            return d

    held = nfsd.fs.kernel_io = Held()
    msg = encode_call(1, 100003, 3, PROC["CREATE"], nfs.cred.to_auth()) + encode(
        "CREATE", roots["data"], b"sized", 0, Sattr3(mode=0o644, size=10))
    reply = nfs.dispatcher.handle(msg, nfs.netid, nfs.peer, ("127.0.0.1", 2049))
    assert isinstance(reply, defer.Deferred)
    kinds = {stat.S_IFMT(st.st_mode): (fd, d) for fd, st, d in held.started}
    assert set(kinds) == {stat.S_IFREG, stat.S_IFDIR}, held.started
    (file_fd, file_sync), (_, dir_sync) = kinds[stat.S_IFREG], kinds[stat.S_IFDIR]
    got = []
    reply.addBoth(got.append)
    dir_sync.errback(OSError(errno.EIO, "the disk failed"))
    assert got == [], "answered while the file's sync still runs"
    os.fstat(file_fd)  # still open: the call has not released it
    file_sync.callback(None)
    assert len(got) == 1
    answer = joined(got[0])
    assert decode("CREATE", answer, decode_reply(answer).offset).status == Stat.IO


def test_readdir_lists_each_name_exactly_once_across_calls(env):
    tmp, _, _, nfs, roots = env
    names = {f"file-{i}".encode() for i in range(1500)}
    for name in names:
        (tmp / "data" / name.decode()).touch()
    for plus in (False, True):
        seen, cookie, calls = [], 0, 0
        while True:
            calls += 1
            if plus:
                r = nfs("READDIRPLUS", roots["data"], cookie, b"\0" * 8, 2048, 8192)
            else:
                r = nfs("READDIR", roots["data"], cookie, b"\xff" * 8, 4096)  # any verifier is accepted
            assert r.ok, r.status
            seen += [e.name for e in r.entries]
            if r.eof:
                break
            cookie = r.entries[-1].cookie
        assert calls > 5
        assert sorted(seen) == sorted(names | {b".", b".."})
        if plus:
            e = next(e for e in r.entries if e.name not in (b".", b".."))
            assert e.attributes.fileid == os.stat(tmp / "data" / e.name.decode()).st_ino
            assert nfs("GETATTR", e.handle).obj_attributes.fileid == e.fileid
    assert nfs("READDIR", roots["data"], 0, b"\0" * 8, 50).status == Stat.TOOSMALL
    f = lookup(nfs, roots["data"], b"file-1")
    assert nfs("READDIR", f, 0, b"\0" * 8, 4096).status == Stat.NOTDIR


def test_readdirplus_attributes_are_fresh(env):
    """Entries' attributes are cached by the raw struct stat: a change made on the server behind nfsd's back,
    or a name given to another object, shows in the very next listing, as with a new stat."""
    tmp, _, _, nfs, roots = env
    path = tmp / "data" / "f"
    path.write_bytes(b"1")

    def entry():
        r = nfs("READDIRPLUS", roots["data"], 0, b"\0" * 8, 4096, 65536)
        assert r.ok
        return next(e for e in r.entries if e.name == b"f")

    first = entry()
    assert first.attributes.size == 1 and entry().attributes == first.attributes
    path.write_bytes(b"12345")
    os.chmod(path, 0o600)
    second = entry()
    assert (second.attributes.size, second.attributes.mode) == (5, 0o600)
    assert second.handle == first.handle
    path.unlink()
    path.write_bytes(b"new")
    third = entry()
    assert third.attributes.fileid == os.stat(path).st_ino and third.attributes.size == 3
    assert nfs("GETATTR", third.handle).obj_attributes.fileid == third.attributes.fileid
    for _ in range(20):  # removed and made again through NFS at once: the inode number may come back
        assert nfs("REMOVE", roots["data"], b"f").ok
        made = create(nfs, roots["data"], b"f")
        again = entry()
        assert again.handle == made and nfs("GETATTR", again.handle).ok


def _listing(nfs, dirfh, plus=True):
    """Every entry of a directory, by name, from READDIRPLUS (or READDIR) calls of a few KiB."""
    entries, cookie = {}, 0
    for _ in range(1000):
        if plus:
            r = nfs("READDIRPLUS", dirfh, cookie, b"\0" * 8, 1024, 4096)
        else:
            r = nfs("READDIR", dirfh, cookie, b"\0" * 8, 1024)
        assert r.ok, r.status
        entries.update((e.name, e) for e in r.entries)
        if r.eof:
            return entries
        cookie = r.entries[-1].cookie
    raise AssertionError("no end of the listing")


@pytest.fixture
def getdents_calls(monkeypatch):
    """How many times nfsd read a directory (a listing served from the cache reads none)."""
    from nfsstack.nfs3.local import dirents

    calls = [0]
    real = dirents.entries

    def counted(*args, **kw):
        calls[0] += 1
        return real(*args, **kw)

    monkeypatch.setattr(dirents, "entries", counted)
    return calls


@pytest.fixture
def deaf(monkeypatch):
    """inotify reports nothing: what keeps the listings exact is then nfsd's own bookkeeping, and the TTL."""
    from nfsstack.nfs3.local import inotify

    monkeypatch.setattr(inotify.Inotify, "events", lambda self: iter(()))


def test_listings_are_kept_until_something_in_them_changes(env, getdents_calls):
    """A listing asked again is served without reading the directory, the same bytes; a name made, an entry
    written, or its attributes changed behind nfsd's back (inotify) all show in the next listing."""
    tmp, _, nfsd, nfs, roots = env
    for i in range(300):
        (tmp / "data" / f"f{i:03}").write_bytes(b"x" * i)
    first = _listing(nfs, roots["data"])
    calls = getdents_calls[0]
    assert calls > 3 and _listing(nfs, roots["data"]) == first
    assert getdents_calls[0] == calls, "the second listing is served from the cache"
    assert _listing(nfs, roots["data"], plus=False).keys() == first.keys()
    assert _listing(nfs, roots["data"], plus=False).keys() == first.keys()
    calls = getdents_calls[0]
    (tmp / "data" / "f007").write_bytes(b"longer now")
    assert _listing(nfs, roots["data"])[b"f007"].attributes.size == 10
    os.chmod(tmp / "data" / "f008", 0o600)
    assert _listing(nfs, roots["data"])[b"f008"].attributes.mode == 0o600
    os.utime(tmp / "data" / "f009", ns=(5_000_000_000, 7_000_000_000))
    assert _listing(nfs, roots["data"])[b"f009"].attributes.mtime == 7_000_000_000
    (tmp / "data" / "new").touch()
    os.unlink(tmp / "data" / "f010")
    names = _listing(nfs, roots["data"]).keys()
    assert b"new" in names and b"f010" not in names
    assert getdents_calls[0] > calls


def test_changes_made_through_nfs_drop_the_listings_without_inotify(env, deaf, getdents_calls):
    """A WRITE, SETATTR, LINK or READ through a handle (the file's dentry may have no path to the directory,
    so inotify may say nothing) drops the listings showing that file."""
    tmp, _, nfsd, nfs, roots = env
    for i in range(50):
        (tmp / "data" / f"f{i:02}").write_bytes(b"abc")
    _listing(nfs, roots["data"])
    f = lookup(nfs, roots["data"], b"f05")
    assert nfs("WRITE", f, 0, b"0123456789", 2).ok
    assert _listing(nfs, roots["data"])[b"f05"].attributes.size == 10
    assert nfs("SETATTR", f, Sattr3(mode=0o640)).ok
    assert _listing(nfs, roots["data"])[b"f05"].attributes.mode == 0o640
    os.mkdir(tmp / "other" / "sub")
    assert nfs("LINK", f, roots["data"], b"f05-again").ok
    entries = _listing(nfs, roots["data"])
    assert entries[b"f05"].attributes.nlink == 2 and b"f05-again" in entries
    g = lookup(nfs, roots["data"], b"f06")
    os.utime(tmp / "data" / "f06", ns=(1_000_000_000, 2_000_000_000))  # unseen: inotify is deaf here
    _listing(nfs, roots["data"])
    nfsd.fs.lister.listings.clear()
    before = _listing(nfs, roots["data"])[b"f06"].attributes.atime
    assert nfs("READ", g, 0, 3).ok  # atime 1 s after the epoch is older than mtime: the read sets it
    assert _listing(nfs, roots["data"])[b"f06"].attributes.atime > before


def test_creates_go_to_the_ring_only_while_they_are_slow(env, monkeypatch):
    """CREATE's open runs inline while that is cheap; once the moving average of inline creates passes
    SLOW_CREATE, the opens go to io_uring, all but one in RESAMPLE_CREATE, which keeps measuring."""
    clock = [0.0]

    def tick():  # every inline create takes 10 us by this clock
        clock[0] += 0.000005
        return clock[0]

    monkeypatch.setattr(local_fs, "perf_counter", tick)
    tmp, _, nfsd, nfs, roots = env
    ring = nfsd.fs.kernel_io = Ring()
    for i in range(20):
        create(nfs, roots["data"], f"cheap{i}".encode())
    assert ring.opened == [] and nfsd.fs.create_cost < local_fs.SLOW_CREATE
    nfsd.fs.create_cost = 1.0
    for i in range(local_fs.RESAMPLE_CREATE * 2):
        create(nfs, roots["data"], f"slow{i}".encode())
    assert len(ring.opened) == local_fs.RESAMPLE_CREATE * 2 - 2  # two were made inline, and measured
    nfsd.fs.create_cost = local_fs.SLOW_CREATE * 1.01
    for i in range(local_fs.RESAMPLE_CREATE * 2):
        create(nfs, roots["data"], f"again{i}".encode())
    assert nfsd.fs.create_cost < local_fs.SLOW_CREATE  # the inline samples were cheap: back to inline
    before = len(ring.opened)
    for i in range(10):
        create(nfs, roots["data"], f"inline{i}".encode())
    assert len(ring.opened) == before
    assert len(os.listdir(tmp / "data")) == 20 + 4 * local_fs.RESAMPLE_CREATE + 10


def test_a_file_the_ring_makes_after_a_listing_shows_in_the_next(env, deaf, getdents_calls):
    """CREATE's open by io_uring finishes after the call returned to the reactor: a listing made in between (and
    kept) is dropped when the file is there, even with inotify deaf and the directory's times in the same tick."""
    tmp, _, nfsd, nfs, roots = env
    held = []

    class Slow(Ring):
        def openat(self, dirfd, name, flags, mode):  # the kernel's worker runs later
            d = defer.Deferred()
            held.append(lambda: d.callback(os.open(name, flags, mode, dir_fd=dirfd)))
            return d

    nfsd.fs.kernel_io = Slow()
    nfsd.fs.create_cost = 1.0
    get, put = nfsd.fs.lister.listings.get, nfsd.fs.lister.listings.put  # as if all happened in one tick of the clock
    nfsd.fs.lister.listings.get = lambda key, stamp: get(key, ())
    nfsd.fs.lister.listings.put = lambda fill, key, stamp, chunk: put(fill, key, (), chunk)
    (tmp / "data" / "old").touch()
    nfs.xid += 1
    msg = encode_call(nfs.xid, 100003, 3, PROC["CREATE"], ROOT_CRED.to_auth()) + encode(
        "CREATE", roots["data"], b"new", 0, Sattr3(mode=0o644))
    reply = nfs.dispatcher.handle(msg, "tcp", PRIVILEGED, ("127.0.0.1", 2049))
    assert isinstance(reply, defer.Deferred) and not reply.called and len(held) == 1
    assert set(_listing(nfs, roots["data"])) == {b".", b"..", b"old"}
    calls = getdents_calls[0]
    assert set(_listing(nfs, roots["data"])) == {b".", b"..", b"old"} and getdents_calls[0] == calls  # kept
    held.pop()()
    reply = settled(reply)
    made = decode("CREATE", reply, decode_reply(reply).offset)
    assert made.ok and made.obj and (tmp / "data" / "new").exists()
    assert set(_listing(nfs, roots["data"])) == {b".", b"..", b"old", b"new"}


def test_entries_changed_from_elsewhere_are_always_fresh(env, deaf):
    """What no event in the directory reports is taken afresh in every reply: a subdirectory's attributes
    (changed by its own contents), a file with another link (written through the other directory), the
    directory itself; and nothing is kept longer than the TTL."""
    from nfsstack.nfs3.local import listings

    tmp, _, nfsd, nfs, roots = env
    data = tmp / "data"
    (data / "sub").mkdir()
    (data / "linked").write_bytes(b"1")
    (data / "elsewhere").mkdir()
    os.link(data / "linked", data / "elsewhere" / "alias")
    (data / "plain").write_bytes(b"1")
    first = _listing(nfs, roots["data"])
    (data / "sub" / "child").touch()
    (data / "elsewhere" / "alias").write_bytes(b"12345")
    (data / "plain").write_bytes(b"123")  # inotify is deaf: this one stays as it was, for up to the TTL
    second = _listing(nfs, roots["data"])
    assert second[b"sub"].attributes.mtime == os.stat(data / "sub").st_mtime_ns != first[b"sub"].attributes.mtime
    assert second[b"linked"].attributes.size == 5
    assert second[b"."].attributes.mtime == os.stat(data).st_mtime_ns
    assert second[b"plain"].attributes.size == 1
    stamp = listings.TTL
    try:
        listings.TTL = 0.0
        assert _listing(nfs, roots["data"])[b"plain"].attributes.size == 3
    finally:
        listings.TTL = stamp


def test_readdir_cookie_survives_unrelated_changes(env):
    tmp, _, _, nfs, roots = env
    for i in range(400):
        (tmp / "data" / f"f{i}").touch()
    r = nfs("READDIR", roots["data"], 0, b"\0" * 8, 2048)
    first = [e.name for e in r.entries]
    cookie = r.entries[-1].cookie
    for name in first[-10:]:
        if name not in (b".", b".."):
            os.unlink(tmp / "data" / name.decode())  # the listed ones go; the rest stays
    (tmp / "data" / "new").touch()
    rest = []
    while True:
        r = nfs("READDIR", roots["data"], cookie, b"\0" * 8, 2048)
        rest += [e.name for e in r.entries]
        if r.eof:
            break
        cookie = r.entries[-1].cookie
    listed = set(first) | set(rest)
    assert {f"f{i}".encode() for i in range(400)} <= listed
    assert len(first) + len(rest) == len(set(first) | set(rest)), "no name twice"


def test_fsstat_fsinfo_pathconf(env):
    tmp, _, _, nfs, roots = env
    s = nfs("FSSTAT", roots["data"])
    vfs = os.statvfs(tmp / "data")
    assert s.ok and s.tbytes == vfs.f_blocks * vfs.f_frsize and s.obj_attributes.type == 2
    i = nfs("FSINFO", roots["data"])
    assert i.ok and i.properties & 0x1b == 0x1b and i.time_delta == 1 and i.maxfilesize > 1 << 40
    p = nfs("PATHCONF", roots["data"])
    assert p.ok and p.name_max == 255 and p.no_trunc and not p.case_insensitive


def test_retransmitted_remove_gets_the_first_reply(env):
    tmp, _, _, nfs, roots = env
    create(nfs, roots["data"], b"f")
    msg = encode_call(777, 100003, 3, PROC["REMOVE"], ROOT_CRED.to_auth()) + encode("REMOVE", roots["data"], b"f")
    d = nfs.dispatcher
    first = settled(d.handle(msg, "udp", PRIVILEGED, ("127.0.0.1", 2049)))
    again = settled(d.handle(msg, "udp", PRIVILEGED, ("127.0.0.1", 2049)))
    assert first == again
    assert decode("REMOVE", first, decode_reply(first).offset).ok


@given(st.builds(Sattr3, st.none() | st.integers(0, 0o7777), st.none() | st.integers(0, 2**32 - 1),
                 st.none() | st.integers(0, 2**32 - 1), st.none() | st.integers(0, 2**64 - 1),
                 st.none() | st.just("now") | st.integers(0, 2**32 - 1).map(lambda s: s * 1_000_000_000 + 7),
                 st.none() | st.just("now") | st.integers(0, 2**32 - 1).map(lambda s: s * 1_000_000_000)))
def test_sattr3_roundtrip(attrs):
    p = Packer()
    pack_sattr(p, attrs)
    u = Unpacker(p.getvalue())
    assert unpack_sattr(u) == attrs
    u.done()


@given(st.binary(max_size=200), st.sampled_from(sorted(PROC)))
def test_fuzz_nfs3_argument_decoders(data, proc):
    from nfsstack.nfs3.program import PROCEDURES

    number = PROC[proc]
    if number == 0:
        return
    try:
        PROCEDURES[number].decode(Unpacker(data))
    except (XDRError, ValueError):
        pass


def test_removed_files_leave_no_cached_descriptor(env):
    """A cached O_PATH descriptor would keep a removed file's blocks allocated (a full disk would stay full)."""
    tmp, table, _, nfs, roots = env
    f = create(nfs, roots["data"], b"big")
    assert nfs("GETATTR", f).ok and len(table._fds) >= 1
    cached = {os.fstat(fd).st_ino for _, fd, _, _ in table._fds.values()}
    ino = os.stat(tmp / "data" / "big").st_ino
    assert ino in cached
    assert nfs("REMOVE", roots["data"], b"big").ok
    assert ino not in {os.fstat(fd).st_ino for _, fd, _, _ in table._fds.values()}
    g = create(nfs, roots["data"], b"local")
    nfs("GETATTR", g)
    os.unlink(tmp / "data" / "local")  # removed on the server, not through NFS
    assert table.sweep() >= 1
    assert nfs("GETATTR", g).status == Stat.STALE


def _valid_args(proc, root, rnd_bytes, name):
    s = Sattr3(mode=0o644)
    return {
        "GETATTR": (root,), "SETATTR": (root, Sattr3(mode=0o755)), "LOOKUP": (root, name), "ACCESS": (root, 0x3F),
        "READLINK": (root,), "READ": (root, 0, 4096), "WRITE": (root, 0, rnd_bytes, 0),
        "CREATE": (root, name, 0, s), "MKDIR": (root, name, s), "SYMLINK": (root, name, s, b"target"),
        "MKNOD": (root, name, 7, s), "REMOVE": (root, name), "RMDIR": (root, name),
        "RENAME": (root, name, root, name + b"2"), "LINK": (root, root, name),
        "READDIR": (root, 0, b"\0" * 8, 4096), "READDIRPLUS": (root, 0, b"\0" * 8, 4096, 8192),
        "FSSTAT": (root,), "FSINFO": (root,), "PATHCONF": (root,), "COMMIT": (root, 0, 0),
    }[proc]


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "data").mkdir()
    exports = parse_exports(f"{tmp / 'data'} 127.0.0.1(rw,no_root_squash)\n")
    table = ExportTable(exports, HandleCodec(b"k" * 32))
    nfsd = local_nfsd(table)
    fd = os.open(tmp / "data", os.O_RDONLY)
    root = table.handle(list(exports)[0], fd)
    os.close(fd)
    yield Dispatcher([nfsd.program]), root, tmp / "data"
    table.close()


@given(st.sampled_from(sorted(p for p in PROC if p != "NULL")), st.binary(min_size=1, max_size=64),
       st.binary(min_size=1, max_size=20), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6))
def test_fuzz_nfs3_handlers_with_damaged_calls(fuzz_env, proc, data, name, flips):
    """Valid calls with bytes changed: every one gets an answer, never SERVERFAULT or SYSTEM_ERR."""
    from nfsstack.nfs3.client import encode as enc

    d, root, where = fuzz_env
    args = bytearray(enc(proc, *_valid_args(proc, root, data, name)))
    for pos, value in flips:
        if pos < len(args):
            args[pos] = value
    msg = encode_call(1, 100003, 3, PROC[proc], ROOT_CRED.to_auth()) + bytes(args)
    reply = settled(d.handle(msg, "tcp", PRIVILEGED, ("127.0.0.1", 2049)))
    header = decode_reply(reply)
    if header.error is not None:
        assert str(header.error) == "GARBAGE_ARGS", header.error
        return
    status = int.from_bytes(reply[header.offset : header.offset + 4], "big")
    assert status != Stat.SERVERFAULT, (proc, bytes(args).hex())


def test_a_failed_sync_is_an_error_and_a_new_write_verifier(env):
    """COMMIT's fsync through the syncer (nfs3/local/aiosync.py) failing: NFS3ERR_IO, and the write verifier changes, so
    the client resends what it had not seen committed (RFC 1813 section 3.3.21)."""
    import errno

    _, _, nfsd, nfs, roots = env
    f = create(nfs, roots["data"], b"f")
    w = nfs("WRITE", f, 0, b"data", 0)
    assert w.ok
    synced = []
    nfsd.fs.kernel_io = lambda fd, datasync: (synced.append(datasync), defer.succeed(None))[1]
    c = nfs("COMMIT", f, 0, 0)
    assert c.ok and c.verf == w.verf and synced == [False]
    assert nfs("WRITE", f, 0, b"data", 1).ok and synced == [False, True]  # DATA_SYNC: fdatasync
    nfsd.fs.kernel_io = lambda fd, datasync: defer.fail(OSError(errno.EIO, "I/O error"))
    c = nfs("COMMIT", f, 0, 0)
    assert c.status == Stat.IO and nfsd.write_verifier != w.verf


@pytest.mark.parametrize("size", [100, 256 * 1024])  # inline, and a pwrite in a pool thread
def test_a_users_write_clears_set_id_bits_as_locally(env, size):
    """The pwrite runs as the caller wherever it runs, so the kernel clears S_ISUID as for a local write."""
    tmp, _, _, nfs, roots = env
    f = create(nfs, roots["squash"], b"prog", mode=0o755, cred=USER)
    assert nfs("SETATTR", f, Sattr3(mode=0o4755), cred=USER).ok
    assert os.stat(tmp / "squash" / "prog").st_mode & 0o7777 == 0o4755
    w = nfs("WRITE", f, 0, b"x" * size, 0, cred=USER)
    assert w.ok and w.count == size
    assert os.stat(tmp / "squash" / "prog").st_mode & 0o7777 == 0o755
    r = nfs("READ", f, 0, size, cred=USER)
    assert r.ok and r.data == b"x" * size and r.eof
    assert nfs("SETATTR", f, Sattr3(mode=0o2775), cred=USER).ok  # set-group-id with group execute: cleared too
    assert nfs("WRITE", f, 0, b"y" * size, 0, cred=USER).ok
    assert os.stat(tmp / "squash" / "prog").st_mode & 0o7777 == 0o775


def _kept(table) -> int:
    """How many descriptors the inode index names (a handle, or a set of them, per inode)."""
    return sum(1 if isinstance(h, bytes) else len(h) for h in table._inodes.values())


def test_the_descriptor_cache_forgets_a_removed_object_by_its_inode(env):
    """REMOVE closes the cached descriptors of the object (found by inode, not by a scan), and the cache stays
    within its size; its inode index always matches it."""
    tmp, table, _, nfs, roots = env
    table.cache_size = 16
    handles = [create(nfs, roots["data"], f"f{i}".encode()) for i in range(40)]
    for h in handles[-10:]:
        assert nfs("GETATTR", h).ok
    assert len(table._fds) == 16 + 1  # and the one place (16 // 16) for the last object made
    assert nfs("LINK", handles[0], roots["data"], b"alias").ok
    gone = os.stat(tmp / "data" / "f0")
    assert handles[0] in table._fds
    assert nfs("REMOVE", roots["data"], b"f0").ok and nfs("REMOVE", roots["data"], b"alias").ok
    assert handles[0] not in table._fds and (gone.st_dev, gone.st_ino) not in table._inodes
    assert {e[3] for e in table._fds.values()} == set(table._inodes)
    assert _kept(table) == len(table._fds)
    assert nfs("GETATTR", handles[0]).status == Stat.STALE


def test_a_working_set_larger_than_the_descriptor_cache_still_hits_it(env, monkeypatch):
    """Going round more objects than the cache keeps (as a client listing or stat-ing a big tree does), the kept
    ones keep hitting (an LRU would hit none), the others are opened by handle without computing their MAC
    again, and an idle cache makes room (sweep)."""
    tmp, table, _, nfs, roots = env
    table.cache_size = 16
    handles = [create(nfs, roots["data"], f"f{i}".encode()) for i in range(40)]
    opened, macs = [], []
    resolve, decode = table._resolve, table.codec.decode
    monkeypatch.setattr(table, "_resolve", lambda *a: opened.append(a) or resolve(*a))
    monkeypatch.setattr(table.codec, "decode", lambda *a: macs.append(1) or decode(*a))
    for _ in range(3):
        for h in handles:
            assert nfs("GETATTR", h).ok
    kept = sum(h in table._fds for h in handles)  # the export's directory holds one place
    assert len(table._fds) == 17 and kept == 16  # 15, and the last one made in the place beyond the 16
    assert list(table._fresh) == [handles[-1]]  # going round files does not churn that place
    assert len(opened) == 3 * (40 - kept)
    assert len(macs) == 40 - kept  # the first time each is opened only
    later = time.monotonic() + 60
    monkeypatch.setattr(time, "monotonic", lambda: later)
    assert table.sweep(idle=30) == 17 and not table._fds and not table._inodes and not table._fresh


def test_a_full_descriptor_cache_still_keeps_new_objects_and_directories(env, monkeypatch):
    """Once the cache is full of older objects, the objects just made are still kept, in cache_size // 16 places
    of their own where the least recently used goes: the WRITE and COMMIT after a CREATE and the next CREATE in a
    new directory find them without opening their handle again."""
    tmp, table, _, nfs, roots = env
    table.cache_size = 32
    for i in range(40):  # made on the server, not through NFS
        (tmp / "data" / f"old{i}").write_bytes(b"")
    old = [nfs("LOOKUP", roots["data"], f"old{i}".encode()).object for i in range(40)]
    assert all(nfs("GETATTR", h).ok for h in old)
    assert len(table._fds) == 32 and not table._fresh
    opened = []
    resolve = table._resolve
    monkeypatch.setattr(table, "_resolve", lambda *a: opened.append(a[0]) or resolve(*a))
    d = nfs("MKDIR", roots["data"], b"d", Sattr3(mode=0o755)).obj
    made = []
    for i in range(5):
        made.append(create(nfs, d, f"new{i}".encode()))
        assert nfs("WRITE", made[-1], 0, b"x" * 10, 2).ok
        assert nfs("COMMIT", made[-1], 0, 0).ok
    assert not opened  # the directory and each new file were found kept
    assert list(table._fresh) == [d, made[-1]]  # 2 places: the least recently used files went
    assert all(h not in table._fds for h in made[:-1])
    assert len(table._fds) == 32 + 2
    # Plain files of a cyclic working set beyond the cache are not taken in: they would evict each other.
    for h in old[-8:]:
        assert nfs("GETATTR", h).ok
    assert list(table._fresh) == [d, made[-1]]
    # REMOVE frees its place; a directory merely opened by its handle is not taken in (a walk would churn them).
    assert nfs("REMOVE", d, b"new4").ok
    assert list(table._fresh) == [d]
    table._evict(d)
    assert nfs("GETATTR", d).ok and not table._fresh and d not in table._fds
    assert {e[3] for e in table._fds.values()} == set(table._inodes) and _kept(table) == len(table._fds)
