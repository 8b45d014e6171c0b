"""State files: the mount list stays bounded and forgets what is no longer exported; private files stay private."""

import os

from nfsstack.mount.mountlist import MountList
from nfsstack.statefile import make_private


def test_the_mount_list_keeps_the_newest_entries_only(tmp_path):
    mounts = MountList(str(tmp_path), limit=3)
    for n in range(5):
        mounts.add(f"10.0.0.{n}", "/srv")
    assert mounts.entries == [(f"10.0.0.{n}", "/srv") for n in (2, 3, 4)]
    assert MountList(str(tmp_path), limit=3).entries == mounts.entries  # on disk too
    assert MountList(str(tmp_path), limit=2).entries == mounts.entries[1:]  # a smaller limit trims the file


def test_the_mount_list_forgets_directories_no_export_holds(tmp_path):
    mounts = MountList(str(tmp_path))
    for entry in (("a", "/srv/kept"), ("b", "/srv/gone"), ("c", "/srv/kept/sub"), ("d", "/srv/gone/sub")):
        mounts.add(*entry)
    gone = mounts.keep_only(lambda d: d == "/srv/kept" or d.startswith("/srv/kept/"))
    assert gone == [("b", "/srv/gone"), ("d", "/srv/gone/sub")]
    assert MountList(str(tmp_path)).entries == [("a", "/srv/kept"), ("c", "/srv/kept/sub")]
    assert mounts.keep_only(lambda d: True) == []


def test_make_private_takes_away_what_others_could_read(tmp_path):
    key = tmp_path / "handle.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o644)
    assert make_private(key, 0o600) == 0o644
    assert key.stat().st_mode & 0o7777 == 0o600
    assert make_private(key, 0o600) is None
    tmp_path.chmod(0o750)
    assert make_private(tmp_path, 0o700) == 0o750 and os.stat(tmp_path).st_mode & 0o7777 == 0o700
