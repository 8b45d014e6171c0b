"""nlockmgr, program 100021 versions 1, 3 and 4 (XNFS C702 chapters 9-10): byte-range locks for NFS clients.

One procedure table serves all three versions (v4 with 64-bit ranges, v3
adding SHARE, UNSHARE, NM_LOCK and FREE_ALL to v1).  The locks live in a
:class:`~nfsstack.nlm.locks.LockTable`, mirrored as OFD locks on the exported
files; a blocked request is granted later with a GRANTED call to the client's
lock manager, found through the client's portmapper.  The _MSG procedures
answer with a call to the client's matching _RES procedure.

As knfsd's lockd does: for a grace period after start only reclaims are
accepted (everything else answers DENIED_GRACE_PERIOD), a reclaim after it is
refused the same way, the file handle must resolve inside an export the
client may use, and every host that takes a lock is monitored through NSM so
that its locks go when it reboots.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Hashable, Optional

from twisted.internet import defer, task
from twisted.python.failure import Failure

from nfsstack.exports import ExportOptions
from nfsstack.exports.handles import BadHandle, StaleHandle
from nfsstack.exports.identity import PRINCIPALS, LookupPending, Principals
from nfsstack.exports.policy import Admission, Admitted
from nfsstack.exports.table import ExportTable
from nfsstack.logs import logger
from nfsstack.nlm import types as t
from nfsstack.nlm.locks import Lock, LockTable, Owner, Status, Waiter
from nfsstack.nlm.ofd import OfdMirror
from nfsstack.nlm.types import NLM_PROG, NlmStat, Proc
from nfsstack.rpc.program import CallContext, Procedure, Program, null_procedure
from nfsstack.xdr import Packer, Unpacker, XDRError

log = logger("nfsstack.nlm")

_STATUS = {Status.GRANTED: NlmStat.GRANTED, Status.DENIED: NlmStat.DENIED, Status.BLOCKED: NlmStat.BLOCKED}


class Refused(Exception):
    """The call is answered with ``stat`` at once (grace period, bad handle, no access)."""

    def __init__(self, stat: NlmStat) -> None:
        super().__init__(stat.name)
        self.stat = stat


@dataclass(frozen=True, slots=True)
class Pending:
    """What a GRANTED callback needs about a blocked request."""

    host: str
    netid: str
    version: int
    cookie: bytes
    exclusive: bool
    alock: t.NlmLock


class Grace:
    """The grace period: ``seconds`` after start, or none at all when nobody can have locks to reclaim."""

    def __init__(self, clock: Callable[[], float], seconds: float) -> None:
        self.clock = clock
        self.seconds = seconds
        self.ends = clock() + seconds

    def begin(self) -> None:
        self.ends = self.clock() + self.seconds

    @property
    def active(self) -> bool:
        return self.clock() < self.ends

    def end(self) -> None:
        self.ends = self.clock()


class Nlm:
    """The lock manager; :attr:`program` is its procedure table."""

    def __init__(self, exports: ExportTable, reactor, remote, nsm, fs, grace: float = 90.0,
                 poll_interval: float = 1.0, principals: Principals = PRINCIPALS) -> None:
        self.exports = exports
        # Lock calls are not held to the export's sec=: the Linux client makes them with AUTH_SYS whatever the
        # mount's flavour, and knfsd checks no flavour for them (NFSD_MAY_LOCK in fh_verify).
        self.admission = Admission(exports, check_security=False, principals=principals)
        #: The storage backend (nfs3/interface.py): the files' lock keys, and descriptors for the OFD mirror.
        self.fs = fs
        self.reactor = reactor
        self.remote = remote
        self.nsm = nsm
        #: Where the storage is this machine's files, every granted lock is held a second time as an OFD lock.
        self.mirror = OfdMirror(fs.lock_opener) if fs.lock_opener is not None else None
        self.table = LockTable(self.mirror)
        self.grace = Grace(reactor.seconds, grace)
        #: Client host name -> the addresses it called from (SM_NOTIFY may name either).
        self.addresses: dict[str, set[str]] = {}
        self.poll_interval = poll_interval
        self._poller: Optional[task.LoopingCall] = None
        self.callbacks = {"sent": 0, "failed": 0}
        self.program = Program(NLM_PROG, "nlockmgr", {1: self._procedures(1), 3: self._procedures(3),
                                                       4: self._procedures(4)})

    # -- the table ------------------------------------------------------------------------

    def _procedures(self, version: int) -> dict[int, Procedure]:
        wide = version == 4
        codec = {  # proc: (handler, decoder, encoder)
            Proc.TEST: (self.test, t.unpack_testargs, t.pack_testres),
            Proc.LOCK: (self.lock, t.unpack_lockargs, t.pack_res),
            Proc.CANCEL: (self.cancel, t.unpack_cancargs, t.pack_res),
            Proc.UNLOCK: (self.unlock, t.unpack_unlockargs, t.pack_res),
            Proc.GRANTED: (self.granted, t.unpack_testargs, t.pack_res),
        }
        procs = {0: null_procedure()}
        for proc, (handler, decode, encode) in codec.items():
            procs[proc] = Procedure(proc.name, partial(self._call, handler, version), partial(decode, wide=wide),
                                    partial(encode, wide=wide), idempotent=proc not in (Proc.LOCK, Proc.UNLOCK))
            # The _MSG form: the same work, its result sent to the client's _RES procedure (+5), no reply.
            msg = Proc(proc + 5)
            procs[msg] = Procedure(msg.name, partial(self._message, handler, version, Proc(proc + 10), encode),
                                   partial(decode, wide=wide), None)
        for res, decode in ((Proc.TEST_RES, t.unpack_testres), (Proc.LOCK_RES, t.unpack_res),
                            (Proc.CANCEL_RES, t.unpack_res), (Proc.UNLOCK_RES, t.unpack_res),
                            (Proc.GRANTED_RES, t.unpack_res)):
            procs[res] = Procedure(res.name, partial(self._result, res), partial(decode, wide=wide), None)
        if version >= 3:
            procs[Proc.SHARE] = Procedure("SHARE", partial(self._call, self.share, version), t.unpack_shareargs,
                                          t.pack_shareres)
            procs[Proc.UNSHARE] = Procedure("UNSHARE", partial(self._call, self.unshare, version),
                                            t.unpack_shareargs, t.pack_shareres)
            procs[Proc.NM_LOCK] = Procedure("NM_LOCK", partial(self._call, self.nm_lock, version),
                                            partial(t.unpack_lockargs, wide=wide), partial(t.pack_res, wide=wide),
                                            idempotent=False)
            procs[Proc.FREE_ALL] = Procedure("FREE_ALL", self.free_all, t.unpack_notify, None)
        return procs

    def _call(self, handler, version: int, ctx: CallContext, args):
        """Run ``handler``, after the reverse lookup the admission policy may need; a :class:`Refused` becomes
        the reply of the procedure's result type."""
        named = self.admission.lookup(ctx.peer[0], ctx.header)
        if named is not None:  # a wildcard client specification needs the caller's name: looked up first
            return named.addBoth(lambda _: self._answer(handler, version, ctx, args))
        return self._answer(handler, version, ctx, args)

    def _answer(self, handler, version: int, ctx: CallContext, args):
        try:
            return handler(ctx, args, version)
        except Refused as e:
            if isinstance(args, t.TestArgs):
                return t.TestRes(args.cookie, e.stat)
            if isinstance(args, t.ShareArgs):
                return t.ShareRes(args.cookie, e.stat)
            return t.Res(args.cookie, e.stat)

    def _message(self, handler, version: int, res_proc: Proc, encode, ctx: CallContext, args) -> None:
        """A _MSG procedure: no reply; the result goes to the caller's lock manager as a _RES call."""
        named = self.admission.lookup(ctx.peer[0], ctx.header)
        if named is not None:  # looked up first, as in _call; no reply waits for it
            named.addBoth(lambda _: self._send_result(handler, version, res_proc, encode, ctx, args))
            named.addErrback(lambda f: log.failure("{proc} from {host}", f, proc=res_proc.name, host=ctx.peer[0]))
            return None
        return self._send_result(handler, version, res_proc, encode, ctx, args)

    def _send_result(self, handler, version: int, res_proc: Proc, encode, ctx: CallContext, args) -> None:
        result = self._answer(handler, version, ctx, args)
        if self.remote is None:
            return None
        p = Packer()
        encode(p, result, wide=version == 4)
        proto = "tcp" if ctx.netid.startswith("tcp") else "udp"
        d = self.remote.call(ctx.peer[0], NLM_PROG, version, res_proc, p.getvalue(), proto, timeout=10.0)
        d.addErrback(lambda f: log.info("{proc} to {host} failed: {e}", proc=res_proc.name, host=ctx.peer[0],
                                        e=f.value))
        return None

    def _result(self, proc: Proc, ctx: CallContext, res) -> None:
        """A _RES call: only GRANTED_RES concerns a server (a client refusing a lock it no longer wants)."""
        if proc == Proc.GRANTED_RES and res.stat != NlmStat.GRANTED:
            log.info("a GRANTED_MSG was refused by {host}", host=ctx.peer[0])
        return None

    # -- what every lock call checks ------------------------------------------------------

    def _file(self, ctx: CallContext, fh: bytes) -> tuple[Hashable, ExportOptions]:
        """The lock table's key for ``fh`` (the storage backend's: device and inode for local files), after the
        export checks nfsd makes."""
        try:
            export, key = self.fs.lock_key(fh)
        except (BadHandle, StaleHandle):
            raise Refused(NlmStat.STALE_FH) from None
        try:
            verdict = self.admission.admit(export, ctx.peer[0], ctx.privileged_port, ctx.header)
        except LookupPending:  # the name service has not answered in time (Principals.pending)
            raise Refused(NlmStat.FAILED) from None
        if not isinstance(verdict, Admitted):
            raise Refused(NlmStat.FAILED)
        return key, verdict.options

    def _check_grace(self, ctx: CallContext, reclaim: bool) -> None:
        if self.grace.active != reclaim:
            log.debug("{host}: {what} refused, {when}", host=ctx.peer[0],
                      what="a reclaim" if reclaim else "a lock request",
                      when="the grace period is over" if reclaim else "in the grace period")
            raise Refused(NlmStat.DENIED_GRACE_PERIOD)

    @staticmethod
    def _owner(ctx: CallContext, lock: t.NlmLock) -> Owner:
        return Owner(lock.caller_name or ctx.peer[0], lock.svid, lock.oh)

    def _seen(self, ctx: CallContext, name: str, monitor: bool) -> None:
        """Remember the client's address; have NSM watch it, so its locks go when it reboots."""
        addresses = self.addresses.setdefault(name, set())
        if ctx.peer[0] not in addresses:
            addresses.add(ctx.peer[0])
            if monitor and self.nsm is not None:
                self.nsm.monitor_internal(name, ctx.peer[0], ctx.local[0])

    # -- procedures ------------------------------------------------------------------------

    def test(self, ctx: CallContext, args: t.TestArgs, version: int) -> t.TestRes:
        self._check_grace(ctx, False)
        key, _ = self._file(ctx, args.alock.fh)
        lock = Lock.of(self._owner(ctx, args.alock), args.alock.offset, args.alock.length, args.exclusive)
        holder = self.table.test(key, lock, context=args.alock.fh)
        if holder is None:
            return t.TestRes(args.cookie, NlmStat.GRANTED)
        h = t.Holder(holder.exclusive, holder.owner.svid, holder.owner.oh, holder.start, holder.length)
        return t.TestRes(args.cookie, NlmStat.DENIED, h)

    def lock(self, ctx: CallContext, args: t.LockArgs, version: int, monitor: bool = True) -> t.Res:
        self._check_grace(ctx, args.reclaim)
        key, options = self._file(ctx, args.alock.fh)
        if args.exclusive and options.read_only:
            raise Refused(NlmStat.ROFS)
        owner = self._owner(ctx, args.alock)
        self._seen(ctx, owner.host, monitor)
        lock = Lock.of(owner, args.alock.offset, args.alock.length, args.exclusive)
        pending = Pending(ctx.peer[0], ctx.netid, version, args.cookie, args.exclusive, args.alock)
        out = self.table.lock(key, lock, block=args.block and monitor, data=pending, context=args.alock.fh)
        if args.reclaim:
            log.info("{host} reclaimed a lock ({status}) on {key}", host=owner.host, status=out.status.value, key=key)
        self._granted_later(key, out.woken)
        if out.status == Status.BLOCKED:
            self._poll()
        return t.Res(args.cookie, _STATUS[out.status])

    def nm_lock(self, ctx: CallContext, args: t.LockArgs, version: int) -> t.Res:
        """NM_LOCK: a lock from a client without a status monitor: never blocks, never monitored."""
        return self.lock(ctx, args, version, monitor=False)

    def cancel(self, ctx: CallContext, args: t.CancArgs, version: int) -> t.Res:
        self._check_grace(ctx, False)
        key, _ = self._file(ctx, args.alock.fh)
        lock = Lock.of(self._owner(ctx, args.alock), args.alock.offset, args.alock.length, args.exclusive)
        self.table.cancel(key, lock)
        return t.Res(args.cookie, NlmStat.GRANTED)

    def unlock(self, ctx: CallContext, args: t.UnlockArgs, version: int) -> t.Res:
        self._check_grace(ctx, False)
        key, _ = self._file(ctx, args.alock.fh)
        lock = Lock.of(self._owner(ctx, args.alock), args.alock.offset, args.alock.length, False)
        self._granted_later(key, self.table.unlock(key, lock.owner, lock.start, lock.end))
        return t.Res(args.cookie, NlmStat.GRANTED)

    def granted(self, ctx: CallContext, args: t.TestArgs, version: int) -> t.Res:
        """GRANTED is for a client's lock manager; this server waits on no lock, so it wants none."""
        return t.Res(args.cookie, NlmStat.DENIED)

    def share(self, ctx: CallContext, args: t.ShareArgs, version: int) -> t.ShareRes:
        self._check_grace(ctx, args.reclaim)
        s = args.share
        key, options = self._file(ctx, s.fh)
        if s.access & 2 and options.read_only:
            raise Refused(NlmStat.ROFS)
        owner = Owner(s.caller_name or ctx.peer[0], 0, s.oh)
        self._seen(ctx, owner.host, True)
        ok = self.table.share(key, owner, s.access, s.mode, context=s.fh)
        return t.ShareRes(args.cookie, NlmStat.GRANTED if ok else NlmStat.DENIED)

    def unshare(self, ctx: CallContext, args: t.ShareArgs, version: int) -> t.ShareRes:
        self._check_grace(ctx, False)
        s = args.share
        key, _ = self._file(ctx, s.fh)
        self.table.unshare(key, Owner(s.caller_name or ctx.peer[0], 0, s.oh))
        return t.ShareRes(args.cookie, NlmStat.GRANTED)

    def free_all(self, ctx: CallContext, notify: t.Notify) -> None:
        """FREE_ALL: the host's statd says it rebooted; everything it held goes."""
        self.host_rebooted(notify.name, None)
        return None

    # -- hosts that reboot ---------------------------------------------------------------------

    def host_rebooted(self, name: str, address: Optional[str], state: int = 0) -> None:
        """SM_NOTIFY (through NSM) or FREE_ALL: free the locks of ``name`` and of every name ``address`` used."""
        names = {name} | {n for n, addrs in self.addresses.items() if address and address in addrs}
        for n in names:
            held = len(self.table.held_by(n))
            woken = self.table.free_host(n)
            self.addresses.pop(n, None)
            if held or woken:
                log.info("{host} rebooted: {n} locks freed", host=n, n=held)
            for waiter in woken:
                self._send_granted(waiter)

    # -- granting later -------------------------------------------------------------------------

    def _granted_later(self, key: Hashable, woken: list[Waiter]) -> None:
        for waiter in woken:
            self._send_granted(waiter, key)

    def _send_granted(self, waiter: Waiter, key: Hashable = None) -> None:
        """Tell the client its blocked lock is now granted (NLM GRANTED to its lock manager)."""
        pending: Pending = waiter.data
        if pending is None or self.remote is None:
            return
        p = Packer()
        t.pack_testargs(p, t.TestArgs(pending.cookie, pending.exclusive, pending.alock), pending.version == 4)
        proto = "tcp" if pending.netid.startswith("tcp") else "udp"
        self.callbacks["sent"] += 1

        def answered(body: bytes) -> None:
            try:
                res = t.unpack_res(Unpacker(body), pending.version == 4)
            except (XDRError, ValueError) as e:  # not an nlm_res: as if unanswered, the lock stays granted
                failed(Failure(e))
                return
            if res.stat == NlmStat.GRANTED:
                log.info("GRANTED callback to {host} accepted: a blocked lock on {key} is granted", host=pending.host,
                         key=key)
            elif key is not None:
                # The client no longer wants it (the waiting process went away): let the next one have it.
                lock = waiter.lock
                self._granted_later(key, self.table.unlock(key, lock.owner, lock.start, lock.end))

        def failed(f) -> None:
            # The lock stays granted: the client asks again (every 30 s, Linux) and gets GRANTED then.
            self.callbacks["failed"] += 1
            log.info("GRANTED to {host} failed ({e}); it will find the lock granted when it asks again",
                     host=pending.host, e=f.value)

        d = self.remote.call(pending.host, NLM_PROG, pending.version, Proc.GRANTED, p.getvalue(), proto,
                             timeout=10.0)
        d.addCallbacks(answered, failed)

    def _poll(self) -> None:
        """While requests wait, look again every ``poll_interval``: a lock held outside (a local process)
        goes away without telling anyone."""
        if self._poller is None or not self._poller.running:
            self._poller = task.LoopingCall(self._wake_all)
            self._poller.clock = self.reactor
            self._poller.start(self.poll_interval, now=False).addErrback(
                lambda f: log.failure("lock poller failed", f))

    def _wake_all(self) -> None:
        waiting = [f.key for f in self.table.files.values() if f.waiters]
        for key in waiting:
            self._granted_later(key, self.table.wake(key))
        if not any(f.waiters for f in self.table.files.values()) and self._poller is not None:
            self._poller.stop()

    def stop(self) -> defer.Deferred:
        if self._poller is not None and self._poller.running:
            self._poller.stop()
        if self.mirror is not None:
            self.mirror.close()
        return defer.succeed(None)

    def status(self) -> dict[str, Any]:
        return {**self.table.counts(), "grace": self.grace.active, "ofd_descriptors": len(self.mirror or ()),
                "callbacks": dict(self.callbacks)}
