"""NFS_ACL, program 100227 version 3: POSIX ACLs for NFSv3 clients, served beside nfsd on its port.

Linux's client asks it for a file's ACLs (``getfacl``) and sends it new ones (``setfacl``); it decides access
with nfsd's ACCESS, which the kernel answers from the ACLs as it does from the mode bits.  The procedures
run in nfsd's own frame (:mod:`nfsstack.nfs3.frame`): the same handles, the same admission of the client by
the export's options (``secure``, squashing, read-only), the same identity switched in for the backend.
They ask the storage through :class:`~nfsstack.nfs3.interface.IAccessControlLists`; a backend without it
answers NFS3ERR_NOTSUPP, and a client then leaves ACLs alone (the mode bits are all there is).  The wire
format is in :mod:`nfsstack.nfsacl.codec`.

An export with ``no_acl`` shows no ACL, as exports(5) describes the option: GETACL presents the mode bits as
a minimal ACL and no default ACL, and SETACL answers NFS3ERR_NOTSUPP, so the client falls back to the mode
bits.  (The files' ACLs still count where the kernel decides access.)  Mainline knfsd accepts the flag
without acting on it; this is what the patched kernels the man page mentions do.
"""

from __future__ import annotations

import stat
from typing import Any

from nfsstack.nfs3.codec import NFSError, Stat
from nfsstack.nfs3.frame import Call, Frame, Row
from nfsstack.nfs3.interface import IAccessControlLists, acl_from_mode
from nfsstack.nfsacl.codec import (
    ACLPROC3_GETACL, ACLPROC3_SETACL, NFS_ACL, NFS_ACL_MASK, NFS_ACL_PROGRAM, NFS_ACL_VERSION, NFS_ACLCNT,
    NFS_DFACL, NFS_DFACLCNT, check_acl, pack_acl, unpack_getacl, unpack_setacl,
)
from nfsstack.rpc.program import Procedure, Program, null_procedure, raw_parts


class NfsAcl:
    """NFS_ACL v3 over the storage of ``nfsd`` (:class:`nfsstack.nfs3.program.Nfsd`); :attr:`program` is its
    procedure table, for nfsd's port."""

    def __init__(self, nfsd) -> None:
        self.nfsd = nfsd
        #: The backend's ACLs, or None: it has none, and says so.
        self.acls = IAccessControlLists(nfsd.fs, None)
        rows = {
            ACLPROC3_GETACL: Row("GETACL", unpack_getacl, self.getacl3, ("attr",), changes=False),
            # Setting an ACL twice leaves what once does: no duplicate request cache, as knfsd (RC_NOCACHE).
            ACLPROC3_SETACL: Row("SETACL", unpack_setacl, self.setacl3, ("attr",)),
        }
        frame = Frame(nfsd)
        procedures = {0: null_procedure()}
        for number, row in rows.items():
            procedures[number] = Procedure(row.name, frame.handler(row), row.decode, raw_parts, row.idempotent)
        self.program = Program(NFS_ACL_PROGRAM, "nfs_acl", {NFS_ACL_VERSION: procedures})

    def getacl3(self, call: Call, args: tuple[bytes, int]):
        """GETACL: the ACLs the mask asks for (nfsd3_proc_getacl).  A file without an access ACL shows its mode
        bits as a minimal ACL, as Solaris does; a non-directory has no default ACL."""
        handle, mask = args
        obj, attrs = call.resolve(handle)
        call.watch(obj, attrs)
        if mask & ~NFS_ACL_MASK:
            raise NFSError(Stat.INVAL)
        if self.acls is None:
            raise NFSError(Stat.NOTSUPP)
        access = default = None
        if call.options.acl and mask & (NFS_ACL | NFS_ACLCNT | NFS_DFACL | NFS_DFACLCNT):
            access, default = yield self.acls.getacl(call, obj, attrs)
        if not stat.S_ISDIR(attrs.st_mode):
            default = None
        after = call.fs.attributes(call, obj) or attrs
        if access is None:
            access = acl_from_mode(after.st_mode)

        def reply(p: Any) -> None:
            call.pack_attr(p, 0)
            p.pack_uint(mask)
            pack_acl(p, access, bool(mask & NFS_ACL), False, after.st_uid, after.st_gid)
            pack_acl(p, default, bool(mask & NFS_DFACL), True, after.st_uid, after.st_gid)

        return reply

    def setacl3(self, call: Call, args):
        """SETACL: replace the ACLs (nfsd3_proc_setacl): an ACL whose bit the mask lacks, or an empty one, is
        removed, as knfsd removes it; only the owner may (NFS3ERR_PERM), not on a read-only export
        (NFS3ERR_ROFS)."""
        handle, mask, access, default = args
        obj, attrs = call.resolve(handle, write=True)
        call.watch(obj, attrs)
        if self.acls is None or not call.options.acl:
            raise NFSError(Stat.NOTSUPP)
        check_acl(access)
        check_acl(default)
        yield self.acls.setacl(call, obj, attrs, access, default)
        return lambda p: call.pack_attr(p, 0)


def nfsd_port_programs(nfsd) -> list[Program]:
    """The programs nfsd's port serves (and registers): nfsd's, and NFS_ACL's over the same storage, frame and
    admission, as knfsd serves 100227 beside 100003 on 2049."""
    return [nfsd.program, NfsAcl(nfsd).program]
