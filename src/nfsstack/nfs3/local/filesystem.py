"""The local backend: nfsd's exports are directories of this machine (:class:`LocalFilesystem`).

Objects are ``O_PATH`` descriptors opened from kernel file handles (open_by_handle_at, through the export
table); every permission is the kernel's, with the caller's identity switched in for the calling thread
(:mod:`~nfsstack.nfs3.local.as_caller`).  Besides the filesystem work it keeps what makes it fast: descriptors
opened for writing (:mod:`~nfsstack.nfs3.local.filecache`), encoded listings
(:mod:`~nfsstack.nfs3.local.readdir`), the kernel's asynchronous fsync, write and open (io_uring or Linux AIO,
:mod:`~nfsstack.nfs3.local.aiosync`), reads from the page cache without waiting (``RWF_NOWAIT``) and by
``sendfile``.  docs/architecture.md has the paths of one READ and one WRITE through it.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from time import perf_counter
from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from nfsstack.exports.policy import MountRefused
from nfsstack.exports.mounts import filesystem_type
from nfsstack.logs import logger
from nfsstack.nfs3.codec import DATA_SYNC, EXCLUSIVE, GUARDED, MAX_OFFSET, S_IFMT_OF, UNSTABLE, NFSError, Stat
from nfsstack.exports.identity import ROOT
from nfsstack.nfs3.interface import (
    Found, IAccessControlLists, IFilesystem, Limits, Listing, Made, Sizes, WouldBlock,
)
from nfsstack.nfs3.local.acls import ACCESS_XATTR, DEFAULT_XATTR, get_acl, set_acl
from nfsstack.nfs3.local.as_caller import LocalFS, all_cached, proc_path, readlink, stat_or_none
from nfsstack.nfs3.local import dirsync
from nfsstack.nfs3.local.dirsync import DirectorySyncs, sync_filesystem_here, sync_here
from nfsstack.nfs3.local.filecache import FileCache, OpenFile
from nfsstack.nfs3.local.readdir import Lister
from nfsstack.rpc.fileslice import FileSlice

log = logger("nfsstack.nfs3")

#: A CREATE whose open takes longer than this (moving average, seconds) on the reactor goes to io_uring's worker
#: instead (aiosync.py): one in RESAMPLE_CREATE still runs inline, to see whether creates got cheap again.
#: Handing an open over costs the reactor and the kernel more CPU in wake-ups than a cheap open costs in place
#: (bench/README.md, "CREATE's open inline or by io_uring").
SLOW_CREATE = 0.0002
RESAMPLE_CREATE = 16
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def _both_ended(results: list, answer: Any) -> Any:
    """``answer`` once every Deferred of a DeferredList ended well, else the first failure."""
    for ok, result in results:
        if not ok:
            return result
    return answer


def _sets_something(attrs, st) -> bool:
    """Whether a sattr3 changes anything (a mode is not set on a symlink: Linux keeps none)."""
    mode = attrs.mode is not None and not stat.S_ISLNK(st.st_mode)
    return mode or any(v is not None for v in (attrs.uid, attrs.gid, attrs.size, attrs.atime, attrs.mtime))



def _unservable(export, fd: int, error: OSError) -> MountRefused:
    """MNT's refusal of an export whose root or handles the table cannot have, saying why."""
    if error.errno == errno.EOPNOTSUPP:
        return MountRefused(f"the filesystem of {export.path} gives no file handles "
                            f"({filesystem_type(os.fstat(fd).st_dev)}): mount it with nfs_export=on, or serve every "
                            "export by paths (--backend local-unprivileged; overlayfs from Linux 6.6)")
    return MountRefused(f"the root of {export.path} cannot be opened: {error.strerror}")

@implementer(IFilesystem, IAccessControlLists)
class LocalFilesystem:
    """The directories of an :class:`~nfsstack.exports.table.ExportTable`, served as the callers."""

    blocking = True

    def __init__(self, table, in_thread: Callable[..., defer.Deferred], caller: Optional[LocalFS] = None) -> None:
        self.table = table
        self.caller = caller or LocalFS()
        #: Runs a sync that the kernel's asynchronous fsync cannot take off the reactor thread.
        self.in_thread = in_thread
        #: kernel_io(fd, datasync) -> Deferred: fsync, pwrite and openat without a thread (aiosync.py), handed in
        #: by its service; None: in_thread does the syncs.
        self.kernel_io = None
        #: Changes on every start (and after a failed sync), so clients resend the writes they had not
        #: committed (RFC 1813 section 3.3.7).
        self.write_verifier = secrets.token_bytes(8)
        #: Seconds an inline CREATE has been taking (a moving average), and how many there were: above
        #: SLOW_CREATE the opens go to io_uring (:meth:`create`).
        self.create_cost = 0.0
        self._creates = 0
        #: Devices whose filesystem refused RWF_NOWAIT: their large READs go straight to the pool.
        self._nowait_refused: set[int] = set()
        #: Descriptors a CREATE or WRITE opened for writing, kept for the calls that follow (reactor thread only).
        self.files = FileCache()
        self.lister = Lister(table, self.caller)
        #: Directory changes made stable before their reply on sync exports (:meth:`_stable`).
        self.directories = DirectorySyncs(
            self._fsync, lambda: self.in_thread(os.sync).addErrback(self._sync_failed),
            sync_filesystem=lambda fd: self.in_thread(dirsync.syncfs, fd).addErrback(self._sync_failed),
            reopen_root_on=table.reopen_root_on)

    def close(self) -> None:
        """Close the kept descriptors and the listing cache (its inotify descriptor)."""
        self.lister.close()
        self.files.close()

    # -- the call's frame ---------------------------------------------------------------

    def resolve(self, call, handle: bytes):
        export, fd, st = self.table.resolve_stat(handle)
        call.held.append(fd)
        return export, fd, st

    def attributes(self, call, fd: int):
        return stat_or_none(fd)

    def end(self, call, changed: bool) -> None:
        who = call.who
        if call.threaded or (who is not ROOT and who is not None):  # root's calls never switch identity
            self.caller.reset()
        if self.table.pending:  # as the server again: the unprivileged backend's new places are written
            self.table.flush_due()
        if changed and call.watched:
            self.lister.touched(call)

    def release(self, call) -> None:
        for held in call.held:
            if held.__class__ is int:
                try:
                    os.close(held)
                except OSError:
                    pass
            else:
                held.release()
        call.held.clear()

    def writes_inline(self) -> bool:
        """Whether a large WRITE can go to the kernel's ring from the reactor thread."""
        return getattr(self.kernel_io, "can_write", False)

    def _keep_open(self, call, fd: int, st: os.stat_result, lend: bool = False, reading: bool = False) -> OpenFile:
        """Hand ``fd``, opened for writing (``reading``: read-only) as the caller, from the call to the kept open
        files; with ``lend``, the call goes on using it."""
        call.held.remove(fd)  # the cache closes it from now on
        entry = self.files.keep(fd, call.who, st, lend, reading)
        if lend:
            call.held.append(entry)
        return entry

    def _forget(self, call, gone: os.stat_result) -> None:
        """An object was removed: a cached descriptor must not keep its blocks allocated, and its inode number
        may come back with a new object, so neither its handle nor its encoded entries may be served again."""
        self.table.forget(gone)
        self.files.forget(gone)
        self.lister.forget(call.fsid)

    # -- mountd and nlockmgr -------------------------------------------------------------

    def mount(self, export, path: str, options, address: str) -> bytes:
        if options.mountpoint is not None and not os.path.ismount(options.mountpoint or export.path):
            # exports(5) mountpoint: a disk that failed to mount leaves an empty directory, not to be served.
            raise MountRefused(f"{options.mountpoint or export.path} is not a mount point", noent=True)
        fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                self.table.root(export)
            except OSError as e:
                raise _unservable(export, fd, e) from None
            if not self.table.inside(export, fd):
                raise MountRefused("the path leaves the export")
            try:
                handle = self.table.handle(export, fd)
                self.table.flush()
                return handle
            except OSError as e:
                if e.errno == errno.EOPNOTSUPP:
                    # Added by a reload to a server that chose kernel handles at its start.
                    raise _unservable(export, fd, e) from None
                if e.errno != errno.EXDEV:
                    raise
            # Inside a filesystem mounted below the export: served if the export crosses into it.
            crossed = self.table.export_for(fd)
            if crossed is None or not crossed.crossed_from or self.table.options_for(crossed, address) is None:
                raise MountRefused("below a filesystem mounted in the export (no crossmnt)")
            try:
                return self.table.handle(crossed, fd)
            except OSError as e:
                if e.errno == errno.EOPNOTSUPP:
                    raise _unservable(crossed, fd, e) from None
                raise
        finally:
            os.close(fd)

    def lock_key(self, handle: bytes):
        export, fd = self.table.resolve(handle)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        return export, (st.st_dev, st.st_ino)

    def lock_opener(self, handle: bytes) -> tuple[int, bool]:
        _, fd = self.table.resolve(handle)
        try:
            path = proc_path(fd)
            try:
                return os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK), True
            except OSError:
                return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK), False
        finally:
            os.close(fd)

    # -- attributes ---------------------------------------------------------------------

    def setattr(self, call, fd: int, before, attrs) -> Any:
        """Apply ``attrs``; on a sync export, answer once the object's inode is on stable storage, as knfsd's
        nfsd_setattr does (commit_metadata on the inode): a chmod or truncate answered must not come undone on
        a power cut.  A file is fsynced itself (as COMMIT does: its size and its inode), a directory by the
        directory syncs (dirsync.py); a symlink, device or FIFO, which the server cannot open to sync (knfsd
        syncs the inode in the kernel), and a file the server may not open, by a ``syncfs(2)`` of its
        filesystem shared with the others waiting for one.  A SETATTR that sets nothing syncs nothing (nor does
        knfsd's)."""
        written = self.caller.setattr(call.who, fd, attrs, before, call.options.read_only, call.held)
        if not call.options.sync or not _sets_something(attrs, before):
            return None
        return self._object_stable(call, None, fd, before, written)

    def _object_stable(self, call, answer: Any, fd: int, st, written: Optional[int] = None) -> Any:
        """``answer`` once the inode of the object at ``fd`` (whose fstat is ``st``) is on stable storage (a sync
        export's SETATTR, or a CREATE that changed the file after making it).  A file is fsynced itself (as
        COMMIT does: its size and its inode), through ``written`` (a descriptor it was just written through)
        if given; a directory by the directory syncs (dirsync.py); a symlink, device or FIFO, which the server
        cannot open to sync (knfsd syncs the inode in the kernel), and a file the server may not open, by a
        ``syncfs(2)`` of its filesystem (through an export's root on it; ``sync(2)`` where none is open) shared
        with the others waiting for one: a client repeating them makes the server write out that filesystem,
        not every filesystem of the host."""
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            return self._stable(call, answer, fd)
        if stat.S_ISREG(mode):
            try:
                if written is not None:
                    synced = self._sync(call, False, written, lambda: answer)
                else:
                    synced = self.commit(call, fd, st)
                    if isinstance(synced, defer.Deferred):
                        synced.addCallback(lambda _: answer)
                    else:
                        synced = answer
                return synced
            except PermissionError:  # a plain user's server that may not open it: its filesystem's sync below
                pass
        if call.threaded:
            self._sync_filesystem_here(st.st_dev)
            return answer
        return self.directories.filesystem(st.st_dev).addCallback(lambda _: answer)

    def access(self, call, fd: int, attrs) -> int:
        return self.caller.access(call.who, fd, attrs, call.options.read_only)

    def readlink(self, call, fd: int) -> bytes:
        return readlink(fd)

    # -- POSIX ACLs (NFS_ACL) -------------------------------------------------------------

    def getacl(self, call, fd: int, st) -> tuple:
        if stat.S_ISLNK(st.st_mode):
            return None, None  # Linux keeps no ACLs on symlinks: their mode, 0777, is all
        path = proc_path(fd)
        with self.caller.run_as(call.who):
            access = get_acl(path, ACCESS_XATTR)
            default = get_acl(path, DEFAULT_XATTR) if stat.S_ISDIR(st.st_mode) else None
        return access, default

    def setacl(self, call, fd: int, st, access, default) -> None:
        if stat.S_ISLNK(st.st_mode):
            raise NFSError(Stat.NOTSUPP)  # no ACLs on symlinks (set_posix_acl: EOPNOTSUPP)
        is_dir = stat.S_ISDIR(st.st_mode)
        if default is not None and not is_dir:
            raise PermissionError(errno.EACCES, "a default ACL on a non-directory")  # as set_posix_acl
        path = proc_path(fd)
        with self.caller.run_as(call.who):  # the kernel lets only the owner (or CAP_FOWNER) set them
            set_acl(path, ACCESS_XATTR, access)
            if is_dir:
                set_acl(path, DEFAULT_XATTR, default)

    def lookup(self, call, dirfd: int, dir_st, name: bytes) -> Found:
        fsid = call.fsid
        # ".." of the export's root is the root itself: a client never climbs out of an export, except from a
        # filesystem crossed into (crossmnt, nohide) back to the one it is mounted on.
        if name == b".." and self.table.is_root(call.export, dir_st):
            up = self.table.above_root(call.export, call.options, call.ctx.peer[0])
            if up is None:
                name = b"."
            else:
                target, upfd = up
                call.held.append(upfd)
                call.enter(target)
                return Found(self.table.handle(target, upfd), os.fstat(upfd), target.export_id)
        try:
            with self.caller.run_as(call.who):  # the kernel checks search permission on the directory
                st, child = self.table.stat_and_handle(call.export, dirfd, name)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            return self._crossing(call, dirfd, name)
        return Found(child, st, fsid)

    def _crossing(self, call, dirfd: int, name: bytes) -> Found:
        """LOOKUP of a mount point (exports/table.py): the root of the filesystem mounted there, if the client
        crosses into it (crossmnt, nohide), else the directory it covers (hide; NFS3ERR_XDEV where that
        cannot be had)."""
        with self.caller.run_as(call.who):
            fd = os.open(name, _PATH_FLAGS, dir_fd=dirfd)
        call.held.append(fd)
        target = self.table.cross(call.export, call.options, fd, call.ctx.peer[0])
        if target is not None:
            call.enter(target)
            return Found(self.table.handle(target, fd), os.fstat(fd), target.export_id)
        handle, fd = self.table.covered(call.export, dirfd, name)
        call.held.append(fd)
        return Found(handle, os.fstat(fd), call.fsid)

    # -- data ---------------------------------------------------------------------------

    def read(self, call, fd: int, st, offset: int, count: int):
        kept = None if call.threaded else self.files.reader(call.who, st)
        if kept is not None:
            call.held.append(kept)
            rfd = kept.fd
        else:
            rfd = self.caller.reopen(call.who, fd, os.O_RDONLY, st, call.options.read_only, call.held)
            if not call.threaded:  # kept for the READs that follow (filecache.py)
                self._keep_open(call, rfd, st, lend=True, reading=True)
        if not count or offset >= MAX_OFFSET:
            data = b""
        elif call.nowait:  # no larger a buffer than the file has bytes there
            want = min(count, st.st_size - offset)
            if want <= 0:
                data = b""
            elif not call.ctx.netid.startswith("udp") and all_cached(rfd, offset, want):
                data = FileSlice(os.dup(rfd), offset, want)  # sent by sendfile(2): never copied here
            else:
                data = self._read_cached(rfd, want, offset, st.st_dev)
        else:
            data = os.pread(rfd, count, offset)
        after = os.stat(rfd)
        eof = offset + len(data) >= after.st_size
        if call.nowait and not eof and len(data) < count:
            raise WouldBlock()  # only part of the range is cached: the pool reads it all
        return data, eof, after

    def _read_cached(self, fd: int, count: int, offset: int, dev: int) -> memoryview:
        """What of ``count`` bytes at ``offset`` the page cache holds, without waiting on the disk
        (``preadv2(RWF_NOWAIT)``, Linux 4.14); :class:`WouldBlock` if it holds none of it, or if the
        filesystem ``dev`` cannot say (tmpfs, FUSE and network filesystems refuse the flag: remembered)."""
        if dev in self._nowait_refused:
            raise WouldBlock()
        buf = bytearray(count)
        try:
            n = os.preadv(fd, (buf,), offset, os.RWF_NOWAIT)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                self._nowait_refused.add(dev)
                raise WouldBlock() from None
            if e.errno == errno.EAGAIN:
                raise WouldBlock() from None
            raise
        return memoryview(buf)[:n] if n < count else buf

    def write(self, call, fd: int, st, offset: int, data, stable: int):
        kept = None if call.threaded else self.files.writer(call.who, st)
        if kept is not None:
            call.held.append(kept)
            wfd = kept.fd
        else:
            wfd = self.caller.reopen(call.who, fd, os.O_WRONLY, st, call.options.read_only, call.held)
            if not call.threaded:  # kept for the WRITEs and the COMMIT that follow
                kept = self._keep_open(call, wfd, st, lend=True)

        def done(written: int) -> Any:
            after = stat_or_none(wfd)
            if kept is not None and after is not None:
                self.files.saw(kept, after)  # the new ctime is this write's
            if stable != UNSTABLE and call.options.sync:
                return self._sync(call, stable == DATA_SYNC, wfd, lambda: (written, stable, after))
            return written, stable, after

        # As the caller, whatever the file: a write clears set-id bits as it would locally, and the filesystem's
        # reserve for root (ext4's s_resuid, fsuid 0) is not the caller's to fill.
        with self.caller.run_as(call.who):
            if call.ring:
                try:
                    ringed = self.kernel_io.pwrite(wfd, data, offset)
                except OSError:
                    raise WouldBlock() from None  # no room in the ring: the pool writes it
            else:
                return done(os.pwrite(wfd, data, offset))
        return ringed.addCallback(done)

    def commit(self, call, fd: int, st) -> Any:
        kept = None if call.threaded else self.files.syncer(st)
        if kept is not None:
            call.held.append(kept)  # fsync needs no permission: any open file of it does
            sfd = kept.fd
        else:
            sfd = os.open(proc_path(fd), os.O_RDONLY | os.O_CLOEXEC)
            call.held.append(sfd)
        return self._sync(call, False, sfd, lambda: None)

    def _sync(self, call, datasync: bool, fd: int, then: Callable[[], Any]) -> Any:
        """fdatasync or fsync ``fd``, then ``then()``.  The reactor never waits for it: an inline call hands the
        sync to the kernel's asynchronous fsync (:attr:`kernel_io`) or else to a pool thread that runs nothing but
        the system call.  A failure may have lost data the client thinks written, so a new write verifier makes
        it resend."""

        if call.threaded:
            try:
                (os.fdatasync if datasync else os.fsync)(fd)
            except OSError:
                self._sync_failed(Failure())
                raise
            return then()
        return self._fsync(fd, datasync).addCallback(lambda _: then())

    def _fsync(self, fd: int, datasync: bool = False) -> defer.Deferred:
        """fsync (fdatasync) ``fd`` off the reactor thread: by the kernel's asynchronous fsync, else in the pool."""
        if self.kernel_io is not None:
            try:
                return self.kernel_io(fd, datasync).addErrback(self._sync_failed)
            except OSError:
                pass  # no room, or refused: the thread pool does it
        return self.in_thread(os.fdatasync if datasync else os.fsync, fd).addErrback(self._sync_failed)

    def _sync_filesystem_here(self, dev: int) -> None:
        """Sync the filesystem ``dev`` in this pool thread (dirsync.sync_filesystem_here); a failure changes the
        write verifier, as any failed sync."""
        try:
            sync_filesystem_here(dev, self.table.reopen_root_on)
        except OSError:
            self._sync_failed(Failure())
            raise

    def _sync_failed(self, failure: Failure) -> Failure:
        """A failed sync may have lost what was answered as stable: a new write verifier makes clients resend."""
        self.write_verifier = secrets.token_bytes(8)
        log.error("fsync failed: {e}", e=failure.value)
        return failure

    def _stable(self, call, answer: Any, *dirfds: int) -> Any:
        """``answer`` once the change just made in the directories ``dirfds`` is on stable storage, on a sync
        export (RFC 1813 section 1.6, as knfsd's commit_metadata: dirsync.py); at once on an async one."""
        if not call.options.sync:
            return answer
        if isinstance(answer, defer.Deferred):
            return answer.addCallback(lambda made: self._stable(call, made, *dirfds))
        if call.threaded:  # no directory change runs in the pool today; if one did, it would wait here
            for dirfd in dirfds:
                sync_here(dirfd, lambda fd: self._sync(call, False, fd, lambda: None), self._sync_filesystem_here)
            return answer
        first = os.fstat(dirfds[0])
        synced = self.directories(dirfds[0], first)
        if len(dirfds) > 1:  # RENAME: both directories at once
            other = os.fstat(dirfds[1])
            if (other.st_dev, other.st_ino) != (first.st_dev, first.st_ino):
                synced = defer.gatherResults([synced, self.directories(dirfds[1], other)], consumeErrors=True)
                synced.addErrback(lambda failure: failure.value.subFailure)
        return synced.addCallback(lambda _: answer)

    # -- directory changes --------------------------------------------------------------

    def _made(self, call, dirfd: int, name: bytes, opened: Optional[list[int]] = None, altered: bool = False,
              written: Optional[list[int]] = None) -> Any:
        """The handle and attributes of what a call just made, once it is on stable storage on a sync export
        (RFC 1813 section 1.6).  ``opened``: the descriptor a CREATE opened the new file with, kept for the
        WRITEs that follow (it was opened as the caller, who owns the file: a reopen would let it write too).
        ``altered``: the object was changed after it was made (a size, attributes its making could not set, an
        existing file's size): those changes are its own, which the directory's sync carries on ext4 but not on
        XFS or older ext4, so the object is synced too, as knfsd's nfsd_create_setattr commits both; through
        ``written``'s descriptor (the one the file was made or truncated with), while the call holds it."""
        fd = os.open(name, _PATH_FLAGS, dir_fd=dirfd)
        call.held.append(fd)
        st = os.fstat(fd)
        child = self.table.handle(call.export, fd)
        self.table.remember(child, call.export, fd, st)
        if opened and not call.threaded and st.st_uid == call.who.uid and stat.S_ISREG(st.st_mode):
            self._keep_open(call, opened[0], st)
        made = Made(child, st)
        if not (altered and call.options.sync):
            return self._stable(call, made, dirfd)
        # The object and its directory synced at once (on ext4 the two share one journal commit).  The descriptor
        # that made a file syncs it while the call holds it; once kept for the WRITEs, commit() finds it there.
        through = written[0] if written and written[0] in call.held else None
        syncs = [d for d in (self._object_stable(call, None, fd, st, through), self._stable(call, None, dirfd))
                 if isinstance(d, defer.Deferred)]
        if not syncs:
            return made
        # Answered once both have ended, a failure or not: the reply releases the descriptors the call holds,
        # which the other sync may still be using.
        return defer.DeferredList(syncs, consumeErrors=True).addCallback(_both_ended, made)

    def create(self, call, dirfd: int, name: bytes, how: int, attrs) -> Any:
        written: list[int] = []
        if how == EXCLUSIVE:
            # The verifier's times are set on the descriptor that made the file, in its transaction's wake: the
            # file is synced with its directory, as for any CREATE that changes the file after making it.
            self.caller.create_exclusive(call.who, dirfd, name, attrs, call.held, written)
            return self._made(call, dirfd, name, altered=True, written=written)
        opener = None
        if getattr(self.kernel_io, "can_open", False) and not call.threaded:
            self._creates += 1
            if self.create_cost > SLOW_CREATE and self._creates % RESAMPLE_CREATE:
                opener = self.kernel_io.openat
        started = perf_counter()
        opened: list[int] = []
        altered = self.caller.create(call.who, dirfd, name, attrs, how == GUARDED, call.options.read_only,
                                     call.held, opener, opened, written)
        if not isinstance(altered, defer.Deferred):
            if opener is None:
                self.create_cost += (perf_counter() - started - self.create_cost) / 8
            return self._made(call, dirfd, name, opened, altered, written)

        def done(altered: bool) -> Any:
            self.lister.touched(call)  # now the file is there
            return self._made(call, dirfd, name, opened, altered, written)

        return altered.addCallback(done)

    def mkdir(self, call, dirfd: int, name: bytes, attrs) -> Any:
        altered = self.caller.mkdir(call.who, dirfd, name, attrs, call.held)
        return self._made(call, dirfd, name, altered=altered)

    def symlink(self, call, dirfd: int, name: bytes, attrs, target: bytes) -> Made:
        with self.caller.run_as(call.who):
            os.symlink(target, name, dir_fd=dirfd)
        return self._made(call, dirfd, name)

    def mknod(self, call, dirfd: int, name: bytes, ftype: int, attrs, device: tuple) -> Any:
        altered = self.caller.mknod(call.who, dirfd, name, S_IFMT_OF[ftype], attrs, device, call.held)
        return self._made(call, dirfd, name, altered=altered)

    def remove(self, call, dirfd: int, name: bytes) -> Any:
        self._unlink(call, dirfd, name, rmdir=False)
        return self._stable(call, None, dirfd)

    def rmdir(self, call, dirfd: int, name: bytes) -> Any:
        self._unlink(call, dirfd, name, rmdir=True)
        return self._stable(call, None, dirfd)

    def _unlink(self, call, dirfd: int, name: bytes, rmdir: bool) -> None:
        with self.caller.run_as(call.who):
            gone = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            if rmdir:
                os.rmdir(name, dir_fd=dirfd)
            else:
                os.unlink(name, dir_fd=dirfd)  # EISDIR for a directory
        if rmdir or gone.st_nlink <= 1:
            self._forget(call, gone)

    def rename(self, call, from_fd: int, from_name: bytes, to_fd: int, to_name: bytes) -> Any:
        try:
            replaced = os.stat(to_name, dir_fd=to_fd, follow_symlinks=False)
        except OSError:
            replaced = None
        with self.caller.run_as(call.who):
            os.rename(from_name, to_name, src_dir_fd=from_fd, dst_dir_fd=to_fd)
        self.table.renamed(call.export, to_fd, to_name)
        if replaced is not None and (stat.S_ISDIR(replaced.st_mode) or replaced.st_nlink <= 1):
            self._forget(call, replaced)
        return self._stable(call, None, from_fd, to_fd)

    def link(self, call, fd: int, dirfd: int, name: bytes) -> Any:
        with self.caller.run_as(call.who):
            os.link(proc_path(fd), name, dst_dir_fd=dirfd, follow_symlinks=True)
        return self._stable(call, None, dirfd)

    # -- listings and the filesystem -----------------------------------------------------

    def readdir(self, call, fd: int, dir_st, cookie: int, dircount: int, room: int, plus: bool) -> Listing:
        return self.lister.readdir(call, fd, dir_st, cookie, dircount, room, plus)

    def fsstat(self, call, fd: int) -> Sizes:
        vfs = os.fstatvfs(fd)
        return Sizes(vfs.f_blocks * vfs.f_frsize, vfs.f_bfree * vfs.f_frsize, vfs.f_bavail * vfs.f_frsize,
                     vfs.f_files, vfs.f_ffree, vfs.f_favail)

    def pathconf(self, call, fd: int) -> Limits:
        vfs = os.fstatvfs(fd)
        try:
            linkmax = os.fpathconf(fd, "PC_LINK_MAX")
        except (OSError, ValueError):
            linkmax = 65000
        return Limits(linkmax, min(vfs.f_namemax, 255))
