"""mountd, program 100005: MOUNT v3 (RFC 1813 appendix I) and v1/v2 (RFC 1094 appendix A).

MNT hands out the root handle of an export (or of a directory inside one) to
a client the exports file admits, from a privileged port unless the export is
``insecure``, as rpc.mountd does; DUMP, UMNT and UMNTALL keep the mount list;
EXPORT lists the exports and their client specifications (``showmount -e``).
"""

from __future__ import annotations

import errno
import os
import time
from enum import IntEnum
from typing import Callable, Optional

from twisted.internet import defer

from nfsstack.exports.identity import PRINCIPALS, LookupPending, Principals
from nfsstack.exports.policy import INSECURE_PORT, NOT_ADMITTED, Admission, MountRefused, Refused
from nfsstack.exports.table import ExportTable
from nfsstack.logs import logger
from nfsstack.mount.mountlist import MountList
from nfsstack.refusals import RefusalLog
from nfsstack.rpc.program import CallContext, NoReply, Procedure, Program, null_procedure
from nfsstack.xdr import Packer, Unpacker

log = logger("nfsstack.mount")

MOUNT_PROG = 100005
MNTPATHLEN = 1024
MNTNAMLEN = 255
FHSIZE_V2 = 32


class MountStat(IntEnum):
    """mountstat3 (RFC 1813 appendix I)."""

    MNT3_OK = 0
    MNT3ERR_PERM = 1
    MNT3ERR_NOENT = 2
    MNT3ERR_IO = 5
    MNT3ERR_ACCES = 13
    MNT3ERR_NOTDIR = 20
    MNT3ERR_INVAL = 22
    MNT3ERR_NAMETOOLONG = 63
    MNT3ERR_NOTSUPP = 10004
    MNT3ERR_SERVERFAULT = 10006


_ERRNO = {errno.ENOENT: MountStat.MNT3ERR_NOENT, errno.ENOTDIR: MountStat.MNT3ERR_NOTDIR,
          errno.EACCES: MountStat.MNT3ERR_ACCES, errno.EPERM: MountStat.MNT3ERR_PERM,
          errno.ENAMETOOLONG: MountStat.MNT3ERR_NAMETOOLONG, errno.ELOOP: MountStat.MNT3ERR_NOENT,
          errno.EIO: MountStat.MNT3ERR_IO}


#: rpc.mountd answers every refusal of the admission policy with MNT3ERR_ACCES; what it logs for each.
_REFUSED = {NOT_ADMITTED: "mount request: no export entry admits this client",
            INSECURE_PORT: "mount request from an unprivileged port to a secure export"}


def _unpack_dirpath(u: Unpacker) -> str:
    return u.unpack_string(MNTPATHLEN)


def _pack_mountres3(p: Packer, result: tuple) -> None:
    """mountres3 (RFC 1813 section 5.2.1): the handle and ``auth_flavors``, the export's ``sec=`` flavours in
    its order, the client's preference first (AUTH_SYS 1, or a Kerberos pseudoflavour, RFC 2623 2.2.1)."""
    status, handle, flavors = result
    p.pack_int(status)
    if status == MountStat.MNT3_OK:
        p.pack_opaque(handle)
        p.pack_array(list(flavors), Packer.pack_int)


def _pack_fhstatus(p: Packer, result: tuple) -> None:
    status, handle, _ = result  # version 1 and 2 have no flavour list: AUTH_SYS is implied
    if status == MountStat.MNT3_OK and len(handle) > FHSIZE_V2:
        status = MountStat.MNT3ERR_NOTSUPP  # does not fit a version 2 handle
    p.pack_uint(int(status))
    if status == MountStat.MNT3_OK:
        p.pack_fopaque(FHSIZE_V2, handle.ljust(FHSIZE_V2, b"\0"))


def _pack_mountlist(p: Packer, entries: list) -> None:
    def body(p: Packer, entry) -> None:
        p.pack_string(entry[0])
        p.pack_string(entry[1])

    p.pack_list(entries, body)


def _pack_exports(p: Packer, exports: list) -> None:
    def node(p: Packer, export) -> None:
        p.pack_string(export[0])
        p.pack_list(export[1], Packer.pack_string)

    p.pack_list(exports, node)


class Mountd:
    """The mount daemon's state; :attr:`program` is its procedure table."""

    def __init__(self, table: ExportTable, mounts: MountList, mount: Callable[..., bytes],
                 refusals: Optional[RefusalLog] = None, principals: Principals = PRINCIPALS) -> None:
        self.table = table
        #: mount(export, path, options, address) -> the handle MNT answers: the storage backend's.
        self.mount = mount
        # MNT is not held to the export's sec=: it answers the flavours, and the client picks one (rpc.mountd).
        self.admission = Admission(table, check_security=False, principals=principals)
        self.mounts = mounts
        #: Mount requests refused by export policy, logged per client (rate-limited), as rpc.mountd logs them.
        self.refusals = refusals or RefusalLog(time.monotonic)
        self.program = self._program()

    def _program(self) -> Program:
        null = null_procedure()
        common = {
            0: null,
            2: Procedure("DUMP", self.dump, None, _pack_mountlist),
            3: Procedure("UMNT", self.umnt, _unpack_dirpath, None),
            4: Procedure("UMNTALL", self.umntall, None, None),
            5: Procedure("EXPORT", self.export, None, _pack_exports),
        }
        v1 = {**common, 1: Procedure("MNT", self.mnt, _unpack_dirpath, _pack_fhstatus),
              6: Procedure("EXPORTALL", self.export, None, _pack_exports)}
        v3 = {**common, 1: Procedure("MNT", self.mnt, _unpack_dirpath, _pack_mountres3)}
        return Program(MOUNT_PROG, "mountd", {1: v1, 2: dict(v1), 3: v3})

    def mnt(self, ctx: CallContext, path: str) -> defer.Deferred | tuple:
        named = self.admission.lookup(ctx.peer[0], ctx.header)
        if named is not None:  # a wildcard client specification needs the caller's name: looked up first
            return named.addCallback(lambda _: self._mnt(ctx, path))
        return self._mnt(ctx, path)

    def _mnt(self, ctx: CallContext, path: str) -> tuple:
        address = ctx.peer[0]
        located = self.table.locate(path) if path.startswith("/") else None
        if located is None:
            status = MountStat.MNT3ERR_NOENT if not os.path.lexists(path) else MountStat.MNT3ERR_ACCES
            self.refusals.refused(address, "mount request: not exported", path)
            return status, b"", ()
        export, where = located
        try:
            verdict = self.admission.admit(export, address, ctx.privileged_port, ctx.header)
        except LookupPending as e:
            # The name service has not answered in time: no reply, so that the client sends MNT again (mount.nfs
            # does, for its retry= minutes) and is answered once the principal is known, as knfsd drops a call
            # whose upcall is pending; an error would end the mount at once.
            log.warn("mount request from {addr} for {path}, not answered: {e}", addr=address, path=path, e=e)
            raise NoReply(str(e)) from None
        if isinstance(verdict, Refused):
            self.refusals.refused(address, _REFUSED.get(verdict, "mount request: " + verdict.reason), path)
            return MountStat.MNT3ERR_ACCES, b"", ()
        options = verdict.options
        try:
            handle = self.mount(export, where, options, address)
        except MountRefused as refused:
            self.refusals.refused(address, "mount request: " + refused.reason, path)
            return (MountStat.MNT3ERR_NOENT if refused.noent else MountStat.MNT3ERR_ACCES), b"", ()
        except OSError as e:
            if e.errno not in _ERRNO:
                log.error("mount of {path}: {e}", path=path, e=e)
            return _ERRNO.get(e.errno, MountStat.MNT3ERR_SERVERFAULT), b"", ()
        self.mounts.add(address, path)
        log.info("authenticated mount request from {addr}:{port} for {path} ({opts})", addr=address,
                 port=ctx.peer[1], path=path, opts=options.describe())
        return MountStat.MNT3_OK, handle, options.security

    def dump(self, ctx: CallContext, _) -> list:
        return list(self.mounts.entries)

    def umnt(self, ctx: CallContext, path: str) -> None:
        self.mounts.remove(ctx.peer[0], path)

    def umntall(self, ctx: CallContext, _) -> None:
        self.mounts.remove_host(ctx.peer[0])

    def export(self, ctx: CallContext, _) -> list:
        return [(e.path, e.client_names()) for e in self.table.exports]
