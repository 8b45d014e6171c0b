"""The raw struct stat cache key (nfs3/local/rawstat.py): its fattr3 is exactly what os.lstat gives."""

import os

import pytest

from nfsstack.nfs3.local import rawstat
from nfsstack.nfs3.codec import fattr3

pytestmark = pytest.mark.skipif(not rawstat.SUPPORTED, reason="no struct stat layout for this machine")


def test_fattr3_of_every_kind(tmp_path):
    (tmp_path / "file").write_bytes(b"x" * 5000)
    (tmp_path / "dir").mkdir()
    os.symlink("file", tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    os.utime(tmp_path / "file", ns=(-1_500_000_000, 1_234_567_890_123))  # before 1970, and nanoseconds
    names = ["file", "dir", "link", "fifo"]
    if os.geteuid() == 0:
        os.mknod(tmp_path / "null", 0o20644, os.makedev(1, 3))
        names.append("null")
    dirfd = os.open(tmp_path, os.O_PATH)
    try:
        buf = rawstat.Buffer()
        for name in names:
            raw = buf.lstat(dirfd, name.encode())
            assert raw is not None and len(raw) == rawstat.SIZE
            st = os.lstat(tmp_path / name)
            assert rawstat.Stat(raw).fattr3(7) == fattr3(st, 7), name
            assert rawstat.Stat(raw).ctime_total_ns == st.st_ctime_ns
        assert buf.lstat(dirfd, b"missing") is None
    finally:
        os.close(dirfd)


def test_any_change_changes_the_key(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"a")
    dirfd = os.open(tmp_path, os.O_PATH)
    try:
        buf = rawstat.Buffer()
        first = buf.lstat(dirfd, b"f")
        assert buf.lstat(dirfd, b"f") == first  # the same object, unchanged: the same key
        os.chmod(path, 0o600)
        second = buf.lstat(dirfd, b"f")
        assert second != first
        with open(path, "ab") as f:
            f.write(b"b")
        assert buf.lstat(dirfd, b"f") != second
    finally:
        os.close(dirfd)
