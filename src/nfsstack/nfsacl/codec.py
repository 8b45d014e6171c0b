"""NFS_ACL version 3 on the wire: program 100227, GETACL and SETACL.

NFS_ACL is in no RFC: Sun defined it for Solaris, and Linux implements it (fs/nfsd/nfs3acl.c, the server;
fs/nfs_common/nfsacl.c, the ACL encoding both sides share; include/uapi/linux/nfsacl.h, the numbers).  This is
that format::

    GETACL3args  { nfs_fh3 fh; uint32 mask; }
    GETACL3res   { nfsstat3 status; post_op_attr attr;
                   case NFS3_OK: uint32 mask; acl access; acl default; }
    SETACL3args  { nfs_fh3 fh; uint32 mask; acl access; acl default; }
    SETACL3res   { nfsstat3 status; post_op_attr attr; }

    acl          { uint32 aclcnt; aclent entries<NFS_ACL_MAX_ENTRIES>; }
    aclent       { uint32 type; uint32 id; uint32 perm; }

``mask`` says what is asked for or sent: the access ACL's entries (:data:`NFS_ACL`), its count
(:data:`NFS_ACLCNT`), the default ACL's entries (:data:`NFS_DFACL`), its count (:data:`NFS_DFACLCNT`).  Each
``acl`` is its count, then its entries as an XDR array (a length, then the entries): a reply that was not
asked for an ACL's entries sends its count and an empty array.  Where Solaris's ACLs differ from POSIX's
(nfsacl.c's opening comment), the wire has Solaris's:

* a minimal ACL (owner, group, others) is sent with a mask entry equal to the group entry, so a sent ACL has
  no fewer than four entries; one received with four entries whose mask equals the group entry is minimal;
* the owner's and the owning group's entries carry the file's uid and gid (the mask's and the others' 0);
  received, those ids mean nothing;
* entries come in any order: received ACLs are sorted as the kernel keeps them (by type, then id);
* the default ACL's entries have :data:`NFS_ACL_DEFAULT` or'ed into their type; received, the flag is ignored;
* a mask's permissions may carry more bits than rwx: they are dropped; any other entry's are an error.

Decoding is bounded like every decoder here: at most :data:`NFS_ACL_MAX_ENTRIES` entries, and no more than
the call's bytes hold; what the kernel refuses to decode (GARBAGE_ARGS there) raises :class:`XDRError`.
"""

from __future__ import annotations

from typing import Optional

from nfsstack.nfs3.client import unpack_post_op_attr
from nfsstack.nfs3.codec import NFSError, Stat, unpack_fh
from nfsstack.nfs3.interface import (
    ACL_GROUP, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER, ACL_TAGS, ACL_UNDEFINED_ID, ACL_USER, ACL_USER_OBJ, Acl,
    AclEntry,
)
from nfsstack.xdr import Packer, Unpacker, XDRError

NFS_ACL_PROGRAM = 100227
NFS_ACL_VERSION = 3
ACLPROC3_GETACL = 1
ACLPROC3_SETACL = 2

#: The mask bits (nfsacl.h).
NFS_ACL = 0x0001
NFS_ACLCNT = 0x0002
NFS_DFACL = 0x0004
NFS_DFACLCNT = 0x0008
NFS_ACL_MASK = 0x000F
#: Or'ed into the type of each entry of a default ACL.
NFS_ACL_DEFAULT = 0x1000
#: The most entries one ACL may have on the wire (nfsacl.h).
NFS_ACL_MAX_ENTRIES = 1024
_ENTRY_BYTES = 12


def unpack_getacl(u: Unpacker) -> tuple[bytes, int]:
    """GETACL3args: ``(handle, mask)``.  A mask with unknown bits decodes: the procedure answers NFS3ERR_INVAL
    (as nfsd3_proc_getacl)."""
    return unpack_fh(u), u.unpack_uint()


def unpack_setacl(u: Unpacker) -> tuple[bytes, int, Acl, Acl]:
    """SETACL3args: ``(handle, mask, access, default)``.  Both ACLs are always on the wire; one whose bit is not
    in the mask is decoded and dropped (None), as knfsd drops it.  Unknown mask bits: :class:`XDRError`."""
    handle = unpack_fh(u)
    mask = u.unpack_uint()
    if mask & ~NFS_ACL_MASK:
        raise XDRError(f"SETACL mask {mask:#x} has unknown bits")
    access = unpack_acl(u, keep=bool(mask & NFS_ACL))
    default = unpack_acl(u, keep=bool(mask & NFS_DFACL))
    return handle, mask, access, default


def unpack_acl(u: Unpacker, keep: bool = True) -> Acl:
    """One ``acl``: its entries as the kernel keeps them (sorted, the ids that mean nothing undefined, a
    minimal ACL's mask dropped), or None for an empty one (no ACL) or when not ``keep`` (only checked
    for length)."""
    count = u.unpack_uint()
    if count > NFS_ACL_MAX_ENTRIES:
        raise XDRError(f"an ACL of {count} entries (at most {NFS_ACL_MAX_ENTRIES})")
    length = u.unpack_uint()
    if length > count:
        raise XDRError(f"{length} ACL entries sent, {count} announced")
    if length * _ENTRY_BYTES > u.remaining():
        raise XDRError(f"data ends inside {length} ACL entries")
    raw = [(u.unpack_uint(), u.unpack_uint(), u.unpack_uint()) for _ in range(length)]
    if not keep:
        return None
    if length != count:
        raise XDRError(f"{length} ACL entries sent, {count} announced")
    if not raw:
        return None
    entries = []
    for kind, who, perm in raw:
        kind &= ~NFS_ACL_DEFAULT
        if kind not in ACL_TAGS:
            raise XDRError(f"ACL entry of type {kind:#x}")
        if kind == ACL_MASK:
            perm &= 7  # Solaris sometimes sets more bits in the mask (nfsacl.c)
        elif perm & ~7:
            raise XDRError(f"ACL entry with permissions {perm:#o}")
        if kind not in (ACL_USER, ACL_GROUP):
            who = ACL_UNDEFINED_ID
        entries.append(AclEntry(kind, who, perm))
    entries.sort()
    if len(entries) == 4:
        group = [e for e in entries if e.tag == ACL_GROUP_OBJ]
        mask = [e for e in entries if e.tag == ACL_MASK]
        if group and mask and group[0].perm == mask[0].perm:
            entries.remove(mask[0])  # Solaris's mask of a minimal ACL
    return tuple(entries)


def check_acl(acl: Acl) -> None:
    """NFS3ERR_INVAL unless ``acl`` (sorted) is a valid POSIX ACL, as Linux's ``posix_acl_valid`` decides:
    one owner, owning group and others entry, named users and groups each named once, and a mask if any
    are named."""
    if acl is None:
        return
    seen: dict[int, int] = {}
    named = set()
    for entry in acl:
        seen[entry.tag] = seen.get(entry.tag, 0) + 1
        if entry.tag in (ACL_USER, ACL_GROUP):
            if (entry.tag, entry.id) in named:
                raise NFSError(Stat.INVAL)
            named.add((entry.tag, entry.id))
    for single in (ACL_USER_OBJ, ACL_GROUP_OBJ, ACL_OTHER):
        if seen.get(single) != 1:
            raise NFSError(Stat.INVAL)
    if seen.get(ACL_MASK, 0) > 1 or (named and not seen.get(ACL_MASK)):
        raise NFSError(Stat.INVAL)


def pack_acl(p: Packer, acl: Optional[tuple[AclEntry, ...]], entries: bool, default: bool, uid: int,
             gid: int) -> None:
    """One ``acl`` of a GETACL reply, as knfsd's ``nfsacl_encode``: the count (at least 4 for any ACL, none for
    no ACL), and the entries if asked for (``entries``), a minimal ACL given its mask, the owner's and group's
    entries carrying ``uid`` and ``gid``, ``default``'s entries flagged.  More entries than the wire carries:
    NFS3ERR_INVAL."""
    if acl and len(acl) == 3:
        owner, group, other = acl
        acl = (owner, group, AclEntry(ACL_MASK, ACL_UNDEFINED_ID, group.perm), other)
    count = len(acl) if acl else 0
    if count > NFS_ACL_MAX_ENTRIES:
        raise NFSError(Stat.INVAL)
    p.pack_uint(count)
    if not entries or not acl:
        p.pack_uint(0)
        return
    p.pack_uint(count)
    flag = NFS_ACL_DEFAULT if default else 0
    for tag, who, perm in acl:
        if tag == ACL_USER_OBJ:
            who = uid
        elif tag == ACL_GROUP_OBJ:
            who = gid
        elif tag not in (ACL_USER, ACL_GROUP):
            who = 0  # "Solaris depends on that!" (nfsacl.c)
        p.pack_uint(tag | flag)
        p.pack_uint(who & 0xFFFFFFFF)
        p.pack_uint(perm & 7)


# -- the client's side (tests, tools) ---------------------------------------------------


def pack_getacl_args(p: Packer, handle: bytes, mask: int) -> None:
    p.pack_opaque(handle)
    p.pack_uint(mask)


def pack_setacl_args(p: Packer, handle: bytes, mask: int, access: Acl, default: Acl) -> None:
    """SETACL3args as Linux's client sends them: each ACL sorted, a minimal one with its mask."""
    p.pack_opaque(handle)
    p.pack_uint(mask)
    pack_acl(p, access, True, False, 0, 0)
    pack_acl(p, default, True, True, 0, 0)


def unpack_getacl_res(u: Unpacker):
    """GETACL3res: ``(status, attributes, mask, access, default)``, the ACLs decoded as a server decodes them
    (None when empty or not asked for)."""
    status = u.unpack_uint()
    attrs = unpack_post_op_attr(u)
    if status != Stat.OK:
        return status, attrs, None, None, None
    mask = u.unpack_uint()
    # Only the ACLs whose entries were asked for are decoded (the others are counts), as Linux's client does.
    return status, attrs, mask, unpack_acl(u, bool(mask & NFS_ACL)), unpack_acl(u, bool(mask & NFS_DFACL))
