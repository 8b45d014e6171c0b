"""The unprivileged local backend's handles (exports/paths.py, exports/pathmap.py), on real directories.

Handles are made and resolved through nfsd's dispatcher, as a client sees them; a "restart" is a new
:class:`PathHandles` on the same state directory and handle key, whose memory knows nothing.  These run as root
(the test suite does) but never call open_by_handle_at: the table cannot.
"""

import ctypes
import os
import platform
import signal
import subprocess
import sys
import threading

import pytest

from nfsstack.exports import ExportsError, parse_exports
from nfsstack.exports.handles import HandleCodec, kernel_handle, object_id
from nfsstack.exports.identity import ROOT, Identity, NoSwitching, Switcher, _libc, unhonoured_as_plain_user
from nfsstack.exports.pathmap import Place, map_key, open_beneath
from nfsstack.exports.paths import PathHandles, refuse_crossing
from nfsstack.nfs3.client import Sattr3
from nfsstack.nfs3.codec import Stat
from nfsstack.rpc.server import Dispatcher
from tests.unit.test_nfs3 import Client, create, local_nfsd, lookup

KEY = b"k" * 32


class Server:
    """nfsd over PathHandles exporting ``top/data``; :meth:`restart` makes a new one on the same state."""

    def __init__(self, top, **table_options):
        self.top, self.options = top, table_options
        self.exports = parse_exports(f"{top / 'data'} 127.0.0.1(rw,no_root_squash)\n", "exports")
        self.start()

    def start(self):
        self.table = PathHandles(self.exports, HandleCodec(KEY), str(self.top / "state"), **self.options)
        self.nfsd = local_nfsd(self.table)
        self.nfs = Client(Dispatcher([self.nfsd.program]))
        # MNT's handle, as mountd gets it from the backend
        self.root = self.nfsd.fs.mount(self.export, str(self.top / "data"), self.export.clients[0][1], "127.0.0.1")

    @property
    def export(self):
        return next(iter(self.exports))

    def stop(self):
        assert self.nfsd.fs.caller.ids.current == ROOT
        self.nfsd.fs.close()
        self.table.close()

    def restart(self):
        self.stop()
        self.start()


@pytest.fixture
def server(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("secret\n")
    s = Server(tmp_path)
    yield s
    s.stop()


def test_handles_survive_a_restart_found_by_the_map(server):
    nfs = server.nfs
    d = nfs("MKDIR", server.root, b"dir", Sattr3(mode=0o755)).obj
    f = create(nfs, d, b"file")
    assert nfs("WRITE", f, 0, b"hi", 2).ok
    server.restart()
    nfs = server.nfs
    assert nfs("READ", f, 0, 10).data == b"hi"
    assert nfs("GETATTR", d).ok
    assert server.table.searches == 0, "found by a search: the map did not know them"


def test_a_rename_through_nfs_moves_the_subtree_in_the_map(server):
    nfs = server.nfs
    d = nfs("MKDIR", server.root, b"d1", Sattr3(mode=0o755)).obj
    sub = nfs("MKDIR", d, b"sub", Sattr3(mode=0o755)).obj
    f = create(nfs, sub, b"f")
    assert nfs("RENAME", server.root, b"d1", server.root, b"d2").ok
    g = create(nfs, server.root, b"g")
    assert nfs("RENAME", server.root, b"g", d, b"g2").ok
    server.restart()
    nfs = server.nfs
    assert nfs("GETATTR", f).ok and nfs("GETATTR", g).ok and nfs("LOOKUP", sub, b"f").object == f
    assert server.table.searches == 0


def test_a_rename_on_the_server_while_it_is_down_is_found_by_a_search(server):
    nfs = server.nfs
    d = nfs("MKDIR", server.root, b"a", Sattr3(mode=0o755)).obj
    deep = nfs("MKDIR", d, b"b", Sattr3(mode=0o755)).obj
    f = create(nfs, deep, b"f")
    assert nfs("WRITE", f, 0, b"bytes", 2).ok
    server.stop()
    data = server.top / "data"
    (data / "elsewhere").mkdir()
    os.rename(data / "a", data / "elsewhere" / "moved")
    os.rename(data / "elsewhere" / "moved" / "b" / "f", data / "elsewhere" / "moved" / "b" / "f2")
    server.start()
    nfs = server.nfs
    assert nfs("READ", f, 0, 10).data == b"bytes"
    assert nfs("GETATTR", deep).ok
    assert server.table.searches >= 1 and server.table.found == server.table.searches
    server.restart()  # the map was corrected: no search is needed again
    assert server.nfs("READ", f, 0, 10).data == b"bytes" and server.table.searches == 0


def test_the_search_is_bounded(tmp_path):
    (tmp_path / "data").mkdir()
    s = Server(tmp_path, search_entries=3)
    try:
        f = create(s.nfs, s.root, b"f")
        for i in range(10):
            (tmp_path / "data" / f"other{i}").mkdir()
        os.rename(tmp_path / "data" / "f", tmp_path / "data" / "other9" / "f")
        s.restart()
        assert s.nfs("GETATTR", f).status == Stat.STALE  # more than 3 entries to look at
        assert s.nfs("GETATTR", f).status == Stat.STALE and s.table.searches == 1  # not searched again at once
        s.stop()
        s.options = {}
        s.start()
        assert s.nfs("GETATTR", f).ok
    finally:
        s.stop()


def test_a_reused_inode_number_is_stale(server):
    data = server.top / "data"
    f = create(server.nfs, server.root, b"victim")
    ino = (data / "victim").stat().st_ino
    server.stop()
    os.unlink(data / "victim")  # on the server: nfsd is not told
    os.sync()  # ext4 gives an inode number again once the deletion is committed
    reused = None
    for i in range(5000):
        path = data / f"new{i}"
        path.write_text("another file\n")
        if path.stat().st_ino == ino:
            reused = path
            break
    if reused is None:
        pytest.skip("this filesystem did not give the inode number again")
    os.rename(reused, data / "victim")  # same name, same inode number, another generation
    server.start()
    assert server.nfs("GETATTR", f).status == Stat.STALE
    assert server.nfs("READ", f, 0, 10).status == Stat.STALE


def test_a_file_removed_through_nfs_is_stale_without_a_search(server):
    nfs = server.nfs
    f = create(nfs, server.root, b"gone")
    assert nfs("REMOVE", server.root, b"gone").ok
    server.restart()
    assert server.nfs("GETATTR", f).status == Stat.STALE
    assert server.table.searches == 0


def test_a_forged_handle_is_badhandle(server):
    f = bytearray(create(server.nfs, server.root, b"f"))
    f[10] ^= 1
    assert server.nfs("GETATTR", bytes(f)).status == Stat.BADHANDLE


def test_no_place_in_the_map_leads_outside_the_export(server):
    """A row naming a symlink to outside, or ``..``, or a path, never opens what lies there."""
    top = server.top
    os.symlink(top / "outside", top / "data" / "escape")
    os.symlink(top / "outside" / "secret", top / "data" / "secretlink")
    export = server.export
    fd = os.open(top / "outside", os.O_RDONLY)
    try:
        outside = server.table.handle(export, fd, "secret")  # this export's id and a good MAC, outside it
    finally:
        os.close(fd)
    decoded = server.table.codec.decode(outside)
    key = map_key(decoded.export_id, decoded.handle_type, decoded.data)
    root_key = server.table._root_key(export)
    ino = (top / "outside" / "secret").stat().st_ino
    for name in (b"escape/secret", b"../outside/secret", b"secretlink", b".."):
        server.table.places.put(key, Place(root_key, name, ino))
        server.table.flush()
        server.table._missed.clear()
        r = server.nfs("READ", outside, 0, 100)
        assert r.status == Stat.STALE, (name, r.status)
    assert server.nfs("LOOKUP", server.root, b"escape").ok  # a symlink is served as a symlink


def test_a_sigkilled_server_keeps_what_it_wrote(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "d").mkdir()
    (tmp_path / "data" / "d" / "f").write_text("x")
    script = (
        "import os, signal, sys\n"
        "from nfsstack.exports import parse_exports\n"
        "from nfsstack.exports.handles import HandleCodec\n"
        "from nfsstack.exports.paths import PathHandles\n"
        f"exports = parse_exports({str(tmp_path / 'data')!r} + ' 127.0.0.1(rw)\\n')\n"
        f"table = PathHandles(exports, HandleCodec({KEY!r}), {str(tmp_path / 'state')!r})\n"
        f"fd = os.open({str(tmp_path / 'data' / 'd')!r}, os.O_RDONLY)\n"
        "export = next(iter(exports))\n"
        "sys.stdout.write(table.handle(export, fd).hex() + ' ' + table.handle(export, fd, 'f').hex() + '\\n')\n"
        "sys.stdout.flush()\n"
        "table.flush()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == -signal.SIGKILL, done.stderr
    handles = [bytes.fromhex(h) for h in done.stdout.split()]
    s = Server(tmp_path)
    try:
        for handle in handles:
            assert s.nfs("GETATTR", handle).ok
        assert s.table.searches == 0, "the rows written before the SIGKILL were lost"
    finally:
        s.stop()


@pytest.mark.parametrize("openat2", [True, False], ids=["openat2", "walk"])
def test_open_beneath_refuses_symlinks_dotdot_and_escapes(tmp_path, monkeypatch, openat2):
    from nfsstack.exports import pathmap

    monkeypatch.setattr(pathmap, "_openat2_works", openat2 and pathmap._openat2_works)
    (tmp_path / "top" / "sub").mkdir(parents=True)
    os.symlink(tmp_path, tmp_path / "top" / "link")
    root = os.open(tmp_path / "top", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.close(open_beneath(root, b"sub", os.O_RDONLY | os.O_DIRECTORY))
        for path in (b"link", b"link/top", b"..", b"sub/../..", b"/etc"):
            with pytest.raises(OSError):
                os.close(open_beneath(root, path, os.O_RDONLY | os.O_DIRECTORY))
    finally:
        os.close(root)


def test_exports_it_cannot_serve_are_errors_with_file_and_line():
    exports = parse_exports("/srv/a 127.0.0.1(rw)\n/srv/b 127.0.0.1(rw,crossmnt)\n/srv/c *(ro,nohide)\n",
                            "/etc/exports")
    with pytest.raises(ExportsError) as e:
        refuse_crossing(exports)
    assert [error.split(": ")[0] for error in e.value.errors] == ["/etc/exports:2", "/etc/exports:3"]
    assert "crossmnt" in e.value.errors[0] and "nohide" in e.value.errors[1]


def test_a_plain_user_refuses_what_it_cannot_honour():
    exports = parse_exports("/srv/a 127.0.0.1(rw)\n/srv/b 127.0.0.1(rw,no_root_squash)\n"
                            "/srv/c 127.0.0.1(rw,anonuid=1000,anongid=1000)\n/srv/d *(rw,all_squash,anonuid=5)\n",
                            "/etc/exports")
    errors = unhonoured_as_plain_user(exports, 1000, 1000)
    assert [error.split(": ")[0] for error in errors] == ["/etc/exports:2", "/etc/exports:4"]
    assert "no_root_squash" in errors[0] and "anonuid=5" in errors[1]


def test_a_plain_users_switcher_switches_nothing():
    ids = NoSwitching()
    before = (os.getuid(), os.getgid())
    with ids.acting_as(Identity(1234, 1234, (1234,))):
        assert ids.current == Identity(1234, 1234, (1234,))
        fd = os.open("/proc/self/status", os.O_RDONLY)
        try:
            status = os.read(fd, 4096).decode()
        finally:
            os.close(fd)
    fsuid = [line.split()[4] for line in status.splitlines() if line.startswith("Uid:")][0]
    assert int(fsuid) == before[0]
    assert ids.current == ROOT


def test_a_reload_it_cannot_serve_keeps_the_old_exports(tmp_path):
    (tmp_path / "data").mkdir()
    exports = parse_exports(f"{tmp_path / 'data'} 127.0.0.1(rw)\n", "exports")
    table = PathHandles(exports, HandleCodec(KEY), str(tmp_path / "state"), plain_user=(1000, 1000))
    try:
        for text in (f"{tmp_path / 'data'} 127.0.0.1(rw,no_root_squash)\n", f"{tmp_path} 127.0.0.1(rw,crossmnt)\n"):
            with pytest.raises(ExportsError) as e:
                table.reload(parse_exports(text, "exports"))
            assert e.value.errors[0].startswith("exports:1: ")
            assert table.exports is exports
    finally:
        table.close()


def test_the_rows_of_many_calls_are_written_together(server, monkeypatch):
    """CREATE and REMOVE do not each commit a transaction: their rows wait (and serve) until the next batched
    write, which the periodic sweep makes for an idle server."""
    from nfsstack.exports import paths

    monkeypatch.setattr(paths, "FLUSH_EVERY", 3600.0)
    server.table.flush()
    made = [create(server.nfs, server.root, f"f{i}".encode()) for i in range(20)]
    assert server.nfs("REMOVE", server.root, b"f0").ok
    assert len(server.table.pending) >= 20  # nothing written yet
    assert server.nfs("GETATTR", made[0]).status == Stat.STALE  # the pending gone mark already counts
    assert all(server.nfs("GETATTR", fh).ok for fh in made[1:])
    server.table.sweep()
    assert not server.table.pending
    server.restart()  # what was written serves after a restart, without a search
    assert server.nfs("GETATTR", made[0]).status == Stat.STALE
    assert all(server.nfs("GETATTR", fh).ok for fh in made[1:]) and server.table.searches == 0


def _thread_groups() -> list[int]:
    with open("/proc/thread-self/status") as f:
        return [int(g) for line in f if line.startswith("Groups:") for g in line.split()[1:]]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to set a thread's groups")
def test_groups_a_thread_started_with_are_not_lent_to_a_caller_without_any():
    """A server started with supplementary groups (Docker gives its root 0 to 27, "disk" among them): a
    caller whose list is empty (a squashed or anonymous user) acts with none, from the thread's first call."""
    seen = {}

    def thread():
        nr = {"x86_64": 116, "aarch64": 159}[platform.machine()]
        groups = (ctypes.c_uint32 * 2)(6, 27)
        assert _libc.syscall(nr, 2, groups) == 0  # this thread only, as the raw call does
        ids = Switcher()
        with ids.acting_as(Identity(1000, 1000, ())):
            seen["first"] = _thread_groups()
        seen["root"] = ids.current
        with ids.acting_as(Identity(1000, 1000, ())):
            seen["again"] = _thread_groups()

    t = threading.Thread(target=thread)
    t.start()
    t.join()
    assert seen == {"first": [], "root": ROOT, "again": []}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to set a thread's groups")
def test_a_pool_threads_groups_are_set_on_its_first_switch():
    """The switcher is made on the reactor's thread; a pool thread (a large READ's) holding the server's groups
    uses it for the first time: the caller without groups gets none there too."""
    ids = Switcher()
    seen = {}

    def pool_thread():
        nr = {"x86_64": 116, "aarch64": 159}[platform.machine()]
        assert _libc.syscall(nr, 2, (ctypes.c_uint32 * 2)(6, 27)) == 0
        with ids.acting_as(Identity(1000, 1000, ())):
            seen["first"] = _thread_groups()

    t = threading.Thread(target=pool_thread)
    t.start()
    t.join()
    assert seen == {"first": []}


def mount_overlay(top):
    return subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={top / 'lower'},upperdir={top / 'upper'},"
         f"workdir={top / 'work'}", str(top / "data")], capture_output=True, text=True)


def remount(top):
    subprocess.run(["umount", str(top / "data")], check=True)
    assert mount_overlay(top).returncode == 0


@pytest.fixture
def overlay(tmp_path):
    """``tmp_path/data``: an overlayfs mount (a container's own files), which gives no file handles."""
    for name in ("lower", "upper", "work", "data"):
        (tmp_path / name).mkdir()
    (tmp_path / "lower" / "image.txt").write_text("from the image\n")
    mounted = mount_overlay(tmp_path)
    if mounted.returncode != 0:
        pytest.skip(f"no overlayfs here: {mounted.stderr.strip()}")
    fd = os.open(tmp_path / "data", os.O_RDONLY | os.O_DIRECTORY)
    try:
        kernel_handle(fd, "", fid=True)  # the kernel's own answer, whatever object_id makes of it
    except OSError as e:
        subprocess.run(["umount", "-l", str(tmp_path / "data")], check=False)
        pytest.skip(f"overlayfs gives no identities before Linux 6.6: {e}")
    finally:
        os.close(fd)
    yield tmp_path
    subprocess.run(["umount", "-l", str(tmp_path / "data")], check=False)


def test_overlay_files_are_served_by_paths_and_refused_by_kernel_handles(overlay):
    """overlayfs gives no handle to open again: the probe says so, naming it; the map of places keys its objects
    by the identities it gives instead; a kernel-handle server to which a reload added such an export refuses
    to mount it, saying why, instead of handing out handles that would never open."""
    from nfsstack.exports.handles import kernel_handles_refused
    from nfsstack.exports.policy import MountRefused
    from nfsstack.exports.table import ExportTable

    data = overlay / "data"
    assert kernel_handles_refused(str(data)) == f"the filesystem of {data} gives no file handles (overlay)"
    assert kernel_handles_refused(str(overlay)) is None
    fd = os.open(data, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError):
            kernel_handle(fd, "image.txt")
        assert object_id(fd, "image.txt") == object_id(fd, "image.txt") != object_id(fd, "")
    finally:
        os.close(fd)

    server = Server(overlay)
    try:
        nfs = server.nfs
        image = lookup(nfs, server.root, b"image.txt")
        assert nfs("READ", image, 0, 100).data == b"from the image\n"
        f = create(nfs, server.root, b"new")
        assert nfs("WRITE", f, 0, b"written", 2).ok
        server.restart()
        assert server.nfs("READ", f, 0, 100).data == b"written"
        assert server.nfs("READ", image, 0, 100).data == b"from the image\n"
        # Written, the image's file is copied up to the upper layer: its handle still leads to it.
        assert server.nfs("WRITE", image, 0, b"FROM", 2).ok
        assert (overlay / "upper" / "image.txt").exists()
        server.stop()
        remount(overlay)  # as the container's next start mounts its layers again: the identities stay
        server.start()
        assert server.nfs("READ", image, 0, 100).data == b"FROM the image\n"
        assert server.nfs("READ", f, 0, 100).data == b"written"
    finally:
        server.stop()

    table = ExportTable(server.exports, HandleCodec(KEY))
    nfsd = local_nfsd(table)
    try:
        with pytest.raises(MountRefused, match=r"gives no file handles \(overlay\): mount it with nfs_export=on, or"):
            nfsd.fs.mount(server.export, str(data), server.export.clients[0][1], "127.0.0.1")
    finally:
        nfsd.fs.close()
        table.close()


def test_a_filesystem_without_export_operations_gives_no_identity_to_serve_by(tmp_path):
    """ramfs (as 9p and CIFS) has no export operations: the kernel's generic identity of its files is an inode
    number and a generation that may come back with another file, so nothing is served by it."""
    from nfsstack.exports.handles import FILEID_INO64_GEN, filesystem_without_handles

    (tmp_path / "ram").mkdir()
    mounted = subprocess.run(["mount", "-t", "ramfs", "ramfs", str(tmp_path / "ram")], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"no ramfs here: {mounted.stderr.strip()}")
    try:
        (tmp_path / "ram" / "f").write_text("f\n")
        fd = os.open(tmp_path / "ram", os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:
                generic = kernel_handle(fd, "f", fid=True)[0]
            except OSError:
                generic = None  # a kernel before 6.7 gives none either
            with pytest.raises(OSError, match="nor"):
                object_id(fd, "f")
        finally:
            os.close(fd)
        assert generic in (None, FILEID_INO64_GEN)
        without = filesystem_without_handles(str(tmp_path / "ram"))
        assert without.why.startswith(
            f"the filesystem of {tmp_path / 'ram'} gives no file handles (ramfs), nor identities"), without
        assert not without.identities
    finally:
        subprocess.run(["umount", "-l", str(tmp_path / "ram")], check=False)
