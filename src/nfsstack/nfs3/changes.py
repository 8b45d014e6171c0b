"""The procedures that change a directory: CREATE, MKDIR, SYMLINK, MKNOD, REMOVE, RMDIR, RENAME and LINK
(RFC 1813 sections 3.3.8-3.3.15).  Every one is non-idempotent: the duplicate-request cache answers their
retransmissions (nfsstack.rpc.drc)."""

from __future__ import annotations

from nfsstack.nfs3.codec import Ftype, NFSError, Stat, check_name, post_op_attr, post_op_fh
from nfsstack.nfs3.frame import Call, then

_S_IFMT, _S_IFDIR = 0o170000, 0o040000


def _made(call: Call, made):
    """The resok arm of the procedures that make an object: its handle and attributes, the directory's wcc."""
    fsid = call.fsid
    return lambda p: (post_op_fh(p, made.handle), post_op_attr(p, made.attributes, fsid), call.pack_wcc(p, 0))


def create3(call: Call, args):
    """CREATE (section 3.3.8): UNCHECKED, GUARDED or EXCLUSIVE (then ``how`` is the client's verifier)."""
    (handle, name), mode, how = args
    directory = call.directory(handle, name)
    return _made(call, (yield call.fs.create(call, directory, name, mode, how)))


def mkdir3(call: Call, args):
    """MKDIR (section 3.3.9)."""
    (handle, name), attrs = args
    directory = call.directory(handle, name)
    return _made(call, (yield call.fs.mkdir(call, directory, name, attrs)))


def symlink3(call: Call, args):
    """SYMLINK (section 3.3.10): an empty target, or one with a NUL, is NFS3ERR_INVAL."""
    (handle, name), attrs, target = args
    directory = call.directory(handle, name)
    if not target or b"\0" in target:
        raise NFSError(Stat.INVAL)
    return _made(call, (yield call.fs.symlink(call, directory, name, attrs, target)))


def mknod3(call: Call, args):
    """MKNOD (section 3.3.11): devices, sockets and FIFOs; other types are NFS3ERR_BADTYPE."""
    (handle, name), ftype, attrs, device = args
    directory = call.directory(handle, name)
    if ftype not in (Ftype.CHR, Ftype.BLK, Ftype.SOCK, Ftype.FIFO):
        raise NFSError(Stat.BADTYPE)
    return _made(call, (yield call.fs.mknod(call, directory, name, ftype, attrs, device)))


def _unlinked(call: Call, args, rmdir: bool):
    """REMOVE and RMDIR: the directory's checks, then the backend."""
    handle, name = args
    directory, attrs = call.resolve(handle, write=True)
    call.watch(directory, attrs)
    if attrs.st_mode & _S_IFMT != _S_IFDIR:
        raise NFSError(Stat.NOTDIR)
    if name == b".":
        raise NFSError(Stat.INVAL)
    if name == b"..":
        raise NFSError(Stat.NOTEMPTY if rmdir else Stat.ISDIR)
    check_name(name)
    return directory


def remove3(call: Call, args):
    """REMOVE (section 3.3.12).  REMOVE and RMDIR are plain functions (:func:`~nfsstack.nfs3.frame.then`): a
    generator costs each call about 1 us."""
    directory = _unlinked(call, args, rmdir=False)
    return then(call.fs.remove(call, directory, args[1]), _unlinked_wcc, call)


def rmdir3(call: Call, args):
    """RMDIR (section 3.3.13)."""
    directory = _unlinked(call, args, rmdir=True)
    return then(call.fs.rmdir(call, directory, args[1]), _unlinked_wcc, call)


def _unlinked_wcc(_answer, call: Call):
    """The resok arm of REMOVE and RMDIR: the directory's wcc_data."""
    return lambda p: call.pack_wcc(p, 0)


def rename3(call: Call, args):
    """RENAME (section 3.3.14): within one export (else NFS3ERR_XDEV, from the frame)."""
    (from_handle, from_name), (to_handle, to_name) = args
    from_dir, from_attrs = call.resolve(from_handle, write=True)
    call.watch(from_dir, from_attrs)
    to_dir, to_attrs = call.resolve(to_handle, write=True)
    call.watch(to_dir, to_attrs)
    if from_attrs.st_mode & _S_IFMT != _S_IFDIR or to_attrs.st_mode & _S_IFMT != _S_IFDIR:
        raise NFSError(Stat.NOTDIR)
    for name in (from_name, to_name):
        if name in (b".", b".."):
            raise NFSError(Stat.INVAL)
        check_name(name)
    yield call.fs.rename(call, from_dir, from_name, to_dir, to_name)
    return lambda p: (call.pack_wcc(p, 0), call.pack_wcc(p, 1))


def link3(call: Call, args):
    """LINK (section 3.3.15): a hard link to a non-directory."""
    handle, (dir_handle, name) = args
    obj, attrs = call.resolve(handle, write=True)
    call.watch(obj, attrs)
    directory, dir_attrs = call.resolve(dir_handle, write=True)
    call.watch(directory, dir_attrs)
    if dir_attrs.st_mode & _S_IFMT != _S_IFDIR:
        raise NFSError(Stat.NOTDIR)
    check_name(name)
    if attrs.st_mode & _S_IFMT == _S_IFDIR:
        raise NFSError(Stat.ISDIR)
    yield call.fs.link(call, obj, directory, name)
    return lambda p: (call.pack_attr(p, 0), call.pack_wcc(p, 1))
