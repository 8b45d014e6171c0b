"""Stable WRITEs and COMMIT sync the file they wrote, on each of WRITE's three paths (RFC 1813 section 3.3.7).

A small WRITE runs inline, a large one is written by io_uring where the kernel has it or else runs whole in the
thread pool; each path has its own place where the sync happens.  These tests count the ``fsync`` and
``fdatasync`` calls that reach the file, whoever makes them (the pool's system call or the fake ring's
completion); ``tests/integration/test_durability.py`` shows that what they sync survives a power cut.
"""

import os

import pytest

from nfsstack.nfs3.program import SMALL_IO
from tests.unit.test_nfs3 import create, env  # noqa: F401  (env is the fixture these tests use)

UNSTABLE, DATA_SYNC, FILE_SYNC = 0, 1, 2


@pytest.fixture
def synced(monkeypatch):
    """The inode numbers of the files fsync'ed or fdatasync'ed, in order."""
    seen = []
    real_fsync, real_fdatasync = os.fsync, os.fdatasync

    def fsync(fd):
        seen.append(("fsync", os.fstat(fd).st_ino))
        return real_fsync(fd)

    def fdatasync(fd):
        seen.append(("fdatasync", os.fstat(fd).st_ino))
        return real_fdatasync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    return seen


@pytest.mark.parametrize("env, size, path", [("inline", 4096, "inline"), ("ring", 4 * SMALL_IO, "io_uring"),
                                             ("inline", 4 * SMALL_IO, "pool")], indirect=["env"])
def test_stable_writes_and_commit_sync_on_every_path(env, synced, size, path):
    tmp, _, nfsd, nfs, roots = env
    assert (nfsd.fs.kernel_io is not None) == (path == "io_uring")
    for stable, name in ((FILE_SYNC, "fsync"), (DATA_SYNC, "fdatasync")):
        fh = create(nfs, roots["data"], f"{path}-{stable}".encode())
        ino = os.stat(tmp / "data" / f"{path}-{stable}").st_ino
        del synced[:]
        r = nfs("WRITE", fh, 0, b"x" * size, stable)
        assert r.ok and r.count == size and r.committed == stable, (r.status, r.fields)
        assert (name, ino) in synced, (path, stable, synced)
    # UNSTABLE syncs nothing; its COMMIT syncs the file.
    fh = create(nfs, roots["data"], f"{path}-unstable".encode())
    ino = os.stat(tmp / "data" / f"{path}-unstable").st_ino
    del synced[:]
    r = nfs("WRITE", fh, 0, b"y" * size, UNSTABLE)
    assert r.ok and r.committed == UNSTABLE and not [i for _, i in synced if i == ino], synced
    assert nfs("COMMIT", fh, 0, 0).ok
    assert ("fsync", ino) in synced, synced

