"""The local directory behind an export, used as the caller (docs/architecture.md,
"Permissions are the kernel's").

The NFS program resolves file handles to descriptors; the functions here do
the filesystem work on them with the caller's (squashed) identity switched in
for the calling thread, so the kernel decides every permission exactly as it
would for a local user.  Nothing here knows the wire format.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
from typing import Optional

from nfsstack.exports.identity import ROOT, Identity, NoSwitching, Switcher
from nfsstack.nfs3.interface import ACL_GROUP, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER, ACL_USER, Acl
from nfsstack.nfs3.local.acls import ACCESS_XATTR, DEFAULT_XATTR, get_acl
from nfsstack.nfs3.codec import (
    ACCESS_EXECUTE, ACCESS_READ, NFSError, Sattr, Stat, access_bits,
)

_libc = ctypes.CDLL(None, use_errno=True)
_UTIME_NOW = (1 << 30) - 1
_UTIME_OMIT = (1 << 30) - 2
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_fchownat = _libc.fchownat
_fchownat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_int]  # -1: unchanged


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _process_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def proc_path(fd: int) -> str:
    """The /proc magic link of ``fd``: opening it reopens the object, with a permission check."""
    return f"/proc/self/fd/{fd}"


def stat_or_none(fd: Optional[int]) -> Optional[os.stat_result]:
    """``fstat``, or None when the object cannot be stat'ed (post_op_attr's "no attributes")."""
    if fd is None:
        return None
    try:
        return os.stat(fd)
    except OSError:
        return None


_AT_EACCESS = 0x200
_NR_FACCESSAT2 = {"x86_64": 439, "aarch64": 439}.get(platform.machine())


def _faccessat2_works() -> bool:
    """Whether ``faccessat2(fd, "", mode, AT_EACCESS | AT_EMPTY_PATH)`` asks about a descriptor itself (Linux 5.8):
    tried once on "/", since an older kernel answers ENOSYS or EINVAL, and an older container seccomp profile
    EPERM, any of which would read as "denied"."""
    if _NR_FACCESSAT2 is None:
        return False
    fd = os.open("/", os.O_PATH | os.O_CLOEXEC)
    try:
        return _libc.syscall(_NR_FACCESSAT2, fd, b"", os.F_OK, _AT_EACCESS | _AT_EMPTY_PATH) == 0
    finally:
        os.close(fd)


#: ACCESS asks the kernel about the descriptor itself (one system call per bit), else through its /proc link
#: (a path walk per bit, about twice the cost).
_FD_ACCESS = _faccessat2_works()


_NR_CACHESTAT = {"x86_64": 451, "aarch64": 451}.get(platform.machine())
_PAGE = os.sysconf("SC_PAGESIZE")


def all_cached(fd: int, offset: int, length: int) -> Optional[bool]:
    """Whether the page cache holds every page of ``length`` bytes at ``offset`` (``length`` within the file),
    asked with cachestat(2) (Linux 6.5) without reading them; None when the kernel cannot say."""
    if _NR_CACHESTAT is None:
        return None
    query = (ctypes.c_uint64 * 2)(offset, length)
    result = (ctypes.c_uint64 * 5)()  # nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted
    if _libc.syscall(_NR_CACHESTAT, fd, query, result, 0) != 0:
        return None
    pages = (offset + length + _PAGE - 1) // _PAGE - offset // _PAGE
    return result[0] >= pages


def _has_default_acl(dirfd: int) -> bool:
    """Whether the directory at ``dirfd`` has a default ACL, which new objects in it inherit."""
    try:
        os.getxattr(proc_path(dirfd), DEFAULT_XATTR)
    except OSError:
        return False  # none (ENODATA), or a filesystem without ACLs
    return True


def readlink(fd: int) -> bytes:
    """The target of the symlink open (O_PATH) at ``fd``: ``readlinkat(fd, "")``."""
    buf = ctypes.create_string_buffer(4097)
    n = _libc.readlinkat(fd, b"", buf, 4097)
    if n < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return buf.raw[:n]


def _timespec(value) -> _Timespec:
    if value is None:
        return _Timespec(0, _UTIME_OMIT)
    if value == "now":
        return _Timespec(0, _UTIME_NOW)
    return _Timespec(value // 1_000_000_000, value % 1_000_000_000)


def permitted(who: Identity, st: os.stat_result, acl: Acl, want: int) -> bool:
    """Whether a caller without capabilities has the ``want`` bits (``os.R_OK``...) on an object of mode, owner
    and group ``st`` and access ACL ``acl`` (None: none), decided as Linux's ``acl_permission_check`` and
    ``posix_acl_permission`` do.  The caller's groups are its fsgid (``who.gid``) and ``who.gids``."""
    mode = st.st_mode
    if who.uid == st.st_uid:  # the owner: ACLs do not matter
        return not want & ~(mode >> 6) & 7
    if acl is not None and mode & 0o070:  # with the group class (the mask) empty, the ACL grants nobody more
        return _acl_permits(who, st, acl, want)
    if want & (mode ^ (mode >> 3)) & 7 and (st.st_gid == who.gid or st.st_gid in who.gids):
        mode >>= 3
    return not want & ~mode & 7


def _acl_permits(who: Identity, st: os.stat_result, acl: Acl, want: int) -> bool:
    """``posix_acl_permission`` for a caller who is not the owner: the first entry that names it decides (a
    named user's, through the mask); of the group entries naming it, the first that has ``want``, through the
    mask; if group entries name it but none has ``want``, no; else the other entry."""
    mask = next((e.perm for e in acl if e.tag == ACL_MASK), 7)
    found = False
    for e in acl:  # sorted: owner, named users, owning group, named groups, mask, other (the kernel's order)
        tag = e.tag
        if tag == ACL_USER:
            if who.uid == e.id:
                return e.perm & mask & want == want
        elif tag == ACL_GROUP_OBJ or tag == ACL_GROUP:
            gid = st.st_gid if tag == ACL_GROUP_OBJ else e.id
            if gid == who.gid or gid in who.gids:
                found = True
                if e.perm & want == want:
                    return e.perm & mask & want == want
        elif tag == ACL_OTHER:
            return not found and e.perm & want == want
    return False


class LocalFS:
    """Filesystem calls as a caller; descriptors it opens go to the ``keep`` list the caller closes."""

    def __init__(self, ids: Optional[Switcher] = None) -> None:
        self.ids = ids or Switcher()
        #: Created objects get exactly the mode the client asked for, whatever the server's umask.
        self.umask = _process_umask()

    def reopen(self, who: Identity, fd: int, flags: int, st: os.stat_result, read_only: bool,
               keep: list[int]) -> int:
        """Open the object at ``fd`` for I/O as ``who``.

        Its owner may always, as knfsd's owner override allows: a client
        that created a file mode 0444 still writes the data it has cached.
        """
        try:
            with self.ids.acting_as(who):
                new = os.open(proc_path(fd), flags | os.O_CLOEXEC)
        except PermissionError:
            writing = flags & (os.O_WRONLY | os.O_RDWR)
            if st.st_uid != who.uid or (read_only and writing):
                raise
            new = os.open(proc_path(fd), flags | os.O_CLOEXEC)
        keep.append(new)
        return new

    def access(self, who: Identity, fd: int, st: os.stat_result, read_only: bool) -> int:
        """The ACCESS bits (RFC 1813 section 3.3.4) the kernel grants ``who`` on the object at ``fd``.

        ``faccessat2(AT_EACCESS)`` with the caller's filesystem identity: the
        mode bits, ACLs and capabilities decide, as for a local process.
        """
        is_dir = stat.S_ISDIR(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            return ACCESS_READ | ACCESS_EXECUTE  # symlinks are 0777; READLINK needs nothing
        if who.uid == 0:
            # What the kernel grants CAP_DAC_OVERRIDE, without asking it three times: read and write
            # everything, execute what has an x bit (and search every directory).
            r, w, x = True, not read_only, is_dir or bool(st.st_mode & 0o111)
        elif _FD_ACCESS:
            syscall, flags = _libc.syscall, _AT_EACCESS | _AT_EMPTY_PATH
            with self.ids.acting_as(who):
                r = syscall(_NR_FACCESSAT2, fd, b"", os.R_OK, flags) == 0
                w = not read_only and syscall(_NR_FACCESSAT2, fd, b"", os.W_OK, flags) == 0
                x = syscall(_NR_FACCESSAT2, fd, b"", os.X_OK, flags) == 0
        else:
            r, w, x = self._access_without_faccessat2(who, fd, st, read_only)
        return access_bits(r, w, x, is_dir)

    def _access_without_faccessat2(self, who: Identity, fd: int, st: os.stat_result,
                                   read_only: bool) -> tuple[bool, bool, bool]:
        """ACCESS where the kernel cannot be asked with the caller's identity: glibc's ``faccessat(AT_EACCESS)``
        without faccessat2 checks the *effective* ids, root's here (ENOSYS: it grants root's rights), or fails
        outright (EPERM from an older container profile: it grants nothing).  A plain user's server acts as
        itself, whose real ids the old ``access`` checks; a root server decides as the kernel would for a
        caller without capabilities: the mode bits or the access ACL (``posix_acl_permission``), and no
        write on a read-only filesystem."""
        path = proc_path(fd)
        if isinstance(self.ids, NoSwitching):
            return (os.access(path, os.R_OK), not read_only and os.access(path, os.W_OK),
                    os.access(path, os.X_OK))
        acl = get_acl(path, ACCESS_XATTR)
        w = not read_only and permitted(who, st, acl, os.W_OK) and not os.statvfs(path).f_flag & os.ST_RDONLY
        return permitted(who, st, acl, os.R_OK), w, permitted(who, st, acl, os.X_OK)

    def setattr(self, who: Identity, fd: int, attrs: Sattr, st: os.stat_result, read_only: bool,
                keep: list[int]) -> Optional[int]:
        """Apply sattr3 (RFC 1813 section 2.5.3) to the object at ``fd``, as ``who``.

        The kernel checks ownership for mode and times, CAP_CHOWN for owners,
        and write permission for the size.  Returns the descriptor (in ``keep``) a size was set through, which
        may sync the file (a server that may write a file may not always read it), else None.
        """
        path = proc_path(fd)
        is_link = stat.S_ISLNK(st.st_mode)
        wfd = None
        if attrs.size is not None:
            if stat.S_ISDIR(st.st_mode):
                raise NFSError(Stat.ISDIR)
            if not stat.S_ISREG(st.st_mode):
                raise NFSError(Stat.INVAL)
            wfd = self.reopen(who, fd, os.O_WRONLY, st, read_only, keep)
            with self.ids.acting_as(who):
                os.ftruncate(wfd, attrs.size)
        with self.ids.acting_as(who):
            if attrs.uid is not None or attrs.gid is not None:
                # On the descriptor itself (AT_EMPTY_PATH): an lchown of /proc/self/fd/N would change procfs's
                # magic link, not the symlink it stands for, and report success.
                if _fchownat(fd, b"", -1 if attrs.uid is None else attrs.uid,
                             -1 if attrs.gid is None else attrs.gid, _AT_EMPTY_PATH) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, os.strerror(e))
            # After chown, which clears set-id bits: a mode set in the same call keeps them.  chmod and utimensat
            # follow the magic link, which lands on the object itself, a symlink included (Linux has no modes
            # on symlinks: theirs is never set).
            if attrs.mode is not None and not is_link:
                os.chmod(path, attrs.mode & 0o7777)
            if attrs.atime is not None or attrs.mtime is not None:
                times = (_Timespec * 2)(_timespec(attrs.atime), _timespec(attrs.mtime))
                if _libc.utimensat(_AT_FDCWD, path.encode(), times, 0) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, os.strerror(e))
        return wfd

    def finish_create(self, who: Identity, dirfd: int, name: bytes, attrs: Sattr, mode_used: Optional[int],
                      keep: list[int]) -> bool:
        """After creating ``name`` with ``mode_used``: set what the umask took off, and the rest of ``attrs``.
        Whether it set anything (a change of its own, which a sync of the directory may not carry)."""
        mode = None
        if mode_used is not None and mode_used & self.umask and not _has_default_acl(dirfd):
            # Under a directory with a default ACL the kernel took no umask off: the new object's ACL is the
            # default ACL narrowed by the mode asked for (POSIX 1003.1e), which a chmod would undo.
            mode = mode_used
        if mode is None and attrs.uid is None and attrs.gid is None and attrs.atime is None and attrs.mtime is None:
            return False  # the usual CREATE: the open set all there was to set
        rest = Sattr(mode, attrs.uid, attrs.gid, None, attrs.atime, attrs.mtime)
        pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
        keep.append(pfd)
        self.setattr(who, pfd, rest, os.stat(pfd), False, keep)
        return True

    def create(self, who: Identity, dirfd: int, name: bytes, attrs: Sattr, guarded: bool, read_only: bool,
               keep: list[int], opener=None, opened: Optional[list[int]] = None,
               written: Optional[list[int]] = None):
        """CREATE UNCHECKED or GUARDED (RFC 1813 section 3.3.8).

        With ``opener`` (``openat(dirfd, name, flags, mode) -> Deferred``, nfs3/local/aiosync.py) the kernel makes the
        file off this thread and a Deferred is returned, firing once all is done; else all is done on return.
        ``dirfd`` must stay open until then.  The descriptor (write-only) a new file was made with goes to
        ``keep`` and to ``opened``.  The result (or the Deferred's) says whether the file was changed after the
        open that made it (a size, attributes the open could not set, an existing file's size or times): those
        changes are the file's own, which a sync of its directory may not carry.  The descriptor they were
        written through (the new file's own, an existing file's truncation's), if any, goes to ``written``.
        """
        perm = attrs.mode & 0o7777 if attrs.mode is not None else 0o644
        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC
        if opener is not None:
            try:
                with self.ids.acting_as(who):  # the kernel takes this identity for the open
                    d = opener(dirfd, name, flags, perm)
            except OSError:
                pass  # no room in the ring: made here
            else:
                def existing(failure):
                    failure.trap(FileExistsError)
                    return self._create_existing(who, dirfd, name, attrs, guarded, read_only, keep, written)

                return d.addCallbacks(
                    lambda fd: self._created(who, dirfd, name, attrs, perm, fd, keep, opened, written), existing)
        try:
            with self.ids.acting_as(who):
                fd = os.open(name, flags, perm, dir_fd=dirfd)
        except FileExistsError:
            return self._create_existing(who, dirfd, name, attrs, guarded, read_only, keep, written)
        return self._created(who, dirfd, name, attrs, perm, fd, keep, opened, written)

    def _created(self, who: Identity, dirfd: int, name: bytes, attrs: Sattr, perm: int, fd: int,
                 keep: list[int], opened: Optional[list[int]] = None, written: Optional[list[int]] = None) -> bool:
        """A new file's size and the attributes its open could not set; whether there were any."""
        keep.append(fd)
        if opened is not None:
            opened.append(fd)
        if written is not None:
            written.append(fd)
        if attrs.size:
            with self.ids.acting_as(who):
                os.ftruncate(fd, attrs.size)
        return self.finish_create(who, dirfd, name, attrs, perm, keep) or bool(attrs.size)

    def _create_existing(self, who: Identity, dirfd: int, name: bytes, attrs: Sattr, guarded: bool,
                         read_only: bool, keep: list[int], written: Optional[list[int]] = None) -> bool:
        """UNCHECKED on an existing regular file sets only its size and times (a size of 0 truncates it);
        whether there were any."""
        if guarded:
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST))
        pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
        keep.append(pfd)
        st = os.stat(pfd)
        if not stat.S_ISREG(st.st_mode):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST))
        rest = Sattr(None, None, None, attrs.size, attrs.atime, attrs.mtime)
        wfd = self.setattr(who, pfd, rest, st, read_only, keep)
        if wfd is not None and written is not None:
            written.append(wfd)
        return rest != Sattr()

    def create_exclusive(self, who: Identity, dirfd: int, name: bytes, verifier: bytes, keep: list[int],
                         written: Optional[list[int]] = None) -> None:
        """EXCLUSIVE CREATE: the client's verifier lives in atime and mtime, so a retransmission finds it.  The
        descriptor that made the file and set them goes to ``keep`` and ``written``."""
        a_s, m_s = int.from_bytes(verifier[:4], "big"), int.from_bytes(verifier[4:], "big")
        try:
            with self.ids.acting_as(who):
                fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=dirfd)
                keep.append(fd)
                if written is not None:
                    written.append(fd)
                os.utime(fd, ns=(a_s * 1_000_000_000, m_s * 1_000_000_000))
        except FileExistsError:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            if not (stat.S_ISREG(st.st_mode) and st.st_atime_ns == a_s * 1_000_000_000
                    and st.st_mtime_ns == m_s * 1_000_000_000):
                raise

    def mkdir(self, who: Identity, dirfd: int, name: bytes, attrs: Sattr, keep: list[int]) -> bool:
        """MKDIR; whether attributes were set after it (:meth:`finish_create`)."""
        perm = attrs.mode & 0o7777 if attrs.mode is not None else 0o755
        with self.ids.acting_as(who):
            os.mkdir(name, perm, dir_fd=dirfd)
        return self.finish_create(who, dirfd, name, attrs, perm, keep)

    def mknod(self, who: Identity, dirfd: int, name: bytes, kind: int, attrs: Sattr, device: tuple[int, int],
              keep: list[int]) -> bool:
        """A FIFO or socket for anyone; a device needs CAP_MKNOD, so only an unsquashed root gets one.  Whether
        attributes were set after it (:meth:`finish_create`)."""
        perm = attrs.mode & 0o7777 if attrs.mode is not None else 0o644
        with self.ids.acting_as(who):
            os.mknod(name, kind | perm, os.makedev(*device), dir_fd=dirfd)
        return self.finish_create(who, dirfd, name, attrs, perm, keep)

    def run_as(self, who: Identity):
        """A context manager running its block as ``who`` (root afterwards)."""
        return self.ids.acting_as(who)

    def reset(self) -> None:
        """Back to root, whatever happened; never raises, so a call's reply stands.  A thread the kernel did not
        let back stays marked unsure, and its next switch makes and checks every system call again."""
        try:
            self.ids.become(ROOT)
        except OSError:
            pass
