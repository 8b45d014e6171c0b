"""The procedures that move data: READ, WRITE and COMMIT (RFC 1813 sections 3.3.6, 3.3.7, 3.3.21).

How a large transfer is scheduled (inline, in the pool, inline first) is the frame's (:class:`Row`); what a
backend does with the data is its own: the local backend reads from the page cache or sends the file with
sendfile, and writes through io_uring (docs/architecture.md, "The path of one READ").
"""

from __future__ import annotations

from nfsstack.nfs3.codec import MAX_OFFSET, NFSError, Stat, post_op_attr, wcc_data
from nfsstack.nfs3.frame import Call, then

_S_IFMT, _S_IFREG, _S_IFDIR = 0o170000, 0o100000, 0o040000


def _regular(attrs) -> None:
    """Data is read and written in regular files only."""
    kind = attrs.st_mode & _S_IFMT
    if kind != _S_IFREG:
        raise NFSError(Stat.ISDIR if kind == _S_IFDIR else Stat.INVAL)


def read3(call: Call, args):
    """READ (section 3.3.6): at most rtmax bytes (a READ of 1 GiB gets 1 MiB), with the eof flag.

    READ and WRITE are plain functions rather than generators (:func:`~nfsstack.nfs3.frame.then` instead of
    ``yield``): they are most of the calls of a transfer, and a generator costs each of them about 1 us."""
    handle, offset, count = args
    obj, attrs = call.resolve(handle)
    call.watch(obj, attrs)
    _regular(attrs)
    return then(call.fs.read(call, obj, attrs, offset, min(count, call.xfer)), _read, call)


def _read(answer, call: Call):
    data, eof, after = answer
    call.nfsd.bytes_read += len(data)
    fsid = call.fsid

    def pack(p) -> None:
        post_op_attr(p, after, fsid)
        p.pack_uint(len(data))
        p.pack_bool(eof)
        p.pack_opaque_buffer(data)

    return pack


def write3(call: Call, args):
    """WRITE (section 3.3.7): ``count`` bytes of the data sent, at the stability the backend reached, with the
    write verifier that tells the client whether its unstable writes may have been lost."""
    handle, offset, count, stable, data = args
    obj, before = call.resolve(handle, write=True)
    call.watch(obj, before)
    _regular(before)
    if count > len(data):
        raise NFSError(Stat.INVAL)
    if offset + count > MAX_OFFSET:
        raise NFSError(Stat.FBIG)
    return then(call.fs.write(call, obj, before, offset, data[:count] if count < len(data) else data, stable),
                _written, call, before)


def _written(answer, call: Call, before):
    written, committed, after = answer
    call.nfsd.bytes_written += written
    verifier, fsid = call.fs.write_verifier, call.fsid
    return lambda p: (wcc_data(p, before, after, fsid), p.pack_uint(written), p.pack_uint(committed),
                      p.pack_fopaque(8, verifier))


def commit3(call: Call, args):
    """COMMIT (section 3.3.21): the whole file on stable storage (knfsd too ignores the range)."""
    handle, _offset, _count = args
    obj, attrs = call.resolve(handle, write=True)
    call.watch(obj, attrs)
    _regular(attrs)
    yield call.fs.commit(call, obj, attrs)
    verifier = call.fs.write_verifier
    return lambda p: (call.pack_wcc(p, 0), p.pack_fopaque(8, verifier))
