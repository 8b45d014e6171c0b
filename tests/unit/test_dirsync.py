"""DirectorySyncs: one fsync of a directory at a time, each answering only the changes made before it started."""

from __future__ import annotations

import os

import pytest
from twisted.internet import defer

from nfsstack.nfs3.local.dirsync import DirectorySyncs


class Disk:
    """A sync whose completion the test decides: each sync's descriptor and Deferred, in order."""

    def __init__(self) -> None:
        self.started: list[tuple[int, defer.Deferred]] = []

    def __call__(self, fd: int) -> defer.Deferred:
        os.fstat(fd)  # a descriptor open while its sync runs
        d: defer.Deferred = defer.Deferred()
        self.started.append((fd, d))
        return d


def never() -> defer.Deferred:
    raise AssertionError("the whole system was synced")


@pytest.fixture
def directory(tmp_path):
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    yield fd, os.fstat(fd)
    os.close(fd)


def fired(d: defer.Deferred) -> list:
    out: list = []
    d.addBoth(out.append)
    return out


def test_a_change_made_while_a_sync_runs_waits_for_the_next_one(directory):
    disk = Disk()
    syncs = DirectorySyncs(disk, never)
    first = fired(syncs(*directory))
    assert len(disk.started) == 1
    # Made after the first sync started: the first sync may not have seen it.
    second, third = fired(syncs(*directory)), fired(syncs(*directory))
    assert len(disk.started) == 1, "two syncs of one directory at once"
    disk.started[0][1].callback(None)
    assert first == [None]
    assert second == [] and third == [], "a change was answered by a sync that started before it was made"
    assert len(disk.started) == 2, "the changes that waited got no sync of their own"
    disk.started[1][1].callback(None)
    assert second == [None] and third == [None]
    assert syncs.syncs == 2


def test_the_descriptor_is_closed_when_no_change_waits_and_a_new_change_starts_a_new_sync(directory):
    disk = Disk()
    syncs = DirectorySyncs(disk, never)
    syncs(*directory)
    fd = disk.started[0][0]
    disk.started[0][1].callback(None)
    with pytest.raises(OSError):
        os.fstat(fd)
    done = fired(syncs(*directory))
    assert len(disk.started) == 2 and done == []
    disk.started[1][1].callback(None)
    assert done == [None]


def test_a_failed_sync_fails_every_change_it_answers_and_the_next_ones_get_theirs(directory):
    disk = Disk()
    syncs = DirectorySyncs(disk, never)
    first = fired(syncs(*directory))
    second = fired(syncs(*directory))
    disk.started[0][1].errback(OSError(5, "I/O error"))
    assert first[0].check(OSError) and second == []
    disk.started[1][1].callback(None)
    assert second == [None]


def test_directories_are_synced_apart(tmp_path):
    disk = Disk()
    syncs = DirectorySyncs(disk, never)
    fds = []
    for name in ("a", "b"):
        os.mkdir(tmp_path / name)
        fds.append(os.open(tmp_path / name, os.O_PATH | os.O_DIRECTORY))
    try:
        a, b = (fired(syncs(fd, os.fstat(fd))) for fd in fds)
        assert len(disk.started) == 2
        disk.started[1][1].callback(None)
        assert b == [None] and a == []
    finally:
        for fd in fds:
            os.close(fd)


def test_a_sync_that_raises_fails_its_change(directory):
    def refuses(fd: int) -> defer.Deferred:
        raise OSError(22, "refused")

    failed = fired(DirectorySyncs(refuses, never)(*directory))
    assert failed[0].check(OSError)


def test_with_later_the_changes_made_before_the_first_sync_starts_share_it(directory):
    disk = Disk()
    starts: list = []
    syncs = DirectorySyncs(disk, never, later=lambda delay, f, *args: starts.append((f, args)))
    answers = [fired(syncs(*directory)) for _ in range(5)]  # the calls of one read, before the reactor goes on
    assert disk.started == [] and len(starts) == 1
    f, args = starts.pop()
    f(*args)
    assert len(disk.started) == 1
    late = fired(syncs(*directory))
    disk.started[0][1].callback(None)
    assert all(a == [None] for a in answers) and late == []
    assert len(disk.started) == 2 and not starts
    disk.started[1][1].callback(None)
    assert late == [None] and syncs.syncs == 2


def test_a_directory_the_server_cannot_read_gets_the_whole_system_synced(directory, monkeypatch):
    """A plain user's server may write in a directory it may not read (mode 0333): it cannot open it to sync it,
    so everything is synced instead, one sync(2) at a time as for a directory."""
    from nfsstack.nfs3.local import dirsync

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    everything: list[defer.Deferred] = []

    def sync_all() -> defer.Deferred:
        everything.append(defer.Deferred())
        return everything[-1]

    syncs = DirectorySyncs(Disk(), sync_all)
    monkeypatch.setattr(dirsync.os, "open", refused)
    first = fired(syncs(*directory))
    second = fired(syncs(*directory))
    monkeypatch.undo()
    assert len(everything) == 1, "two syncs of everything at once"
    everything[0].callback(None)
    assert first == [None] and second == [] and len(everything) == 2
    everything[1].callback(None)
    assert second == [None] and syncs.syncs == 2


def test_a_sync_that_ends_at_once_still_answers_a_change_made_while_it_started(directory):
    """A sync whose Deferred has fired when it is handed back (a pool that runs at once): a change made during
    it gets a round of its own, and each round's descriptor is closed once."""
    syncs = None
    rounds: list[int] = []
    inner: list = []

    def at_once(fd: int) -> defer.Deferred:
        rounds.append(fd)
        if len(rounds) == 1:
            inner.append(fired(syncs(*directory)))  # made while the first sync runs
        return defer.succeed(None)

    syncs = DirectorySyncs(at_once, never)
    outer = fired(syncs(*directory))
    assert outer == [None] and inner == [[None]] and len(rounds) == 2 and syncs.syncs == 2
    with pytest.raises(OSError):
        os.fstat(rounds[0])


def test_sync_here_syncs_the_directory_opened_for_reading_and_closes_it(directory):
    from nfsstack.nfs3.local.dirsync import sync_here

    synced: list[int] = []
    sync_here(directory[0], lambda fd: synced.append((fd, os.fstat(fd).st_ino)))
    assert [ino for _, ino in synced] == [directory[1].st_ino]
    with pytest.raises(OSError):
        os.fstat(synced[0][0])


def test_what_the_server_cannot_open_gets_its_filesystem_synced_through_its_root_opened_again(directory,
                                                                                             monkeypatch):
    """Where an export's root on the filesystem is open, a directory the server may not read gets a syncfs of
    that filesystem through a new descriptor of the root (``reopen_root_on``: syncfs reports the write errors
    since its descriptor was opened, not older ones), closed after, one at a time as for a directory, never a
    sync(2) of every filesystem of the host; so does ``filesystem(dev)`` (a symlink's SETATTR).  A filesystem
    with no root open falls back to sync(2)."""
    from nfsstack.nfs3.local import dirsync

    dirfd, st = directory
    fresh = [os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=dirfd) for _ in range(3)]
    given = list(fresh)
    disk = Disk()
    syncs = DirectorySyncs(Disk(), never, sync_filesystem=disk,
                           reopen_root_on=lambda dev: given.pop(0) if dev == st.st_dev else None)

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(dirsync.os, "open", refused)
    first = fired(syncs(dirfd, st))
    second = fired(syncs.filesystem(st.st_dev))
    monkeypatch.undo()
    assert len(disk.started) == 1, "two syncs of one filesystem at once"
    assert disk.started[0][0] == fresh[0] and len(given) == 2, "one new descriptor, for the round that started"
    disk.started[0][1].callback(None)
    assert first == [None] and second == [] and len(disk.started) == 2
    disk.started[1][1].callback(None)
    assert second == [None]
    with pytest.raises(OSError):
        os.fstat(fresh[0])  # closed after the last round

    everything: list[defer.Deferred] = []
    other = DirectorySyncs(Disk(), lambda: everything.append(defer.Deferred()) or everything[-1],
                           sync_filesystem=disk, reopen_root_on=lambda dev: None)
    fired(other.filesystem(st.st_dev))
    assert len(everything) == 1 and len(disk.started) == 2

    synced: list = []
    monkeypatch.setattr(dirsync, "syncfs", lambda fd: synced.append(fd))
    monkeypatch.setattr(dirsync.os, "sync", lambda: synced.append("sync"))
    dirsync.sync_filesystem_here(st.st_dev, lambda dev: fresh[1])
    dirsync.sync_filesystem_here(st.st_dev, lambda dev: None)
    assert synced == [fresh[1], "sync"]
    with pytest.raises(OSError):
        os.fstat(fresh[1])  # closed by sync_filesystem_here
    os.close(fresh[2])


def test_syncfs_syncs_a_readable_descriptor_and_refuses_an_o_path_one(tmp_path):
    from nfsstack.nfs3.local.dirsync import syncfs

    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        syncfs(fd)
    finally:
        os.close(fd)
    fd = os.open(tmp_path, os.O_PATH)
    try:
        with pytest.raises(OSError):
            syncfs(fd)
    finally:
        os.close(fd)


def test_the_table_reopens_an_export_root_for_syncfs_and_knows_no_other_filesystem(tmp_path):
    """ExportTable.reopen_root_on: a new open of an export's root on the filesystem asked for (its own file
    status flags, not a copy sharing the root's: syncfs then reports only the write errors since it was opened),
    the caller's to close; None for a filesystem no export root is open on."""
    import fcntl

    from nfsstack.exports import parse_exports
    from nfsstack.exports.handles import HandleCodec
    from nfsstack.exports.table import ExportTable

    exports = parse_exports(f"{tmp_path} 127.0.0.1(rw)\n")
    table = ExportTable(exports, HandleCodec(b"k" * 32))
    try:
        dev = os.stat(tmp_path).st_dev
        assert table.reopen_root_on(dev) is None, "no root open yet"
        root, _ = table.root(next(iter(exports)))
        fd = table.reopen_root_on(dev)
        assert fd is not None and fd != root and os.fstat(fd).st_ino == os.stat(tmp_path).st_ino
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        assert not fcntl.fcntl(root, fcntl.F_GETFL) & os.O_NONBLOCK, "a copy of the root's descriptor"
        os.close(fd)
        assert table.reopen_root_on(dev + 1) is None
    finally:
        table.close()
