"""fsync, fdatasync, file creation and large writes without a thread: io_uring or Linux native AIO, via an eventfd.

COMMIT and stable WRITEs (RFC 1813 sections 3.3.7 and 3.3.21) must reach the disk
before the reply, and the reactor thread must not wait for it.  Handing each
fsync to a pool thread works, but every completion then passes Python's GIL
between that thread and the reactor several times, and on a busy server those
hand-offs, not the disk, set the pace.  The kernel can run the sync itself and
signal its completion on an eventfd, which the reactor watches like a socket:
no Python thread is involved at all.  Two ways, the first the kernel takes:

- io_uring (Linux 5.1), ``IORING_OP_FSYNC``: the kernel hands the sync to an
  io_uring worker thread of its own, which the scheduler may place on any CPU;
  submitting costs the reactor little.  x86_64 only here: the rings
  are shared memory, and x86's store order is what makes plain writes to them
  safe from Python.
- native AIO (Linux 4.18), ``IOCB_CMD_FSYNC``: the sync runs in a kernel
  worker bound to the submitting CPU, which preempts the reactor at once: each
  submission costs it more of the reactor's time (bench/README.md).

Where the kernel refuses both, :func:`open_kernel_io` answers None and callers
use their thread pool.

io_uring also creates files (``IORING_OP_OPENAT`` with ``O_CREAT``, Linux 5.6):
CREATE's open is the costliest system call of a small-file workload (the
filesystem allocates an inode under the directory's lock), and an io_uring
worker runs it on another CPU while the reactor goes on.  The worker acts with
the credentials of the thread that submitted, fsuid included, so the kernel
checks the caller's permissions exactly as for an open made in place.

And it writes (``IORING_OP_WRITE``, Linux 5.6): a large WRITE's data goes to
the page cache from an io_uring worker, so the reactor neither waits for
writeback throttling nor hands the call to a Python thread (whose GIL hand-offs
made 1 MiB writes slower than writing in place, bench/README.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import platform
import select
import shutil
import struct
import tempfile
from typing import ContextManager, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IReadDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from nfsstack.logs import logger

log = logger("nfsstack.nfs3")

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
class _KernelIO:
    """System calls the kernel runs for the reactor, without a thread, completions signalled on an eventfd.
    ``kernel_io(fd, datasync) -> Deferred`` fires with None once the data (and, unless ``datasync``, the
    metadata) of ``fd`` is on stable storage, or fails with the OSError the sync met; :meth:`openat` and
    :meth:`pwrite` create and write where the kernel can (:attr:`can_open`, :attr:`can_write`).  Subclasses
    submit (:meth:`_submit`) and collect the (key, result) of finished operations (:meth:`_finished`)."""

    def __init__(self, reactor, depth: int = DEPTH) -> None:
        self.reactor = reactor
        self.depth = depth
        self._eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._pending: dict[int, defer.Deferred] = {}
        #: key -> what the kernel reads until the operation completes (an open's path, a write's data)
        self._held: dict[int, object] = {}
        #: keys of the opens in flight (their result is a descriptor), and of the writes (a byte count)
        self._opens: set[int] = set()
        self._writes: set[int] = set()
        self._next = 0
        self._closed = False
        #: Whether :meth:`openat` and :meth:`pwrite` work here (set by :func:`open_kernel_io`'s probes).
        self.can_open = False
        self.can_write = False
        #: A reusable context manager around the callbacks of one batch of completions (the stack's
        #: ``ReplyBatcher``, rpc/server.py: their replies leave together, one send per connection).
        self.batch: ContextManager = contextlib.nullcontext()

    def __call__(self, fd: int, datasync: bool = False) -> defer.Deferred:
        key = self._key()
        self._submit(key, fd, datasync)
        d: defer.Deferred = defer.Deferred()
        self._pending[key] = d
        return d

    def openat(self, dirfd: int, name: bytes, flags: int, mode: int) -> defer.Deferred:
        """``openat(dirfd, name, flags, mode)`` run by the kernel: a Deferred firing with the new descriptor, or
        failing with the OSError of the open.  The open acts as the calling thread's filesystem identity at the
        time of this call.  ``dirfd`` must stay open until the Deferred fires.  Callers check :attr:`can_open`."""
        key = self._key()
        path = ctypes.create_string_buffer(name)
        self._submit_open(key, dirfd, path, flags, mode)
        d: defer.Deferred = defer.Deferred()
        self._pending[key] = d
        self._held[key] = path
        self._opens.add(key)
        return d

    def pwrite(self, fd: int, data, offset: int) -> defer.Deferred:
        """``pwrite(fd, data, offset)`` run by the kernel: a Deferred firing with the count written (which may be
        short), or failing with the OSError of the write.  It acts as the calling thread's identity at the time
        of this call (a write by a user clears set-id bits).  ``fd`` must stay open until the Deferred fires;
        ``data`` is held until then.  Callers check :attr:`can_write`."""
        key = self._key()
        view = memoryview(data)
        if view.readonly:  # the kernel needs an address: a writable buffer's, or a copy's
            buf = ctypes.create_string_buffer(view.tobytes(), len(view))
        else:
            buf = (ctypes.c_char * len(view)).from_buffer(view)
        self._submit_write(key, fd, ctypes.addressof(buf), len(view), offset)
        d: defer.Deferred = defer.Deferred()
        self._pending[key] = d
        self._held[key] = (buf, view)
        self._writes.add(key)
        return d

    def _key(self) -> int:
        if self._closed or len(self._pending) >= self.depth:
            raise OSError(errno.EAGAIN, "no room for another asynchronous operation")
        self._next = (self._next + 1) & 0xFFFFFFFFFFFF
        return self._next

    def _submit(self, key: int, fd: int, datasync: bool) -> None:
        raise NotImplementedError

    def _submit_open(self, key: int, dirfd: int, path: ctypes.Array, flags: int, mode: int) -> None:
        raise OSError(errno.ENOSYS, "no asynchronous open here")

    def _submit_write(self, key: int, fd: int, addr: int, length: int, offset: int) -> None:
        raise OSError(errno.ENOSYS, "no asynchronous write here")

    def _finished(self) -> list[tuple[int, int]]:
        raise NotImplementedError

    def _destroy(self) -> None:
        raise NotImplementedError

    # -- IReadDescriptor: the eventfd counts completions -----------------------------------------

    def fileno(self) -> int:
        return self._eventfd

    def logPrefix(self) -> str:
        return "async-fsync"

    def doRead(self) -> None:
        try:
            os.eventfd_read(self._eventfd)
        except BlockingIOError:
            return
        self._reap()

    def _reap(self) -> None:
        with self.batch:
            for key, res in self._finished():
                self._complete(key, res)

    def _complete(self, key: int, res: int) -> None:
        d = self._pending.pop(key, None)
        self._held.pop(key, None)
        opened = key in self._opens
        counted = opened or key in self._writes
        if counted:
            self._opens.discard(key)
            self._writes.discard(key)
        if d is None:
            if opened and res >= 0:
                os.close(res)  # nobody waits for it any more
        elif res < 0:
            d.errback(OSError(-res, os.strerror(-res)))
        else:
            d.callback(res if counted else None)

    def _wait(self, seconds: float) -> None:
        """Block (start-up and shutdown only) until a sync finishes or ``seconds`` pass, and reap."""
        if select.select([self._eventfd], [], [], seconds)[0]:
            self.doRead()

    def connectionLost(self, reason) -> None:
        self.close()

    def close(self) -> None:
        """Wait for the syncs in flight, fail their Deferreds if still pending, free the kernel's context."""
        if self._closed:
            return
        self._closed = True
        self.reactor.removeReader(self)
        for _ in range(30):  # the syncs in flight finish (at most about 30 s), and their callers hear of it
            if not self._pending:
                break
            self._wait(1.0)
        self._destroy()
        pending, self._pending = self._pending, {}
        self._held.clear()
        self._opens.clear()
        self._writes.clear()
        for d in pending.values():
            d.errback(OSError(errno.ECANCELED, "the server is stopping"))
        os.close(self._eventfd)


# -- io_uring (include/uapi/linux/io_uring.h) ----------------------------------------------------------

_IO_URING = {"x86_64": (425, 426, 427)}.get(platform.machine())  # setup, enter, register
_IORING_OP_FSYNC, _IORING_OP_OPENAT, _IORING_OP_WRITE = 3, 18, 23
_IORING_FSYNC_DATASYNC, _IORING_REGISTER_EVENTFD = 1, 4
_IORING_FEAT_SINGLE_MMAP = 1
_IORING_OFF_SQ_RING, _IORING_OFF_CQ_RING, _IORING_OFF_SQES = 0, 0x8000000, 0x10000000
_SQ_OFFSETS = struct.Struct("=7IIQ")  # head, tail, ring_mask, ring_entries, flags, dropped, array, resv1, user_addr
_CQ_OFFSETS = struct.Struct("=8IQ")  # head, tail, ring_mask, ring_entries, overflow, cqes, flags, resv1, user_addr
_SQE = struct.Struct("=BBHiQQIIQ24x")  # opcode, flags, ioprio, fd, off, addr, len, fsync/open/rw_flags, user_data
_CQE = struct.Struct("=QiI")  # user_data, res, flags
_U32 = struct.Struct("=I")
_MAP = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)


class UringIO(_KernelIO):
    """fsync, openat and write as ``IORING_OP_FSYNC``, ``IORING_OP_OPENAT`` and ``IORING_OP_WRITE`` on an io_uring
    whose completions signal the eventfd."""

    def __init__(self, reactor, depth: int = DEPTH) -> None:
        if _IO_URING is None:
            raise OSError(errno.ENOSYS, "io_uring is used on x86_64 only")
        super().__init__(reactor, depth)
        self._rings: list[mmap.mmap] = []
        self._ring = -1
        try:
            params = ctypes.create_string_buffer(120)  # struct io_uring_params
            self._ring = _check(_syscall(_IO_URING[0], depth, params), "io_uring_setup")
            sq_entries, cq_entries, _, _, _, features = struct.unpack_from("=6I", params.raw, 0)
            sq_off = _SQ_OFFSETS.unpack_from(params.raw, 40)
            cq_off = _CQ_OFFSETS.unpack_from(params.raw, 80)
            sq_size, cq_size = sq_off[6] + sq_entries * 4, cq_off[5] + cq_entries * 16
            prot = mmap.PROT_READ | mmap.PROT_WRITE
            if features & _IORING_FEAT_SINGLE_MMAP:
                self._sq = self._cq = mmap.mmap(self._ring, max(sq_size, cq_size), _MAP, prot,
                                                offset=_IORING_OFF_SQ_RING)
                self._rings.append(self._sq)
            else:
                self._sq = mmap.mmap(self._ring, sq_size, _MAP, prot, offset=_IORING_OFF_SQ_RING)
                self._rings.append(self._sq)
                self._cq = mmap.mmap(self._ring, cq_size, _MAP, prot, offset=_IORING_OFF_CQ_RING)
                self._rings.append(self._cq)
            self._sqes = mmap.mmap(self._ring, sq_entries * _SQE.size, _MAP, prot, offset=_IORING_OFF_SQES)
            self._rings.append(self._sqes)
            self._sq_head, self._sq_tail, self._sq_array = sq_off[0], sq_off[1], sq_off[6]
            self._sq_mask = _U32.unpack_from(self._sq, sq_off[2])[0]
            self._cq_head, self._cq_tail, self._cqes = cq_off[0], cq_off[1], cq_off[5]
            self._cq_mask = _U32.unpack_from(self._cq, cq_off[2])[0]
            self.depth = min(depth, sq_entries, cq_entries)
            _check(_syscall(_IO_URING[2], self._ring, _IORING_REGISTER_EVENTFD,
                            ctypes.byref(ctypes.c_int(self._eventfd)), 1), "io_uring_register")
        except (OSError, ValueError) as e:
            self._destroy()
            os.close(self._eventfd)
            raise OSError(getattr(e, "errno", None) or errno.EINVAL, str(e)) from None
        reactor.addReader(self)

    def _submit(self, key: int, fd: int, datasync: bool) -> None:
        self._enter(key, _IORING_OP_FSYNC, fd, 0, 0, _IORING_FSYNC_DATASYNC if datasync else 0)

    def _submit_open(self, key: int, dirfd: int, path: ctypes.Array, flags: int, mode: int) -> None:
        self._enter(key, _IORING_OP_OPENAT, dirfd, ctypes.addressof(path), mode, flags)

    def _submit_write(self, key: int, fd: int, addr: int, length: int, offset: int) -> None:
        self._enter(key, _IORING_OP_WRITE, fd, addr, length, 0, offset)

    def _enter(self, key: int, opcode: int, fd: int, addr: int, length: int, op_flags: int, off: int = 0) -> None:
        """Queue one submission and have the kernel take it (now, as this thread's credentials)."""
        sq = self._sq
        tail = _U32.unpack_from(sq, self._sq_tail)[0]
        index = tail & self._sq_mask
        _SQE.pack_into(self._sqes, index * _SQE.size, opcode, 0, 0, fd, off, addr, length, op_flags, key)
        _U32.pack_into(sq, self._sq_array + index * 4, index)
        _U32.pack_into(sq, self._sq_tail, (tail + 1) & 0xFFFFFFFF)
        if _syscall(_IO_URING[1], self._ring, 1, 0, 0, None, 0) != 1:
            e = ctypes.get_errno()
            if _U32.unpack_from(sq, self._sq_head)[0] == tail:  # not taken: out of the ring again
                _U32.pack_into(sq, self._sq_tail, tail)
            raise OSError(e or errno.EAGAIN, f"io_uring_enter: {os.strerror(e or errno.EAGAIN)}")

    def _finished(self) -> list[tuple[int, int]]:
        cq, done = self._cq, []
        head = _U32.unpack_from(cq, self._cq_head)[0]
        tail = _U32.unpack_from(cq, self._cq_tail)[0]
        while head != tail:
            key, res, _ = _CQE.unpack_from(cq, self._cqes + (head & self._cq_mask) * _CQE.size)
            done.append((key, res))
            head = (head + 1) & 0xFFFFFFFF
        _U32.pack_into(cq, self._cq_head, head)
        return done

    def _destroy(self) -> None:
        for ring in self._rings:
            ring.close()
        self._rings.clear()
        if self._ring >= 0:
            os.close(self._ring)  # the kernel finishes or cancels what is still in flight
            self._ring = -1


# -- native AIO (include/uapi/linux/aio_abi.h) ------------------------------------------------------------

# (io_setup, io_destroy, io_getevents, io_submit) system call numbers.
_AIO = {"x86_64": (206, 207, 208, 209), "aarch64": (0, 1, 4, 2)}.get(platform.machine())
_IOCB_CMD_FSYNC, _IOCB_CMD_FDSYNC = 2, 3
_IOCB_FLAG_RESFD = 1
# struct iocb (little-endian): data, key, rw_flags, opcode, reqprio, fildes, buf, nbytes, offset, reserved2,
# flags, resfd.
_IOCB = struct.Struct("<QIIHhIQQqQII")
_EVENT = struct.Struct("<QQqq")  # struct io_event: data, obj, res, res2


class AioFsync(_KernelIO):
    """fsync alone, as ``IOCB_CMD_FSYNC`` on a native AIO context whose completions signal the eventfd."""

    def __init__(self, reactor, depth: int = DEPTH) -> None:
        if _AIO is None:
            raise OSError(errno.ENOSYS, "native AIO: unknown machine")
        super().__init__(reactor, depth)
        self._ctx = ctypes.c_ulong(0)
        try:
            _check(_syscall(_AIO[0], depth, ctypes.byref(self._ctx)), "io_setup")
        except OSError:
            os.close(self._eventfd)
            raise
        self._events = ctypes.create_string_buffer(_EVENT.size * depth)
        self._iocbs: dict[int, ctypes.Array] = {}  # the kernel reads them until the sync completes
        reactor.addReader(self)

    def _submit(self, key: int, fd: int, datasync: bool) -> None:
        iocb = ctypes.create_string_buffer(_IOCB.pack(
            key, 0, 0, _IOCB_CMD_FDSYNC if datasync else _IOCB_CMD_FSYNC, 0, fd, 0, 0, 0, 0,
            _IOCB_FLAG_RESFD, self._eventfd), _IOCB.size)
        pointers = (ctypes.c_void_p * 1)(ctypes.addressof(iocb))
        _check(_syscall(_AIO[3], self._ctx, 1, pointers), "io_submit")
        self._iocbs[key] = iocb

    def _finished(self) -> list[tuple[int, int]]:
        timeout = (ctypes.c_long * 2)(0, 0)
        done = []
        while True:
            n = _syscall(_AIO[2], self._ctx, 0, self.depth, self._events, timeout)
            if n <= 0:
                return done
            raw = self._events.raw
            for i in range(n):
                key, _, res, _ = _EVENT.unpack_from(raw, i * _EVENT.size)
                self._iocbs.pop(key, None)
                done.append((key, res))

    def _destroy(self) -> None:
        _syscall(_AIO[1], self._ctx)  # waits for the syncs in flight
        self._iocbs.clear()


def _settled(kernel: _KernelIO, d: defer.Deferred, what: str):
    """The result of ``d`` (a probe's), waited for right here, once, at start-up; OSError if it failed or hung."""
    outcome: list = []
    d.addBoth(outcome.append)
    for _ in range(100):
        if outcome:
            break
        kernel._wait(0.1)
    if not outcome:
        raise OSError(errno.ETIMEDOUT, f"the probe's {what} did not complete")
    if isinstance(outcome[0], Failure):
        raise outcome[0].value
    return outcome[0]


def _probe_open(kernel: _KernelIO) -> bool:
    """Whether ``kernel.openat`` creates a file here (once, at start-up)."""
    top = tempfile.mkdtemp(prefix="nfsstack-open-")
    dirfd = os.open(top, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC
        os.close(_settled(kernel, kernel.openat(dirfd, b"probe", flags, 0o600), "open"))
        os.stat(b"probe", dir_fd=dirfd)  # made where it was asked
        return True
    except OSError as e:
        log.info("no asynchronous open ({e})", e=e)
        return False
    finally:
        os.close(dirfd)
        shutil.rmtree(top, ignore_errors=True)


def _probe_write(kernel: _KernelIO) -> bool:
    """Whether ``kernel.pwrite`` writes here, where it is asked (once, at start-up)."""
    fd, path = tempfile.mkstemp(prefix="nfsstack-write-")
    try:
        os.unlink(path)
        if _settled(kernel, kernel.pwrite(fd, bytearray(b"probe"), 3), "write") != 5:
            return False
        return os.pread(fd, 16, 0) == b"\0\0\0probe"
    except OSError as e:
        log.info("no asynchronous write ({e})", e=e)
        return False
    finally:
        os.close(fd)


def open_kernel_io(reactor, kinds: tuple[type, ...] = (UringIO, AioFsync)) -> Optional[_KernelIO]:
    """The first of ``kinds`` this kernel runs (checked with one sync of a temporary file), its openat and pwrite
    probed, else None."""
    for kind in kinds:
        try:
            kernel = kind(reactor)
        except OSError as e:
            log.info("{kind} unavailable ({e})", kind=kind.__name__, e=e)
            continue
        fd, path = tempfile.mkstemp(prefix="nfsstack-sync-")
        try:
            os.unlink(path)
            _settled(kernel, kernel(fd), "fsync")  # EINVAL on kernels without the fsync operation
        except OSError as e:
            log.info("{kind} unavailable ({e})", kind=kind.__name__, e=e)
            kernel.close()
            continue
        finally:
            os.close(fd)
        kernel.can_open = _probe_open(kernel)
        kernel.can_write = _probe_write(kernel)
        return kernel
    log.info("no asynchronous fsync: syncs use the thread pool")
    return None
