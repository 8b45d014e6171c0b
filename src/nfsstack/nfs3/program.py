"""nfsd, program 100003 version 3 (RFC 1813 section 3): all 22 procedures on local directories.

Every handler resolves its handles as root (open_by_handle_at needs
CAP_DAC_READ_SEARCH), then does its filesystem work as the caller's squashed
identity, so the kernel decides permissions.  Each reply carries the
attributes RFC 1813 gives it, on errors too (post_op_attr, wcc_data).
COMMIT and synchronous WRITEs fsync in a thread, so the reactor never waits on
the disk for them.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import stat
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

from twisted.internet import defer, threads
from twisted.logger import Logger

from nfsstack.export_table import ExportTable
from nfsstack.exports import Export, ExportOptions
from nfsstack.nfs3 import dirents
from nfsstack.nfs3.handles import BadHandle, StaleHandle
from nfsstack.nfs3.identity import Identity, Switcher, effective
from nfsstack.nfs3.types import (
    ACCESS_DELETE, ACCESS_EXECUTE, ACCESS_EXTEND, ACCESS_LOOKUP, ACCESS_MODIFY, ACCESS_READ, DATA_SYNC,
    EXCLUSIVE, FILE_SYNC, GUARDED, MAX_PATH, NFS_PROG, S_IFMT_OF, UNCHECKED, UNSTABLE, Ftype, NFSError, Sattr, Stat,
    check_name, fattr3, post_op_attr, post_op_fh, stat_of, unpack_diropargs, unpack_fh, unpack_sattr, wcc_data,
)
from nfsstack.rpc.program import CallContext, Procedure, Program, null_procedure
from nfsstack.xdr import Packer, Unpacker, XDRError

log = Logger(namespace="nfsstack.nfs3")

RTMAX = WTMAX = 1 << 20
DTPREF = 64 * 1024
_FSF3_LINK, _FSF3_SYMLINK, _FSF3_HOMOGENEOUS, _FSF3_CANSETTIME = 0x1, 0x2, 0x8, 0x10
_COOKIEVERF = b"\0" * 8

_libc = ctypes.CDLL(None, use_errno=True)
_UTIME_NOW = (1 << 30) - 1
_UTIME_OMIT = (1 << 30) - 2


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _proc(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def _lstat(fd: int) -> Optional[os.stat_result]:
    try:
        return os.stat(fd)
    except OSError:
        return None


class Reply:
    """A result: the status, then whatever the procedure packs for it (status arms in ``pack``)."""

    __slots__ = ("status", "pack")

    def __init__(self, status: Stat, pack: Callable[[Packer], None]) -> None:
        self.status = status
        self.pack = pack


def _encode(p: Packer, reply: Reply) -> None:
    p.pack_uint(reply.status)
    reply.pack(p)


class Call:
    """One call's resolved state: export, options, identity; closes its descriptors at the end."""

    __slots__ = ("export", "options", "who", "fds")

    def __init__(self, export: Export, options: ExportOptions, who: Identity) -> None:
        self.export = export
        self.options = options
        self.who = who
        self.fds: list[int] = []

    @property
    def fsid(self) -> int:
        return self.export.export_id

    def close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()


class Nfsd:
    """The NFSv3 server; :attr:`program` is its procedure table."""

    def __init__(self, table: ExportTable) -> None:
        self.table = table
        self.ids = Switcher()
        #: Changes on every start, so clients resend writes they had not committed (RFC 1813 section 3.3.7).
        self.write_verifier = secrets.token_bytes(8)
        self.program = self._program()

    def _program(self) -> Program:
        def proc(name, handler, decode, idempotent=True):
            return Procedure(name, self._guard(handler), decode, _encode, idempotent)

        procs = {
            0: null_procedure(),
            1: proc("GETATTR", self.getattr, unpack_fh),
            2: proc("SETATTR", self.setattr, _unpack_setattr, idempotent=False),
            3: proc("LOOKUP", self.lookup, unpack_diropargs),
            4: proc("ACCESS", self.access, lambda u: (unpack_fh(u), u.unpack_uint())),
            5: proc("READLINK", self.readlink, unpack_fh),
            6: proc("READ", self.read, lambda u: (unpack_fh(u), u.unpack_uhyper(), u.unpack_uint())),
            7: proc("WRITE", self.write, _unpack_write),  # the same data at the same offset: safe to redo
            8: proc("CREATE", self.create, _unpack_create, idempotent=False),
            9: proc("MKDIR", self.mkdir, lambda u: (unpack_diropargs(u), unpack_sattr(u)), idempotent=False),
            10: proc("SYMLINK", self.symlink, _unpack_symlink, idempotent=False),
            11: proc("MKNOD", self.mknod, _unpack_mknod, idempotent=False),
            12: proc("REMOVE", self.remove, unpack_diropargs, idempotent=False),
            13: proc("RMDIR", self.rmdir, unpack_diropargs, idempotent=False),
            14: proc("RENAME", self.rename, lambda u: (unpack_diropargs(u), unpack_diropargs(u)), idempotent=False),
            15: proc("LINK", self.link, lambda u: (unpack_fh(u), unpack_diropargs(u)), idempotent=False),
            16: proc("READDIR", self.readdir, _unpack_readdir),
            17: proc("READDIRPLUS", self.readdirplus, _unpack_readdirplus),
            18: proc("FSSTAT", self.fsstat, unpack_fh),
            19: proc("FSINFO", self.fsinfo, unpack_fh),
            20: proc("PATHCONF", self.pathconf, unpack_fh),
            21: proc("COMMIT", self.commit, lambda u: (unpack_fh(u), u.unpack_uhyper(), u.unpack_uint())),
        }
        return Program(NFS_PROG, "nfs", {3: procs})

    # -- the frame every procedure runs in -------------------------------------

    def _guard(self, handler: Callable[..., Any]) -> Callable[[CallContext, Any], Any]:
        """Run ``handler`` as the caller; NFSError and OSError become status replies with empty attributes."""

        def run(ctx: CallContext, args: Any) -> Any:
            try:
                result = handler(ctx, args)
            except NFSError as e:
                result = Reply(e.status, _empty_arms(handler.__name__))
            except OSError as e:
                result = Reply(stat_of(e), _empty_arms(handler.__name__))
            finally:
                self.ids.root()
            return result

        return run

    def _begin(self, ctx: CallContext, handle: bytes, write: bool = False) -> tuple[Call, int]:
        """Resolve ``handle`` and check the caller may use its export: (call, O_PATH fd)."""
        try:
            export, fd = self.table.resolve(handle)
        except BadHandle:
            raise NFSError(Stat.BADHANDLE) from None
        except StaleHandle:
            raise NFSError(Stat.STALE) from None
        options = self.table.options_for(export, ctx.peer[0])
        if options is None:
            os.close(fd)
            raise NFSError(Stat.ACCES)
        if options.secure and not ctx.privileged_port:
            os.close(fd)
            raise NFSError(Stat.PERM)
        call = Call(export, options, effective(ctx.credential, options))
        call.fds.append(fd)
        if write and options.read_only:
            call.close()
            raise NFSError(Stat.ROFS)
        return call, fd

    @contextmanager
    def _as(self, call: Call) -> Iterator[None]:
        self.ids.become(call.who)
        try:
            yield
        finally:
            self.ids.root()

    def _open(self, call: Call, fd: int, flags: int, st: Optional[os.stat_result] = None) -> int:
        """Open the object at ``fd`` for I/O as the caller; its owner may always (knfsd's owner override)."""
        try:
            with self._as(call):
                new = os.open(_proc(fd), flags | os.O_CLOEXEC)
        except PermissionError:
            st = st or os.stat(fd)
            if st.st_uid != call.who.uid or (call.options.read_only and flags & (os.O_WRONLY | os.O_RDWR)):
                raise
            new = os.open(_proc(fd), flags | os.O_CLOEXEC)
        call.fds.append(new)
        return new

    def _child_handle(self, call: Call, dirfd: int, name: bytes) -> bytes:
        if name == b".." and self._is_root(call, dirfd):  # never above the export's root
            return self.table.handle(call.export, dirfd)
        return self.table.handle(call.export, dirfd, name)

    def _is_root(self, call: Call, fd: int) -> bool:
        try:
            return os.readlink(_proc(fd)) == call.export.path
        except OSError:
            return False

    # -- procedures ----------------------------------------------------------------

    def getattr(self, ctx: CallContext, handle: bytes) -> Reply:
        call, fd = self._begin(ctx, handle)
        try:
            st = os.stat(fd)
            return Reply(Stat.OK, lambda p: p.pack_raw(fattr3(st, call.fsid)))
        finally:
            call.close()

    def setattr(self, ctx: CallContext, args) -> Reply:
        handle, attrs, guard = args
        call, fd = self._begin(ctx, handle, write=True)
        before = after = None
        try:
            before = os.stat(fd)
            if guard is not None and before.st_ctime_ns != guard:
                raise NFSError(Stat.NOT_SYNC)
            self._apply(call, fd, attrs, before)
            after = os.stat(fd)
            return Reply(Stat.OK, lambda p: wcc_data(p, before, after, call.fsid))
        except (NFSError, OSError) as e:
            status = e.status if isinstance(e, NFSError) else stat_of(e)
            after = _lstat(fd)
            return Reply(status, lambda p: wcc_data(p, before, after, call.fsid))
        finally:
            call.close()

    def _apply(self, call: Call, fd: int, attrs: Sattr, st: os.stat_result) -> None:
        """Set what sattr3 asks, as the caller (the kernel checks ownership and CAP_CHOWN)."""
        path = _proc(fd)
        is_link = stat.S_ISLNK(st.st_mode)
        if attrs.size is not None:
            if stat.S_ISDIR(st.st_mode):
                raise NFSError(Stat.ISDIR)
            if not stat.S_ISREG(st.st_mode):
                raise NFSError(Stat.INVAL)
            wfd = self._open(call, fd, os.O_WRONLY, st)
            with self._as(call):
                os.ftruncate(wfd, attrs.size)
        with self._as(call):
            if attrs.mode is not None and not is_link:
                os.chmod(path, attrs.mode & 0o7777)
            if attrs.uid is not None or attrs.gid is not None:
                os.chown(path, -1 if attrs.uid is None else attrs.uid, -1 if attrs.gid is None else attrs.gid,
                         follow_symlinks=not is_link)
            if attrs.atime is not None or attrs.mtime is not None:
                times = (_Timespec * 2)(_timespec(attrs.atime), _timespec(attrs.mtime))
                if _libc.utimensat(-100, path.encode(), times, 0) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, os.strerror(e))

    def lookup(self, ctx: CallContext, args) -> Reply:
        handle, name = args
        call, dirfd = self._begin(ctx, handle)
        dir_st = None
        try:
            dir_st = os.stat(dirfd)
            if not stat.S_ISDIR(dir_st.st_mode):
                raise NFSError(Stat.NOTDIR)
            if name not in (b".", b".."):
                check_name(name)
            with self._as(call):
                if name == b".." and self._is_root(call, dirfd):
                    st = dir_st
                    os.stat(".", dir_fd=dirfd)  # search permission, as for any lookup
                else:
                    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            child = self._child_handle(call, dirfd, name)
            return Reply(Stat.OK, lambda p: (p.pack_opaque(child), post_op_attr(p, st, call.fsid),
                                             post_op_attr(p, dir_st, call.fsid)))
        except (NFSError, OSError) as e:
            status = e.status if isinstance(e, NFSError) else stat_of(e)
            return Reply(status, lambda p: post_op_attr(p, dir_st, call.fsid))
        finally:
            call.close()

    def access(self, ctx: CallContext, args) -> Reply:
        handle, wanted = args
        call, fd = self._begin(ctx, handle)
        try:
            st = os.stat(fd)
            granted = _access_bits(st, call.who, call.options.read_only) & wanted
            return Reply(Stat.OK, lambda p: (post_op_attr(p, st, call.fsid), p.pack_uint(granted)))
        finally:
            call.close()

    def readlink(self, ctx: CallContext, handle: bytes) -> Reply:
        call, fd = self._begin(ctx, handle)
        st = None
        try:
            st = os.stat(fd)
            if not stat.S_ISLNK(st.st_mode):
                raise NFSError(Stat.INVAL)
            target = _readlinkat(fd)
            return Reply(Stat.OK, lambda p: (post_op_attr(p, st, call.fsid), p.pack_opaque(target)))
        except (NFSError, OSError) as e:
            status = e.status if isinstance(e, NFSError) else stat_of(e)
            return Reply(status, lambda p: post_op_attr(p, st, call.fsid))
        finally:
            call.close()

    def read(self, ctx: CallContext, args) -> Reply:
        handle, offset, count = args
        call, fd = self._begin(ctx, handle)
        st = None
        try:
            st = os.stat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise NFSError(Stat.ISDIR)
            if not stat.S_ISREG(st.st_mode):
                raise NFSError(Stat.INVAL)
            rfd = self._open(call, fd, os.O_RDONLY, st)
            count = min(count, RTMAX)
            data = os.pread(rfd, count, offset) if count else b""
            st = os.stat(rfd)
            eof = offset + len(data) >= st.st_size

            def pack(p: Packer) -> None:
                post_op_attr(p, st, call.fsid)
                p.pack_uint(len(data))
                p.pack_bool(eof)
                p.pack_opaque(data)

            return Reply(Stat.OK, pack)
        except (NFSError, OSError) as e:
            status = e.status if isinstance(e, NFSError) else stat_of(e)
            return Reply(status, lambda p: post_op_attr(p, st, call.fsid))
        finally:
            call.close()

    def write(self, ctx: CallContext, args) -> Reply | defer.Deferred:
        handle, offset, count, stable, data = args
        call, fd = self._begin(ctx, handle, write=True)
        before = None
        try:
            before = os.stat(fd)
            if stat.S_ISDIR(before.st_mode):
                raise NFSError(Stat.ISDIR)
            if not stat.S_ISREG(before.st_mode):
                raise NFSError(Stat.INVAL)
            if count > len(data):
                raise NFSError(Stat.INVAL)
            wfd = self._open(call, fd, os.O_WRONLY, before)
            with self._as(call):
                written = os.pwrite(wfd, data[:count], offset)
        except (NFSError, OSError) as e:
            status = e.status if isinstance(e, NFSError) else stat_of(e)
            after = _lstat(fd)
            call.close()
            return Reply(status, lambda p: wcc_data(p, before, after, call.fsid))

        def done(committed: int) -> Reply:
            try:
                after = os.stat(wfd)
            finally:
                call.close()

            def pack(p: Packer) -> None:
                wcc_data(p, before, after, call.fsid)
                p.pack_uint(written)
                p.pack_uint(committed)
                p.pack_fopaque(8, self.write_verifier)

            return Reply(Stat.OK, pack)

        if stable == UNSTABLE or not call.options.sync:
            return done(stable)
        sync = os.fdatasync if stable == DATA_SYNC else os.fsync
        d = threads.deferToThread(sync, wfd)
        d.addCallback(lambda _: done(stable))
        d.addErrback(lambda f: self._sync_failed(f, call, fd, before))
        return d

    def _sync_failed(self, failure, call: Call, fd: int, before) -> Reply:
        # A failed sync may have lost data the client thinks written: a new verifier makes it resend.
        self.write_verifier = secrets.token_bytes(8)
        log.error("fsync failed: {e}", e=failure.value)
        after = _lstat(fd)
        call.close()
        status = stat_of(failure.value) if isinstance(failure.value, OSError) else Stat.IO
        return Reply(status, lambda p: wcc_data(p, before, after, call.fsid))

    def _dir_op(self, ctx: CallContext, handle: bytes, name: bytes, make: Callable[[Call, int], Optional[bytes]]):
        """The frame of CREATE, MKDIR, SYMLINK, MKNOD: wcc of the directory, then handle and attributes."""
        call, dirfd = self._begin(ctx, handle, write=True)
        before = None
        try:
            before = os.stat(dirfd)
            if not stat.S_ISDIR(before.st_mode):
                raise NFSError(Stat.NOTDIR)
            check_name(name)
            if name in (b".", b".."):
                raise NFSError(Stat.EXIST)
            make(call, dirfd)
            child = self.table.handle(call.export, dirfd, name)
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            after = os.stat(dirfd)

            def pack(p: Packer) -> None:
                post_op_fh(p, child)
                post_op_attr(p, st, call.fsid)
                wcc_data(p, before, after, call.fsid)

            return Reply(Stat.OK, pack)
        except (NFSError, OSError) as e:
            status = e.status if isinstance(e, NFSError) else stat_of(e)
            after = _lstat(dirfd)
            return Reply(status, lambda p: wcc_data(p, before, after, call.fsid))
        finally:
            call.close()

    def create(self, ctx: CallContext, args) -> Reply:
        (handle, name), mode, how = args

        def make(call: Call, dirfd: int) -> None:
            if mode == EXCLUSIVE:
                self._create_exclusive(call, dirfd, name, how)
                return
            flags = os.O_CREAT | os.O_WRONLY | (os.O_EXCL if mode == GUARDED else 0)
            perm = how.mode & 0o7777 if how.mode is not None else 0o644
            with self._as(call):
                fd = os.open(name, flags | os.O_CLOEXEC | os.O_NOFOLLOW, perm, dir_fd=dirfd)
            call.fds.append(fd)
            rest = Sattr(None, how.uid, how.gid, how.size, how.atime, how.mtime)
            if any(v is not None for v in (rest.uid, rest.gid, rest.size, rest.atime, rest.mtime)):
                pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
                call.fds.append(pfd)
                self._apply(call, pfd, rest, os.stat(pfd))

        return self._dir_op(ctx, handle, name, make)

    def _create_exclusive(self, call: Call, dirfd: int, name: bytes, verifier: bytes) -> None:
        """EXCLUSIVE create: the verifier lives in atime and mtime; a retransmission finds it there."""
        a_s, m_s = int.from_bytes(verifier[:4], "big"), int.from_bytes(verifier[4:], "big")
        try:
            with self._as(call):
                fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=dirfd)
            call.fds.append(fd)
            with self._as(call):
                os.utime(fd, ns=(a_s * 1_000_000_000, m_s * 1_000_000_000))
        except FileExistsError:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            if not (st.st_atime_ns // 1_000_000_000 == a_s and st.st_mtime_ns // 1_000_000_000 == m_s
                    and stat.S_ISREG(st.st_mode)):
                raise

    def mkdir(self, ctx: CallContext, args) -> Reply:
        (handle, name), attrs = args

        def make(call: Call, dirfd: int) -> None:
            with self._as(call):
                os.mkdir(name, attrs.mode & 0o7777 if attrs.mode is not None else 0o755, dir_fd=dirfd)
            self._after_make(call, dirfd, name, attrs)

        return self._dir_op(ctx, handle, name, make)

    def _after_make(self, call: Call, dirfd: int, name: bytes, attrs: Sattr, mode_done: bool = True) -> None:
        rest = Sattr(None if mode_done else attrs.mode, attrs.uid, attrs.gid, None, attrs.atime, attrs.mtime)
        if any(v is not None for v in (rest.mode, rest.uid, rest.gid, rest.atime, rest.mtime)):
            pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
            call.fds.append(pfd)
            self._apply(call, pfd, rest, os.stat(pfd))

    def symlink(self, ctx: CallContext, args) -> Reply:
        (handle, name), attrs, target = args

        def make(call: Call, dirfd: int) -> None:
            if not target or b"\0" in target:
                raise NFSError(Stat.INVAL)
            with self._as(call):
                os.symlink(target, name, dir_fd=dirfd)

        return self._dir_op(ctx, handle, name, make)

    def mknod(self, ctx: CallContext, args) -> Reply:
        (handle, name), ftype, attrs, device = args

        def make(call: Call, dirfd: int) -> None:
            if ftype not in (Ftype.CHR, Ftype.BLK, Ftype.SOCK, Ftype.FIFO):
                raise NFSError(Stat.BADTYPE)
            perm = attrs.mode & 0o7777 if attrs.mode is not None else 0o644
            with self._as(call):  # devices need CAP_MKNOD: root (unsquashed) only
                os.mknod(name, S_IFMT_OF[ftype] | perm, os.makedev(*device), dir_fd=dirfd)
            self._after_make(call, dirfd, name, attrs)

        return self._dir_op(ctx, handle, name, make)

    def _unlink(self, ctx: CallContext, args, rmdir: bool) -> Reply:
        handle, name = args
        call, dirfd = self._begin(ctx, handle, write=True)
        before = None
        try:
            before = os.stat(dirfd)
            if not stat.S_ISDIR(before.st_mode):
                raise NFSError(Stat.NOTDIR)
            if name == b".":
                raise NFSError(Stat.INVAL)
            if name == b"..":
                raise NFSError(Stat.NOTEMPTY if rmdir else Stat.ISDIR)
            check_name(name)
            with self._as(call):
                if rmdir:
                    os.rmdir(name, dir_fd=dirfd)
                else:
                    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        raise NFSError(Stat.ISDIR)
                    os.unlink(name, dir_fd=dirfd)
            status = Stat.OK
        except (NFSError, OSError) as e:
            status = e.status if isinstance(e, NFSError) else stat_of(e)
        after = _lstat(dirfd)
        call.close()
        return Reply(status, lambda p: wcc_data(p, before, after, call.fsid))

    def remove(self, ctx: CallContext, args) -> Reply:
        return self._unlink(ctx, args, rmdir=False)

    def rmdir(self, ctx: CallContext, args) -> Reply:
        return self._unlink(ctx, args, rmdir=True)

    def rename(self, ctx: CallContext, args) -> Reply:
        (from_handle, from_name), (to_handle, to_name) = args
        call, from_fd = self._begin(ctx, from_handle, write=True)
        before_from = before_to = after_from = after_to = None
        to_fd = None
        try:
            try:
                to_call, to_fd = self._begin(ctx, to_handle, write=True)
            except NFSError:
                raise
            call.fds.extend(to_call.fds)
            if to_call.export.export_id != call.export.export_id:
                raise NFSError(Stat.XDEV)
            before_from, before_to = os.stat(from_fd), os.stat(to_fd)
            if not (stat.S_ISDIR(before_from.st_mode) and stat.S_ISDIR(before_to.st_mode)):
                raise NFSError(Stat.NOTDIR)
            for name in (from_name, to_name):
                if name in (b".", b".."):
                    raise NFSError(Stat.INVAL)
                check_name(name)
            with self._as(call):
                os.rename(from_name, to_name, src_dir_fd=from_fd, dst_dir_fd=to_fd)
            status = Stat.OK
        except (NFSError, OSError) as e:
            status = e.status if isinstance(e, NFSError) else stat_of(e)
        after_from = _lstat(from_fd)
        after_to = _lstat(to_fd) if to_fd is not None else None
        call.close()

        def pack(p: Packer) -> None:
            wcc_data(p, before_from, after_from, call.fsid)
            wcc_data(p, before_to, after_to, call.fsid)

        return Reply(status, pack)

    def link(self, ctx: CallContext, args) -> Reply:
        handle, (dir_handle, name) = args
        call, fd = self._begin(ctx, handle, write=True)
        before = after = file_st = None
        try:
            dir_call, dirfd = self._begin(ctx, dir_handle, write=True)
            call.fds.extend(dir_call.fds)
            if dir_call.export.export_id != call.export.export_id:
                raise NFSError(Stat.XDEV)
            before = os.stat(dirfd)
            check_name(name)
            if stat.S_ISDIR(os.stat(fd).st_mode):
                raise NFSError(Stat.ISDIR)
            with self._as(call):
                os.link(_proc(fd), name, dst_dir_fd=dirfd, follow_symlinks=True)
            status = Stat.OK
            after = _lstat(dirfd)
        except (NFSError, OSError) as e:
            status = e.status if isinstance(e, NFSError) else stat_of(e)
            after = _lstat(dirfd) if before is not None else None
        file_st = _lstat(fd)
        call.close()
        return Reply(status, lambda p: (post_op_attr(p, file_st, call.fsid), wcc_data(p, before, after, call.fsid)))

    def _listing(self, ctx: CallContext, handle: bytes, cookie: int, plus: bool, dircount: int, maxcount: int):
        call, fd = self._begin(ctx, handle)
        dir_st = None
        try:
            dir_st = os.stat(fd)
            if not stat.S_ISDIR(dir_st.st_mode):
                raise NFSError(Stat.NOTDIR)
            rfd = self._open(call, fd, os.O_RDONLY | os.O_DIRECTORY, dir_st)
            is_root = self._is_root(call, fd)
            entries: list[bytes] = []
            size = 4 + 88 + 8 + 8  # status, dir attributes, verifier, end of list and eof
            names = 0
            eof = True
            with self._as(call):
                for fileid, name, next_cookie in dirents.entries(rfd, cookie):
                    p = Packer()
                    p.pack_raw(b"\0\0\0\1")
                    p.pack_uhyper(fileid)
                    p.pack_opaque(name)
                    p.pack_uhyper(next_cookie)
                    names += 8 + 4 + len(name) + (-len(name) & 3) + 8
                    if plus:
                        self._plus(p, call, fd, name, is_root)
                    entry = p.getvalue()
                    if size + len(entry) > maxcount or (plus and names > dircount):
                        eof = False
                        break
                    size += len(entry)
                    entries.append(entry)
            if not entries and not eof:
                raise NFSError(Stat.TOOSMALL)

            def pack(p: Packer) -> None:
                post_op_attr(p, dir_st, call.fsid)
                p.pack_fopaque(8, _COOKIEVERF)
                for entry in entries:
                    p.pack_raw(entry)
                p.pack_raw(b"\0\0\0\0")
                p.pack_bool(eof)

            return Reply(Stat.OK, pack)
        except (NFSError, OSError) as e:
            status = e.status if isinstance(e, NFSError) else stat_of(e)
            return Reply(status, lambda p: post_op_attr(p, dir_st, call.fsid))
        finally:
            call.close()

    def _plus(self, p: Packer, call: Call, dirfd: int, name: bytes, is_root: bool) -> None:
        """The READDIRPLUS part of an entry: its attributes and handle, when they can be had."""
        try:
            if name == b".." and is_root:
                st = os.stat(dirfd)
            else:
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            # name_to_handle_at needs no privilege: the caller's identity may stay.
            fh = self._child_handle(call, dirfd, name) if name != b"." else self.table.handle(call.export, dirfd)
        except OSError:
            post_op_attr(p, None, call.fsid)
            post_op_fh(p, None)
            return
        post_op_attr(p, st, call.fsid)
        post_op_fh(p, fh)

    def readdir(self, ctx: CallContext, args) -> Reply:
        handle, cookie, _verf, count = args
        return self._listing(ctx, handle, cookie, False, count, count)

    def readdirplus(self, ctx: CallContext, args) -> Reply:
        handle, cookie, _verf, dircount, maxcount = args
        return self._listing(ctx, handle, cookie, True, max(dircount, 512), min(maxcount, RTMAX))

    def fsstat(self, ctx: CallContext, handle: bytes) -> Reply:
        call, fd = self._begin(ctx, handle)
        try:
            st = os.stat(fd)
            vfs = os.fstatvfs(fd)

            def pack(p: Packer) -> None:
                post_op_attr(p, st, call.fsid)
                for n in (vfs.f_blocks * vfs.f_frsize, vfs.f_bfree * vfs.f_frsize, vfs.f_bavail * vfs.f_frsize,
                          vfs.f_files, vfs.f_ffree, vfs.f_favail):
                    p.pack_uhyper(n)
                p.pack_uint(0)  # invarsec: may change at any time

            return Reply(Stat.OK, pack)
        finally:
            call.close()

    def fsinfo(self, ctx: CallContext, handle: bytes) -> Reply:
        call, fd = self._begin(ctx, handle)
        try:
            st = os.stat(fd)

            def pack(p: Packer) -> None:
                post_op_attr(p, st, call.fsid)
                for n in (RTMAX, RTMAX, 4096, WTMAX, WTMAX, 4096, DTPREF):
                    p.pack_uint(n)
                p.pack_uhyper((1 << 63) - 1)
                p.pack_uint(0)
                p.pack_uint(1)  # time_delta: nanoseconds
                p.pack_uint(_FSF3_LINK | _FSF3_SYMLINK | _FSF3_HOMOGENEOUS | _FSF3_CANSETTIME)

            return Reply(Stat.OK, pack)
        finally:
            call.close()

    def pathconf(self, ctx: CallContext, handle: bytes) -> Reply:
        call, fd = self._begin(ctx, handle)
        try:
            st = os.stat(fd)
            vfs = os.fstatvfs(fd)

            def pack(p: Packer) -> None:
                post_op_attr(p, st, call.fsid)
                p.pack_uint(65000)  # linkmax (ext4)
                p.pack_uint(min(vfs.f_namemax, 255))
                for flag in (True, True, False, True):  # no_trunc, chown_restricted, case_insensitive, preserving
                    p.pack_bool(flag)

            return Reply(Stat.OK, pack)
        finally:
            call.close()

    def commit(self, ctx: CallContext, args) -> Reply | defer.Deferred:
        handle, _offset, _count = args
        call, fd = self._begin(ctx, handle, write=True)
        try:
            before = os.stat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise NFSError(Stat.ISDIR if stat.S_ISDIR(before.st_mode) else Stat.INVAL)
            sfd = os.open(_proc(fd), os.O_RDONLY | os.O_CLOEXEC)
            call.fds.append(sfd)
        except (NFSError, OSError):
            call.close()
            raise

        def done(_) -> Reply:
            after = _lstat(sfd)
            call.close()
            return Reply(Stat.OK, lambda p: (wcc_data(p, before, after, call.fsid), p.pack_fopaque(8, self.write_verifier)))

        d = threads.deferToThread(os.fsync, sfd)
        d.addCallbacks(done, lambda f: self._sync_failed(f, call, fd, before))
        return d


# -- argument decoders (RFC 1813 section 3.3) ------------------------------------


def _unpack_setattr(u: Unpacker):
    handle = unpack_fh(u)
    attrs = unpack_sattr(u)
    guard = None
    if u.unpack_bool():
        s, ns = u.unpack_uint(), u.unpack_uint()
        guard = s * 1_000_000_000 + ns
    return handle, attrs, guard


def _unpack_write(u: Unpacker):
    handle = unpack_fh(u)
    offset, count, stable = u.unpack_uhyper(), u.unpack_uint(), u.unpack_uint()
    if stable not in (UNSTABLE, DATA_SYNC, FILE_SYNC):
        raise XDRError(f"stable_how {stable}")
    data = u.unpack_opaque_view(WTMAX)
    return handle, offset, count, stable, data


def _unpack_create(u: Unpacker):
    where = unpack_diropargs(u)
    mode = u.unpack_uint()
    if mode in (UNCHECKED, GUARDED):
        return where, mode, unpack_sattr(u)
    if mode == EXCLUSIVE:
        return where, mode, u.unpack_fopaque(8)
    raise XDRError(f"createmode3 {mode}")


def _unpack_symlink(u: Unpacker):
    where = unpack_diropargs(u)
    attrs = unpack_sattr(u)
    return where, attrs, u.unpack_opaque(MAX_PATH)


def _unpack_mknod(u: Unpacker):
    where = unpack_diropargs(u)
    ftype = u.unpack_uint()
    device = (0, 0)
    if ftype in (Ftype.CHR, Ftype.BLK):
        attrs = unpack_sattr(u)
        device = (u.unpack_uint(), u.unpack_uint())
    elif ftype in (Ftype.SOCK, Ftype.FIFO):
        attrs = unpack_sattr(u)
    else:
        attrs = Sattr()
    return where, ftype, attrs, device


def _unpack_readdir(u: Unpacker):
    return unpack_fh(u), u.unpack_uhyper(), u.unpack_fopaque(8), u.unpack_uint()


def _unpack_readdirplus(u: Unpacker):
    return unpack_fh(u), u.unpack_uhyper(), u.unpack_fopaque(8), u.unpack_uint(), u.unpack_uint()


# -- helpers ---------------------------------------------------------------------


def _timespec(value) -> _Timespec:
    if value is None:
        return _Timespec(0, _UTIME_OMIT)
    if value == "now":
        return _Timespec(0, _UTIME_NOW)
    return _Timespec(value // 1_000_000_000, value % 1_000_000_000)


def _readlinkat(fd: int) -> bytes:
    buf = ctypes.create_string_buffer(4097)
    n = _libc.readlinkat(fd, b"", buf, 4097)
    if n < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return buf.raw[:n]


def _access_bits(st: os.stat_result, who: Identity, read_only: bool) -> int:
    """ACCESS (RFC 1813 section 3.3.4) from the mode bits, as the kernel would decide for ``who``."""
    mode = st.st_mode
    is_dir = stat.S_ISDIR(mode)
    if who.uid == 0:
        r = w = True
        x = is_dir or bool(mode & 0o111)
    else:
        if st.st_uid == who.uid:
            bits = (mode >> 6) & 7
        elif st.st_gid == who.gid or st.st_gid in who.gids:
            bits = (mode >> 3) & 7
        else:
            bits = mode & 7
        r, w, x = bool(bits & 4), bool(bits & 2), bool(bits & 1)
    granted = 0
    if r:
        granted |= ACCESS_READ
    if w and not read_only:
        granted |= ACCESS_MODIFY | ACCESS_EXTEND | (ACCESS_DELETE if is_dir else 0)
    if x:
        granted |= ACCESS_LOOKUP if is_dir else ACCESS_EXECUTE
    return granted


# What a failed procedure sends besides its status, when the failure came before any attributes.
_EMPTY = {
    "getattr": lambda p: None,
    "setattr": lambda p: wcc_data(p, None, None, 0),
    "lookup": lambda p: post_op_attr(p, None, 0),
    "access": lambda p: post_op_attr(p, None, 0),
    "readlink": lambda p: post_op_attr(p, None, 0),
    "read": lambda p: post_op_attr(p, None, 0),
    "write": lambda p: wcc_data(p, None, None, 0),
    "create": lambda p: wcc_data(p, None, None, 0),
    "mkdir": lambda p: wcc_data(p, None, None, 0),
    "symlink": lambda p: wcc_data(p, None, None, 0),
    "mknod": lambda p: wcc_data(p, None, None, 0),
    "remove": lambda p: wcc_data(p, None, None, 0),
    "rmdir": lambda p: wcc_data(p, None, None, 0),
    "rename": lambda p: (wcc_data(p, None, None, 0), wcc_data(p, None, None, 0)),
    "link": lambda p: (post_op_attr(p, None, 0), wcc_data(p, None, None, 0)),
    "readdir": lambda p: post_op_attr(p, None, 0),
    "readdirplus": lambda p: post_op_attr(p, None, 0),
    "fsstat": lambda p: post_op_attr(p, None, 0),
    "fsinfo": lambda p: post_op_attr(p, None, 0),
    "pathconf": lambda p: post_op_attr(p, None, 0),
    "commit": lambda p: wcc_data(p, None, None, 0),
}


def _empty_arms(name: str) -> Callable[[Packer], None]:
    return _EMPTY[name]
