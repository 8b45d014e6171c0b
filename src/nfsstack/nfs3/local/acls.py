"""POSIX ACLs of local files, as Linux keeps them: the extended attributes ``system.posix_acl_access`` and
``system.posix_acl_default`` (the local backend's :class:`~nfsstack.nfs3.interface.IAccessControlLists`).

Read and written as the caller (:mod:`~nfsstack.nfs3.local.as_caller`), so the kernel decides who may: anyone
who reaches the file reads them, only its owner (or CAP_FOWNER) sets them.  Setting an access ACL sets the mode
bits it implies and the ctime, and an ACL equal to the mode bits is stored as the mode bits alone: the kernel's
doing (``posix_acl_update_mode``), as for ``setfacl`` on the server.

pylibacl (``posix1e``) converts these attributes too, but needs libacl's headers and a compiler to install; the
format is four bytes and eight per entry, converted here.
"""

from __future__ import annotations

import errno
import os
import struct

from nfsstack.nfs3.interface import ACL_TAGS, Acl, AclEntry

ACCESS_XATTR = "system.posix_acl_access"
DEFAULT_XATTR = "system.posix_acl_default"
#: include/uapi/linux/posix_acl_xattr.h: ``struct posix_acl_xattr_header { __le32 a_version; }`` with
#: POSIX_ACL_XATTR_VERSION 0x0002, then ``struct posix_acl_xattr_entry { __le16 e_tag; __le16 e_perm;
#: __le32 e_id; }`` for each entry, the id ACL_UNDEFINED_ID (-1) where the entry names no one.  Little-endian.
_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")
XATTR_VERSION = 2
#: Where the filesystem keeps no ACLs (mounted ``noacl``, a tmpfs without them): the file has none.
_NO_ACLS = (errno.ENODATA, errno.EOPNOTSUPP, errno.ENOTSUP)


def acl_from_xattr(value: bytes) -> Acl:
    """The entries of a ``system.posix_acl_*`` attribute's value (the format above), sorted; None if it has
    none.  A value not in that format raises :class:`ValueError` (the kernel never stores one)."""
    if len(value) < _HEADER.size or (len(value) - _HEADER.size) % _ENTRY.size:
        raise ValueError(f"a POSIX ACL attribute of {len(value)} bytes")
    (version,) = _HEADER.unpack_from(value)
    if version != XATTR_VERSION:
        raise ValueError(f"a POSIX ACL attribute of version {version}")
    entries = []
    for tag, perm, who in _ENTRY.iter_unpack(memoryview(value)[_HEADER.size:]):
        if tag not in ACL_TAGS:
            raise ValueError(f"a POSIX ACL entry of type {tag:#x}")
        entries.append(AclEntry(tag, who, perm & 7))
    return tuple(sorted(entries)) or None


def acl_to_xattr(acl: tuple[AclEntry, ...]) -> bytes:
    """The ``system.posix_acl_*`` attribute value of ``acl`` (the format above)."""
    return _HEADER.pack(XATTR_VERSION) + b"".join(_ENTRY.pack(e.tag, e.perm, e.id) for e in acl)


def get_acl(path: str, name: str) -> Acl:
    """The ACL ``name`` of the object at ``path`` (followed: a /proc magic link lands on the object), or None
    where it has none."""
    try:
        return acl_from_xattr(os.getxattr(path, name))
    except OSError as e:
        if e.errno in _NO_ACLS:
            return None
        raise


def set_acl(path: str, name: str, acl: Acl) -> None:
    """Set the ACL ``name`` of the object at ``path``, or remove it (None; one that is not there is no
    error)."""
    if acl is not None:
        os.setxattr(path, name, acl_to_xattr(acl))
        return
    try:
        os.removexattr(path, name)
    except OSError as e:
        if e.errno != errno.ENODATA:
            raise
