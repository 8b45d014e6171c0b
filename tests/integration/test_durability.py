"""Durability across a real power cut: what a COMMIT or a FILE_SYNC WRITE answered is on stable storage.

The server (``twistd -n nfsstack``) exports a directory of the powercut filesystem (tests/powercut.py): a FUSE
layer that keeps, apart from its live tree, the durable one that only fsync/fdatasync (FUSE_FSYNC) moves forward,
and that no kernel page cache shadows (direct_io, no attribute or entry caching).  The test client
(tests.support.NfsClient) writes several files on each of WRITE's paths, then the power is cut (the layer drops
everything unsynced), the server is SIGKILLed and started again on the same state directory, and:

- every file whose COMMIT, FILE_SYNC or DATA_SYNC WRITE was answered is there, byte for byte, through the handle
  the client had (handles outlive the cut, as on a real disk);
- what was only written UNSTABLE is gone (the cut is real: this test cannot pass on a page cache);
- the write verifier changed, so the client resends what it had not committed, and ends with the right files;
- an ``async`` export loses data whose FILE_SYNC WRITE was answered (as knfsd's does: exports(5));
- every directory change answered on a ``sync`` export (CREATE, MKDIR, SYMLINK, MKNOD, REMOVE, RMDIR, RENAME,
  LINK) survives the cut without any other sync, and an ``async`` export loses them;
- so does what a SETATTR set, and the size a CREATE UNCHECKED gave a new or an existing file.

Each test runs the server twice: with the kernel's asynchronous fsync and io_uring writes (large WRITEs on the ring)
and with ``--no-aio-fsync`` (syncs and large WRITEs in the thread pool).  With the layer's syncs made no-ops
(NFSSTACK_POWERCUT_IGNORE_FSYNC=1) these tests fail: see tests/powercut.py.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field

import pytest

from nfsstack.exports.handles import kernel_handle, kernel_handles_work, open_kernel_handle
from nfsstack.nfs3.client import Sattr3
from nfsstack.nfs3.codec import Stat
from tests.powercut import PowercutMount, fuse_available
from tests.support import NfsClient, Stack, free_port

_why_not = fuse_available()
pytestmark = [
    pytest.mark.durability,
    pytest.mark.skipif(_why_not is not None or not kernel_handles_work("/"), reason=_why_not or "needs root"),
]

UNSTABLE, DATA_SYNC, FILE_SYNC = 0, 1, 2
SMALL = 4000  # inline WRITE (<= SMALL_IO, 64 KiB)
LARGE = 300 * 1024  # > SMALL_IO: io_uring write, or the thread pool with --no-aio-fsync
MODES = {"aio": (), "pool": ("--no-aio-fsync",)}


@dataclass
class File:
    """What the client knows of one file: the data it wrote, and the part the server said was stable."""

    name: str
    fh: bytes
    content: bytearray = field(default_factory=bytearray)
    stable: bytes = b""  # the content as of the last answered COMMIT / stable WRITE
    pending: list = field(default_factory=list)  # (offset, data) written UNSTABLE since
    verifier: bytes = b""

    def wrote(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if end > len(self.content):
            self.content.extend(bytes(end - len(self.content)))
        self.content[offset:end] = data


class Server:
    def __init__(self, tmp_path, export: str, options: str, extra: tuple[str, ...]) -> None:
        self.tmp_path, self.export, self.extra = tmp_path, export, extra
        self.exports = tmp_path / "exports"
        self.exports.write_text(f"{export} 127.0.0.1({options},insecure,no_root_squash)\n")
        self.stack: Stack | None = None
        self.port = 0

    def start(self) -> NfsClient:
        self.port = free_port()
        self.stack = Stack("--bind", "127.0.0.1", "--portmap-port", str(self.port), "--nfs-port", "0",
                           "--status-port", "0", "--exports", str(self.exports),
                           "--state-dir", str(self.tmp_path / "state"), "--grace-time", "0", *self.extra,
                           workdir=str(self.tmp_path))
        self.stack.start(self.port)
        return NfsClient(self.export, self.port, timeout=20.0)

    def kill(self) -> None:
        if self.stack is not None:
            self.stack.stop(signal.SIGKILL)

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.stop()


@pytest.fixture
def disk(tmp_path):
    """The powercut filesystem with an empty export on it, durable (as formatted); unmounted afterwards."""
    with PowercutMount(tmp_path / "disk") as mount:
        export = os.path.join(mount.mountpoint, "export")
        os.mkdir(export)
        mount.checkpoint()
        mount.export = export
        yield mount


@pytest.fixture
def server_of(tmp_path, disk):
    servers: list[Server] = []

    def make(options: str, extra: tuple[str, ...]) -> Server:
        server = Server(tmp_path, disk.export, options, extra)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.kill()


def create(c: NfsClient, name: str) -> File:
    r = c("CREATE", c.root, name.encode(), 1, Sattr3(mode=0o644))
    assert r.ok, f"CREATE {name}: {r.status.name}"
    return File(name, r.obj)


def write(c: NfsClient, f: File, offset: int, data: bytes, stable: int) -> None:
    r = c("WRITE", f.fh, offset, data, stable)
    assert r.ok and r.count == len(data), f"WRITE {f.name}: {r.status.name}"
    assert r.committed >= stable
    f.wrote(offset, data)
    if stable == UNSTABLE:
        f.pending.append((offset, data))
        f.verifier = r.verf
    elif not f.pending or f.verifier == r.verf:
        # RFC 1813 3.3.7: a stable WRITE makes this range stable; the file is stable as a whole when nothing
        # unstable is outstanding (the tests write stable WRITEs only to files with no pending writes)
        f.stable, f.verifier = bytes(f.content), r.verf


def commit(c: NfsClient, f: File) -> bytes:
    r = c("COMMIT", f.fh, 0, 0)
    assert r.ok, f"COMMIT {f.name}: {r.status.name}"
    if r.verf == f.verifier or not f.pending:
        f.stable, f.pending, f.verifier = bytes(f.content), [], r.verf
    return r.verf


def read_all(c: NfsClient, f: File) -> bytes | Stat:
    out = b""
    for _ in range(64):
        r = c("READ", f.fh, len(out), 256 * 1024)
        if not r.ok:
            return r.status
        out += r.data
        if r.eof or not r.data:
            return out
    raise AssertionError(f"READ {f.name} did not reach EOF")


def cut_and_restart(disk: PowercutMount, server: Server, c: NfsClient) -> NfsClient:
    """Power cut: the disk loses what was not synced, the server dies with it; then the server starts again."""
    c.close()
    disk.cut()
    server.kill()
    return server.start()


def patterned(tag: str, n: int) -> bytes:
    seed = (tag.encode() * (n // max(len(tag), 1) + 1))[:n]
    return bytes((b + i * 7) & 0xFF for i, b in enumerate(seed))


@pytest.mark.parametrize("mode", sorted(MODES))
def test_power_cut_keeps_what_was_committed(disk, server_of, mode):
    server = server_of("rw,sync", MODES[mode])
    c = server.start()
    names = ["commit-small", "commit-large", "filesync-small", "filesync-large", "datasync-large", "unstable",
             "commit-then-unstable"]
    files = {name: create(c, name) for name in names}  # all created before any sync: none is durable yet

    # UNSTABLE WRITEs then COMMIT: small (inline) and large (io_uring or the pool)
    f = files["commit-small"]
    for i in range(3):
        write(c, f, i * SMALL, patterned(f"cs{i}", SMALL), UNSTABLE)
    commit(c, f)
    f = files["commit-large"]
    write(c, f, 0, patterned("cl0", LARGE), UNSTABLE)
    write(c, f, LARGE, patterned("cl1", LARGE // 3), UNSTABLE)
    commit(c, f)
    # stable WRITEs, no COMMIT: FILE_SYNC small (inline) and large, DATA_SYNC large
    write(c, files["filesync-small"], 0, patterned("fs", SMALL), FILE_SYNC)
    write(c, files["filesync-large"], 0, patterned("fl", LARGE), FILE_SYNC)
    write(c, files["datasync-large"], 0, patterned("dl", LARGE), DATA_SYNC)
    # UNSTABLE only: may be lost
    write(c, files["unstable"], 0, patterned("un", LARGE), UNSTABLE)
    write(c, files["unstable"], LARGE, patterned("un2", SMALL), UNSTABLE)
    # committed, then more written UNSTABLE over and after it: the committed bytes only are owed
    f = files["commit-then-unstable"]
    write(c, f, 0, patterned("ct", 2 * SMALL), UNSTABLE)
    commit(c, f)
    write(c, f, SMALL, patterned("ct2", LARGE), UNSTABLE)
    verifier = f.verifier

    syncs = disk.stats()
    assert syncs["fsync"] + syncs["fdatasync"] >= 6, f"the server's syncs did not reach the disk: {syncs}"

    c = cut_and_restart(disk, server, c)

    # Everything answered as stable is there, byte for byte, through the handles the client had.
    lost = {}
    for name, f in files.items():
        got = read_all(c, f)
        if f.stable:
            if isinstance(got, Stat):
                lost[name] = f"{got.name} (handle of a committed file)"
            elif got != f.stable:
                lost[name] = f"{len(got)} bytes, expected {len(f.stable)} committed bytes" + (
                    "" if len(got) != len(f.stable) else " (content differs)")
    assert not lost, f"committed data lost in the power cut ({mode}): {lost}"
    # The cut is real: what was only written UNSTABLE is gone.
    assert read_all(c, files["unstable"]) == b"", "unsynced data survived the power cut: the disk is not volatile"
    assert read_all(c, files["commit-then-unstable"]) == files["commit-then-unstable"].stable

    # The write verifier changed: the client learns that its unstable writes may be gone, and resends them.
    f = files["unstable"]
    new = c("COMMIT", f.fh, 0, 0)
    assert new.ok and new.verf != verifier, "the write verifier did not change across the restart"
    for f in files.values():
        if f.pending:
            pending, f.pending = f.pending, []
            for offset, data in pending:
                write(c, f, offset, data, UNSTABLE)
            assert commit(c, f) == f.verifier
        assert read_all(c, f) == bytes(f.content), f"{f.name} wrong after the client resent its writes"
    c.close()
    server.stop()


@pytest.mark.parametrize("mode", sorted(MODES))
def test_async_export_loses_file_sync_writes(disk, server_of, mode):
    """exports(5) ``async``: the server answers FILE_SYNC without syncing, as knfsd does, and a power cut loses
    what it answered.  (This documents the option's danger; a sync export keeps it: the test above.)"""
    server = server_of("rw,async", MODES[mode])
    c = server.start()
    small, large = create(c, "async-small"), create(c, "async-large")
    write(c, small, 0, patterned("as", SMALL), FILE_SYNC)
    write(c, large, 0, patterned("al", LARGE), FILE_SYNC)
    before = disk.stats()
    assert before["fsync"] + before["fdatasync"] == 0, f"an async export synced: {before}"
    c = cut_and_restart(disk, server, c)
    kept = {f.name: len(f.stable) for f in (small, large) if read_all(c, f) == f.stable}
    assert not kept, f"an async export kept FILE_SYNC data through a power cut: {kept} (expected the loss)"
    c.close()
    server.stop()


def _change_the_namespace(disk: PowercutMount, server: Server) -> tuple[NfsClient, dict[str, Stat]]:
    """Every synchronous directory change of RFC 1813 section 1.6, each answered and followed by no other sync:
    what LOOKUP of each name should answer after a power cut."""
    for name in ("to-remove", "to-rename", "to-link", "dir-to-remove", "dropbox", "dir-renamed-into"):
        path = os.path.join(disk.export, name)
        if name.startswith("dir"):
            os.mkdir(path)
        elif name == "dropbox":  # a user may add names but not list them: the sync must not need read permission
            os.mkdir(path)
            os.chmod(path, 0o733)
        else:
            with open(path, "wb") as f:
                f.write(b"durable")
    disk.checkpoint()  # the disk as it was before the server started: these are durable
    c = server.start()
    before = disk.stats()
    create(c, "created")
    assert c("MKDIR", c.root, b"made", Sattr3(mode=0o755)).ok
    assert c("SYMLINK", c.root, b"symlinked", Sattr3(), b"created").ok
    assert c("MKNOD", c.root, b"fifo", 7, Sattr3(mode=0o644), (0, 0)).ok
    assert c("REMOVE", c.root, b"to-remove").ok
    assert c("RMDIR", c.root, b"dir-to-remove").ok
    into = c("LOOKUP", c.root, b"dir-renamed-into")
    assert into.ok and c("RENAME", c.root, b"to-rename", into.object, b"renamed").ok  # two directories
    linked = c("LOOKUP", c.root, b"to-link")
    assert linked.ok and c("LINK", linked.object, c.root, b"linked").ok
    user = NfsClient(disk.export, server.port, uid=1000, timeout=20.0)
    dropbox = user("LOOKUP", user.root, b"dropbox")
    assert dropbox.ok
    made = user("CREATE", dropbox.object, b"dropped", 1, Sattr3(mode=0o600))
    user.close()
    assert made.ok, f"a user's CREATE in a directory it may not read: {made.status.name}"
    after = disk.stats()
    assert after["fsync"] + after["fdatasync"] == before["fsync"] + before["fdatasync"], "a file was synced"
    return c, {"created": Stat.OK, "made": Stat.OK, "symlinked": Stat.OK, "fifo": Stat.OK, "to-remove": Stat.NOENT,
               "dir-to-remove": Stat.NOENT, "to-rename": Stat.NOENT, "dir-renamed-into/renamed": Stat.OK,
               "linked": Stat.OK,
               "dropbox/dropped": Stat.OK}


def _looked_up(c: NfsClient, paths) -> dict[str, Stat]:
    got = {}
    for path in paths:
        r = None
        for name in path.split("/"):
            r = c("LOOKUP", c.root if r is None else r.object, name.encode())
            if not r.ok:
                break
        got[path] = r.status
    return got


@pytest.mark.parametrize("mode", sorted(MODES))
def test_directory_changes_survive_a_power_cut(disk, server_of, mode):
    """CREATE, MKDIR, SYMLINK, MKNOD, REMOVE, RMDIR, RENAME and LINK answered on a sync export, then the power
    cut with no other sync: each change is there (RFC 1813 section 1.6; knfsd's commit_metadata).  A directory
    sync per change, or per group of changes made while one ran (nfs3/local/dirsync.py)."""
    server = server_of("rw,sync", MODES[mode])
    c, expected = _change_the_namespace(disk, server)
    assert disk.stats()["fsyncdir"] >= 1, "no directory was synced"
    c = cut_and_restart(disk, server, c)
    got = _looked_up(c, expected)
    c.close()
    server.stop()
    lost = {name: f"{got[name].name}, expected {status.name}" for name, status in expected.items()
            if got[name] != status}
    assert not lost, f"answered directory changes undone by a power cut ({mode}): {lost}"


def test_async_export_loses_directory_changes(disk, server_of):
    """exports(5) ``async``: directory changes are answered without a sync, as knfsd's are, and a power cut undoes
    them (the cut is real for the namespace too: the test above can fail)."""
    server = server_of("rw,async", ())
    c, expected = _change_the_namespace(disk, server)
    assert disk.stats()["fsyncdir"] == 0
    c = cut_and_restart(disk, server, c)
    got = _looked_up(c, expected)
    c.close()
    server.stop()
    assert (got["created"], got["to-remove"], got["dir-renamed-into/renamed"]) == (Stat.NOENT, Stat.OK, Stat.NOENT), got


#: SETATTR cases: what is set on which object, what GETATTR shows after, and the sync that must make it durable.
SETATTRS = {
    "file-mode-and-mtime": ("moded", Sattr3(mode=0o600, mtime=1_500_000_000 * 10**9),
                            lambda a: (a.mode & 0o7777, a.mtime), (0o600, 1_500_000_000 * 10**9), "fsync"),
    "file-size": ("truncated", Sattr3(size=100), lambda a: a.size, 100, "fsync"),
    "directory-mode": ("dir", Sattr3(mode=0o700), lambda a: a.mode & 0o7777, 0o700, "fsyncdir"),
}


def _set_attributes(disk: PowercutMount, server: Server, case: str) -> tuple[NfsClient, bytes, dict]:
    """One SETATTR (``case`` of :data:`SETATTRS`), answered and followed by nothing else: the client, the
    object's handle, and the syncs the disk saw meanwhile."""
    for name in ("moded", "truncated"):
        with open(os.path.join(disk.export, name), "wb") as f:
            f.write(b"x" * 10000)
    os.mkdir(os.path.join(disk.export, "dir"))
    disk.checkpoint()
    name, attrs, _, _, _ = SETATTRS[case]
    c = server.start()
    r = c("LOOKUP", c.root, name.encode())
    assert r.ok
    before = disk.stats()
    done = c("SETATTR", r.object, attrs, None)
    assert done.ok, f"SETATTR {name}: {done.status.name}"
    after = disk.stats()
    return c, r.object, {k: after[k] - before[k] for k in ("fsync", "fdatasync", "fsyncdir")}


@pytest.mark.parametrize("case", sorted(SETATTRS))
@pytest.mark.parametrize("mode", sorted(MODES))
def test_attributes_set_survive_a_power_cut(disk, server_of, mode, case):
    """SETATTR answered on a sync export is on stable storage, as knfsd's nfsd_setattr makes it (commit_metadata
    on the inode): a file's mode and times, a truncated file's size, a directory's mode are there after the
    power cut, each synced through the object itself (a file's fsync, a directory's), nothing else after it.
    (A symlink's or device's, which the server cannot open, go by sync(2), which this disk does not see: unit
    tests.)"""
    server = server_of("rw,sync", MODES[mode])
    c, fh, synced = _set_attributes(disk, server, case)
    _, _, shown, expected, kind = SETATTRS[case]
    assert synced[kind] >= 1, f"{case}: no {kind}: {synced}"
    c = cut_and_restart(disk, server, c)
    got = c("GETATTR", fh)
    c.close()
    server.stop()
    assert got.ok, got.status.name
    assert shown(got.obj_attributes) == expected, f"an answered SETATTR undone by a power cut ({mode}, {case})"


def test_async_export_loses_attributes_set(disk, server_of):
    """exports(5) ``async``: SETATTR is answered without a sync, and a power cut undoes it (the test above can
    fail)."""
    server = server_of("rw,async", ())
    c, fh, synced = _set_attributes(disk, server, "file-size")
    assert synced == {"fsync": 0, "fdatasync": 0, "fsyncdir": 0}
    c = cut_and_restart(disk, server, c)
    got = c("GETATTR", fh)
    c.close()
    server.stop()
    assert got.obj_attributes.size == 10000, got


#: CREATE cases that change the file after the open that makes it (or find): the name, the sattr3, the size
#: GETATTR must show after the cut.  Their sizes are file data, which only the file's own fsync makes durable on
#: this disk (on XFS and older ext4 too: the directory's fsync does not carry them).
CREATES = {
    "unchecked-truncates-existing": ("truncated", Sattr3(size=0), 0),
    "unchecked-new-with-size": ("sized", Sattr3(mode=0o644, size=100), 100),
}


@pytest.mark.parametrize("case", sorted(CREATES))
@pytest.mark.parametrize("mode", sorted(MODES))
def test_creates_that_change_the_file_survive_a_power_cut(disk, server_of, mode, case):
    """CREATE UNCHECKED answered on a sync export with a size, on an existing file (which it truncates) or a new
    one: the size is there after the power cut, as knfsd's nfsd_create_setattr commits the file as well as its
    directory.  A sync of the directory alone lost it."""
    with open(os.path.join(disk.export, "truncated"), "wb") as f:
        f.write(b"x" * 10000)
    disk.checkpoint()
    name, attrs, size = CREATES[case]
    server = server_of("rw,sync", MODES[mode])
    c = server.start()
    before = disk.stats()
    made = c("CREATE", c.root, name.encode(), 0, attrs)
    assert made.ok, made.status.name
    synced = disk.stats()
    assert synced["fsync"] + synced["fdatasync"] > before["fsync"] + before["fdatasync"], f"{case}: file not synced"
    assert synced["fsyncdir"] > before["fsyncdir"], f"{case}: directory not synced"
    c = cut_and_restart(disk, server, c)
    got = c("GETATTR", made.obj)
    c.close()
    server.stop()
    assert got.ok, got.status.name
    assert got.obj_attributes.size == size, f"an answered CREATE's size undone by a power cut ({mode}, {case})"


def test_kernel_handles_work_on_the_powercut_disk(disk):
    """nfsstack's handles (name_to_handle_at/open_by_handle_at) resolve on the FUSE layer and across a cut."""
    path = os.path.join(disk.export, "h")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"durable")
        os.fsync(fd)
        os.write(fd, b" and not")
    finally:
        os.close(fd)
    root = os.open(disk.export, os.O_RDONLY | os.O_DIRECTORY)
    try:
        htype, data, _ = kernel_handle(root, "h")
        disk.cut()
        fd = open_kernel_handle(root, htype, data, os.O_RDONLY)
        try:
            assert os.read(fd, 100) == b"durable"
        finally:
            os.close(fd)
        assert disk.stats()["fsync"] >= 1
    finally:
        os.close(root)
