"""The frame every NFSv3 procedure runs in: one call's state, its scheduling, its reply or failure.

A procedure (the modules :mod:`~nfsstack.nfs3.attributes`, :mod:`~nfsstack.nfs3.data`,
:mod:`~nfsstack.nfs3.changes`, :mod:`~nfsstack.nfs3.directories`, :mod:`~nfsstack.nfs3.fsinfo`) is a function
``procedure(call, args)`` that returns a function packing its resok arm, or raises.  A procedure that asks the
backend for work (:class:`~nfsstack.nfs3.interface.IFilesystem`) is a generator: it yields each answer of the
backend and gets back its value, at once when the backend answered at once, or when the Deferred fires (as
``inlineCallbacks`` does, without its cost on the answer-at-once path).  READ and WRITE, the bulk of a transfer,
are plain functions that hand the rest of their work to :func:`then` instead, which costs less still.

The frame (:meth:`Frame.handler`) makes the :class:`Call`, runs the procedure inline, in the thread pool, or
inline first and in the pool when the backend would wait (:class:`Row`), and makes the reply: ``NFS3_OK`` and
the resok arm, or the status and the attributes RFC 1813 gives the procedure's resfail arm, from the objects the
call resolved (``Row.fail``).  docs/architecture.md ("The nfsd frame") has the whole path of a call.
"""

from __future__ import annotations

import time
import types
from dataclasses import dataclass
from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.python.failure import Failure

from nfsstack.exports import Export, ExportOptions
from nfsstack.exports.handles import BadHandle, StaleHandle
from nfsstack.exports.identity import Identity
from nfsstack.exports.policy import MountRefused, Refused
from nfsstack.exports.table import ExportGone
from nfsstack.logs import logger
from nfsstack.nfs3.codec import RTMAX, UDP_XFER, NFSError, Stat, check_name, post_op_attr, stat_of, wcc_data
from nfsstack.nfs3.interface import Found, WouldBlock
from nfsstack.rpc.program import CallContext
from nfsstack.xdr import Packer, Unpacker

log = logger("nfsstack.nfs3")

_OK = b"\0\0\0\0"
_NO_ATTR = b"\0\0\0\0"
#: What a procedure may yield that is not yet an answer.
_LATER = (defer.Deferred, types.CoroutineType)
_GENERATOR = types.GeneratorType
#: What a backend's answer or a procedure's result most often is: told apart from a Deferred by its class alone.
#: ``isinstance`` against Deferred goes through ABCMeta.__instancecheck__, about 0.4 us a question.
_AT_ONCE = frozenset((tuple, types.FunctionType, types.MethodType, list, bytes, type(None), int, Found))
#: Root handles :meth:`Call._is_root` keeps at most (one per export; a reload's exports replace the old), and for
#: how many seconds each.
MAX_ROOT_HANDLES = 4096
ROOT_HANDLE_LIFETIME = 60.0


def then(answer: Any, continuation: Callable[..., Any], *args: Any) -> Any:
    """``continuation(answer, *args)``: at once when the backend answered at once, else when the Deferred (or
    coroutine) it answered with fires.  What a generator procedure's ``yield`` does, without the generator, for
    the procedures of every READ and WRITE (nfs3/data.py)."""
    if answer.__class__ in _AT_ONCE or not isinstance(answer, _LATER):
        return continuation(answer, *args)
    if not isinstance(answer, defer.Deferred):
        answer = defer.Deferred.fromCoroutine(answer)
    return answer.addCallback(continuation, *args)

Packs = Callable[[Packer], None]


class Call:
    """One call in progress: what the client asked from where, the export and options it is admitted with, the
    identity it acts as, and the objects whose attributes its reply carries (``watched``: (object, attributes
    when the call found it), in the order of the resfail arm)."""

    __slots__ = ("ctx", "nfsd", "fs", "export", "options", "who", "held", "watched", "threaded", "nowait", "ring")

    def __init__(self, ctx: CallContext, nfsd) -> None:
        self.ctx = ctx
        self.nfsd = nfsd
        self.fs = nfsd.fs
        self.export: Optional[Export] = None
        self.options: Optional[ExportOptions] = None
        self.who: Optional[Identity] = None
        #: What the backend opened for this call; it lets go of it in ``release`` (nfs3/interface.py).
        self.held: list = []
        self.watched: list[tuple[Any, Any]] = []
        #: The whole call runs in a pool thread (a large READ or WRITE): the backend may wait on the disk.
        self.threaded = False
        #: A blocking call tried inline first: the backend raises WouldBlock rather than wait on the disk.
        self.nowait = False
        #: A large WRITE run inline because the backend can hand it to the kernel (io_uring): :attr:`Row.ring`.
        self.ring = False

    @property
    def fsid(self) -> int:
        return self.export.export_id if self.export is not None else 0

    @property
    def xfer(self) -> int:
        """The largest READ, WRITE or listing on this call's transport (FSINFO rtmax/wtmax)."""
        return UDP_XFER if self.ctx.netid.startswith("udp") else RTMAX

    def resolve(self, handle: bytes, write: bool = False, sys_on_root: bool = False) -> tuple[Any, Any]:
        """The object of ``handle`` and its attributes, after checking this client may use its export (on every
        call: the options, the client's port, squashing).  ``write``: the call changes something.
        ``sys_on_root``: an AUTH_SYS call on the export's root is admitted on a Kerberos export
        (:meth:`~nfsstack.exports.policy.Admission.admit_on_root`: GETATTR and FSINFO, as knfsd's)."""
        try:
            export, obj, attrs = self.fs.resolve(self, handle)
        except BadHandle:
            raise NFSError(Stat.BADHANDLE) from None
        except ExportGone:
            self.nfsd.refusals.refused(self.ctx.peer[0], "a handle of an export no longer exported", "STALE")
            raise NFSError(Stat.STALE) from None
        except StaleHandle:
            raise NFSError(Stat.STALE) from None
        if self.export is None:
            verdict = self.enter(export, handle if sys_on_root else None)
            self.export, self.options, self.who = export, verdict.options, verdict.identity
        elif export.export_id != self.export.export_id:
            raise NFSError(Stat.XDEV)
        if write and self.options.read_only:
            self.nfsd.refusals.refused(self.ctx.peer[0], "a change to a read-only export", self.export.path)
            self.watched.append((obj, attrs))  # the failure reply still carries its attributes
            raise NFSError(Stat.ROFS)
        return obj, attrs

    def enter(self, export: Export, root: Optional[bytes] = None):
        """This call's admission to ``export`` (exports/policy.py), or NFSError with the refusal's status.
        ``root``: the call's handle, admitted as the export's root if it is that (``resolve``'s ``sys_on_root``).

        Asked for the export of the call's first handle, and by a backend whose LOOKUP crosses into another
        export (a mount point, or ``..`` at a crossed root): such a crossing is refused as a handle of that
        export would be, so that it hands out no handle or attributes the caller could not have from that
        export itself, in its flavour for instance (knfsd's ``nfsd_lookup`` calls ``check_nfsd_access`` after
        crossing)."""
        ctx = self.ctx
        admission = self.nfsd.admission
        verdict = admission.admit(export, ctx.peer[0], ctx.privileged_port, ctx.header)
        if verdict.__class__ is Refused:
            if root is not None:
                lenient = admission.admit_on_root(verdict, export, ctx.peer[0], ctx.header)
                if lenient is not None and self._is_root(export, root):
                    verdict = lenient
            if verdict.__class__ is Refused:
                self.nfsd.refusals.refused(ctx.peer[0], verdict.reason, export.path)
                raise NFSError(Stat[verdict.status])
        return verdict

    def _is_root(self, export: Export, handle: bytes) -> bool:
        """Whether ``handle`` is ``export``'s root: the handle MNT gives for the export's own path, asked of the
        backend once per export and :data:`ROOT_HANDLE_LIFETIME` (:attr:`~nfsstack.nfs3.program.Nfsd.root_handles`:
        a root made again, or a ``mountpoint`` disk mounted since, is its root within that time)."""
        roots = self.nfsd.root_handles
        known = roots.get(export.export_id)
        now = time.monotonic()
        if known is None or known[0] is not export or now >= known[2]:
            address = self.ctx.peer[0]
            options = self.nfsd.table.options_for(export, address)
            if options is None:
                return False
            try:
                known = (export, self.fs.mount(export, export.path, options, address), now + ROOT_HANDLE_LIFETIME)
            except (MountRefused, OSError):  # not mountable now (a mountpoint without its disk): not served so
                return False
            if len(roots) >= MAX_ROOT_HANDLES:
                roots.clear()
            roots[export.export_id] = known
        return known[1] == handle

    def watch(self, obj: Any, attrs: Any) -> Any:
        """Include the object in the reply's attributes (post_op_attr, or wcc_data with ``attrs`` as "before")."""
        self.watched.append((obj, attrs))
        return attrs

    def directory(self, handle: bytes, name: bytes) -> Any:
        """The directory a CREATE, MKDIR, SYMLINK or MKNOD makes ``name`` in, watched, with the name checked."""
        obj, attrs = self.resolve(handle, write=True)
        self.watched.append((obj, attrs))
        if attrs.st_mode & 0o170000 != 0o040000:
            raise NFSError(Stat.NOTDIR)
        check_name(name)
        if name in (b".", b".."):
            raise NFSError(Stat.EXIST)
        return obj

    def pack_attr(self, p: Packer, i: int) -> None:
        """post_op_attr of watched object ``i``, as it is now."""
        post_op_attr(p, self.fs.attributes(self, self.watched[i][0]), self.fsid)

    def pack_wcc(self, p: Packer, i: int) -> None:
        """wcc_data of watched object ``i``: as it was when watched, and as it is now."""
        obj, before = self.watched[i]
        wcc_data(p, before, self.fs.attributes(self, obj), self.fsid)


@dataclass(frozen=True, slots=True)
class Row:
    """A procedure of the table: name, argument decoder, the procedure, its resfail arm, and how it is scheduled.

    ``fail`` lists what the failure reply carries after the status: "attr"
    (post_op_attr) or "wcc" (wcc_data) of the objects the procedure watched,
    in order (RFC 1813 section 3.3, each procedure's resfail).
    """

    name: str
    decode: Callable[[Unpacker], Any]
    procedure: Callable[[Call, Any], Any]
    fail: tuple[str, ...]
    idempotent: bool = True
    #: A test of the arguments: the call moves much data and may wait on the disk (reads of cold data,
    #: writeback throttling), so with a blocking backend it runs whole in the thread pool.  Directory changes
    #: and small transfers stay inline: they are short, and handing them to threads was measured slower
    #: (bench/README.md).
    blocking: Any = False
    #: A blocking call that first tries inline, without waiting (``call.nowait``: data already in the page
    #: cache), and goes to the pool only when the backend raises WouldBlock.
    nowait: bool = False
    #: A blocking call the backend can hand to the kernel (io_uring) when ``fs.writes_inline`` says so: it then
    #: runs inline (``call.ring``), and goes to the pool when the backend raises WouldBlock (ring full).
    ring: bool = False
    #: May change (or, reading, touch the atime of) the objects it watches: the backend is told (``fs.end``).
    changes: bool = True


def drive(result: Any) -> Any:
    """A procedure's packer, or a Deferred of it: runs a generator procedure until it returns, sending each
    answer it yielded back in, at once or when it fires."""
    if result.__class__ is not _GENERATOR:
        return result
    return _resume(result, None, None)


def _resume(gen, value: Any, error: Optional[BaseException]) -> Any:
    try:
        got = gen.throw(error) if error is not None else gen.send(value)
        while got.__class__ in _AT_ONCE or not isinstance(got, _LATER):
            got = gen.send(got)
    except StopIteration as stop:
        return stop.value
    later = got if isinstance(got, defer.Deferred) else defer.Deferred.fromCoroutine(got)
    return later.addCallbacks(lambda value: _resume(gen, value, None),
                              lambda failure: _resume(gen, None, failure.value))


class Frame:
    """Runs each procedure of :data:`nfsstack.nfs3.program.PROCEDURES` for :class:`nfsstack.nfs3.program.Nfsd`."""

    def __init__(self, nfsd) -> None:
        self.nfsd = nfsd

    def handler(self, row: Row) -> Callable[[CallContext, Any], Any]:
        """The RPC handler of ``row``: ``handler(ctx, args)`` -> the reply body, or a Deferred of it."""
        nfsd = self.nfsd
        fs = nfsd.fs
        lookup = nfsd.admission.lookup
        procedure = row.procedure
        succeeded, failed = self.succeeded, self.failed
        blocking = row.blocking if fs.blocking else None

        def run(ctx: CallContext, args: Any):
            named = lookup(ctx.peer[0], ctx.header)
            if named is not None:
                # A wildcard client specification needs the caller's name: look it up first.
                return named.addBoth(lambda _: start(ctx, args))
            return start(ctx, args)

        def start(ctx: CallContext, args: Any):
            call = Call(ctx, nfsd)
            if blocking and blocking(args):
                if row.ring and fs.writes_inline():
                    call.ring = True
                elif not row.nowait:
                    call.threaded = True
                    return nfsd.in_thread(in_thread, call, args)
                call.nowait = True
            try:
                result = procedure(call, args)
                if result.__class__ is _GENERATOR:  # drive(), without a call for the plain procedures
                    result = _resume(result, None, None)
            except WouldBlock:
                fs.end(call, row.changes)
                fs.release(call)
                again = Call(ctx, nfsd)
                again.threaded = True
                return nfsd.in_thread(in_thread, again, args)
            except Exception:
                fs.end(call, row.changes)
                return failed(Failure(), call, row)
            fs.end(call, row.changes)
            if result.__class__ not in _AT_ONCE and isinstance(result, defer.Deferred):
                return result.addCallbacks(succeeded, failed, callbackArgs=(call, row), errbackArgs=(call, row))
            return succeeded(result, call, row)

        def in_thread(call: Call, args: Any) -> list[bytes]:
            """The whole call, reply included, in a pool thread (as the caller's identity for that thread)."""
            try:
                ok = drive(procedure(call, args))
            except Exception:
                return failed(Failure(), call, row)
            finally:
                fs.end(call, row.changes)
            return succeeded(ok, call, row)

        return run

    def succeeded(self, ok: Packs, call: Call, row: Row) -> list[bytes]:
        try:
            p = Packer()
            p.pack_raw(_OK)
            ok(p)
            return p.parts()
        except Exception:
            return self.failed(Failure(), call, row)
        finally:
            call.fs.release(call)

    def failed(self, failure: Failure, call: Call, row: Row) -> list[bytes]:
        error = failure.value
        if isinstance(error, NFSError):
            status = error.status
        elif isinstance(error, OSError):
            status = stat_of(error)
        elif isinstance(error, OverflowError):
            status = Stat.FBIG  # a size or offset beyond what the filesystem takes (2^63)
        else:
            log.failure("NFS {name} failed", failure, name=row.name)
            status = Stat.SERVERFAULT
        self.nfsd.failures[(row.name, status.name)] += 1
        p = Packer()
        p.pack_uint(status)
        try:
            for i, kind in enumerate(row.fail):
                if i >= len(call.watched):
                    p.pack_raw(_NO_ATTR if kind == "attr" else _NO_ATTR + _NO_ATTR)
                elif kind == "attr":
                    call.pack_attr(p, i)
                else:
                    call.pack_wcc(p, i)
        finally:
            call.fs.release(call)
        return p.parts()
