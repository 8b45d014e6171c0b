"""The kept open files of nfs3/local/filecache.py: when an entry serves, and when its descriptor is closed."""

import os
import time

import pytest

from nfsstack.exports.identity import Identity
from nfsstack.nfs3.local.filecache import FileCache

ALICE = Identity(1000, 1000, (1000,))
BOB = Identity(1001, 1001, (1001,))
CLOCK_REALTIME_COARSE = 5  # <linux/time.h>; not in Python's time module


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.fixture
def cache():
    clock = Clock()
    c = FileCache(size=2, idle=2.0, clock=clock)
    c.test_clock = clock
    yield c
    c.close()


def kept(cache, path, who=ALICE):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    cache.keep(fd, who, os.fstat(fd))
    return fd


def test_an_entry_serves_its_identity_while_the_inode_is_unchanged(cache, tmp_path):
    fd = kept(cache, tmp_path / "f")
    entry = cache.writer(ALICE, os.stat(tmp_path / "f"))
    assert entry is not None and entry.fd == fd
    os.pwrite(entry.fd, b"data", 0)
    cache.saw(entry, os.fstat(entry.fd))  # its own write's ctime
    entry.release()
    assert cache.writer(BOB, os.stat(tmp_path / "f")) is None  # another caller: dropped
    assert not is_open(fd) and len(cache) == 0
    assert (cache.hits, cache.misses) == (1, 1)


def test_a_change_made_elsewhere_retires_the_entry(cache, tmp_path):
    fd = kept(cache, tmp_path / "f")
    os.chmod(tmp_path / "f", 0o600)
    assert cache.writer(ALICE, os.stat(tmp_path / "f")) is None
    assert not is_open(fd)
    fd = kept(cache, tmp_path / "f")
    seen = os.fstat(fd)
    after_the_clock_moved_past(seen.st_ctime_ns)
    with open(tmp_path / "f", "ab", buffering=0) as other:  # a write not through the entry: a new ctime it did not see
        other.write(b"x")
        st = os.fstat(other.fileno())
    assert st.st_ctime_ns != seen.st_ctime_ns and st.st_mode == seen.st_mode, "only the ctime tells the change"
    assert cache.writer(ALICE, os.stat(tmp_path / "f")) is None
    assert not is_open(fd)


def after_the_clock_moved_past(ctime_ns):
    """Return once the clock the kernel stamps ctimes with (the coarse realtime clock, one tick per jiffy) has
    passed ``ctime_ns``: a change made after that gets a later ctime, however coarse the filesystem's stamps."""
    for _ in range(10_000):
        if time.clock_gettime_ns(CLOCK_REALTIME_COARSE) > ctime_ns:
            return
        time.sleep(0.001)
    raise AssertionError(f"the coarse clock did not pass {ctime_ns}")


def test_a_lent_descriptor_outlives_its_entry_until_released(cache, tmp_path):
    fd = kept(cache, tmp_path / "f")
    entry = cache.syncer(os.stat(tmp_path / "f"))
    cache.forget(os.stat(tmp_path / "f"))
    assert len(cache) == 0 and is_open(fd)  # io_uring may still be syncing through it
    entry.release()
    assert not is_open(fd)


def test_least_recently_used_go_first(cache, tmp_path):
    a, b = kept(cache, tmp_path / "a"), kept(cache, tmp_path / "b")
    cache.writer(ALICE, os.stat(tmp_path / "a")).release()  # a is used: b is the oldest now
    c = kept(cache, tmp_path / "c")
    assert len(cache) == 2 and is_open(a) and not is_open(b) and is_open(c)


def test_sweep_closes_idle_and_deleted_files(cache, tmp_path):
    a, b = kept(cache, tmp_path / "a"), kept(cache, tmp_path / "b")
    os.unlink(tmp_path / "b")
    assert cache.sweep() == 1 and is_open(a) and not is_open(b)  # deleted on the server: its blocks go
    cache.test_clock.now += 2.5
    assert cache.sweep() == 1 and not is_open(a) and len(cache) == 0


def test_keeping_a_second_descriptor_of_an_inode_closes_the_first(cache, tmp_path):
    first = kept(cache, tmp_path / "f")
    second = kept(cache, tmp_path / "f", BOB)
    assert not is_open(first) and is_open(second)
    assert cache.writer(BOB, os.stat(tmp_path / "f")).fd == second


def test_reading_and_writing_descriptors_are_kept_apart(cache, tmp_path):
    """A read-only descriptor never serves a WRITE, nor a writable one a READ; removing the file closes both."""
    w = kept(cache, tmp_path / "f")
    r = os.open(tmp_path / "f", os.O_RDONLY)
    cache.keep(r, ALICE, os.fstat(r), reading=True)
    st = os.stat(tmp_path / "f")
    writer, reader = cache.writer(ALICE, st), cache.reader(ALICE, st)
    assert (writer.fd, reader.fd) == (w, r)
    writer.release()
    reader.release()
    cache.forget(st)
    assert not is_open(w) and not is_open(r) and len(cache) == 0
