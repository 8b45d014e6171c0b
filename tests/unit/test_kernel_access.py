"""ACCESS as a user asks the kernel (nfs3/local/as_caller.py): about the descriptor itself with faccessat2 where
the kernel can, else through its /proc link.  Both ways give the same bits, for mode bits and ACLs alike."""

import os
import shutil
import subprocess

import pytest

from nfsstack.exports.identity import Identity, Switcher
from nfsstack.nfs3.local import as_caller
from nfsstack.nfs3.local.as_caller import LocalFS

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other users")

USER, OTHER = Identity(1000, 1000, (1000,)), Identity(1001, 1001, (1001, 27))


def objects(top):
    """Files and directories of every kind of permission the kernel decides on: owner, group, other, none,
    an ACL entry for USER."""
    top.mkdir()
    made = []
    for mode in (0o000, 0o400, 0o600, 0o640, 0o644, 0o700, 0o750, 0o755, 0o070, 0o007, 0o111):
        for kind in ("f", "d"):
            path = top / f"{kind}{mode:03o}"
            path.mkdir() if kind == "d" else path.write_bytes(b"x")
            os.chown(path, 1000, 27)
            path.chmod(mode)
            made.append(path)
    acl = top / "acl"
    acl.write_bytes(b"x")
    acl.chmod(0o600)
    if shutil.which("setfacl") and subprocess.run(["setfacl", "-m", "u:1001:rwx", str(acl)]).returncode == 0:
        made.append(acl)
    return made


def test_both_ways_of_asking_the_kernel_agree(tmp_path, monkeypatch):
    assert as_caller._FD_ACCESS or as_caller._NR_FACCESSAT2 is None, "faccessat2 is expected on this kernel"
    local = LocalFS(Switcher())
    answers = {}
    for fd_access in (True, False):
        if fd_access and not as_caller._FD_ACCESS:
            continue
        monkeypatch.setattr(as_caller, "_FD_ACCESS", fd_access)
        for path in objects(tmp_path / str(fd_access)):
            fd = os.open(path, os.O_PATH)
            try:
                st = os.fstat(fd)
                for who in (USER, OTHER):
                    for read_only in (False, True):
                        key = (path.name, who, read_only)
                        answers.setdefault(key, []).append(local.access(who, fd, st, read_only))
            finally:
                os.close(fd)
    differing = {key: bits for key, bits in answers.items() if len(set(bits)) != 1}
    assert not differing
    # and they say what the modes say: the owner of f600 reads and writes, the other user does not
    assert answers[("f600", USER, False)][0] == 0x01 | 0x04 | 0x08
    assert answers[("f600", OTHER, False)][0] == 0
    assert answers[("f070", OTHER, False)][0] == 0x01 | 0x04 | 0x08 | 0x20  # group 27: read, write, execute
    assert answers[("f070", OTHER, True)][0] == 0x01 | 0x20  # read-only export: no write
