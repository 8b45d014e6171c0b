"""The procedures that read a directory: LOOKUP, READDIR and READDIRPLUS (RFC 1813 sections 3.3.3, 3.3.16,
3.3.17)."""

from __future__ import annotations

from nfsstack.nfs3.codec import MAX_OFFSET, NFSError, Stat, check_name, post_op_attr
from nfsstack.nfs3.frame import Call, then

_S_IFMT, _S_IFDIR = 0o170000, 0o040000
#: knfsd's cookie verifier: always zero, and any verifier a client sends back is accepted.
_COOKIEVERF = b"\0" * 8
_FALSE, _TRUE = b"\0\0\0\0", b"\0\0\0\1"
#: What a listing reply holds besides its entries: status, the directory's post_op_attr, the verifier, the end
#: of the list and eof.
_FRAME = 4 + 4 + 84 + 8 + 4 + 4


def _directory(call: Call, handle: bytes):
    obj, attrs = call.resolve(handle)
    call.watch(obj, attrs)
    if attrs.st_mode & _S_IFMT != _S_IFDIR:
        raise NFSError(Stat.NOTDIR)
    return obj, attrs


def lookup3(call: Call, args):
    """LOOKUP (section 3.3.3).  The directory's attributes are those this call found: a lookup changes
    nothing (no second look).  A plain function (:func:`~nfsstack.nfs3.frame.then`): one of the most frequent
    calls."""
    handle, name = args
    directory, dir_attrs = _directory(call, handle)
    if name not in (b".", b".."):
        check_name(name)
    return then(call.fs.lookup(call, directory, dir_attrs, name), _found, dir_attrs, call.fsid)


def _found(found, dir_attrs, fsid: int):
    return lambda p: (p.pack_opaque(found.handle), post_op_attr(p, found.attributes, found.fsid),
                      post_op_attr(p, dir_attrs, fsid))


def readdir3(call: Call, args):
    """READDIR (section 3.3.16): ``count`` bounds the whole reply."""
    return _listing(call, args, plus=False)


def readdirplus3(call: Call, args):
    """READDIRPLUS (section 3.3.17): ``dircount`` bounds the entries' names and cookies, ``maxcount`` the
    reply."""
    return _listing(call, args, plus=True)


def _listing(call: Call, args, plus: bool):
    handle, cookie, _verifier, count, maxcount = args
    if plus:
        dircount, maxcount = max(count, 512), min(maxcount, call.xfer)
    else:
        dircount = maxcount = min(count, call.xfer)
    directory, dir_attrs = _directory(call, handle)
    if cookie > MAX_OFFSET:
        raise NFSError(Stat.BAD_COOKIE)  # no directory offset is that large
    listing = yield call.fs.readdir(call, directory, dir_attrs, cookie, dircount, maxcount - _FRAME, plus)
    body = listing.parts
    tail = _FALSE + (_TRUE if listing.eof else _FALSE)

    def pack(p) -> None:
        call.pack_attr(p, 0)
        p.pack_raw(_COOKIEVERF)
        for part in body:
            p.pack_raw(part)
        p.pack_raw(tail)

    return pack
