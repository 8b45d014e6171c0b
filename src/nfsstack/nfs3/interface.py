"""The filesystem interface of nfsd: what the NFSv3 procedures ask of the storage behind an export.

nfsd speaks the protocol (RFC 1813): it decodes a call, turns its file handles
into objects through the backend, decides what the client may do (the export's
options, :mod:`nfsstack.exports`), asks the backend to do the work, and encodes
the reply with the attributes RFC 1813 gives it.  Everything that touches
storage is behind :class:`IFilesystem`: the local backend
(:mod:`nfsstack.nfs3.local`) serves directories of this machine; another
backend serves whatever it likes, in memory, over the network, from a zip file.
docs/architecture.md ("Adding a backend") walks through one.

The terms are NFS's, so a backend needs no protocol knowledge beyond them:

- an *object* is whatever the backend uses to stand for a file, directory,
  symlink or device during one call (the local backend: an ``O_PATH``
  descriptor).  nfsd never looks inside it; it only hands it back.
- a *handle* is the bytes a client holds for an object (at most 64, RFC 1813
  section 2.3.3).  The backend makes them (:meth:`IFilesystem.resolve` turns
  them back into objects) and must make them unforgeable and stable: the
  local backend signs its handles with the server's key.
- *attributes* are any object with the fields of :class:`os.stat_result`
  that fattr3 needs: ``st_mode`` (type and permission bits), ``st_nlink``,
  ``st_uid``, ``st_gid``, ``st_size``, ``st_blocks`` (512-byte units),
  ``st_rdev``, ``st_ino`` (the fileid), ``st_atime_ns``, ``st_mtime_ns``,
  ``st_ctime_ns``.  The local backend answers ``os.stat_result`` itself, so
  its attributes cost nothing to convert.
- a *call* (:class:`nfsstack.nfs3.frame.Call`) is the call in progress: the
  caller's identity after squashing (``call.who``: uid, gid, groups), its
  export and options (``call.export``, ``call.options``: ``read_only``,
  ``sync``), its transport (``call.ctx.netid``, ``call.ctx.peer``), and
  ``call.held``, a list the backend may fill with what the call opened:
  :meth:`IFilesystem.release` lets go of it once the reply is made.  A
  backend whose LOOKUP answers an object of another export (crossing a mount
  point) asks ``call.enter(export)`` first: it raises the refusal that export
  has for this caller.

Failures: a method raises :class:`nfsstack.nfs3.codec.NFSError` with the status
the client gets, or an :class:`OSError`, which nfsd maps to its NFS status
(``ENOENT`` to NFS3ERR_NOENT, ``EACCES`` to NFS3ERR_ACCES...).  Permissions are
the backend's to enforce, as the caller (``call.who``); nfsd checks only what
the export says (read-only, squashing, the client's address and port).

Answers: every method that does work may answer at once, or return a
:class:`~twisted.internet.defer.Deferred` (or be a coroutine) that fires with
the answer: a backend that talks to the network is as welcome as a local one,
and a slow answer does not hold up other calls.  Three methods must answer at
once, because nfsd calls them while it encodes a reply: :meth:`resolve`,
:meth:`attributes` and :meth:`release` (a network backend answers the
attributes it last saw, or None).  A backend whose methods may wait on a disk
says so (:attr:`blocking`): nfsd then runs large transfers in its thread pool,
where every method must answer at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

from zope.interface import Attribute, Interface


class WouldBlock(Exception):
    """Raised by a backend asked not to wait (``call.nowait``, a large READ tried inline, or ``call.ring``, a
    WRITE whose ring is full) before it changed anything: nfsd runs the whole call again in its thread pool."""


@dataclass(slots=True)
class Made:
    """What a CREATE, MKDIR, SYMLINK or MKNOD made: the new object's handle and attributes."""

    handle: bytes
    attributes: Any


@dataclass(slots=True)
class Found:
    """What a LOOKUP found: the handle and attributes of the object, and the fsid it lives on (the export's,
    or another's where the name is a mount point the client crosses into)."""

    handle: bytes
    attributes: Any
    fsid: int


@dataclass(slots=True)
class Listing:
    """One READDIR or READDIRPLUS reply's entries, encoded (RFC 1813 sections 3.3.16-17: ``entry3`` or
    ``entryplus3``, each with its value-follows word), and whether they end the directory."""

    parts: list
    eof: bool


@dataclass(slots=True)
class Sizes:
    """FSSTAT's figures (RFC 1813 section 3.3.18): bytes total, free, available to the caller; files (inodes)
    total, free, available to the caller."""

    tbytes: int
    fbytes: int
    abytes: int
    tfiles: int
    ffiles: int
    afiles: int


@dataclass(slots=True)
class Limits:
    """PATHCONF's figures (RFC 1813 section 3.3.20) that depend on the storage."""

    linkmax: int
    name_max: int


class IFilesystem(Interface):
    """The storage behind nfsd's exports, in NFSv3's terms (see the module's docstring)."""

    write_verifier = Attribute(
        "8 bytes that WRITE and COMMIT return (RFC 1813 section 3.3.7); they change whenever data a client "
        "wrote UNSTABLE may have been lost (a restart, a failed sync), so that the client writes it again.")
    blocking = Attribute(
        "True if the methods may wait on a disk: nfsd then runs large READs and WRITEs, and SETATTR of a size, "
        "in its thread pool.  False: everything runs on the reactor (an in-memory backend, or one that answers "
        "with Deferreds).")

    def resolve(call, handle: bytes) -> tuple:
        """``(export, object, attributes)`` for a handle a client sent.  Answers at once.

        Raises :class:`nfsstack.exports.handles.BadHandle` (NFS3ERR_BADHANDLE) for bytes that are not one of
        this server's handles, :class:`~nfsstack.exports.handles.StaleHandle` (NFS3ERR_STALE) for an object
        that is gone or outside its export, and :class:`~nfsstack.exports.table.ExportGone` for a handle of an
        export no longer exported.  The export decides what the client may do (nfsd checks it).
        """

    def writes_inline() -> bool:
        """Whether a large WRITE may run on the reactor now, because the backend hands its data to the kernel
        without waiting (the local backend's io_uring): nfsd then runs it inline with ``call.ring`` set."""

    def attributes(call, obj) -> Any:
        """The object's attributes now, or None if they cannot be had (post_op_attr's "no attributes").
        Answers at once: nfsd calls it while it encodes the reply (wcc_data's "after")."""

    def setattr(call, obj, before, attrs) -> Any:
        """Apply a sattr3 (:class:`nfsstack.nfs3.codec.Sattr`: mode, uid, gid, size, atime, mtime; None leaves
        one alone, a time may be ``"now"``), as the caller (RFC 1813 section 3.3.2).  ``before``: the object's
        attributes as the call found them."""

    def access(call, obj, attributes) -> int:
        """The ACCESS bits (RFC 1813 section 3.3.4: READ, LOOKUP, MODIFY, EXTEND, DELETE, EXECUTE) the caller
        has on the object; nfsd answers those the client asked about."""

    def lookup(call, directory, dir_attributes, name: bytes) -> Found:
        """The object ``name`` in ``directory`` (RFC 1813 section 3.3.3), searched for as the caller.  ``name``
        may be ``"."`` or ``".."``; ``".."`` of an export's root is the root itself (a client never climbs out
        of an export)."""

    def readlink(call, obj) -> bytes:
        """The target of a symbolic link (RFC 1813 section 3.3.5)."""

    def read(call, obj, attributes, offset: int, count: int) -> tuple:
        """``(data, eof, attributes after)``: at most ``count`` bytes at ``offset`` of a regular file, read as
        the caller (RFC 1813 section 3.3.6).  ``data`` is bytes, a memoryview, or a
        :class:`nfsstack.rpc.fileslice.FileSlice` the transport sends with sendfile."""

    def write(call, obj, before, offset: int, data, stable: int) -> tuple:
        """``(count written, stable_how committed, attributes after)``: write ``data`` at ``offset`` as the
        caller (RFC 1813 section 3.3.7).  With ``stable`` DATA_SYNC or FILE_SYNC the data (and for FILE_SYNC
        the metadata) is on stable storage when the answer comes, unless the export is ``async``."""

    def commit(call, obj, attributes) -> None:
        """Everything written to the file is on stable storage when the answer comes (RFC 1813 section
        3.3.21)."""

    def create(call, directory, name: bytes, how: int, attrs) -> Made:
        """A regular file (RFC 1813 section 3.3.8).  ``how``: UNCHECKED (an existing file only gets the
        attributes, a size of 0 truncates it), GUARDED (an existing name is NFS3ERR_EXIST) or EXCLUSIVE
        (``attrs`` is then the client's 8-byte verifier: a retransmission with the same verifier finds the
        file it made, another verifier gets NFS3ERR_EXIST)."""

    def mkdir(call, directory, name: bytes, attrs) -> Made:
        """A directory (RFC 1813 section 3.3.9)."""

    def symlink(call, directory, name: bytes, attrs, target: bytes) -> Made:
        """A symbolic link to ``target`` (RFC 1813 section 3.3.10)."""

    def mknod(call, directory, name: bytes, ftype: int, attrs, device: tuple) -> Made:
        """A device (``Ftype.CHR``, ``Ftype.BLK``: ``device`` is (major, minor)), socket or FIFO (RFC 1813
        section 3.3.11)."""

    def remove(call, directory, name: bytes) -> None:
        """Remove a non-directory (RFC 1813 section 3.3.12); a directory is NFS3ERR_ISDIR (or EISDIR)."""

    def rmdir(call, directory, name: bytes) -> None:
        """Remove an empty directory (RFC 1813 section 3.3.13)."""

    def rename(call, from_directory, from_name: bytes, to_directory, to_name: bytes) -> None:
        """Rename, replacing what ``to_name`` was if it may be replaced (RFC 1813 section 3.3.14)."""

    def link(call, obj, directory, name: bytes) -> None:
        """A hard link to a non-directory (RFC 1813 section 3.3.15)."""

    def readdir(call, directory, dir_attributes, cookie: int, dircount: int, room: int, plus: bool) -> Listing:
        """The entries after ``cookie`` (0: from the start), encoded, as many as fit: the entries' fileids,
        names and cookies take at most ``dircount`` bytes (for READDIRPLUS; 20 + the padded name each), and
        everything at most ``room`` bytes (RFC 1813 sections 3.3.16-17).  Cookies are the backend's and must
        stay valid while other entries come and go.  With ``plus``, each entry carries its attributes and
        handle.  Not one entry fits: NFS3ERR_TOOSMALL.  The local backend's :mod:`nfsstack.nfs3.local.readdir`
        shows the encoding."""

    def fsstat(call, obj) -> Sizes:
        """The space and files of the filesystem holding the object (RFC 1813 section 3.3.18)."""

    def pathconf(call, obj) -> Limits:
        """The link count and name length limits where the object is (RFC 1813 section 3.3.20)."""

    # -- for mountd and nlockmgr, which serve the same exports --------------------------------

    def mount(export, path: str, options, address: str) -> bytes:
        """The handle of ``path`` (the export's path, or a directory below it) that MNT gives a client already
        admitted to ``export`` with ``options`` (RFC 1813 section 5.2.1).  Raises an :class:`OSError` (ENOENT,
        ENOTDIR, EACCES...) or :class:`nfsstack.exports.policy.MountRefused`.  Answers at once, and the same
        handle for the same path each time: nfsd also asks it for an export's own path, once, to know the
        export's root (GETATTR and FSINFO in AUTH_SYS on a Kerberos export, :meth:`Call._is_root`)."""

    def lock_key(handle: bytes) -> tuple:
        """``(export, key)``: the export of the object of ``handle`` and a hashable key that stands for the
        object as long as it exists, under which nlockmgr keeps its byte-range locks (NLM, the XNFS spec).
        Raises what :meth:`resolve` raises.  Answers at once."""

    lock_opener = Attribute(
        "None, or ``lock_opener(handle) -> (descriptor, writable)``: the storage is this machine's files, and "
        "nlockmgr holds every lock it grants a second time as an OFD lock on such a descriptor, so that local "
        "processes see the clients' locks and the clients see theirs.")

    def end(call, changed: bool) -> None:
        """The call's work is done (or failed); its reply is not made yet.  Answers at once, never raises.
        ``changed``: the procedure may have changed the objects the call looked at (``call.watched``), so
        what the backend keeps about them is stale."""

    def release(call) -> None:
        """The reply is made: let go of what the call held (``call.held``).  Answers at once, never raises."""


#: The kinds of entry of a POSIX ACL (POSIX 1003.1e draft 17; Linux's ``ACL_*`` tags, which NFS_ACL's wire format
#: and the kernel's ``system.posix_acl_*`` extended attributes use alike).
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
ACL_TAGS = frozenset((ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER))
#: The id of an entry that names no one (the owner's, the owning group's, the mask's and the others' entries).
ACL_UNDEFINED_ID = 0xFFFFFFFF


class AclEntry(NamedTuple):
    """One entry of a POSIX ACL: its kind (``ACL_USER`` ...), the uid or gid it names (``ACL_USER``,
    ``ACL_GROUP``; else :data:`ACL_UNDEFINED_ID`), and its permissions (4 read, 2 write, 1 execute).  Tuples
    sort as the kernel keeps them, by kind then id."""

    tag: int
    id: int
    perm: int


#: An ACL: its entries, sorted; None where an object has no ACL of that kind.
Acl = Optional[tuple[AclEntry, ...]]


def acl_from_mode(mode: int) -> tuple[AclEntry, ...]:
    """The minimal ACL equivalent to a mode's permission bits: owner, group, others (Linux's
    ``posix_acl_from_mode``)."""
    return (AclEntry(ACL_USER_OBJ, ACL_UNDEFINED_ID, (mode >> 6) & 7),
            AclEntry(ACL_GROUP_OBJ, ACL_UNDEFINED_ID, (mode >> 3) & 7),
            AclEntry(ACL_OTHER, ACL_UNDEFINED_ID, mode & 7))


class IAccessControlLists(Interface):
    """What a backend that stores POSIX ACLs also provides, for NFS_ACL (program 100227, :mod:`nfsstack.nfsacl`).

    Optional: a backend without it answers GETACL and SETACL with NFS3ERR_NOTSUPP, and clients fall back to the
    mode bits.  The ACLs are enforced where the mode bits are, by the backend (the local backend: the kernel).
    Objects, calls and failures are those of :class:`IFilesystem`; an ACL is :data:`Acl`, sorted, its entries
    checked by nfsd (one owner, group and others entry, a mask where there are named entries, no name twice).
    The methods may answer at once, with a Deferred or as coroutines.
    """

    def getacl(call, obj, attributes) -> tuple:
        """``(access, default)``: the object's access ACL and, for a directory, its default ACL, read as the
        caller; None for either that the object has not (nfsd then shows the mode bits as a minimal ACL, and
        no default ACL)."""

    def setacl(call, obj, attributes, access: Acl, default: Acl) -> None:
        """Replace the object's access ACL and (a directory's) default ACL, as the caller (only the owner may);
        None removes one.  The object's mode bits follow its access ACL (owner, mask or group, others), and
        its ctime changes.  A default ACL on a non-directory: EACCES, as Linux answers."""


class HoldsNothing:
    """For a backend that holds nothing for a call and hands no WRITE to the kernel: the frame's hooks of
    :class:`IFilesystem` (``writes_inline``, ``end``, ``release``) as what they then are, nothing."""

    def writes_inline(self) -> bool:
        return False

    def end(self, call, changed: bool) -> None:
        pass

    def release(self, call) -> None:
        pass
