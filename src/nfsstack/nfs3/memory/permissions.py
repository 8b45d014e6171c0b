"""Who may do what in the memory backend: the checks Linux makes for a local process (RFC 1813 section 4.4
leaves them to the server; the local backend leaves them to the kernel, so the memory backend does as the kernel
does, and the conformance suite holds both to it).

- The mode's owner, group or other bits apply, chosen by the caller's uid, then its gid and groups
  (``generic_permission``).  Root (uid 0, not squashed) reads and writes everything, searches every directory
  and executes what has an x bit somewhere (``CAP_DAC_OVERRIDE``).
- The owner of a file may always open it for I/O, as knfsd lets it (the local backend's ``reopen``): a client
  that created a file mode 0444 still writes the data it has cached.
- Names: search (x) on the directory to find one; write and search to add or remove one; in a sticky directory
  only the owner of the name's object or of the directory (or root) removes or replaces it.
- SETATTR: only root gives a file away; its owner may change its group to one it is in; the owner or root
  changes the mode or sets given times; setting both times to the server's clock needs ownership or write
  permission.  A chown clears the set-user-ID bit (and set-group-ID with group execute); a write or truncate by
  anyone but root clears both.
"""

from __future__ import annotations

import stat

from nfsstack.exports.identity import Identity
from nfsstack.nfs3.codec import (
    ACCESS_EXECUTE, ACCESS_READ, NFSError, Sattr, Stat, access_bits,
)
from nfsstack.nfs3.memory.inodes import S_IFMT, Inode

R, W, X = 4, 2, 1
_ANY_X = 0o111


def in_group(who: Identity, gid: int) -> bool:
    return gid == who.gid or gid in who.gids


def may(who: Identity, inode: Inode, want: int) -> bool:
    """Whether ``who`` has all the ``want`` bits (:data:`R`, :data:`W`, :data:`X`) on ``inode``."""
    mode = inode.mode
    if who.uid == inode.uid:
        bits = mode >> 6
    elif in_group(who, inode.gid):
        bits = mode >> 3
    else:
        bits = mode
    if bits & want == want:
        return True
    if who.uid != 0:
        return False
    return not want & X or mode & S_IFMT == stat.S_IFDIR or bool(mode & _ANY_X)


def need(who: Identity, inode: Inode, want: int) -> None:
    """NFS3ERR_ACCES unless ``who`` has the ``want`` bits on ``inode``."""
    if not may(who, inode, want):
        raise NFSError(Stat.ACCES)


def need_io(who: Identity, inode: Inode, want: int, read_only: bool) -> None:
    """NFS3ERR_ACCES unless ``who`` may open ``inode`` for reading (:data:`R`) or writing (:data:`W`): by the
    mode, or as its owner (but no owner writes on a read-only export)."""
    if not may(who, inode, want) and (who.uid != inode.uid or (want & W and read_only)):
        raise NFSError(Stat.ACCES)


def need_sticky(who: Identity, directory: Inode, inode: Inode) -> None:
    """NFS3ERR_PERM if ``directory`` is sticky and neither ``inode`` nor the directory is ``who``'s (root
    excepted): /tmp's rule."""
    if directory.mode & stat.S_ISVTX and who.uid not in (inode.uid, directory.uid, 0):
        raise NFSError(Stat.PERM)


def access(who: Identity, inode: Inode, read_only: bool) -> int:
    """The ACCESS bits (RFC 1813 section 3.3.4) ``who`` has on ``inode``, as the local backend reads them from
    the kernel: MODIFY and EXTEND with write permission, DELETE on a directory with write and search, LOOKUP or
    EXECUTE with x; on a read-only export nothing that changes anything."""
    kind = inode.mode & S_IFMT
    if kind == stat.S_IFLNK:
        return ACCESS_READ | ACCESS_EXECUTE  # symlinks are 0777; READLINK needs nothing
    is_dir = kind == stat.S_IFDIR
    r, x = may(who, inode, R), may(who, inode, X)
    w = not read_only and may(who, inode, W)
    return access_bits(r, w, x, is_dir)


def new_owner(who: Identity, directory: Inode, mode: int) -> tuple[int, int, int]:
    """(mode, uid, gid) of an object ``who`` makes in ``directory`` (``inode_init_owner``): the caller's, but the
    directory's group where the directory is set-group-ID, which a new directory inherits; a new file keeps a
    set-group-ID bit only for a group its maker is in."""
    gid = who.gid
    if directory.mode & stat.S_ISGID:
        gid = directory.gid
        if mode & S_IFMT == stat.S_IFDIR:
            mode |= stat.S_ISGID
    if mode & stat.S_ISGID and mode & S_IFMT != stat.S_IFDIR and who.uid != 0 and not in_group(who, gid):
        mode &= ~stat.S_ISGID
    return mode, who.uid, gid


def check_setattr(who: Identity, inode: Inode, attrs: Sattr, read_only: bool) -> None:
    """Refuse a sattr3 (RFC 1813 section 3.3.2) as the kernel would, in the order the local backend applies its
    parts: size (write permission, or the owner's), owners, mode, times."""
    owner = who.uid == inode.uid or who.uid == 0
    if attrs.size is not None:
        kind = inode.mode & S_IFMT
        if kind == stat.S_IFDIR:
            raise NFSError(Stat.ISDIR)
        if kind != stat.S_IFREG:
            raise NFSError(Stat.INVAL)
        need_io(who, inode, W, read_only)
    if who.uid != 0:
        # chown_ok and chgrp_ok: even "no change" is refused to someone else than the owner.
        if attrs.uid is not None and (who.uid != inode.uid or attrs.uid != inode.uid):
            raise NFSError(Stat.PERM)
        if attrs.gid is not None and (who.uid != inode.uid or (attrs.gid != inode.gid
                                                               and not in_group(who, attrs.gid))):
            raise NFSError(Stat.PERM)
    if attrs.mode is not None and not owner and inode.mode & S_IFMT != stat.S_IFLNK:
        raise NFSError(Stat.PERM)
    if (attrs.atime is not None or attrs.mtime is not None) and not owner:
        # Both times to the server's clock is a "touch" (utimensat with NULL times): write permission will do.
        if attrs.atime != "now" or attrs.mtime != "now":
            raise NFSError(Stat.PERM)
        need(who, inode, W)


def kill_set_ids(inode: Inode) -> bool:
    """Clear the set-user-ID bit and, with group execute, the set-group-ID bit (a non-root write, or a chown);
    True if the mode changed."""
    mode = inode.mode
    if mode & stat.S_ISUID:
        mode &= ~stat.S_ISUID
    if mode & (stat.S_ISGID | stat.S_IXGRP) == stat.S_ISGID | stat.S_IXGRP:
        mode &= ~stat.S_ISGID
    changed = mode != inode.mode
    inode.mode = mode
    return changed


def within(directory: Inode, ancestor: Inode) -> bool:
    """Whether ``directory`` is ``ancestor`` or lies below it (RENAME's loops)."""
    while directory is not ancestor:
        if directory.parent is directory:
            return False
        directory = directory.parent
    return True


def may_link(who: Identity, inode: Inode) -> bool:
    """``may_linkat`` (``fs.protected_hardlinks``, Linux's default) for someone else than the owner or root: a
    regular file, not set-user-ID nor set-group-ID and group-executable, that it may read and write."""
    mode = inode.mode
    return (mode & S_IFMT == stat.S_IFREG and not mode & stat.S_ISUID
            and mode & (stat.S_ISGID | stat.S_IXGRP) != stat.S_ISGID | stat.S_IXGRP and may(who, inode, R | W))
