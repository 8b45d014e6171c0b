"""fsync through Linux native AIO (nfs3/aiosync.py), completed in the reactor through an eventfd."""

import errno
import os

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from nfsstack.nfs3.aiosync import open_syncer


@pytest.fixture
def syncer():
    s = open_syncer(reactor)
    if s is None:
        pytest.skip("this kernel does not run asynchronous fsyncs")
    yield s
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
    with pytest.raises(OSError):
        syncer(987654)  # not a descriptor: EBADF at once


def test_room_runs_out_cleanly(tmp_path):
    s = open_syncer(reactor)
    if s is None:
        pytest.skip("this kernel does not run asynchronous fsyncs")
    s.depth = 0  # full: the caller is told at once and uses its thread pool
    try:
        fd = os.open(tmp_path / "f", os.O_CREAT | os.O_WRONLY, 0o644)
        with pytest.raises(OSError) as e:
            s(fd)
        assert e.value.errno == errno.EAGAIN
        os.close(fd)
    finally:
        s.close()
