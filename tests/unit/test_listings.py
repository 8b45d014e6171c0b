"""The listing cache (nfs3/local/listings.py) on its own: what may be kept, and what drops it."""

import os

import pytest

from nfsstack.nfs3.local import listings
from nfsstack.nfs3.local.listings import Chunk, Listings


@pytest.fixture
def cache():
    c = Listings()
    yield c
    c.close()


def _dir(tmp_path, name="d"):
    path = tmp_path / name
    path.mkdir()
    st = os.stat(path)
    return path, (st.st_dev, st.st_ino), os.open(path, os.O_PATH)


def _stamp(path):
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_nlink)


def test_a_chunk_is_kept_and_dropped_by_an_event_in_its_directory(tmp_path, cache):
    path, dirkey, fd = _dir(tmp_path)
    (path / "a").touch()
    fill = cache.begin(dirkey, fd)
    fill.members.append(os.stat(path / "a").st_ino)
    cache.put(fill, (dirkey, 0), _stamp(path), Chunk([b"entries"], 7, True))
    assert cache.get((dirkey, 0), _stamp(path)).segments == [b"entries"]
    assert cache.get((dirkey, 0), (0, 0, 0, 0)) is None, "another directory stamp: dropped"
    fill = cache.begin(dirkey, fd)
    cache.put(fill, (dirkey, 0), _stamp(path), Chunk([b"entries"], 7, True))
    with open(path / "a", "ab") as f:
        f.write(b"x")
    assert cache.get((dirkey, 0), _stamp(path)) is None
    os.close(fd)


def test_a_fill_that_a_procedure_touched_meanwhile_is_not_kept(tmp_path, cache):
    """A WRITE finishing in a pool thread while the reactor builds a listing: the listing may hold the
    attributes from before it, so it is not kept."""
    path, dirkey, fd = _dir(tmp_path)
    fill = cache.begin(dirkey, fd)
    fill.members.append(1234)
    cache.touched([(dirkey[0], 1234)])
    cache.put(fill, (dirkey, 0), _stamp(path), Chunk([b"entries"], 7, True))
    assert cache.get((dirkey, 0), _stamp(path)) is None
    fill = cache.begin(dirkey, fd)
    fill.members.append(1234)
    cache.put(fill, (dirkey, 0), _stamp(path), Chunk([b"entries"], 7, True))
    assert cache.get((dirkey, 0), _stamp(path)) is not None
    cache.touched([(dirkey[0], 1234)])  # an entry of the chunk, afterwards
    assert cache.get((dirkey, 0), _stamp(path)) is None
    os.close(fd)


def test_bounds_on_directories_and_bytes(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(listings, "MAX_DIRS", 3)
    monkeypatch.setattr(listings, "MAX_BYTES", 100 + 3 * listings.CHUNK_COST)
    dirs = [_dir(tmp_path, f"d{i}") for i in range(5)]
    for path, dirkey, fd in dirs:
        fill = cache.begin(dirkey, fd)
        cache.put(fill, (dirkey, 0), _stamp(path), Chunk([b"x" * 30], 30, True))
    kept = [d for d in dirs if cache.get((d[1], 0), _stamp(d[0])) is not None]
    assert 1 <= len(kept) <= 3 and dirs[-1] in kept
    assert cache._bytes <= listings.MAX_BYTES and len(cache._watched) <= 3
    for _, _, fd in dirs:
        os.close(fd)


def test_without_inotify_nothing_is_kept(tmp_path, monkeypatch):
    from nfsstack.nfs3.local import inotify

    def refuse(self):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(inotify.Inotify, "__init__", refuse)
    cache = Listings()
    path, dirkey, fd = _dir(tmp_path)
    assert cache.begin(dirkey, fd) is None and cache.begin(dirkey, fd) is None
    os.close(fd)


def test_only_local_filesystems_are_kept(tmp_path, cache, monkeypatch):
    """inotify sees nothing another host does to a network filesystem: its listings are always built afresh."""
    path, dirkey, fd = _dir(tmp_path)
    assert listings.fs_type(fd) in listings.LOCAL  # the tests' temporary directory: ext4, xfs, btrfs or tmpfs
    monkeypatch.setattr(listings, "LOCAL", frozenset())
    assert cache.begin(dirkey, fd) is None
    os.close(fd)


def test_chunks_of_no_bytes_are_bounded_in_number(tmp_path, cache, monkeypatch):
    """A hostile client asking an empty listing at many cookies and sizes: each empty chunk still counts."""
    monkeypatch.setattr(listings, "MAX_BYTES", 100 * listings.CHUNK_COST)
    path, dirkey, fd = _dir(tmp_path)
    for cookie in range(1000):
        fill = cache.begin(dirkey, fd)
        cache.put(fill, (dirkey, cookie), _stamp(path), Chunk([], 0, True))
        assert len(cache._chunks) <= 100
    assert cache._bytes <= listings.MAX_BYTES
    os.close(fd)
