"""fsync through io_uring and Linux native AIO (nfs3/local/aiosync.py), completed in the reactor through an eventfd."""

import errno
import os

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from nfsstack.nfs3.local.aiosync import AioFsync, UringIO, open_kernel_io

KINDS = [UringIO, AioFsync]


@pytest.fixture(params=KINDS, ids=lambda k: k.__name__)
def syncer(request):
    s = open_kernel_io(reactor, (request.param,))
    if s is None:
        pytest.skip(f"this kernel does not run {request.param.__name__}")
    yield s
    s.close()


def test_the_stack_gets_the_first_kind_the_kernel_runs():
    """Each kind asked alone, then the stack's choice: the first kind that works alone, or None (the thread
    pool) when this kernel runs none of them."""
    runs = []
    for kind in KINDS:
        alone = open_kernel_io(reactor, (kind,))
        if alone is not None:
            assert type(alone) is kind
            alone.close()
            runs.append(kind)
    s = open_kernel_io(reactor)
    try:
        assert (type(s) if s is not None else None) == (runs[0] if runs else None), (s, runs)
    finally:
        if s is not None:
            s.close()


@pytest_twisted.inlineCallbacks
def test_many_syncs_complete_in_the_reactor(syncer, tmp_path):
    fds = []
    for i in range(64):
        fd = os.open(tmp_path / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, b"x" * 4096)
        fds.append(fd)
    try:
        results = yield defer.gatherResults([syncer(fd, i % 2 == 1) for i, fd in enumerate(fds)])
        assert results == [None] * 64
        assert not syncer._pending
    finally:
        for fd in fds:
            os.close(fd)


@pytest_twisted.inlineCallbacks
def test_a_sync_the_kernel_refuses_fails_its_deferred_or_the_call(syncer):
    r, w = os.pipe()  # a pipe cannot be fsynced: EINVAL, at submission or at completion
    try:
        try:
            yield syncer(r)
        except OSError as e:
            assert e.errno == errno.EINVAL
        else:
            pytest.fail("fsync of a pipe succeeded")
    finally:
        os.close(r)
        os.close(w)
    try:
        yield syncer(987654)  # not a descriptor: EBADF, at submission (AIO) or at completion (io_uring)
    except OSError as e:
        assert e.errno == errno.EBADF
    else:
        pytest.fail("fsync of no descriptor succeeded")


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_room_runs_out_cleanly(tmp_path, kind):
    s = open_kernel_io(reactor, (kind,))
    if s is None:
        pytest.skip(f"this kernel does not run {kind.__name__}")
    s.depth = 0  # full: the caller is told at once and uses its thread pool
    try:
        fd = os.open(tmp_path / "f", os.O_CREAT | os.O_WRONLY, 0o644)
        with pytest.raises(OSError) as e:
            s(fd)
        assert e.value.errno == errno.EAGAIN
        os.close(fd)
    finally:
        s.close()


def _uring_that(can: str, what: str):
    """An io_uring syncer whose start-up probe found ``can`` (``can_open``, ``can_write``), else a skip."""
    s = open_kernel_io(reactor, (UringIO,))
    if s is None or not getattr(s, can):
        if s is not None:
            s.close()
        pytest.skip(f"this kernel does not {what} through io_uring")
    return s


@pytest.fixture
def ring():
    s = _uring_that("can_open", "open files")
    yield s
    s.close()


@pytest_twisted.inlineCallbacks
def test_files_made_by_the_ring_are_made_as_the_submitting_threads_fsuid(ring, tmp_path):
    """CREATE's open by io_uring: the kernel worker acts as the identity the reactor thread had when it
    submitted (setfsuid), so ownership and permission checks are the caller's."""
    from nfsstack.exports.identity import Identity, Switcher

    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o777)
    open_dir.chmod(0o777)
    closed_dir = tmp_path / "closed"
    closed_dir.mkdir(mode=0o755)
    fds = [os.open(d, os.O_PATH | os.O_DIRECTORY) for d in (open_dir, closed_dir)]
    ids, nobody = Switcher(), Identity(65534, 65534, ())
    try:
        with ids.acting_as(nobody):
            made = ring.openat(fds[0], b"mine", flags, 0o640)
            refused = ring.openat(fds[1], b"theirs", flags, 0o640)
        assert ids.current.uid == 0
        fd = yield made
        os.close(fd)
        st = os.stat(open_dir / "mine")
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 65534, 0o640)
        with pytest.raises(PermissionError):
            yield refused
        assert not (closed_dir / "theirs").exists()
        with pytest.raises(FileExistsError):
            yield ring.openat(fds[0], b"mine", flags, 0o600)
        fd = yield ring.openat(fds[1], b"roots", flags, 0o600)  # as root again
        os.close(fd)
        assert os.stat(closed_dir / "roots").st_uid == 0
        assert not ring._pending and not ring._opens
    finally:
        for fd in fds:
            os.close(fd)


@pytest.fixture
def writer():
    s = _uring_that("can_write", "write files")
    yield s
    s.close()


@pytest_twisted.inlineCallbacks
def test_the_ring_writes_at_the_offset_asked_from_any_buffer(writer, tmp_path):
    """A large WRITE's data by io_uring: from a writable buffer in place (a view into a received record) or from
    read-only bytes (copied first); each Deferred fires with the count written, and nothing is held after."""
    path = tmp_path / "data"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    received = bytearray(os.urandom(3 << 20))
    try:
        counts = yield defer.gatherResults([
            writer.pwrite(fd, memoryview(received)[1 << 20:], 1 << 20),  # in place, as a record's data
            writer.pwrite(fd, bytes(received[: 1 << 20]), 0),  # read-only: copied
        ])
        assert counts == [2 << 20, 1 << 20]
        assert path.read_bytes() == bytes(received)
        assert not writer._pending and not writer._held and not writer._writes
        with pytest.raises(OSError) as e:  # a descriptor open for reading only: the write's own error
            ro = os.open(path, os.O_RDONLY)
            try:
                yield writer.pwrite(ro, b"x", 0)
            finally:
                os.close(ro)
        assert e.value.errno == errno.EBADF
    finally:
        os.close(fd)


@pytest_twisted.inlineCallbacks
def test_a_ring_write_as_a_user_clears_the_set_user_id_bit(writer, tmp_path):
    """As a write made in place by that user (the reactor thread's fsuid at submission): the kernel drops the
    set-user-id bit of a file a non-owner writes."""
    from nfsstack.exports.identity import Identity, Switcher

    path = tmp_path / "tool"
    path.write_bytes(b"#!/bin/sh\n")
    path.chmod(0o4777)
    fd = os.open(path, os.O_WRONLY)
    ids = Switcher()
    try:
        with ids.acting_as(Identity(65534, 65534, ())):
            d = writer.pwrite(fd, bytearray(b"exit 0\n"), 10)
        assert (yield d) == 7
        assert os.stat(path).st_mode & 0o7777 == 0o777
        assert path.read_bytes() == b"#!/bin/sh\nexit 0\n"
    finally:
        os.close(fd)
