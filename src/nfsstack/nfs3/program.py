"""nfsd, program 100003 version 3 (RFC 1813 section 3): all 22 procedures on local directories.

One table (:data:`PROCEDURES`) names each procedure's argument decoder, its
handler and the shape of its failure arm.  Every handler runs in one frame
(:meth:`Nfsd._frame`): it resolves its handles (open_by_handle_at, as root),
checks the export's options for this client (client match, ``secure``,
``ro``, squashing) on every call, does its filesystem work as the caller
through :mod:`nfsstack.nfs3.vfs`, and returns a function that packs its resok
arm.  A handler that fails raises; the frame then answers the status with
the attributes RFC 1813 gives that procedure's resfail arm (post_op_attr or
wcc_data of the objects the handler had resolved), so error replies carry
them too.  Large WRITEs and SETATTR of a size run whole in the thread pool
(:class:`Row`); a large READ first tries the page cache inline without waiting
(``RWF_NOWAIT``) and runs in the pool only when the disk is needed; COMMIT and
stable WRITEs hand only their fsync to the kernel's asynchronous fsync or the
pool (:meth:`Nfsd._sync`); the others run inline.
"""

from __future__ import annotations

import collections
import errno
import os
import secrets
import stat
import struct
import time
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Callable, Optional

from twisted.internet import defer, threads
from twisted.python.failure import Failure

from nfsstack.exports import Export, ExportOptions
from nfsstack.exports.handles import BadHandle, StaleHandle
from nfsstack.exports.identity import ROOT, Identity
from nfsstack.exports.policy import Admission, Refused
from nfsstack.exports.table import ExportGone, ExportTable
from nfsstack.logs import logger
from nfsstack.nfs3 import dirents, rawstat
from nfsstack.nfs3.filecache import FileCache, OpenFile
from nfsstack.nfs3.listings import Chunk, Listings
from nfsstack.nfs3.types import (
    DATA_SYNC,
    EXCLUSIVE,
    FILE_SYNC,
    GUARDED,
    MAX_PATH,
    NFS_PROG,
    S_IFMT_OF,
    UNCHECKED,
    UNSTABLE,
    Ftype,
    NFSError,
    Sattr,
    Stat,
    check_name,
    fattr3,
    post_op_attr,
    post_op_fh,
    stat_of,
    unpack_diropargs,
    unpack_fh,
    unpack_sattr,
    wcc_data,
)
from nfsstack.nfs3.vfs import LocalFS, all_cached, proc_path, readlink, stat_or_none
from nfsstack.refusals import RefusalLog
from nfsstack.rpc.fileslice import FileSlice
from nfsstack.rpc.program import (
    CallContext,
    Procedure,
    Program,
    null_procedure,
    raw_parts,
)
from nfsstack.xdr import Packer, Unpacker, XDRError

log = logger("nfsstack.nfs3")

#: Largest READ and WRITE over TCP (FSINFO rtmax/wtmax): the kernel client then uses 1 MiB requests.
RTMAX = WTMAX = 1 << 20
#: Over UDP a reply must fit one datagram: 32 KiB, as knfsd allows.
UDP_XFER = 32 * 1024
DTPREF = 64 * 1024
MAX_OFFSET = (1 << 63) - 1
_FSF3_LINK, _FSF3_SYMLINK, _FSF3_HOMOGENEOUS, _FSF3_CANSETTIME = 0x1, 0x2, 0x8, 0x10
#: READs and unstable WRITEs up to this size run inline.
SMALL_IO = 64 * 1024
#: knfsd's cookie verifier: always zero, and any verifier a client sends back is accepted.
_COOKIEVERF = b"\0" * 8
_OK = b"\0\0\0\0"
_NO_ATTR = b"\0\0\0\0"
_TRUE = b"\0\0\0\1"
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")
_ENTRY_HEAD = struct.Struct(">IQI")  # value follows, fileid, name length
_COOKIE = struct.Struct(">Q")
_U32 = struct.Struct(">I")
#: Encoded READDIRPLUS attributes and handles kept per export, keyed by the raw struct stat (nfs3/rawstat.py).
ENTRY_CACHE = 32768

#: A CREATE whose open takes longer than this (moving average, seconds) on the reactor goes to io_uring's worker
#: instead (nfs3/aiosync.py): one in RESAMPLE_CREATE still runs inline, to see whether creates got cheap again.
#: Handing an open over costs the reactor and the kernel more CPU in wake-ups than a cheap open costs in place
#: (bench/README.md, "CREATE's open inline or by io_uring").
SLOW_CREATE = 0.0002
RESAMPLE_CREATE = 16

Packs = Callable[[Packer], None]


class Op:
    """One call in progress: the caller's export, options and identity, its descriptors, and the
    objects whose attributes its reply carries (``watched``, in the order of the resfail arm)."""

    __slots__ = ("ctx", "export", "options", "who", "fds", "watched", "threaded", "resolved", "nowait", "ring",
                 "lent")

    def __init__(self, ctx: CallContext) -> None:
        self.ctx = ctx
        self.export: Optional[Export] = None
        self.options: Optional[ExportOptions] = None
        self.who: Optional[Identity] = None
        self.fds: list[int] = []
        self.watched: list[tuple[int, os.stat_result]] = []
        #: The whole call runs in a pool thread (a large READ or WRITE): it may wait on the disk itself.
        self.threaded = False
        #: A blocking call tried inline first: the handler raises :class:`WouldBlock` rather than wait on the disk.
        self.nowait = False
        #: A blocking call run inline, its disk work handed to the kernel's io_uring (:attr:`Row.ring`).
        self.ring = False
        #: fd -> its fstat when the handle was resolved (the "before" attributes, without a second fstat)
        self.resolved: dict[int, os.stat_result] = {}
        #: Kept open files (nfs3/filecache.py) the call uses; given back by :meth:`close`.
        self.lent: Optional[list[OpenFile]] = None

    @property
    def fsid(self) -> int:
        return self.export.export_id if self.export is not None else 0

    def pack_attr(self, p: Packer, i: int) -> None:
        """post_op_attr of watched object ``i``, as it is now."""
        post_op_attr(p, stat_or_none(self.watched[i][0]), self.fsid)

    def pack_wcc(self, p: Packer, i: int) -> None:
        """wcc_data of watched object ``i``: as it was when watched, and as it is now."""
        fd, before = self.watched[i]
        wcc_data(p, before, stat_or_none(fd), self.fsid)

    def close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()
        if self.lent:
            for entry in self.lent:
                entry.release()
            self.lent = None

    def lend(self, entry: OpenFile) -> int:
        """Use the kept open file ``entry`` until :meth:`close`; its descriptor."""
        if self.lent is None:
            self.lent = [entry]
        else:
            self.lent.append(entry)
        return entry.fd


class WouldBlock(Exception):
    """An inline attempt (:attr:`Op.nowait`) would have to wait on the disk: the call goes to the pool."""


@dataclass(frozen=True, slots=True)
class Row:
    """A procedure of the table: name, argument decoder, resfail arm, and whether a rerun is harmless.

    ``fail`` lists what the failure reply carries after the status: "attr"
    (post_op_attr) or "wcc" (wcc_data) of the objects the handler resolved,
    in order (RFC 1813 section 3.3, each procedure's resfail).
    """

    name: str
    decode: Callable[[Unpacker], Any]
    fail: tuple[str, ...]
    idempotent: bool = True
    #: Runs whole in the thread pool (a test of the arguments): it moves much data and may wait on the disk
    #: (reads of cold data, writeback throttling).  Directory changes and small transfers stay inline: they are
    #: short, and handing them to threads was measured slower (bench/README.md).  A sync (COMMIT, a stable
    #: WRITE) is the one wait of a call that runs inline: only the fsync goes to a thread (:meth:`Nfsd._sync`).
    blocking: Any = False
    #: A blocking call that first tries inline, without waiting (RWF_NOWAIT: data already in the page cache),
    #: and goes to the pool only when the kernel says it would have to wait.
    nowait: bool = False
    #: A blocking call whose disk work the handler can hand to io_uring (``syncer.pwrite``) where the kernel
    #: has it: it then runs inline, else whole in the pool.  The handler raises :class:`WouldBlock` when the
    #: ring has no room, before it changed anything.
    ring: bool = False
    #: May change (or, reading, touch the atime of) the objects it resolves: cached listings of them, or of
    #: the directories that list them, are dropped (nfs3/listings.py).
    changes: bool = True


# -- argument decoders (RFC 1813 section 3.3) ------------------------------------


def _unpack_setattr(u: Unpacker):
    handle = unpack_fh(u)
    attrs = unpack_sattr(u)
    guard = None
    if u.unpack_bool():
        s, ns = u.unpack_uint(), u.unpack_uint()
        guard = s * 1_000_000_000 + ns
    return handle, attrs, guard


def _unpack_fh_uint(u: Unpacker):
    return unpack_fh(u), u.unpack_uint()


def _unpack_range(u: Unpacker):
    return unpack_fh(u), u.unpack_uhyper(), u.unpack_uint()


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


def _unpack_mkdir(u: Unpacker):
    return unpack_diropargs(u), unpack_sattr(u)


def _unpack_symlink(u: Unpacker):
    where = unpack_diropargs(u)
    attrs = unpack_sattr(u)
    return where, attrs, u.unpack_opaque(MAX_PATH)


def _unpack_mknod(u: Unpacker):
    where = unpack_diropargs(u)
    ftype = u.unpack_uint()
    device = (0, 0)
    attrs = Sattr()
    if ftype in (Ftype.CHR, Ftype.BLK):
        attrs = unpack_sattr(u)
        device = (u.unpack_uint(), u.unpack_uint())
    elif ftype in (Ftype.SOCK, Ftype.FIFO):
        attrs = unpack_sattr(u)
    return where, ftype, attrs, device


def _unpack_rename(u: Unpacker):
    return unpack_diropargs(u), unpack_diropargs(u)


def _unpack_link(u: Unpacker):
    return unpack_fh(u), unpack_diropargs(u)


def _unpack_readdir(u: Unpacker):
    return unpack_fh(u), u.unpack_uhyper(), u.unpack_fopaque(8), u.unpack_uint(), None


def _unpack_readdirplus(u: Unpacker):
    return unpack_fh(u), u.unpack_uhyper(), u.unpack_fopaque(8), u.unpack_uint(), u.unpack_uint()


#: The procedure table of NFSv3 (RFC 1813 section 3.3); procedure 0 is NULL.
PROCEDURES: dict[int, Row] = {
    1: Row("GETATTR", unpack_fh, (), changes=False),
    2: Row("SETATTR", _unpack_setattr, ("wcc",), idempotent=False, blocking=lambda a: a[1].size is not None),
    3: Row("LOOKUP", unpack_diropargs, ("attr",), changes=False),
    4: Row("ACCESS", _unpack_fh_uint, ("attr",), changes=False),
    5: Row("READLINK", unpack_fh, ("attr",)),
    6: Row("READ", _unpack_range, ("attr",), blocking=lambda a: a[2] > SMALL_IO, nowait=True),
    7: Row("WRITE", _unpack_write, ("wcc",), blocking=lambda a: a[2] > SMALL_IO, ring=True),
    8: Row("CREATE", _unpack_create, ("wcc",), idempotent=False),
    9: Row("MKDIR", _unpack_mkdir, ("wcc",), idempotent=False),
    10: Row("SYMLINK", _unpack_symlink, ("wcc",), idempotent=False),
    11: Row("MKNOD", _unpack_mknod, ("wcc",), idempotent=False),
    12: Row("REMOVE", unpack_diropargs, ("wcc",), idempotent=False),
    13: Row("RMDIR", unpack_diropargs, ("wcc",), idempotent=False),
    14: Row("RENAME", _unpack_rename, ("wcc", "wcc"), idempotent=False),
    15: Row("LINK", _unpack_link, ("attr", "wcc"), idempotent=False),
    16: Row("READDIR", _unpack_readdir, ("attr",), changes=False),
    17: Row("READDIRPLUS", _unpack_readdirplus, ("attr",), changes=False),
    18: Row("FSSTAT", unpack_fh, ("attr",), changes=False),
    19: Row("FSINFO", unpack_fh, ("attr",), changes=False),
    20: Row("PATHCONF", unpack_fh, ("attr",), changes=False),
    21: Row("COMMIT", _unpack_range, ("wcc",)),
}


class Nfsd:
    """The NFSv3 server; :attr:`program` is its procedure table."""

    def __init__(self, table: ExportTable, fs: Optional[LocalFS] = None,
                 in_thread: Callable[..., defer.Deferred] = threads.deferToThread,
                 syncer: Optional[Callable[[int, bool], defer.Deferred]] = None,
                 refusals: Optional[RefusalLog] = None) -> None:
        self.table = table
        self.admission = Admission(table)
        self.fs = fs or LocalFS()
        #: Calls refused by export policy, logged per client (rate-limited).
        self.refusals = refusals or RefusalLog(time.monotonic)
        #: Runs the procedures that may wait on the disk off the reactor thread.
        self.in_thread = in_thread
        #: syncer(fd, datasync) -> Deferred: fsync without a thread (nfs3/aiosync.py); None: in_thread does it.
        self.syncer = syncer
        #: Seconds an inline CREATE has been taking (a moving average), and how many there were: above
        #: SLOW_CREATE the opens go to io_uring (:meth:`nfs_create`).
        self._create_cost = 0.0
        self._creates = 0
        #: For the status service: bytes moved, and failed calls by procedure and status.
        self.bytes_read = 0
        self.bytes_written = 0
        self.failures: collections.Counter = collections.Counter()
        #: Changes on every start (and after a failed sync), so clients resend the writes they had not
        #: committed (RFC 1813 section 3.3.7).
        self.write_verifier = secrets.token_bytes(8)
        #: export id -> {raw struct stat: the entry's name_attributes and name_handle, encoded}
        self._entry_parts: dict[int, dict[bytes, tuple[bytes, bool]]] = {}
        #: Devices whose filesystem refused RWF_NOWAIT: their large READs go straight to the pool.
        self._nowait_refused: set[int] = set()
        #: Descriptors a CREATE or WRITE opened for writing, kept for the calls that follow (reactor thread only).
        self.files = FileCache()
        #: Encoded listings, kept while nothing they show changed.
        self.listings = Listings()
        self.program = Program(NFS_PROG, "nfs", {3: self._procedures()})

    def _procedures(self) -> dict[int, Procedure]:
        procs = {0: null_procedure()}
        for number, row in PROCEDURES.items():
            handler = getattr(self, "nfs_" + row.name.lower())
            procs[number] = Procedure(row.name, self._frame(row, handler), row.decode, raw_parts, row.idempotent)
        return procs

    # -- the frame every procedure runs in -------------------------------------

    def _frame(self, row: Row, handler: Callable[[Op, Any], Any]) -> Callable[[CallContext, Any], Any]:
        lookup = self.admission.lookup

        def run(ctx: CallContext, args: Any):
            if (named := lookup(ctx.peer[0])) is not None:
                # A wildcard client specification needs the caller's name: look it up first.
                return named.addBoth(lambda _: start(ctx, args))
            return start(ctx, args)

        def start(ctx: CallContext, args: Any):
            op = Op(ctx)
            if row.blocking and row.blocking(args):
                if row.ring and getattr(self.syncer, "can_write", False):
                    op.ring = True
                elif not row.nowait:
                    op.threaded = True
                    return self.in_thread(in_thread, op, args)
                op.nowait = True
            try:
                result = handler(op, args)
            except WouldBlock:
                op.close()
                again = Op(ctx)
                again.threaded = True
                return self.in_thread(in_thread, again, args)
            except Exception:
                return self._failed(Failure(), op, row)
            finally:
                if op.who is not ROOT and op.who is not None:  # root's calls never switch identity
                    self.fs.reset()
                if row.changes and op.watched:
                    self._touched(op)
            if isinstance(result, defer.Deferred):
                return result.addCallbacks(self._succeeded, self._failed, callbackArgs=(op, row),
                                           errbackArgs=(op, row))
            return self._succeeded(result, op, row)

        def in_thread(op: Op, args: Any) -> list[bytes]:
            """The whole call, reply included, in a pool thread (as the caller's identity for that thread)."""
            try:
                ok = handler(op, args)
            except Exception:
                return self._failed(Failure(), op, row)
            finally:
                self.fs.reset()
                if row.changes and op.watched:
                    self._touched(op)
            return self._succeeded(ok, op, row)

        return run

    def _touched(self, op: Op) -> None:
        """Tell the listing cache that the call changed (or read) the objects it watched."""
        if not self.listings.idle():
            self.listings.touched([(st.st_dev, st.st_ino) for _, st in op.watched])

    def _keep_open(self, op: Op, fd: int, st: os.stat_result, lend: bool = False) -> OpenFile:
        """Hand ``fd``, opened for writing as the caller, from the call to the kept open files; with ``lend``,
        the call goes on using it."""
        op.fds.remove(fd)  # the cache closes it from now on
        entry = self.files.keep(fd, op.who, st, lend)
        if lend:
            op.lend(entry)
        return entry

    def _succeeded(self, ok: Packs, op: Op, row: Row) -> list[bytes]:
        try:
            p = Packer()
            p.pack_raw(_OK)
            ok(p)
            return p.parts()
        except Exception:
            return self._failed(Failure(), op, row)
        finally:
            op.close()

    def _failed(self, failure: Failure, op: Op, row: Row) -> list[bytes]:
        error = failure.value
        if isinstance(error, NFSError):
            status = error.status
        elif isinstance(error, OSError):
            status = stat_of(error)
        elif isinstance(error, OverflowError):
            status = Stat.FBIG  # a size or offset beyond what the filesystem takes (2^63)
        else:
            log.failure("NFS {name} failed", failure, name=row.name)
            status = Stat.SERVERFAULT
        self.failures[(row.name, status.name)] += 1
        p = Packer()
        p.pack_uint(status)
        try:
            for i, kind in enumerate(row.fail):
                if i >= len(op.watched):
                    p.pack_raw(_NO_ATTR if kind == "attr" else _NO_ATTR + _NO_ATTR)
                elif kind == "attr":
                    op.pack_attr(p, i)
                else:
                    op.pack_wcc(p, i)
        finally:
            op.close()
        return p.parts()

    def _resolve(self, op: Op, handle: bytes, write: bool = False) -> int:
        """The O_PATH fd of ``handle``, after checking this client may use its export (on every call)."""
        try:
            export, fd, st = self.table.resolve_stat(handle)
        except BadHandle:
            raise NFSError(Stat.BADHANDLE) from None
        except ExportGone:
            self.refusals.refused(op.ctx.peer[0], "a handle of an export no longer exported", "STALE")
            raise NFSError(Stat.STALE) from None
        except StaleHandle:
            raise NFSError(Stat.STALE) from None
        op.fds.append(fd)
        op.resolved[fd] = st
        if op.export is None:
            verdict = self.admission.admit(export, op.ctx.peer[0], op.ctx.privileged_port, op.ctx.credential)
            if isinstance(verdict, Refused):
                self.refusals.refused(op.ctx.peer[0], verdict.reason, export.path)
                raise NFSError(Stat[verdict.status])
            op.export, op.options, op.who = export, verdict.options, verdict.identity
        elif export.export_id != op.export.export_id:
            raise NFSError(Stat.XDEV)
        if write and op.options.read_only:
            self.refusals.refused(op.ctx.peer[0], "a change to a read-only export", op.export.path)
            self._watch(op, fd)  # the failure reply still carries its attributes
            raise NFSError(Stat.ROFS)
        return fd

    @staticmethod
    def _watch(op: Op, fd: int) -> os.stat_result:
        """The attributes of ``fd`` as the call starts (from resolving its handle, or a new fstat), included in
        the reply's attributes."""
        st = op.resolved.pop(fd, None) or os.stat(fd)
        op.watched.append((fd, st))
        return st

    def _directory(self, op: Op, handle: bytes, name: bytes) -> int:
        """The directory of a CREATE, MKDIR, SYMLINK or MKNOD, with its name checked."""
        dirfd = self._resolve(op, handle, write=True)
        if not stat.S_ISDIR(self._watch(op, dirfd).st_mode):
            raise NFSError(Stat.NOTDIR)
        check_name(name)
        if name in (b".", b".."):
            raise NFSError(Stat.EXIST)
        return dirfd

    def _made(self, op: Op, dirfd: int, name: bytes, opened: Optional[list[int]] = None) -> Packs:
        """The resok arm of the procedures that make an object: its handle and attributes, the directory's wcc.
        ``opened``: the descriptor a CREATE opened the new file with, kept for the WRITEs that follow (it was
        opened as the caller, who owns the file: a reopen would let it write too)."""
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
        op.fds.append(fd)
        st = os.fstat(fd)
        child = self.table.handle(op.export, fd)
        self.table.remember(child, op.export, fd, st)
        if opened and not op.threaded and st.st_uid == op.who.uid and stat.S_ISREG(st.st_mode):
            self._keep_open(op, opened[0], st)
        return lambda p: (post_op_fh(p, child), post_op_attr(p, st, op.fsid), op.pack_wcc(p, 0))

    @staticmethod
    def _xfer(op: Op) -> int:
        return UDP_XFER if op.ctx.netid.startswith("udp") else RTMAX

    def _sync(self, op: Op, datasync: bool, fd: int, then: Callable[[], Packs]) -> Any:
        """fdatasync or fsync ``fd``, then ``then()``.  The reactor never waits for it: an inline call hands the
        sync to the kernel's asynchronous fsync (:attr:`syncer`) or else to a pool thread that runs nothing but
        the system call.  A failure may have lost data the client thinks written, so a new write verifier makes
        it resend."""

        def synced(_=None) -> Packs:
            return then()

        def failed(failure: Failure) -> Failure:
            self.write_verifier = secrets.token_bytes(8)
            log.error("fsync failed: {e}", e=failure.value)
            return failure

        sync = os.fdatasync if datasync else os.fsync
        if op.threaded:
            try:
                sync(fd)
            except OSError:
                failed(Failure())
                raise
            return then()
        if self.syncer is not None:
            try:
                return self.syncer(fd, datasync).addCallbacks(synced, failed)
            except OSError:
                pass  # no room, or refused: the thread pool does it
        return self.in_thread(sync, fd).addCallbacks(synced, failed)

    # -- procedures (RFC 1813 section 3.3.N) -------------------------------------------

    def nfs_getattr(self, op: Op, handle: bytes) -> Packs:
        st = op.resolved[self._resolve(op, handle)]
        return lambda p: p.pack_raw(fattr3(st, op.fsid))

    def nfs_setattr(self, op: Op, args) -> Packs:
        handle, attrs, guard = args
        fd = self._resolve(op, handle, write=True)
        st = self._watch(op, fd)
        if guard is not None and st.st_ctime_ns != guard:
            raise NFSError(Stat.NOT_SYNC)
        self.fs.setattr(op.who, fd, attrs, st, op.options.read_only, op.fds)
        return lambda p: op.pack_wcc(p, 0)

    def nfs_lookup(self, op: Op, args) -> Packs:
        handle, name = args
        dirfd = self._resolve(op, handle)
        dir_st = self._watch(op, dirfd)
        if not stat.S_ISDIR(dir_st.st_mode):
            raise NFSError(Stat.NOTDIR)
        if name not in (b".", b".."):
            check_name(name)
        fsid = child_fsid = op.fsid
        # ".." of the export's root is the root itself: a client never climbs out of an export, except from a
        # filesystem crossed into (crossmnt, nohide) back to the one it is mounted on.
        if name == b".." and self.table.is_root(op.export, dir_st):
            up = self.table.above_root(op.export, op.options, op.ctx.peer[0])
            if up is None:
                name = b"."
            else:
                target, upfd = up
                op.fds.append(upfd)
                st, child = os.fstat(upfd), self.table.handle(target, upfd)
                return lambda p: (p.pack_opaque(child), post_op_attr(p, st, target.export_id),
                                  post_op_attr(p, dir_st, fsid))
        try:
            with self.fs.run_as(op.who):  # the kernel checks search permission on the directory
                st, child = self.table.stat_and_handle(op.export, dirfd, name)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            st, child, child_fsid = self._crossing(op, dirfd, name)
        # The directory's attributes as this call found them: a lookup changes nothing (no second fstat).
        return lambda p: (p.pack_opaque(child), post_op_attr(p, st, child_fsid), post_op_attr(p, dir_st, fsid))

    def _crossing(self, op: Op, dirfd: int, name: bytes) -> tuple[os.stat_result, bytes, int]:
        """LOOKUP of a mount point (export_table.py): the root of the filesystem mounted there, if the client
        crosses into it (crossmnt, nohide), else the directory it covers (hide; NFS3ERR_XDEV where that
        cannot be had).  Attributes, handle and fsid of what it gives."""
        with self.fs.run_as(op.who):
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
        op.fds.append(fd)
        target = self.table.cross(op.export, op.options, fd, op.ctx.peer[0])
        if target is not None:
            return os.fstat(fd), self.table.handle(target, fd), target.export_id
        handle, fd = self.table.covered(op.export, dirfd, name)
        op.fds.append(fd)
        return os.fstat(fd), handle, op.fsid

    def nfs_access(self, op: Op, args) -> Packs:
        handle, wanted = args
        fd = self._resolve(op, handle)
        st = self._watch(op, fd)
        granted = self.fs.access(op.who, fd, st, op.options.read_only) & wanted
        fsid = op.fsid  # the attributes the permissions were decided on: asking changes nothing
        return lambda p: (post_op_attr(p, st, fsid), p.pack_uint(granted))

    def nfs_readlink(self, op: Op, handle: bytes) -> Packs:
        fd = self._resolve(op, handle)
        if not stat.S_ISLNK(self._watch(op, fd).st_mode):
            raise NFSError(Stat.INVAL)
        target = readlink(fd)
        return lambda p: (op.pack_attr(p, 0), p.pack_opaque(target))

    def nfs_read(self, op: Op, args) -> Packs:
        handle, offset, count = args
        fd = self._resolve(op, handle)
        st = self._watch(op, fd)
        if stat.S_ISDIR(st.st_mode):
            raise NFSError(Stat.ISDIR)
        if not stat.S_ISREG(st.st_mode):
            raise NFSError(Stat.INVAL)
        rfd = self.fs.reopen(op.who, fd, os.O_RDONLY, st, op.options.read_only, op.fds)
        count = min(count, self._xfer(op))  # a READ of 1 GiB gets at most rtmax
        if not count or offset >= MAX_OFFSET:
            data = b""
        elif op.nowait:  # no larger a buffer than the file has bytes there
            want = min(count, st.st_size - offset)
            if want <= 0:
                data = b""
            elif not op.ctx.netid.startswith("udp") and all_cached(rfd, offset, want):
                data = FileSlice(os.dup(rfd), offset, want)  # sent by sendfile(2): never copied here
            else:
                data = self._read_cached(rfd, want, offset, st.st_dev)
        else:
            data = os.pread(rfd, count, offset)
        after = os.stat(rfd)
        eof = offset + len(data) >= after.st_size
        if op.nowait and not eof and len(data) < count:
            raise WouldBlock()  # only part of the range is cached: the pool reads it all
        self.bytes_read += len(data)

        def pack(p: Packer) -> None:
            post_op_attr(p, after, op.fsid)
            p.pack_uint(len(data))
            p.pack_bool(eof)
            p.pack_opaque_buffer(data)

        return pack

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

    def nfs_write(self, op: Op, args) -> Packs:
        handle, offset, count, stable, data = args
        fd = self._resolve(op, handle, write=True)
        st = self._watch(op, fd)
        if stat.S_ISDIR(st.st_mode):
            raise NFSError(Stat.ISDIR)
        if not stat.S_ISREG(st.st_mode):
            raise NFSError(Stat.INVAL)
        if count > len(data):
            raise NFSError(Stat.INVAL)
        if offset + count > MAX_OFFSET:
            raise NFSError(Stat.FBIG)
        kept = None if op.threaded else self.files.writer(op.who, st)
        if kept is not None:
            wfd = op.lend(kept)
        else:
            wfd = self.fs.reopen(op.who, fd, os.O_WRONLY, st, op.options.read_only, op.fds)
            if not op.threaded:  # kept for the WRITEs and the COMMIT that follow
                kept = self._keep_open(op, wfd, st, lend=True)
        fsid = op.fsid

        def done(written: int) -> Any:
            self.bytes_written += written
            after = stat_or_none(wfd)
            if kept is not None and after is not None:
                self.files.saw(kept, after)  # the new ctime is this write's

            def ok(committed: int) -> Packs:
                verifier = self.write_verifier
                return lambda p: (wcc_data(p, st, after, fsid), p.pack_uint(written), p.pack_uint(committed),
                                  p.pack_fopaque(8, verifier))

            if stable != UNSTABLE and op.options.sync:
                return self._sync(op, stable == DATA_SYNC, wfd, lambda: ok(stable))
            return ok(stable)

        with self.fs.run_as(op.who):  # as the caller: writing clears set-id bits, as it would locally
            if op.ring:
                try:
                    ringed = self.syncer.pwrite(wfd, data[:count], offset)
                except OSError:
                    raise WouldBlock() from None  # no room in the ring: the pool writes it
            else:
                return done(os.pwrite(wfd, data[:count], offset))
        return ringed.addCallback(done)

    def nfs_create(self, op: Op, args) -> Packs:
        (handle, name), mode, how = args
        dirfd = self._directory(op, handle, name)
        if mode == EXCLUSIVE:
            self.fs.create_exclusive(op.who, dirfd, name, how, op.fds)
            return self._made(op, dirfd, name)
        opener = None
        if getattr(self.syncer, "can_open", False) and not op.threaded:
            self._creates += 1
            if self._create_cost > SLOW_CREATE and self._creates % RESAMPLE_CREATE:
                opener = self.syncer.openat
        started = perf_counter()
        opened: list[int] = []
        made = self.fs.create(op.who, dirfd, name, how, mode == GUARDED, op.options.read_only, op.fds, opener,
                              opened)
        if made is None:
            if opener is None:
                self._create_cost += (perf_counter() - started - self._create_cost) / 8
            return self._made(op, dirfd, name, opened)

        def done(_) -> Packs:
            self._touched(op)  # now the file is there
            return self._made(op, dirfd, name, opened)

        return made.addCallback(done)

    def nfs_mkdir(self, op: Op, args) -> Packs:
        (handle, name), attrs = args
        dirfd = self._directory(op, handle, name)
        self.fs.mkdir(op.who, dirfd, name, attrs, op.fds)
        return self._made(op, dirfd, name)

    def nfs_symlink(self, op: Op, args) -> Packs:
        (handle, name), _attrs, target = args
        dirfd = self._directory(op, handle, name)
        if not target or b"\0" in target:
            raise NFSError(Stat.INVAL)
        with self.fs.run_as(op.who):
            os.symlink(target, name, dir_fd=dirfd)
        return self._made(op, dirfd, name)

    def nfs_mknod(self, op: Op, args) -> Packs:
        (handle, name), ftype, attrs, device = args
        dirfd = self._directory(op, handle, name)
        if ftype not in (Ftype.CHR, Ftype.BLK, Ftype.SOCK, Ftype.FIFO):
            raise NFSError(Stat.BADTYPE)
        self.fs.mknod(op.who, dirfd, name, S_IFMT_OF[ftype], attrs, device, op.fds)
        return self._made(op, dirfd, name)

    def _unlink(self, op: Op, args, rmdir: bool) -> Packs:
        handle, name = args
        dirfd = self._resolve(op, handle, write=True)
        if not stat.S_ISDIR(self._watch(op, dirfd).st_mode):
            raise NFSError(Stat.NOTDIR)
        if name == b".":
            raise NFSError(Stat.INVAL)
        if name == b"..":
            raise NFSError(Stat.NOTEMPTY if rmdir else Stat.ISDIR)
        check_name(name)
        with self.fs.run_as(op.who):
            gone = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            if rmdir:
                os.rmdir(name, dir_fd=dirfd)
            else:
                os.unlink(name, dir_fd=dirfd)  # EISDIR for a directory
        if rmdir or gone.st_nlink <= 1:
            self._forget(op, gone)
        return lambda p: op.pack_wcc(p, 0)

    def _forget(self, op: Op, gone: os.stat_result) -> None:
        """An object was removed: a cached descriptor must not keep its blocks allocated, and its inode number
        may come back with a new object, so neither its handle nor its encoded entries may be served again."""
        self.table.forget(gone)
        self.files.forget(gone)
        self._entry_parts.pop(op.fsid, None)

    def nfs_remove(self, op: Op, args) -> Packs:
        return self._unlink(op, args, rmdir=False)

    def nfs_rmdir(self, op: Op, args) -> Packs:
        return self._unlink(op, args, rmdir=True)

    def nfs_rename(self, op: Op, args) -> Packs:
        (from_handle, from_name), (to_handle, to_name) = args
        from_fd = self._resolve(op, from_handle, write=True)
        from_st = self._watch(op, from_fd)
        to_fd = self._resolve(op, to_handle, write=True)
        to_st = self._watch(op, to_fd)
        if not (stat.S_ISDIR(from_st.st_mode) and stat.S_ISDIR(to_st.st_mode)):
            raise NFSError(Stat.NOTDIR)
        for name in (from_name, to_name):
            if name in (b".", b".."):
                raise NFSError(Stat.INVAL)
            check_name(name)
        try:
            replaced = os.stat(to_name, dir_fd=to_fd, follow_symlinks=False)
        except OSError:
            replaced = None
        with self.fs.run_as(op.who):
            os.rename(from_name, to_name, src_dir_fd=from_fd, dst_dir_fd=to_fd)
        if replaced is not None and (stat.S_ISDIR(replaced.st_mode) or replaced.st_nlink <= 1):
            self._forget(op, replaced)
        return lambda p: (op.pack_wcc(p, 0), op.pack_wcc(p, 1))

    def nfs_link(self, op: Op, args) -> Packs:
        handle, (dir_handle, name) = args
        fd = self._resolve(op, handle, write=True)
        st = self._watch(op, fd)
        dirfd = self._resolve(op, dir_handle, write=True)
        if not stat.S_ISDIR(self._watch(op, dirfd).st_mode):
            raise NFSError(Stat.NOTDIR)
        check_name(name)
        if stat.S_ISDIR(st.st_mode):
            raise NFSError(Stat.ISDIR)
        with self.fs.run_as(op.who):
            os.link(proc_path(fd), name, dst_dir_fd=dirfd, follow_symlinks=True)
        return lambda p: (op.pack_attr(p, 0), op.pack_wcc(p, 1))

    def nfs_readdir(self, op: Op, args) -> Packs:
        return self._listing(op, args, plus=False)

    def nfs_readdirplus(self, op: Op, args) -> Packs:
        return self._listing(op, args, plus=True)

    def _listing(self, op: Op, args, plus: bool) -> Packs:
        """READDIR and READDIRPLUS (RFC 1813 sections 3.3.16-17) from the directory's own offsets; the body
        of the reply from :attr:`listings` while nothing it shows changed."""
        handle, cookie, _verifier, count, maxcount = args
        if plus:
            dircount, maxcount = max(count, 512), min(maxcount, self._xfer(op))
        else:
            dircount = maxcount = min(count, self._xfer(op))
        fd = self._resolve(op, handle)
        dir_st = self._watch(op, fd)
        if not stat.S_ISDIR(dir_st.st_mode):
            raise NFSError(Stat.NOTDIR)
        if cookie > MAX_OFFSET:
            raise NFSError(Stat.BAD_COOKIE)  # no directory offset is that large
        rfd = self.fs.reopen(op.who, fd, os.O_RDONLY | os.O_DIRECTORY, dir_st, op.options.read_only, op.fds)
        room = maxcount - (4 + 4 + 84 + 8 + 4 + 4)  # status, dir attributes, verifier, end of list, eof
        dirkey = (dir_st.st_dev, dir_st.st_ino)
        key = (dirkey, op.fsid, op.who, cookie, dircount, room, plus)
        stamp = (dir_st.st_mtime_ns, dir_st.st_ctime_ns, dir_st.st_size, dir_st.st_nlink)
        chunk = self.listings.get(key, stamp)
        body = self._served(op, fd, chunk, room) if chunk is not None else None
        if body is None:
            fill = self.listings.begin(dirkey, fd)
            try:
                chunk = self._read_listing(op, fd, rfd, dir_st, cookie, dircount, room, plus, fill)
            except BaseException:
                if fill is not None:
                    self.listings.abandon(fill)
                raise
            if fill is not None:
                self.listings.put(fill, key, stamp, chunk)
            body = self._served(op, fd, chunk, room)
        tail = b"\0\0\0\0" + (_TRUE if chunk.eof else _NO_ATTR)

        def pack(p: Packer) -> None:
            op.pack_attr(p, 0)
            p.pack_raw(_COOKIEVERF)
            for part in body:
                p.pack_raw(part)
            p.pack_raw(tail)

        return pack

    def _read_listing(self, op: Op, fd: int, rfd: int, dir_st: os.stat_result, cookie: int, dircount: int,
                      room: int, plus: bool, fill) -> Chunk:
        """The entries of one reply from getdents (and, for READDIRPLUS, an lstat of each), as a
        :class:`Chunk`: runs of encoded entries, and the entries whose attributes every reply takes afresh."""
        at_root = self.table.is_root(op.export, dir_st)
        size = names = kept = 0
        segments: list = []
        run: list[bytes] = []
        members = fill.members if fill is not None else []
        eof = True
        pack_head, pack_cookie = _ENTRY_HEAD.pack, _COOKIE.pack
        lstat = rawstat.Buffer().lstat if plus and rawstat.SUPPORTED else None
        parts = self._entry_parts.setdefault(op.fsid, {}) if plus else None
        with self.fs.run_as(op.who):
            for fileid, name, next_cookie in dirents.entries(rfd, cookie):
                n = len(name)
                if name == b".." and at_root:
                    fileid = dir_st.st_ino
                entry = pack_head(1, fileid, n) + name + _PAD[n & 3] + pack_cookie(next_cookie)
                names += 20 + n + (-n & 3)
                steady = True
                if plus:
                    # Attributes and handle, when they can be had; "." and the root's ".." are the directory.
                    if name == b"." or name == b"..":
                        steady = False
                        if at_root:
                            name = b"."
                    raw = lstat(fd, name) if lstat is not None else None
                    got = parts.get(raw) if raw is not None else None
                    if got is None:
                        got = self._entry_part(op, fd, name, raw, parts)
                    part, steady = got[0], steady and got[1]
                    if size + len(entry) + len(part) > room or names > dircount:
                        eof = False
                        break
                    size += len(entry) + len(part)
                    if not steady:
                        if run:
                            segments.append(b"".join(run))
                            run = []
                        segments.append((entry, name))
                        continue
                    entry += part
                elif size + len(entry) > room or names > dircount:
                    eof = False
                    break
                else:
                    size += len(entry)
                run.append(entry)
                kept += len(entry)
                members.append(fileid)
        if run:
            segments.append(b"".join(run))
        if not segments and not eof:
            raise NFSError(Stat.TOOSMALL)
        return Chunk(segments, kept, eof)

    def _served(self, op: Op, fd: int, chunk: Chunk, room: int) -> Optional[list[bytes]]:
        """The entries of ``chunk``, with fresh attributes for those it does not keep; None if these
        have grown past ``room`` (an entry whose lstat failed before now has attributes)."""
        if len(chunk.segments) == 1 and chunk.segments[0].__class__ is bytes:
            return chunk.segments
        body = []
        size = chunk.kept
        lstat = rawstat.Buffer().lstat if rawstat.SUPPORTED else None
        parts = self._entry_parts.setdefault(op.fsid, {})
        with self.fs.run_as(op.who):
            for segment in chunk.segments:
                if segment.__class__ is bytes:
                    body.append(segment)
                    continue
                entry, name = segment
                raw = lstat(fd, name) if lstat is not None else None
                got = parts.get(raw) if raw is not None else None
                if got is None:
                    got = self._entry_part(op, fd, name, raw, parts)
                body.append(entry + got[0])
                size += len(body[-1])
        return body if size <= room else None

    def _entry_part(self, op: Op, dirfd: int, name: bytes, raw: Optional[bytes],
                    parts: dict[bytes, tuple[bytes, bool]]) -> tuple[bytes, bool]:
        """A READDIRPLUS entry's name_attributes and name_handle (RFC 1813 section 3.3.17), not yet cached:
        from the raw stat ``raw`` (None: the stat failed, or rawstat does not know this machine); and whether
        they change only with an event in this directory (a file or device with one link: nfs3/listings.py)."""
        try:
            if raw is None:
                if rawstat.SUPPORTED:
                    return _NO_ATTR + _NO_ATTR, False
                st, fh = self.table.stat_and_handle(op.export, dirfd, name)
                return _TRUE + fattr3(st, op.fsid) + _TRUE + _U32.pack(len(fh)) + fh + _PAD[len(fh) & 3], False
            st = rawstat.Stat(raw)
            fh = self.table.known_handle(op.export, dirfd, name, st.dev, st.ino, st.ctime_total_ns)
        except OSError:
            return _NO_ATTR + _NO_ATTR, False
        part = _TRUE + st.fattr3(op.fsid) + _TRUE + _U32.pack(len(fh)) + fh + _PAD[len(fh) & 3]
        kind = st.mode & 0o170000
        steady = st.nlink == 1 and kind != stat.S_IFDIR and kind != stat.S_IFLNK
        if len(parts) >= ENTRY_CACHE:
            parts.clear()
        parts[raw] = (part, steady)
        return part, steady

    def nfs_fsstat(self, op: Op, handle: bytes) -> Packs:
        fd = self._resolve(op, handle)
        self._watch(op, fd)
        vfs = os.fstatvfs(fd)
        sizes = (vfs.f_blocks * vfs.f_frsize, vfs.f_bfree * vfs.f_frsize, vfs.f_bavail * vfs.f_frsize,
                 vfs.f_files, vfs.f_ffree, vfs.f_favail)

        def pack(p: Packer) -> None:
            op.pack_attr(p, 0)
            for n in sizes:
                p.pack_uhyper(n)
            p.pack_uint(0)  # invarsec: the figures may change at any time

        return pack

    def nfs_fsinfo(self, op: Op, handle: bytes) -> Packs:
        self._watch(op, self._resolve(op, handle))
        xfer = self._xfer(op)

        def pack(p: Packer) -> None:
            op.pack_attr(p, 0)
            for n in (xfer, xfer, 4096, xfer, xfer, 4096, DTPREF):  # rtmax, rtpref, rtmult, wt..., dtpref
                p.pack_uint(n)
            p.pack_uhyper(MAX_OFFSET)  # maxfilesize
            p.pack_uint(0)
            p.pack_uint(1)  # time_delta: nanoseconds
            p.pack_uint(_FSF3_LINK | _FSF3_SYMLINK | _FSF3_HOMOGENEOUS | _FSF3_CANSETTIME)

        return pack

    def nfs_pathconf(self, op: Op, handle: bytes) -> Packs:
        fd = self._resolve(op, handle)
        self._watch(op, fd)
        vfs = os.fstatvfs(fd)
        try:
            linkmax = os.fpathconf(fd, "PC_LINK_MAX")
        except (OSError, ValueError):
            linkmax = 65000
        name_max = min(vfs.f_namemax, 255)

        def pack(p: Packer) -> None:
            op.pack_attr(p, 0)
            p.pack_uint(min(max(linkmax, 1), 0xFFFFFFFF))
            p.pack_uint(name_max)
            for flag in (True, True, False, True):  # no_trunc, chown_restricted, case_insensitive, preserving
                p.pack_bool(flag)

        return pack

    def nfs_commit(self, op: Op, args) -> Packs:
        handle, _offset, _count = args
        fd = self._resolve(op, handle, write=True)
        st = self._watch(op, fd)
        if not stat.S_ISREG(st.st_mode):
            raise NFSError(Stat.ISDIR if stat.S_ISDIR(st.st_mode) else Stat.INVAL)
        kept = None if op.threaded else self.files.syncer(st)
        if kept is not None:
            sfd = op.lend(kept)  # fsync needs no permission: any open file of it does
        else:
            sfd = os.open(proc_path(fd), os.O_RDONLY | os.O_CLOEXEC)
            op.fds.append(sfd)

        def ok() -> Packs:
            verifier = self.write_verifier
            return lambda p: (op.pack_wcc(p, 0), p.pack_fopaque(8, verifier))

        return self._sync(op, False, sfd, ok)


class Workers:
    """A pool of threads for the procedures that may wait on the disk; each call's Deferred fires in the reactor.

    A plain ThreadPoolExecutor: Twisted's own pool routes every task through a coordinator, which costs more
    than the short filesystem calls it would run.
    """

    def __init__(self, reactor, threads: int) -> None:
        self.reactor = reactor
        self.threads = threads
        #: Made by :meth:`start`, shut by :meth:`stop` (the service tree calls both: docs/architecture.md).
        self.pool = None

    def start(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        if self.pool is None:
            self.pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="nfsd")

    def __call__(self, f: Callable[..., Any], *args: Any) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        call_from_thread = self.reactor.callFromThread

        def work() -> None:
            try:
                result = f(*args)
            except BaseException:
                call_from_thread(d.errback, Failure())
            else:
                call_from_thread(d.callback, result)

        self.pool.submit(work)
        return d

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False)
            self.pool = None
