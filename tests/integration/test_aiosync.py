"""fsync through io_uring and Linux native AIO (nfs3/aiosync.py), completed in the reactor through an eventfd."""

import errno
import os

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from nfsstack.nfs3.aiosync import AioSyncer, UringSyncer, open_syncer

KINDS = [UringSyncer, AioSyncer]


@pytest.fixture(params=KINDS, ids=lambda k: k.__name__)
def syncer(request):
    s = open_syncer(reactor, (request.param,))
    if s is None:
        pytest.skip(f"this kernel does not run {request.param.__name__}")
    yield s
    s.close()


def test_the_stack_gets_the_first_kind_the_kernel_runs():
    s = open_syncer(reactor)
    try:
        if s is not None:
            assert type(s) in KINDS
            assert all(open_syncer(reactor, (k,)) is None for k in KINDS[:KINDS.index(type(s))])
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
    s = open_syncer(reactor, (kind,))
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
