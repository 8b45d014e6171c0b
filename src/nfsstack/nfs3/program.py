"""nfsd, program 100003 version 3 (RFC 1813 section 3): the table of its 22 procedures, over a filesystem.

:data:`PROCEDURES` names each procedure's argument decoder (:mod:`~nfsstack.nfs3.codec`), the function that
serves it, the shape of its failure arm and how it is scheduled (:class:`~nfsstack.nfs3.frame.Row`).  The
procedures live by kind: :mod:`~nfsstack.nfs3.attributes` (GETATTR, SETATTR, ACCESS, READLINK),
:mod:`~nfsstack.nfs3.data` (READ, WRITE, COMMIT), :mod:`~nfsstack.nfs3.changes` (CREATE ... LINK),
:mod:`~nfsstack.nfs3.directories` (LOOKUP, READDIR, READDIRPLUS), :mod:`~nfsstack.nfs3.fsinfo` (FSSTAT,
FSINFO, PATHCONF).  They ask the storage through :class:`~nfsstack.nfs3.interface.IFilesystem`: by default the
local backend, :class:`~nfsstack.nfs3.local.filesystem.LocalFilesystem`.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Callable, Optional

from twisted.internet import defer, threads
from twisted.python.failure import Failure

from nfsstack.exports import Export
from nfsstack.exports.identity import PRINCIPALS, Principals
from nfsstack.exports.policy import Admission
from nfsstack.exports.table import ExportTable
from nfsstack.nfs3 import attributes, changes, data, directories, fsinfo
from nfsstack.nfs3.codec import (
    NFS_PROG,
    unpack_create,
    unpack_diropargs,
    unpack_fh,
    unpack_fh_uint,
    unpack_link,
    unpack_mkdir,
    unpack_mknod,
    unpack_range,
    unpack_readdir,
    unpack_readdirplus,
    unpack_rename,
    unpack_setattr,
    unpack_symlink,
    unpack_write,
)
from nfsstack.nfs3.frame import Frame, Row
from nfsstack.nfs3.interface import IFilesystem
from nfsstack.refusals import RefusalLog
from nfsstack.rpc.program import Procedure, Program, null_procedure, raw_parts

#: READs and WRITEs up to this size run inline (on a blocking backend, larger ones in the pool).
SMALL_IO = 64 * 1024

#: The procedure table of NFSv3 (RFC 1813 section 3.3); procedure 0 is NULL.
PROCEDURES: dict[int, Row] = {
    1: Row("GETATTR", unpack_fh, attributes.getattr3, (), changes=False),
    2: Row("SETATTR", unpack_setattr, attributes.setattr3, ("wcc",), idempotent=False,
           blocking=lambda a: a[1].size is not None),
    3: Row("LOOKUP", unpack_diropargs, directories.lookup3, ("attr",), changes=False),
    4: Row("ACCESS", unpack_fh_uint, attributes.access3, ("attr",), changes=False),
    5: Row("READLINK", unpack_fh, attributes.readlink3, ("attr",)),
    6: Row("READ", unpack_range, data.read3, ("attr",), blocking=lambda a: a[2] > SMALL_IO, nowait=True),
    7: Row("WRITE", unpack_write, data.write3, ("wcc",), blocking=lambda a: a[2] > SMALL_IO, ring=True),
    8: Row("CREATE", unpack_create, changes.create3, ("wcc",), idempotent=False),
    9: Row("MKDIR", unpack_mkdir, changes.mkdir3, ("wcc",), idempotent=False),
    10: Row("SYMLINK", unpack_symlink, changes.symlink3, ("wcc",), idempotent=False),
    11: Row("MKNOD", unpack_mknod, changes.mknod3, ("wcc",), idempotent=False),
    12: Row("REMOVE", unpack_diropargs, changes.remove3, ("wcc",), idempotent=False),
    13: Row("RMDIR", unpack_diropargs, changes.rmdir3, ("wcc",), idempotent=False),
    14: Row("RENAME", unpack_rename, changes.rename3, ("wcc", "wcc"), idempotent=False),
    15: Row("LINK", unpack_link, changes.link3, ("attr", "wcc"), idempotent=False),
    16: Row("READDIR", unpack_readdir, directories.readdir3, ("attr",), changes=False),
    17: Row("READDIRPLUS", unpack_readdirplus, directories.readdirplus3, ("attr",), changes=False),
    18: Row("FSSTAT", unpack_fh, fsinfo.fsstat3, ("attr",), changes=False),
    19: Row("FSINFO", unpack_fh, fsinfo.fsinfo3, ("attr",), changes=False),
    20: Row("PATHCONF", unpack_fh, fsinfo.pathconf3, ("attr",), changes=False),
    21: Row("COMMIT", unpack_range, data.commit3, ("wcc",)),
}


class Nfsd:
    """The NFSv3 server of an export table's exports; :attr:`program` is its procedure table.

    ``fs`` is the storage (:class:`~nfsstack.nfs3.interface.IFilesystem`): for the local directories the
    exports name, :class:`~nfsstack.nfs3.local.filesystem.LocalFilesystem`.
    """

    def __init__(self, table: ExportTable, fs: IFilesystem,
                 in_thread: Callable[..., defer.Deferred] = threads.deferToThread,
                 refusals: Optional[RefusalLog] = None, principals: Principals = PRINCIPALS) -> None:
        self.table = table
        #: Who may use which export, as whom (the one policy of mountd, nfsd and nlockmgr); ``principals``: the
        #: stack's Kerberos principals -> local users.
        self.admission = Admission(table, principals=principals)
        self.fs = IFilesystem(fs)
        #: Calls refused by export policy, logged per client (rate-limited).
        self.refusals = refusals or RefusalLog(time.monotonic)
        #: Runs whole calls that may wait on the disk off the reactor thread.
        self.in_thread = in_thread
        #: For the status service: bytes moved, and failed calls by procedure and status.
        self.bytes_read = 0
        self.bytes_written = 0
        self.failures: collections.Counter = collections.Counter()
        #: export id -> (the export, its root's handle as MNT gives it, until when it is kept): what a GETATTR or
        #: FSINFO in AUTH_SYS on a Kerberos export is compared with (:meth:`~nfsstack.nfs3.frame.Call._is_root`).
        self.root_handles: dict[int, tuple[Export, bytes, float]] = {}
        frame = Frame(self)
        procedures = {0: null_procedure()}
        for number, row in PROCEDURES.items():
            procedures[number] = Procedure(row.name, frame.handler(row), row.decode, raw_parts, row.idempotent)
        self.program = Program(NFS_PROG, "nfs", {3: procedures})

    @property
    def write_verifier(self) -> bytes:
        """What WRITE and COMMIT answer now (the backend's: it changes after a restart or a failed sync)."""
        return self.fs.write_verifier


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
