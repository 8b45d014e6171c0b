"""NFS file handles that survive restarts and renames (docs/architecture.md, "File handles").

A handle is ``version | export id | kernel handle type and bytes | MAC``:

* the kernel handle comes from ``name_to_handle_at(2)`` and is opened again
  with ``open_by_handle_at(2)`` relative to the export's root, the mechanism
  knfsd and nfs-ganesha's VFS backend use, so no path cache is needed;
* the MAC is HMAC-SHA256 with a key kept in the state directory, truncated to
  8 bytes, so a forged or altered handle is refused (NFS3ERR_BADHANDLE);
* a resolved object must still lie inside its export (else NFS3ERR_STALE).

``open_by_handle_at`` needs CAP_DAC_READ_SEARCH (``name_to_handle_at`` needs
nothing); :func:`kernel_handles_refused` tells whether this process has it and
whether a directory's filesystem gives handles at all.  Without them,
:mod:`nfsstack.exports.paths` finds the same handles' objects through a map of
where they were last seen (keyed, where a filesystem gives no handles, by the
identities it gives instead: :func:`object_id`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import hmac
import os
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

from nfsstack.exports.mounts import filesystem_type

VERSION = 1
MAC_SIZE = 8
MAX_HANDLE = 64  # NFS3_FHSIZE (RFC 1813 section 2.4)
_HEAD = struct.Struct(">BIBi")  # version, export id, kernel handle length, kernel handle type
MAX_KERNEL_HANDLE = MAX_HANDLE - _HEAD.size - MAC_SIZE

AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_SYMLINK_FOLLOW = 0x400
AT_HANDLE_FID = 0x200
#: The handle type of the kernel's generic identities (include/linux/exportfs.h).
FILEID_INO64_GEN = 0x81

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int), ("f_handle", ctypes.c_ubyte * 128)]


class BadHandle(Exception):
    """Not one of our handles (forged, truncated, wrong version): NFS3ERR_BADHANDLE."""


class StaleHandle(Exception):
    """One of our handles, but its object is gone or outside its export: NFS3ERR_STALE."""


def kernel_handle(dirfd: int, name: str | bytes, follow: bool = False, fid: bool = False) -> tuple[int, bytes, int]:
    """``name_to_handle_at``: (handle type, handle bytes, mount id) of ``name`` under ``dirfd``.

    An empty ``name`` means ``dirfd`` itself.  ``fid``: ``AT_HANDLE_FID``, an identity that need not open again.
    """
    fh = _FileHandle()
    fh.handle_bytes = 128
    mount_id = ctypes.c_int()
    path = os.fsencode(name)
    flags = (AT_EMPTY_PATH if not path else 0) | (AT_SYMLINK_FOLLOW if follow else 0) | (AT_HANDLE_FID if fid else 0)
    if _libc.name_to_handle_at(dirfd, path, ctypes.byref(fh), ctypes.byref(mount_id), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return fh.handle_type, bytes(fh.f_handle[: fh.handle_bytes]), mount_id.value


def object_id(dirfd: int, name: str | bytes, follow: bool = False) -> tuple[int, bytes, int]:
    """:func:`kernel_handle`, or where the filesystem gives none (overlayfs without ``nfs_export=on``: a
    container's own files) the identity it gives instead, ``AT_HANDLE_FID`` (overlayfs gives them from Linux
    6.6, as fanotify reports objects; they wrap a handle of the layer's file, so are as unique and lasting),
    never opened by handle.  What the map of places (:mod:`nfsstack.exports.paths`) keys its objects by, and
    how a mount id is found.  The generic identity the kernel makes for a filesystem without export operations
    (9p, CIFS: ``FILEID_INO64_GEN``, an inode number and a generation these often keep at 0) is refused: a file
    made again under a number used before would take the old one's handle."""
    try:
        return kernel_handle(dirfd, name, follow)
    except OSError as e:
        if e.errno != errno.EOPNOTSUPP:
            raise
    try:
        found = kernel_handle(dirfd, name, follow, fid=True)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise
        # A kernel that knows no AT_HANDLE_FID (EINVAL), or a filesystem that gives no identity either.
        raise OSError(errno.EOPNOTSUPP, "the filesystem gives no file handles, nor identities") from None
    if found[0] == FILEID_INO64_GEN:
        raise OSError(errno.EOPNOTSUPP, "the filesystem gives no file handles, nor lasting identities")
    return found


#: ``struct file_handle``'s header (``handle_bytes``, ``handle_type``), which the handle's bytes follow.
_HANDLE_HEADER = struct.Struct("Ii")


def open_kernel_handle(mount_fd: int, handle_type: int, data: bytes, flags: int = os.O_PATH) -> int:
    """``open_by_handle_at``: an fd of the object, or OSError (ESTALE when it is gone).

    The ``struct file_handle`` goes as the bytes of its header and ``data``, which the kernel only reads: half
    the cost of filling a ctypes structure (4.3 against 2.8 us a call here), paid by every handle opened
    without a kept descriptor (a working set larger than the descriptor cache).  The kernel reads exactly the
    header and ``handle_bytes`` = ``len(data)`` bytes (more than MAX_HANDLE_SZ: EINVAL)."""
    fd = _libc.open_by_handle_at(mount_fd, _HANDLE_HEADER.pack(len(data), handle_type) + data, flags | os.O_CLOEXEC)
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return fd


def kernel_handles_work(path: str = "/") -> bool:
    """Whether this process may open kernel handles (CAP_DAC_READ_SEARCH) of ``path``'s filesystem."""
    return kernel_handles_refused(path) is None


#: :func:`kernel_handles_refused`'s answer for a process that may not open kernel handles.
NO_CAPABILITY = "open_by_handle_at is not permitted: no CAP_DAC_READ_SEARCH"


def kernel_handles_refused(path: str) -> Optional[str]:
    """Why this process cannot serve the directory ``path`` by kernel handles, or None: it can.

    Either ``path``'s filesystem gives none (:func:`filesystem_without_handles`), or this process may not open
    them (:func:`opening_handles_refused`)."""
    without = filesystem_without_handles(path)
    return without.why if without is not None else opening_handles_refused(path)


def opening_handles_refused(path: str) -> Optional[str]:
    """Why this process cannot open again a kernel handle of the directory ``path``, or None: it can.
    :data:`NO_CAPABILITY` when it may not open handles at all (no CAP_DAC_READ_SEARCH)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        return f"{path}: {e.strerror}"
    try:
        htype, data, _ = kernel_handle(fd, "")
        os.close(open_kernel_handle(fd, htype, data))
        return None
    except OSError as e:
        if e.errno == errno.EPERM:
            return NO_CAPABILITY
        return f"kernel handles of {path}: {e.strerror}"
    finally:
        os.close(fd)


class NoHandles(NamedTuple):
    """:func:`filesystem_without_handles`'s answer: why, and whether the filesystem gives identities to know
    its files by instead (:func:`object_id`), which the backend by paths can serve it with."""

    why: str
    identities: bool


def filesystem_without_handles(path: str) -> Optional[NoHandles]:
    """Why the filesystem of the directory ``path`` gives no file handles, or None (it does, or ``path`` cannot
    be looked at): overlayfs without ``nfs_export=on`` (a container's own files), and other filesystems without
    export operations, which knfsd's exportfs refuses to export."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        kernel_handle(fd, "")
        return None
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP):
            return None
        kind = filesystem_type(os.fstat(fd).st_dev)
        try:
            object_id(fd, "")
        except OSError:
            return NoHandles(f"the filesystem of {path} gives no file handles ({kind}), nor identities to know its "
                             "files by (overlayfs gives them from Linux 6.6)", False)
        return NoHandles(f"the filesystem of {path} gives no file handles ({kind})", True)
    finally:
        os.close(fd)


def load_key(state_dir: str) -> bytes:
    """The handle key, created (32 random bytes, mode 0600) on first use."""
    path = Path(state_dir) / "handle.key"
    try:
        key = path.read_bytes()
        if len(key) >= 32:
            return key
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return key


@dataclass(frozen=True, slots=True)
class Decoded:
    export_id: int
    handle_type: int
    data: bytes


class HandleCodec:
    """Packs and checks handles; knows nothing of exports or the filesystem."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        #: The HMAC with the key already absorbed: a copy of it costs less than a new one (bench/README.md).
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)

    def _mac(self, body: bytes) -> bytes:
        h = self._keyed.copy()
        h.update(body)
        return h.digest()[:MAC_SIZE]

    def encode(self, export_id: int, handle_type: int, data: bytes) -> bytes:
        if len(data) > MAX_KERNEL_HANDLE:
            raise OSError(errno.EOVERFLOW, f"kernel handle of {len(data)} bytes does not fit an NFSv3 handle")
        body = _HEAD.pack(VERSION, export_id, len(data), handle_type) + data
        return body + self._mac(body)

    def decode(self, handle: bytes) -> Decoded:
        if len(handle) < _HEAD.size + MAC_SIZE or len(handle) > MAX_HANDLE:
            raise BadHandle(f"handle of {len(handle)} bytes")
        version, export_id, n, htype = _HEAD.unpack_from(handle)
        end = _HEAD.size + n
        if version != VERSION or end + MAC_SIZE > len(handle):
            raise BadHandle("not an nfsstack handle")
        if not hmac.compare_digest(handle[end : end + MAC_SIZE], self._mac(handle[:end])):
            raise BadHandle("handle MAC does not match")
        if any(handle[end + MAC_SIZE :]):
            raise BadHandle("handle has trailing data")
        return Decoded(export_id, htype, bytes(handle[_HEAD.size : end]))
