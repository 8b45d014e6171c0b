"""fsync and fdatasync without a thread: Linux native AIO (``IOCB_CMD_FSYNC``), completed through an eventfd.

COMMIT and stable WRITEs (RFC 1813 sections 3.3.7 and 3.3.21) must reach the disk
before the reply, and the reactor thread must not wait for it.  Handing each
fsync to a pool thread works, but every completion then passes Python's GIL
between that thread and the reactor several times, and on a busy server those
hand-offs, not the disk, set the pace.  Linux (4.18 and later) runs an
``IOCB_CMD_FSYNC`` / ``IOCB_CMD_FDSYNC`` submitted with ``io_submit(2)`` in a
kernel worker, and signals its completion on an eventfd, which the reactor
watches like a socket: no Python thread is involved at all.  Where the kernel
refuses (no AIO, an old kernel), :func:`open_syncer` answers None and callers
use their thread pool.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from typing import Optional

from twisted.internet import defer
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

log = Logger(namespace="nfsstack.nfs3")

# (io_setup, io_destroy, io_getevents, io_submit) system call numbers.
_NR = {"x86_64": (206, 207, 208, 209), "aarch64": (0, 1, 4, 2)}.get(platform.machine())
_IOCB_CMD_FSYNC, _IOCB_CMD_FDSYNC = 2, 3
_IOCB_FLAG_RESFD = 1
# struct iocb (include/uapi/linux/aio_abi.h, little-endian): data, key, rw_flags, opcode, reqprio, fildes, buf,
# nbytes, offset, reserved2, flags, resfd.
_IOCB = struct.Struct("<QIIHhIQQqQII")
_EVENT = struct.Struct("<QQqq")  # struct io_event: data, obj, res, res2
#: Syncs in flight at once; more wait for a free slot in the pool threads' way (the caller's fallback).
DEPTH = 256

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _check(result: int, what: str) -> int:
    if result < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return result


@implementer(IReadDescriptor)
class AioSyncer:
    """``syncer(fd, datasync) -> Deferred`` firing with None once the data (and, unless ``datasync``, the
    metadata) of ``fd`` is on stable storage, or failing with the OSError the sync met."""

    def __init__(self, reactor, depth: int = DEPTH) -> None:
        self.reactor = reactor
        self.depth = depth
        self._ctx = ctypes.c_ulong(0)
        _check(_syscall(_NR[0], depth, ctypes.byref(self._ctx)), "io_setup")
        try:
            self._eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except OSError:
            _syscall(_NR[1], self._ctx)
            raise
        self._events = ctypes.create_string_buffer(_EVENT.size * depth)
        self._pending: dict[int, tuple[ctypes.Array, defer.Deferred]] = {}
        self._next = 0
        self._closed = False
        reactor.addReader(self)

    # -- the syncer -----------------------------------------------------------------------

    def __call__(self, fd: int, datasync: bool = False) -> defer.Deferred:
        if self._closed or len(self._pending) >= self.depth:
            raise OSError(errno.EAGAIN, "no room for another asynchronous sync")
        self._next = (self._next + 1) & 0xFFFFFFFFFFFF
        key = self._next
        iocb = ctypes.create_string_buffer(_IOCB.pack(
            key, 0, 0, _IOCB_CMD_FDSYNC if datasync else _IOCB_CMD_FSYNC, 0, fd, 0, 0, 0, 0,
            _IOCB_FLAG_RESFD, self._eventfd), _IOCB.size)
        pointers = (ctypes.c_void_p * 1)(ctypes.addressof(iocb))
        _check(_syscall(_NR[3], self._ctx, 1, pointers), "io_submit")
        d: defer.Deferred = defer.Deferred()
        self._pending[key] = (iocb, d)
        return d

    # -- IReadDescriptor: the eventfd counts completions -----------------------------------------

    def fileno(self) -> int:
        return self._eventfd

    def logPrefix(self) -> str:
        return "aio-fsync"

    def doRead(self) -> None:
        try:
            os.eventfd_read(self._eventfd)
        except BlockingIOError:
            return
        self._reap()

    def _reap(self) -> None:
        timeout = (ctypes.c_long * 2)(0, 0)
        while self._pending:
            n = _syscall(_NR[2], self._ctx, 0, self.depth, self._events, timeout)
            if n <= 0:
                return
            raw = self._events.raw
            for i in range(n):
                key, _, res, _ = _EVENT.unpack_from(raw, i * _EVENT.size)
                entry = self._pending.pop(key, None)
                if entry is None:
                    continue
                d = entry[1]
                if res < 0:
                    d.errback(OSError(-res, os.strerror(-res)))
                else:
                    d.callback(None)

    def connectionLost(self, reason) -> None:
        self.close()

    def close(self) -> None:
        """Wait for the syncs in flight (io_destroy does), fail their Deferreds if still pending, free the kernel's
        context."""
        if self._closed:
            return
        self._closed = True
        self.reactor.removeReader(self)
        for _ in range(30):  # the syncs in flight finish (at most about 30 s), and their callers hear of it
            if not self._pending:
                break
            _syscall(_NR[2], self._ctx, 1, 1, self._events, (ctypes.c_long * 2)(1, 0))
            self._reap()
        _syscall(_NR[1], self._ctx)
        pending, self._pending = self._pending, {}
        for _, d in pending.values():
            d.errback(OSError(errno.ECANCELED, "the server is stopping"))
        os.close(self._eventfd)


def open_syncer(reactor) -> Optional[AioSyncer]:
    """An :class:`AioSyncer` if this kernel runs asynchronous fsyncs (checked with one on a temporary file),
    else None."""
    if _NR is None:
        return None
    import tempfile

    try:
        syncer = AioSyncer(reactor)
    except OSError as e:
        log.info("asynchronous fsync unavailable ({e}); syncs use the thread pool", e=e)
        return None
    fd, path = tempfile.mkstemp(prefix="nfsstack-aio-")
    try:
        os.unlink(path)
        syncer(fd)  # EINVAL here on kernels without IOCB_CMD_FSYNC
        # Wait for the probe's completion right here, once, at start-up.
        deadline = 100
        while syncer._pending and deadline:
            _syscall(_NR[2], syncer._ctx, 1, 1, syncer._events, (ctypes.c_long * 2)(0, 100_000_000))
            key, _, res, _ = _EVENT.unpack_from(syncer._events.raw, 0)
            entry = syncer._pending.pop(key, None)
            if entry is not None and res < 0:
                raise OSError(-res, os.strerror(-res))
            deadline -= 1
        if syncer._pending:
            raise OSError(errno.ETIMEDOUT, "the probe's fsync did not complete")
        try:
            os.eventfd_read(syncer._eventfd)
        except BlockingIOError:
            pass
    except OSError as e:
        log.info("asynchronous fsync unavailable ({e}); syncs use the thread pool", e=e)
        syncer._pending.clear()
        syncer.close()
        return None
    finally:
        os.close(fd)
    return syncer
