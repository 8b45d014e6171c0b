"""The procedures on one object's attributes: GETATTR, SETATTR, ACCESS and READLINK (RFC 1813 sections
3.3.1-3.3.5).  Each is ``procedure(call, args)`` in the frame of :mod:`nfsstack.nfs3.frame`."""

from __future__ import annotations

from nfsstack.nfs3.codec import NFSError, Stat, fattr3, post_op_attr
from nfsstack.nfs3.frame import Call, then

_S_IFMT, _S_IFLNK = 0o170000, 0o120000


def getattr3(call: Call, handle: bytes):
    """GETATTR (section 3.3.1): the attributes the handle resolved with.  AUTH_SYS may ask of the export's root
    on a Kerberos export (RFC 2623 section 2.3.2, as knfsd)."""
    attrs = call.resolve(handle, False, True)[1]  # sys_on_root, positional: the cheaper call on this path
    fsid = call.fsid
    return lambda p: p.pack_raw(fattr3(attrs, fsid))


def setattr3(call: Call, args):
    """SETATTR (section 3.3.2), with the ctime guard: NFS3ERR_NOT_SYNC when the object changed since the client
    looked."""
    handle, attrs, guard = args
    obj, before = call.resolve(handle, write=True)
    call.watch(obj, before)
    if guard is not None and before.st_ctime_ns != guard:
        raise NFSError(Stat.NOT_SYNC)
    yield call.fs.setattr(call, obj, before, attrs)
    return lambda p: call.pack_wcc(p, 0)


def access3(call: Call, args):
    """ACCESS (section 3.3.4): the bits asked about that the caller has, with the attributes they were decided
    on (asking changes nothing: no second look).  A plain function (:func:`~nfsstack.nfs3.frame.then`), as READ
    and WRITE: one of the most frequent calls."""
    handle, wanted = args
    obj, attrs = call.resolve(handle)
    call.watch(obj, attrs)
    return then(call.fs.access(call, obj, attrs), _granted, wanted, attrs, call.fsid)


def _granted(granted: int, wanted: int, attrs, fsid: int):
    granted &= wanted
    return lambda p: (post_op_attr(p, attrs, fsid), p.pack_uint(granted))


def readlink3(call: Call, handle: bytes):
    """READLINK (section 3.3.5); NFS3ERR_INVAL for anything but a symbolic link."""
    obj, attrs = call.resolve(handle)
    call.watch(obj, attrs)
    if attrs.st_mode & _S_IFMT != _S_IFLNK:
        raise NFSError(Stat.INVAL)
    target = yield call.fs.readlink(call, obj)
    return lambda p: (call.pack_attr(p, 0), p.pack_opaque(target))
