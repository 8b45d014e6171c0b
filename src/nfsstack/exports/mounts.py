"""What is mounted where, as the export table needs it for exports(5) ``crossmnt``, ``nohide`` and ``hide``.

:func:`mounts` reads ``/proc/self/mountinfo`` (proc(5)): mount id -> mount
point, the ids ``name_to_handle_at(2)`` gives; :func:`filesystem_type` a
device's filesystem type.  :func:`open_tree` clones a
mount without what is mounted below it (``open_tree(2)``, Linux 5.2), so the
directory a mount covers can be reached (knfsd's ``hide``).
"""

from __future__ import annotations

import ctypes
import os

_SYS_OPEN_TREE = {"x86_64": 428, "aarch64": 428, "riscv64": 428, "ppc64le": 428, "s390x": 428}
_OPEN_TREE_CLONE = 1
_AT_EMPTY_PATH = 0x1000
_libc = ctypes.CDLL(None, use_errno=True)


def open_tree(fd: int) -> int:
    """``open_tree(fd, "", OPEN_TREE_CLONE | AT_EMPTY_PATH)``: a detached copy of the mount at ``fd`` (from
    ``fd``'s directory down) without the mounts below it; -1 where the kernel or our privileges refuse it."""
    number = _SYS_OPEN_TREE.get(os.uname().machine)
    if number is None:
        return -1
    return _libc.syscall(number, fd, b"", _OPEN_TREE_CLONE | os.O_CLOEXEC | _AT_EMPTY_PATH)


def filesystem_type(st_dev: int) -> str:
    """The type of the filesystem of device ``st_dev`` ("overlay", "ext4", ...), from /proc/self/mountinfo
    ("?" if no mount of it is found)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split(" ")
                major, _, minor = fields[2].partition(":")
                if os.makedev(int(major), int(minor)) == st_dev:
                    return fields[fields.index("-") + 1]
    except (OSError, ValueError, IndexError):
        pass
    return "?"


def _unescape(field: str) -> str:
    """A mountinfo path: space, tab, newline and backslash are written as octal escapes."""
    if "\\" not in field:
        return field
    raw = field.encode("utf-8", "surrogateescape")
    out, i = bytearray(), 0
    while i < len(raw):
        if raw[i] == 0x5C and i + 3 < len(raw) and raw[i + 1:i + 4].isdigit():
            out.append(int(raw[i + 1:i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "surrogateescape")


def mounts() -> dict[int, str]:
    """Mount id -> mount point, from /proc/self/mountinfo (the ids name_to_handle_at gives)."""
    result = {}
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split(" ", 5)
            if len(fields) > 4 and fields[0].isdigit():
                result[int(fields[0])] = _unescape(fields[4])
    return result
