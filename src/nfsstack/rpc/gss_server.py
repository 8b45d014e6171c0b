"""The server side of RPCSEC_GSS version 1 (RFC 2203) with Kerberos 5 (RFC 4121), for every program of a dispatcher.

:class:`GssServer` holds the security contexts and answers what RFC 2203 puts
in the RPC layer; :class:`nfsstack.rpc.server.Dispatcher` hands it every call
whose credential is RPCSEC_GSS (flavor 6), before any program is looked up, as
Linux knfsd's ``svc_authenticate`` does:

* context creation (RFC 2203 section 5.2): INIT and CONTINUE_INIT through the
  NULL procedure of any program, the call's verifier AUTH_NONE, the reply's the
  MIC of the sequence window (section 5.2.3.1); a failed GSS_Accept_sec_context
  is answered with its major and minor status in ``rpc_gss_init_res``;
* data calls (section 5.3): the verifier is the MIC of the header from the xid
  through the credential (5.3.1), the sequence number must be new and inside
  the window of :data:`~nfsstack.rpc.gss.SEQ_WINDOW` (5.3.3.1: a replayed or
  too old call is dropped without a reply), the arguments are unwrapped for
  the integrity and privacy services (5.3.2.2, 5.3.2.3); the results are
  wrapped the same way by :meth:`GssCall.seal` and the reply verifier is the
  MIC of the sequence number (5.3.3.2);
* context destruction (section 5.4): DESTROY forgets the context.

What goes wrong is answered as RFC 2203 section 5.3.3.3 and knfsd's
``svcauth_gss_accept`` (net/sunrpc/auth_gss/svcauth_gss.c) answer it: an
unknown handle or a bad header MIC is AUTH_ERROR RPCSEC_GSS_CREDPROBLEM, an
expired context or a used-up sequence space RPCSEC_GSS_CTXPROBLEM (the client
then makes a new context), a malformed credential AUTH_BADCRED, an integrity
or privacy body that does not check out GARBAGE_ARGS (5.3.3.4.3).

GSS-API is the ``gssapi`` package (python-gssapi over MIT krb5), imported only
by :func:`load_gss_server`, so the stack runs without it: calls with an
RPCSEC_GSS credential are then refused with AUTH_REJECTEDCRED, as before.  The
server's keys come from a keytab (``--keytab``, default /etc/krb5.keytab);
any principal in it is accepted (knfsd accepts nfs/<any name> the keytab
holds), and the acceptor needs no KDC.

Each process has its own contexts: with ``--workers`` a client is steered to
one worker by its address and keeps talking to it.
"""

from __future__ import annotations

import collections
import os
import struct
import time
from typing import Callable, Optional, Union

from twisted.internet.defer import Deferred

from nfsstack.logs import logger
from nfsstack.rpc.gss import (
    GSS_S_COMPLETE,
    GSS_S_CONTINUE_NEEDED,
    GSS_S_FAILURE,
    HANDLE_SIZE,
    MAXSEQ,
    SEQ_WINDOW,
    GssCredential,
    GssInitResult,
    GssProc,
    GssService,
    decode_init_arg,
    decode_integ_data,
    decode_priv_data,
    encode_integ_data,
    encode_priv_data,
    integ_body,
    seq_bytes,
    split_data,
)
from nfsstack.rpc.message import (
    MSG_ACCEPTED,
    REPLY,
    AcceptStat,
    AuthFlavor,
    AuthStat,
    CallHeader,
    Pseudoflavor,
    accepted_reply,
    auth_error_reply,
)
from nfsstack.xdr import Unpacker, XDRError

log = logger("nfsstack.rpc.gss")

#: Where the server's keys are unless ``--keytab`` says otherwise (as rpc.svcgssd and gssproxy look).
DEFAULT_KEYTAB = "/etc/krb5.keytab"
#: Contexts held at most; the least recently used goes first when a new one needs room.
DEFAULT_MAX_CONTEXTS = 4096
#: Seconds a context may go unused before it is forgotten (its client makes a new one on CREDPROBLEM).
DEFAULT_IDLE = 3600.0
#: Seconds a context being created (GSS_S_CONTINUE_NEEDED) waits for its CONTINUE_INIT.
INIT_TIMEOUT = 60.0
#: Contexts being created held at most, apart from the established ones, so that INIT calls that never finish
#: cannot push established contexts out.
MAX_CREATING = 256
#: Established contexts one principal may hold: a kernel client makes one per user, server and service (and
#: one more after each expiry), so this is far above honest use, and one user making context after context
#: (each INIT is a fresh AP-REQ from one service ticket) evicts its own, not every other client's.
MAX_PER_PRINCIPAL = 64
#: The lifetime of a context whose mechanism does not say (GSS_C_INDEFINITE, or an error asking).
DEFAULT_LIFETIME = 10 * 3600.0

#: The pseudoflavour each service is as ``sec=`` names it (RFC 2623 section 2.2.1).
PSEUDOFLAVORS = {GssService.NONE: Pseudoflavor.KRB5, GssService.INTEGRITY: Pseudoflavor.KRB5I,
                 GssService.PRIVACY: Pseudoflavor.KRB5P}

_VERF_HEAD = struct.Struct(">5I")  # xid, REPLY, MSG_ACCEPTED, verifier flavor, verifier length
_U32 = struct.Struct(">I")
#: GSS-API routine and calling errors (RFC 2744 section 3.9.1) live in the upper 16 bits of a major status; the
#: lower ones are supplementary information (duplicate, old, unsequenced token), not failures.
_GSS_ERROR_BITS = 0xFFFF0000


def _pad(n: int) -> int:
    return n + ((-n) & 3)


def _gss_verified_head(xid: int, mic: bytes) -> bytes:
    """An accepted reply's header up to its accept_stat, with ``mic`` as its RPCSEC_GSS verifier."""
    return _VERF_HEAD.pack(xid, REPLY, MSG_ACCEPTED, AuthFlavor.RPCSEC_GSS, len(mic)) + mic + b"\0" * ((-len(mic)) & 3)


class GssContext:
    """One security context: its GSS-API context, who the client is, how long it lives, and its sequence window."""

    __slots__ = ("gss", "handle", "principal", "expires", "used", "top", "seen")

    def __init__(self, gss, handle: bytes, expires: float, used: float) -> None:
        self.gss = gss
        self.handle = handle
        #: The initiator's name once the context is complete ("alice@REALM"), else None.
        self.principal: Optional[str] = None
        self.expires = expires
        self.used = used
        #: The highest sequence number seen (-1: none yet), and which of the window below it were seen (bit i:
        #: number top - i), for RFC 2203 section 5.3.3.1's replay detection.
        self.top = -1
        self.seen = 0

    @property
    def complete(self) -> bool:
        return self.principal is not None

    def admit(self, seq: int, window: int = SEQ_WINDOW) -> bool:
        """Record ``seq``; False when it was seen before or is below the window (RFC 2203 section 5.3.3.1)."""
        if seq > self.top:
            ahead = seq - self.top
            # A jump past the whole window forgets it (and never shifts by up to 2^31 bits).
            self.seen = 1 if ahead >= window else ((self.seen << ahead) | 1) & ((1 << window) - 1)
            self.top = seq
            return True
        age = self.top - seq
        if age >= window:
            return False
        bit = 1 << age
        if self.seen & bit:
            return False
        self.seen |= bit
        return True


class GssCall:
    """A DATA call whose credential, verifier and arguments checked out: ``args`` are the procedure's arguments
    unwrapped; :meth:`seal` makes its reply an RPCSEC_GSS one."""

    __slots__ = ("context", "seq", "service", "args")

    def __init__(self, context: GssContext, seq: int, service: int, args: bytes) -> None:
        self.context = context
        self.seq = seq
        self.service = service
        self.args = args

    def seal(self, reply: Optional[bytes]) -> Optional[bytes]:
        """``reply`` (as the dispatcher made it, with an AUTH_NONE verifier) with the verifier of RFC 2203
        section 5.3.3.2 and, on SUCCESS, its results wrapped for the service (5.3.2.2, 5.3.2.3).

        A refusal (MSG_DENIED) has no verifier and goes as it is.  A failure of GSS_GetMIC is answered
        RPCSEC_GSS_CTXPROBLEM (5.3.3.4.1), one of GSS_Wrap with no reply at all (5.3.3.4.4).
        """
        if reply is None:
            return None
        xid, mtype, stat, _, vlen = _VERF_HEAD.unpack_from(reply, 0)
        if stat != MSG_ACCEPTED:
            return reply
        rest = 20 + _pad(vlen)
        gss = self.context.gss
        seq = self.seq
        try:
            mic = gss.get_signature(seq_bytes(seq))
        except Exception as e:  # GSS_GetMIC failed: the context is unusable
            log.debug("GSS_GetMIC for the reply to xid {xid} failed: {e}", xid=xid, e=e)
            return auth_error_reply(xid, AuthStat.RPCSEC_GSS_CTXPROBLEM)
        head = _gss_verified_head(xid, mic)
        accept_stat = reply[rest:rest + 4]
        if accept_stat != b"\0\0\0\0" or self.service == GssService.NONE:
            return head + reply[rest:]
        body = integ_body(seq, reply[rest + 4:])
        try:
            if self.service == GssService.INTEGRITY:
                wrapped = encode_integ_data(body, gss.get_signature(body))
            else:
                wrapped = encode_priv_data(gss.wrap(body, True).message)
        except Exception as e:
            log.debug("wrapping the reply to xid {xid} failed: {e}", xid=xid, e=e)
            return None
        return head + accept_stat + wrapped


#: What :meth:`GssServer.accept` answers: a reply to send, None (no reply), a call for the program, or a
#: Deferred firing with the reply (a context's creation waiting on :attr:`GssServer.on_established`).
Accepted = Union[bytes, None, GssCall, Deferred]


class GssServer:
    """The security contexts of one process and the RPCSEC_GSS rules around them (module docstring).

    ``credentials`` are the acceptor's GSS-API credentials (:func:`load_gss_server` makes them from a
    keytab); ``gssapi`` is the module, passed in so this one does not import it.
    """

    def __init__(self, gssapi, credentials, clock: Callable[[], float] = time.monotonic,
                 max_contexts: int = DEFAULT_MAX_CONTEXTS, idle: float = DEFAULT_IDLE) -> None:
        self.gssapi = gssapi
        self.credentials = credentials
        self.clock = clock
        self.max_contexts = max_contexts
        self.idle = idle
        #: Established contexts by handle, least recently used first.
        self.contexts: "collections.OrderedDict[bytes, GssContext]" = collections.OrderedDict()
        #: Contexts being created (GSS_S_CONTINUE_NEEDED) by handle, oldest first.
        self.creating: "collections.OrderedDict[bytes, GssContext]" = collections.OrderedDict()
        #: What happened, by name ("contexts made", "replays dropped", ...), for the status report.
        self.counters: collections.Counter = collections.Counter()
        #: Called with the principal of each context made; a Deferred it returns holds the creation's reply
        #: back until it fires.  The stack looks the principal up in the name service there, in a thread, as
        #: knfsd's rpc.svcgssd / gssproxy map it when the context is made: the client's first call finds its
        #: local user known, and no call waits on a directory server on the reactor's thread.
        self.on_established: Optional[Callable[[str], Optional[Deferred]]] = None

    # -- the entry point ---------------------------------------------------------------------------------------

    def accept(self, data: Union[bytes, memoryview], header: CallHeader, offset: int) -> Accepted:
        """Check an RPCSEC_GSS call (``header`` decoded from ``data``, its arguments at ``offset``).

        Context creation and destruction are answered here; a DATA call that checks out comes back as a
        :class:`GssCall`, with ``header.principal`` and ``header.pseudoflavor`` filled in.  Never raises.
        """
        xid = header.xid
        try:
            cred = GssCredential.decode(header.cred.body)
        except XDRError as e:
            return self._refuse(xid, AuthStat.AUTH_BADCRED, f"credential: {e}")
        try:
            if cred.proc == GssProc.DATA or cred.proc == GssProc.DESTROY:
                return self._data(data, header, offset, cred)
            if cred.proc == GssProc.INIT or cred.proc == GssProc.CONTINUE_INIT:
                return self._init(data, header, offset, cred)
        except Exception as e:  # a GSS-API surprise must cost one call, never the service
            log.debug("RPCSEC_GSS call {xid} failed: {e!r}", xid=xid, e=e)
            return self._refuse(xid, AuthStat.AUTH_FAILED, repr(e))
        return self._refuse(xid, AuthStat.AUTH_BADCRED, f"gss_proc {cred.proc}")

    def _refuse(self, xid: int, stat: AuthStat, reason: str) -> bytes:
        self.counters[stat.name] += 1
        log.debug("RPCSEC_GSS call {xid} refused, {stat}: {reason}", xid=xid, stat=stat.name, reason=reason)
        return auth_error_reply(xid, stat)

    # -- context creation (RFC 2203 section 5.2) --------------------------------------------------------------

    def _init(self, data, header: CallHeader, offset: int, cred: GssCredential) -> Union[bytes, Deferred]:
        xid = header.xid
        # 5.2.2: creation goes through procedure 0 with an AUTH_NONE verifier (knfsd: AUTH_BADCRED otherwise).
        if header.proc != 0:
            return self._refuse(xid, AuthStat.AUTH_BADCRED, f"{GssProc(cred.proc).name} to procedure {header.proc}")
        if header.verf.flavor != AuthFlavor.AUTH_NONE:
            return self._refuse(xid, AuthStat.AUTH_BADCRED, "context creation with a verifier")
        try:
            token = decode_init_arg(Unpacker(data, offset))
        except XDRError:
            self.counters["GARBAGE_ARGS"] += 1
            return accepted_reply(xid, AcceptStat.GARBAGE_ARGS)
        now = self.clock()
        if cred.proc == GssProc.INIT:
            context = GssContext(self.gssapi.SecurityContext(creds=self.credentials, usage="accept"),
                                 os.urandom(HANDLE_SIZE), now + INIT_TIMEOUT, now)
        else:
            context = self.creating.pop(cred.handle, None)
            if context is None or now - context.used >= INIT_TIMEOUT:
                return self._refuse(xid, AuthStat.RPCSEC_GSS_CREDPROBLEM, "CONTINUE_INIT of no context in creation")
        out = b""
        try:
            out = context.gss.step(token) or b""
            # python-gssapi hands back the error token of a failed step (a KRB-ERROR) and raises its error on
            # the next use of the context: this one.
            complete = context.gss.complete
        except self.gssapi.exceptions.GSSError as e:
            # 5.2.3.2: the failure goes back in rpc_gss_init_res, with the mechanism's error token if it made one;
            # the client gives up or tries again.
            self.counters["contexts refused"] += 1
            log.debug("GSS_Accept_sec_context for xid {xid} failed: {e}", xid=xid, e=e)
            return self._init_reply(xid, GssInitResult(b"", (e.maj_code or GSS_S_FAILURE) & 0xFFFFFFFF,
                                                       (e.min_code or 0) & 0xFFFFFFFF, 0, out))
        if not complete:
            context.used = now
            self.creating[context.handle] = context
            while len(self.creating) > MAX_CREATING:
                self.creating.popitem(last=False)
            return self._init_reply(xid, GssInitResult(context.handle, GSS_S_CONTINUE_NEEDED, 0, 0, out))
        context.principal = str(context.gss.initiator_name)
        context.expires = now + self._lifetime(context.gss)
        self._store(context, now)
        self.counters["contexts made"] += 1
        log.debug("RPCSEC_GSS context for {principal}", principal=context.principal)
        # 5.2.3.1: the verifier of a successful creation reply is the MIC of the window.
        mic = context.gss.get_signature(seq_bytes(SEQ_WINDOW))
        reply = self._init_reply(xid, GssInitResult(context.handle, GSS_S_COMPLETE, 0, SEQ_WINDOW, out), mic)
        waiting = None
        if self.on_established is not None:
            try:
                waiting = self.on_established(context.principal)
            except Exception:  # the context is made: it is answered, whatever the hook did
                log.failure("on_established for {principal}", principal=context.principal)
        if waiting is None:
            return reply
        return waiting.addBoth(lambda _: reply)  # whatever the lookup found: calls are admitted by what it kept

    @staticmethod
    def _init_reply(xid: int, result: GssInitResult, mic: Optional[bytes] = None) -> bytes:
        if mic is None:
            return accepted_reply(xid) + result.encode()
        head = _gss_verified_head(xid, mic)
        return head + _U32.pack(AcceptStat.SUCCESS) + result.encode()

    @staticmethod
    def _lifetime(gss) -> float:
        try:
            lifetime = gss.lifetime
        except Exception:
            return DEFAULT_LIFETIME
        if lifetime is None or lifetime >= 0xFFFFFFFF:  # GSS_C_INDEFINITE
            return DEFAULT_LIFETIME
        return float(lifetime)

    def _store(self, context: GssContext, now: float) -> None:
        """Keep ``context``, making room by forgetting the principal's least recently used beyond
        :data:`MAX_PER_PRINCIPAL`, then the expired, the idle, then the least recently used of all."""
        contexts = self.contexts
        if context.handle not in contexts:
            own = [handle for handle, old in contexts.items() if old.principal == context.principal]
            for handle in own[:max(0, len(own) - MAX_PER_PRINCIPAL + 1)]:
                del contexts[handle]
                self.counters["contexts evicted"] += 1
        if context.handle not in contexts and len(contexts) >= self.max_contexts:
            for handle, old in list(contexts.items()):
                if not self._alive(old, now):
                    del contexts[handle]
            while len(contexts) >= self.max_contexts:
                contexts.popitem(last=False)
                self.counters["contexts evicted"] += 1
        contexts[context.handle] = context
        contexts.move_to_end(context.handle)

    def _alive(self, context: GssContext, now: float) -> bool:
        return now < context.expires and now - context.used < self.idle

    def _live(self, handle: bytes, now: float) -> Optional[GssContext]:
        """The context of ``handle`` if it is held and not idle too long (an idle one is forgotten)."""
        context = self.contexts.get(handle)
        if context is not None and now - context.used >= self.idle:
            del self.contexts[handle]
            return None
        return context

    # -- data and destruction (RFC 2203 sections 5.3 and 5.4) --------------------------------------------------

    def _data(self, data, header: CallHeader, offset: int, cred: GssCredential) -> Accepted:
        xid = header.xid
        now = self.clock()
        context = self._live(cred.handle, now)
        if context is None:
            return self._refuse(xid, AuthStat.RPCSEC_GSS_CREDPROBLEM, "no such context")
        if now >= context.expires:
            del self.contexts[cred.handle]
            return self._refuse(xid, AuthStat.RPCSEC_GSS_CTXPROBLEM, f"the context of {context.principal} expired")
        verf = header.verf
        if verf.flavor != AuthFlavor.RPCSEC_GSS:
            return self._refuse(xid, AuthStat.AUTH_BADVERF, f"verifier flavor {verf.flavor}")
        # 5.3.1: the checksum covers the header from the xid through the credential (its padding included).
        if not self._verified(context, bytes(data[:32 + _pad(len(header.cred.body))]), verf.body):
            return self._refuse(xid, AuthStat.RPCSEC_GSS_CREDPROBLEM, "the header's checksum is wrong")
        if cred.seq >= MAXSEQ:
            return self._refuse(xid, AuthStat.RPCSEC_GSS_CTXPROBLEM, f"sequence number {cred.seq}")
        if not context.admit(cred.seq):
            # 5.3.3.1: a replay, or a call so old the window has passed it: dropped without a reply.
            self.counters["replays dropped"] += 1
            return None
        context.used = now
        self.contexts.move_to_end(cred.handle)
        if cred.proc == GssProc.DESTROY:
            # 5.4: the reply is void and carries the verifier; like knfsd, the void result is not wrapped.
            del self.contexts[cred.handle]
            self.counters["contexts destroyed"] += 1
            return GssCall(context, cred.seq, GssService.NONE, b"").seal(accepted_reply(xid))
        if cred.service not in PSEUDOFLAVORS:
            return self._refuse(xid, AuthStat.AUTH_BADCRED, f"service {cred.service}")
        call = GssCall(context, cred.seq, cred.service, b"")
        if cred.service == GssService.NONE:
            call.args = bytes(data[offset:])
        else:
            args = self._unwrap(context, cred, Unpacker(data, offset), len(data))
            if args is None:
                self.counters["GARBAGE_ARGS"] += 1
                return call.seal(accepted_reply(xid, AcceptStat.GARBAGE_ARGS))
            call.args = args
        header.principal = context.principal
        header.pseudoflavor = PSEUDOFLAVORS[cred.service]
        return call

    def _unwrap(self, context: GssContext, cred: GssCredential, u: Unpacker, limit: int) -> Optional[bytes]:
        """The arguments inside an integrity or privacy body, or None when it does not check out (5.3.3.4.3)."""
        try:
            if cred.service == GssService.INTEGRITY:
                databody, checksum = decode_integ_data(u, limit)
                if not self._verified(context, databody, checksum):
                    return None
            else:
                unwrapped = context.gss.unwrap(decode_priv_data(u, limit))
                if not unwrapped.encrypted:  # privacy that is not private is not what the credential asked for
                    return None
                databody = unwrapped.message
            return split_data(databody, cred.seq)
        except XDRError:
            return None
        except self.gssapi.exceptions.GSSError as e:
            log.debug("unwrapping the arguments of seq {seq} failed: {e}", seq=cred.seq, e=e)
            return None

    def _verified(self, context: GssContext, message: bytes, mic: bytes) -> bool:
        """Whether ``mic`` is the context's checksum of ``message`` (GSS_VerifyMIC).

        Only the supplementary bits set (a client that asked for GSS sequencing, reordered calls) is still a
        good checksum: RPCSEC_GSS keeps its own window (RFC 2203 section 5.3.3.1).
        """
        try:
            context.gss.verify_signature(message, mic)
        except self.gssapi.exceptions.GSSError as e:
            return not (e.maj_code & _GSS_ERROR_BITS)
        return True


def load_gss_server(keytab: str = DEFAULT_KEYTAB, explicit: bool = False, quiet: bool = False,
                    clock: Callable[[], float] = time.monotonic) -> Optional[GssServer]:
    """A :class:`GssServer` accepting the principals in ``keytab``, or None when Kerberos cannot be served here.

    Says once why not (the ``gssapi`` package missing, the keytab missing, unreadable or empty): as a warning
    when ``explicit`` (``--keytab`` was given), else as information, since most stacks use AUTH_SYS only.
    The keytab is read through GSS-API's credential store, so nothing here contacts a KDC and the process's
    KRB5_KTNAME is not changed.
    """
    say = log.warn if explicit else log.info
    try:
        import gssapi
    except ImportError as e:
        if not quiet:
            say("Kerberos (RPCSEC_GSS) is off: the gssapi package is not installed (pip install "
                "'nfsstack[kerberos]'): {e}", e=e)
        return None
    path = os.path.abspath(keytab)
    if not os.access(path, os.R_OK):
        if not quiet:
            why = "not found" if not os.path.exists(path) else "not readable by this process"
            say("Kerberos (RPCSEC_GSS) is off: keytab {path} {why} (--keytab)", path=path, why=why)
        return None
    try:
        credentials = gssapi.Credentials(usage="accept", store={"keytab": f"FILE:{path}"},
                                         mechs=[gssapi.MechType.kerberos])
    except Exception as e:  # GSSError for an empty or corrupt keytab; anything else the library says
        if not quiet:
            say("Kerberos (RPCSEC_GSS) is off: keytab {path}: {e}", path=path, e=e)
        return None
    if not quiet:
        log.info("Kerberos (RPCSEC_GSS krb5, krb5i, krb5p) on, with the keys in {path}", path=path)
    return GssServer(gssapi, credentials, clock=clock)
