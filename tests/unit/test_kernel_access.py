"""ACCESS as a user (nfs3/local/as_caller.py): the kernel is asked about the descriptor itself with faccessat2 and
the caller's identity; where it cannot be (a kernel before 5.8: ENOSYS, an older container seccomp profile:
EPERM), the bits are worked out as the kernel would (mode bits, access ACL, mask).  Both give the same bits."""

import ctypes
import errno
import json
import os
import shutil
import subprocess
import sys

import pytest

from nfsstack.exports.identity import Identity, Switcher
from nfsstack.nfs3.local import as_caller
from nfsstack.nfs3.local.as_caller import LocalFS
from tests.support import server_env

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other users"),
    pytest.mark.skipif(not as_caller._FD_ACCESS, reason="the kernel's answers (faccessat2, Linux 5.8) are the reference"),
    pytest.mark.skipif(not shutil.which("setfacl"), reason="needs setfacl"),
]

CALLERS = [Identity(1000, 1000, (1000,)), Identity(1001, 1001, (1001, 27)), Identity(1002, 27, ()),
           Identity(1003, 1003, (1003, 28))]

#: (mode, setfacl -m spec or None): owner 1000, group 27.
OBJECTS = [(mode, None) for mode in (0o000, 0o400, 0o600, 0o640, 0o644, 0o700, 0o750, 0o755, 0o070, 0o007, 0o111,
                                     0o604, 0o460)] + [
    (0o600, "u:1001:rwx"),                     # a named user, mask rwx
    (0o600, "u:1001:rwx,m::r--"),              # the mask limits it
    (0o640, "g:28:rw-"),                       # a named group
    (0o640, "g:28:rw-,m::r--"),
    (0o604, "g:28:---,m::rwx"),                # a named group with nothing: not "other"
    (0o604, "u:1003:r--,m::---"),              # an empty mask: the kernel skips the ACL (other bits)
    (0o750, "u:1003:r-x,g::r--"),
]


def make(top):
    top.mkdir()
    made = []
    for i, (mode, spec) in enumerate(OBJECTS):
        for kind in ("f", "d"):
            path = top / f"{kind}{i}"
            path.mkdir() if kind == "d" else path.write_bytes(b"x")
            os.chown(path, 1000, 27)
            path.chmod(mode)
            if spec:
                subprocess.run(["setfacl", "-m", spec, str(path)], check=True)
            made.append(path)
    return made


def answers(local, paths):
    out = {}
    for path in paths:
        fd = os.open(path, os.O_PATH)
        try:
            st = os.fstat(fd)
            for who in CALLERS:
                for read_only in (False, True):
                    out[f"{path.name} {who.uid} {read_only}"] = local.access(who, fd, st, read_only)
        finally:
            os.close(fd)
    return out


def test_without_faccessat2_the_bits_are_the_kernels(tmp_path, monkeypatch):
    paths = make(tmp_path / "objects")
    local = LocalFS(Switcher())
    kernel = answers(local, paths)
    monkeypatch.setattr(as_caller, "_FD_ACCESS", False)
    worked_out = answers(local, paths)
    assert {k: (kernel[k], worked_out[k]) for k in kernel if kernel[k] != worked_out[k]} == {}
    # and what the kernel says is what the modes and ACLs say
    assert kernel["f2 1000 False"] == 0x01 | 0x04 | 0x08  # 0600, the owner: read, modify, extend
    assert kernel["f2 1001 False"] == 0                   # 0600, another user
    assert kernel["f3 1001 False"] == 0x01                # 0640, group 27: read
    assert kernel["f13 1001 False"] == 0x01 | 0x04 | 0x08 | 0x20  # u:1001:rwx
    assert kernel["f14 1001 False"] == 0x01               # u:1001:rwx limited by m::r--
    assert kernel["f3 1001 True"] == 0x01                 # read-only export: nothing that changes


ASK_WITH_FACCESSAT2_REFUSED = r"""
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)

class Insn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]

class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Insn))]

# faccessat2 (439) answers the errno given, as a kernel before 5.8 (ENOSYS) or an older Docker profile (EPERM)
prog = (Insn * 4)(Insn(0x20, 0, 0, 0), Insn(0x15, 0, 1, 439),
                  Insn(0x06, 0, 0, 0x00050000 | getattr(errno, sys.argv[1])), Insn(0x06, 0, 0, 0x7fff0000))
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(Prog(4, prog)), 0, 0) == 0  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER

from pathlib import Path
from nfsstack.exports.identity import Switcher
from nfsstack.nfs3.local import as_caller
from tests.unit.test_kernel_access import answers
paths = [Path(p) for p in sys.argv[2:]]
print(json.dumps({"fd_access": as_caller._FD_ACCESS, "answers": answers(as_caller.LocalFS(Switcher()), paths)}))
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the filter names x86_64's system call number")
@pytest.mark.parametrize("refusal", ["ENOSYS", "EPERM"])
def test_where_faccessat2_is_refused_the_bits_are_still_the_kernels(tmp_path, refusal):
    """Before this fallback, ENOSYS (glibc then checks the effective ids: root's) granted a user root's rights,
    and EPERM granted no user anything."""
    paths = make(tmp_path / "objects")
    kernel = answers(LocalFS(Switcher()), paths)
    out = subprocess.run([sys.executable, "-c", ASK_WITH_FACCESSAT2_REFUSED, refusal, *map(str, paths)],
                         capture_output=True, text=True, env=server_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["fd_access"] is False
    assert {k: (v, result["answers"][k]) for k, v in kernel.items() if result["answers"][k] != v} == {}
