"""The RPC server: one table-driven dispatcher and its TCP and UDP transports.

:class:`Dispatcher` turns a call message into a reply message (RFC 5531
section 9): program, version and procedure lookup with the standard errors,
argument decoding (GARBAGE_ARGS), handler errors (SYSTEM_ERR) and the
duplicate request cache.  :class:`RPCStreamProtocol` carries it over TCP with
record marking (section 11), many calls in flight and replies in completion
order; :class:`RPCDatagramProtocol` carries it over UDP.
"""

from __future__ import annotations

import collections
import struct
from time import perf_counter
from typing import Callable, Iterable, Optional, Union

from twisted.internet import defer, protocol
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from nfsstack.logs import logger
from nfsstack.rpc.drc import IN_PROGRESS, ReplyCache, caller, request_key
from nfsstack.rpc.fileslice import FileSlice, ShortFile
from nfsstack.rpc.gss_server import GssCall, GssServer
from nfsstack.rpc.message import (
    AcceptStat,
    AuthFlavor,
    AuthStat,
    CallHeader,
    CallRejected,
    MSG_ACCEPTED,
    NotACall,
    accepted_reply,
    auth_error_reply,
    decode_call,
    prog_mismatch_reply,
)
from nfsstack.rpc.program import (
    AuthDenied,
    CallContext,
    GarbageArgs,
    NoReply,
    Program,
    raw_parts,
)
from nfsstack.rpc.record import LAST_FRAGMENT, RecordReader, RecordTooLarge
from nfsstack.rpc.twisted_internals import adapt, is_open, set_datagram_size
from nfsstack.xdr import U32, Packer, Unpacker, XDRError

log = logger("nfsstack.rpc")

RPCSEC_GSS = AuthFlavor.RPCSEC_GSS.value

#: A reply message: bytes, or a list of byte strings (a raw_parts procedure's), or a Deferred of either.
Reply = Union[bytes, list, None, defer.Deferred]


def joined(reply) -> Optional[bytes]:
    """A reply as one byte string (the file data of a :class:`FileSlice` read now)."""
    if type(reply) is not list:
        return reply
    if FileSlice in map(type, reply):
        return b"".join(_materialized(reply))
    return b"".join(reply)


def _materialized(parts: list) -> list:
    """``parts`` with every :class:`FileSlice` read into bytes; all of them closed, even on ShortFile."""
    out = []
    try:
        for p in parts:
            out.append(p.read() if type(p) is FileSlice else p)
    finally:
        for p in parts:
            if type(p) is FileSlice:
                p.close()
    return out


#: Default upper bound of one record: a 1 MiB NFS WRITE plus headers.
DEFAULT_MAX_RECORD = (1 << 20) + 64 * 1024
#: Largest UDP payload over IPv4.
MAX_UDP_PAYLOAD = 65507
#: Twisted's read size on a TCP connection; the rest of a large record is received in place (RecordReader.window).
#: 256 KiB rather than 64 KiB: a 64 KiB WRITE's record is a little larger than 64 KiB, so each one took two reads
#: (two reactor turns) and a join; four to a read took the server's CPU per 64 KiB WRITE down by about a third
#: (bench/README.md, "Small I/O").
SMALL_READ = 1 << 18
#: The replies to the records one read brought leave in groups of this many, so a pipelining client works on the
#: first ones while the server makes the rest, instead of both taking turns (bench/README.md, "Reply groups").
FLUSH_EVERY = 8
#: ... or as soon as this many seconds of work are waiting to leave (one READDIRPLUS of a large directory).
FLUSH_AFTER = 0.0005


def too_large_reply(reply: bytes) -> bytes:
    """SYSTEM_ERR in place of an accepted ``reply`` too large to send (a UDP datagram), with the reply's own
    verifier: an RPCSEC_GSS reply's is the checksum of the call's sequence number (RFC 2203 section 5.3.3.2),
    which a client checks on every accepted reply, an error too; an AUTH_NONE one would fail that check."""
    _, _, stat, _, length = _REPLY_HEAD.unpack_from(reply, 0)
    if stat != MSG_ACCEPTED:  # a refusal is never large; kept as it is
        return reply
    end = _REPLY_HEAD.size + (length + 3) // 4 * 4
    return reply[:end] + U32.pack(AcceptStat.SYSTEM_ERR)


#: xid, REPLY, reply_stat, and the verifier's flavour and length (RFC 5531 section 9).
_REPLY_HEAD = struct.Struct(">5I")


class ReplyBatcher:
    """Holds back late replies while a batch is open (``with batcher:``) and sends them when it closes.

    A late reply is one to a call that finished after its record was read.
    The replies made inside the block leave at its end, in order, one send
    per connection.  A batch of io_uring completions (nfs3/local/aiosync.py) thus
    answers a dozen COMMITs with one ``sendmsg`` instead of a dozen, each of
    which would wake the client on loopback.  The stack makes one batcher
    (``NfsStackService.reply_batcher``) and hands it to every
    :class:`RPCStreamFactory`, whose connections hold their late replies in
    it, and to nfsd's io_uring completions, which open the batches.  Blocks nest: the
    outermost one sends.
    """

    __slots__ = ("connections", "_depth")

    def __init__(self) -> None:
        #: The connections with replies held, in the order they first had one; None when no batch is open.
        self.connections: Optional[list] = None
        self._depth = 0

    def __enter__(self) -> "ReplyBatcher":
        if not self._depth:
            self.connections = []
        self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth:  # nested: the outer block sends
            return
        held, self.connections = self.connections, None
        for connection in held:
            connection._send_held()


class BadMessage(Exception):
    """A message that cannot be answered: the stream is closed, the datagram dropped."""


def _address(addr) -> tuple[str, int]:
    host = getattr(addr, "host", "")
    port = getattr(addr, "port", 0)
    return (host, port)


class Dispatcher:
    """Routes call messages to the procedures of its programs."""

    def __init__(self, programs: Iterable[Program] = (), reply_cache: Optional[ReplyCache] = None,
                 gss: Optional["GssServer"] = None) -> None:
        """``gss`` is the process's RPCSEC_GSS engine (:mod:`nfsstack.rpc.gss_server`); without one, calls with
        an RPCSEC_GSS credential are refused with AUTH_REJECTEDCRED (RFC 2203 section 5.1)."""
        self.programs: dict[int, Program] = {}
        self.reply_cache = reply_cache if reply_cache is not None else ReplyCache()
        self.gss = gss
        #: (prog, vers, proc) -> [program, procedure, calls]: one lookup per call instead of three (made on a
        #: procedure's first call, dropped by :meth:`add`).
        self._routes: dict[tuple[int, int, int], list] = {}
        #: Errors by accept/reject name.
        self.errors: collections.Counter = collections.Counter()
        #: Told of every call's duration: observer(program name, procedure name, seconds, client host).
        self.observer: Optional[Callable[[str, str, float, str], None]] = None
        for program in programs:
            self.add(program)

    def add(self, program: Program) -> None:
        self.programs[program.number] = program
        self._routes.clear()

    @property
    def calls(self) -> collections.Counter:
        """Calls by (prog, vers, proc)."""
        return collections.Counter({key: route[2] for key, route in self._routes.items() if route[2]})

    def _route(self, xid: int, prog: int, vers: int, proc: int):
        """The route of (prog, vers, proc) (kept for the next calls), or the error reply when there is none."""
        program = self.programs.get(prog)
        if program is None:
            self.errors["PROG_UNAVAIL"] += 1
            return accepted_reply(xid, AcceptStat.PROG_UNAVAIL)
        procedures = program.versions.get(vers)
        if procedures is None:
            self.errors["PROG_MISMATCH"] += 1
            return prog_mismatch_reply(xid, program.low, program.high)
        procedure = procedures.get(proc)
        if procedure is None:
            self.errors["PROC_UNAVAIL"] += 1
            return accepted_reply(xid, AcceptStat.PROC_UNAVAIL)
        route = self._routes[(prog, vers, proc)] = [program, procedure, 0]
        return route

    def handle(self, data: bytes, netid: str, peer: tuple[str, int], local: tuple[str, int]) -> Reply:
        """Answer one call message.

        Returns the reply message, a Deferred firing with it (or with None),
        or None when no reply is due.  Raises :class:`BadMessage` for a
        message that cannot be decoded far enough to answer.
        """
        try:
            header, offset = decode_call(data)
        except CallRejected as rejected:
            self.errors[str(rejected)] += 1
            return rejected.reply
        except NotACall:
            return None
        except XDRError as e:
            self.errors["undecodable"] += 1
            raise BadMessage(str(e)) from None
        if header.cred.flavor == RPCSEC_GSS:  # the one check AUTH_SYS and AUTH_NONE calls pay for Kerberos
            return self._gss_call(data, header, offset, netid, peer, local)
        return self._dispatch(header, data, offset, netid, peer, local, len(data))

    def _gss_call(self, data, header: CallHeader, offset: int, netid: str, peer: tuple[str, int],
                  local: tuple[str, int]) -> Reply:
        """An RPCSEC_GSS call: checked and unwrapped by the engine before any program is looked up (as knfsd's
        svc_authenticate comes first), dispatched on its unwrapped arguments, its reply sealed (RFC 2203 5.3).

        The duplicate request cache sees the unwrapped arguments and keeps the unsealed reply: a client
        retransmits with the same xid but a new sequence number and a newly wrapped body (RFC 2203 section
        5.3.3.1), which finds the first reply, sealed anew for the new sequence number.
        """
        if self.gss is None:
            self.errors["AUTH_REJECTEDCRED"] += 1
            return auth_error_reply(header.xid, AuthStat.AUTH_REJECTEDCRED)
        accepted = self.gss.accept(data, header, offset)
        if type(accepted) is not GssCall:
            if type(accepted) is bytes and accepted[8:12] != b"\0\0\0\0":
                self.errors["AUTH_ERROR"] += 1
            return accepted
        reply = self._dispatch(header, accepted.args, 0, netid, peer, local, len(data))
        if reply is None or type(reply) is bytes or type(reply) is list:
            return self._sealed(accepted, reply)
        return reply.addCallback(lambda late: self._sealed(accepted, late))

    @staticmethod
    def _sealed(accepted: GssCall, reply) -> Optional[bytes]:
        """``reply`` checksummed or encrypted for its call; None (no reply: the client retransmits and is
        answered from what the file holds then) when a file shrank under a READ whose reply promised its bytes,
        as the connection is closed for such a READ without Kerberos."""
        try:
            body = joined(reply)
        except ShortFile:
            log.warn("a file was truncated while its READ was being sealed; the client will retransmit")
            return None
        return accepted.seal(body)

    def _dispatch(self, header: CallHeader, data, offset: int, netid: str, peer: tuple[str, int],
                  local: tuple[str, int], size: int) -> Reply:
        """The rest of :meth:`handle`, once the call's credential is known good: the call of ``header`` with its
        arguments in ``data`` from ``offset``, ``size`` bytes long on the wire."""
        xid = header.xid
        route = self._routes.get((header.prog, header.vers, header.proc))
        if route is None:
            route = self._route(xid, header.prog, header.vers, header.proc)
            if route.__class__ is bytes:
                return route
        route[2] += 1
        program, procedure = route[0], route[1]

        if procedure.decode is not None:
            try:
                args = procedure.decode(Unpacker(data, offset))
            except (XDRError, ValueError):
                self.errors["GARBAGE_ARGS"] += 1
                return accepted_reply(xid, AcceptStat.GARBAGE_ARGS)
        else:
            args = None

        key = None
        if not procedure.idempotent:
            key = request_key(peer, netid, xid, header.prog, header.vers, header.proc, bytes(data[offset:]),
                              caller(header))
            cached = self.reply_cache.begin(key)
            if cached is IN_PROGRESS:
                return None
            if cached is not None:
                return cached

        ctx = CallContext(header, netid, peer, local, size)
        observer = self.observer
        started = perf_counter() if observer is not None else 0.0
        try:
            result = procedure.handler(ctx, args)
        except Exception:
            reply = self._failure_reply(Failure(), xid, procedure.name)
        else:
            if result.__class__ is not list and isinstance(result, defer.Deferred):
                # One callback pair does all that follows a late result (each one more costs a COMMIT: bench/README.md).
                late = (xid, procedure, key, observer, program.name, started, peer[0])
                return result.addCallbacks(self._late_result, self._late_failure, callbackArgs=late,
                                           errbackArgs=late)
            encode = procedure.encode
            # nfsd's procedures answer with their parts (raw_parts): the header put before them here.
            reply = [accepted_reply(xid), *result] if encode is raw_parts else self._encode(result, xid, encode)
        if key is not None:
            self.reply_cache.finish(key, joined(reply))
        if observer is not None:
            observer(program.name, procedure.name, perf_counter() - started, peer[0])
        return reply

    def _late_result(self, result, xid: int, procedure, key, observer, program: str, started: float, client: str):
        """The reply to a call whose handler returned a Deferred, once it fired: encoded, remembered in the
        duplicate request cache, observed."""
        try:
            reply = self._encode(result, xid, procedure.encode)
        except Exception:
            reply = self._failure_reply(Failure(), xid, procedure.name)
        return self._finish_late(reply, procedure, key, observer, program, started, client)

    def _late_failure(self, failure: Failure, xid: int, procedure, key, observer, program: str, started: float,
                      client: str):
        reply = self._failure_reply(failure, xid, procedure.name)
        return self._finish_late(reply, procedure, key, observer, program, started, client)

    def _finish_late(self, reply, procedure, key, observer, program: str, started: float, client: str):
        if key is not None:
            self.reply_cache.finish(key, joined(reply))
        if observer is not None:
            observer(program, procedure.name, perf_counter() - started, client)
        return reply

    @staticmethod
    def _encode(result, xid: int, encode):
        header = accepted_reply(xid)
        if encode is None:
            return header
        if encode is raw_parts:
            return [header, *result]
        p = Packer()
        p.pack_raw(header)
        encode(p, result)
        return p.getvalue()

    def _failure_reply(self, failure: Failure, xid: int, name: str) -> Optional[bytes]:
        if failure.check(NoReply):
            return None
        if failure.check(AuthDenied):
            self.errors["AUTH_ERROR"] += 1
            return auth_error_reply(xid, failure.value.stat)
        if failure.check(GarbageArgs):
            self.errors["GARBAGE_ARGS"] += 1
            return accepted_reply(xid, AcceptStat.GARBAGE_ARGS)
        self.errors["SYSTEM_ERR"] += 1
        log.failure("procedure {name} failed", failure, name=name)
        return accepted_reply(xid, AcceptStat.SYSTEM_ERR)


class RPCStreamProtocol(protocol.Protocol, TimeoutMixin):
    """RPC over one TCP connection (RFC 5531 section 11).

    Replies leave as their calls complete, so a slow call does not hold up
    the ones behind it.  Reading pauses while too many calls are in flight or
    while the peer does not read its replies, so one connection's memory stays
    bounded; a connection idle for ``idle_timeout`` seconds is closed.
    """

    def __init__(self, factory: "RPCStreamFactory") -> None:
        self.factory = factory
        self.dispatcher = factory.dispatcher
        self.reader = RecordReader(factory.max_record)
        self.in_flight = 0
        self._paused_for_writes = False
        self._paused_for_calls = False
        self._open = False
        #: The straight-to-the-socket paths (rpc/twisted_internals.py) of a plain TCP connection, else None.
        self._fast = None
        #: Where late replies are held while a batch is open (the stack's one :class:`ReplyBatcher`).
        self._batcher: ReplyBatcher = factory.reply_batcher
        #: Late replies (record headers and parts) waiting for the end of the batcher's block.
        self._late: list = []
        self.peer: tuple[str, int] = ("", 0)
        self.local: tuple[str, int] = ("", 0)

    def connectionMade(self) -> None:
        self._open = True
        # Plain TCP: replies go straight to the socket when nothing is queued (see _send).
        self._fast = adapt(self.transport, read_size=SMALL_READ)
        self.peer = _address(self.transport.getPeer())
        self.local = _address(self.transport.getHost())
        self.factory.connections.add(self)
        self.transport.registerProducer(self, True)
        if self.factory.idle_timeout:
            self.setTimeout(self.factory.idle_timeout)

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        self._open = False
        self._fast = None
        self.setTimeout(None)
        self.factory.connections.discard(self)

    def timeoutConnection(self) -> None:
        log.debug("closing idle connection from {peer}", peer=self.peer)
        self.transport.abortConnection()

    # IPushProducer: the transport tells us when its write buffer fills and drains.
    def pauseProducing(self) -> None:
        self._paused_for_writes = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused_for_writes = False
        if not self._paused_for_calls:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        pass

    def _send(self, parts: list[bytes]) -> None:
        """Write reply records, sending at once when the transport has nothing queued.

        Twisted's ``write`` only queues and sends on the next reactor turn
        (two epoll_ctl calls and a loop iteration per batch); an eager
        ``sendmsg`` halves the cost of a lone call.  Whatever the socket does
        not take, and every error, goes through the transport as usual.
        File data (:class:`FileSlice`) is found by ``sendmsg`` refusing it
        (TypeError, before it sends anything) rather than by looking at every
        part of every send first.
        """
        fast = self._fast
        try:
            sent = fast.send_now(parts) if fast is not None else None
        except TypeError:  # a part is file data (FileSlice, no buffer): sendmsg took nothing
            self._send_files(parts)
            return
        if sent is None and FileSlice in map(type, parts):
            self._send_files(parts)
            return
        if sent is None:  # not plain TCP, or Twisted has bytes queued that must go first
            try:
                self.transport.writeSequence(parts)
            except TypeError:  # a READ's data as a buffer, not bytes: Twisted queues bytes only
                self.transport.writeSequence([p if type(p) is bytes else bytes(p) for p in parts])
            return
        if sent < sum(map(len, parts)):
            self.transport.write(b"".join(parts)[sent:])

    def _send_held(self) -> None:
        parts, self._late = self._late, []
        if parts and self._open:
            self._send(parts)
        elif parts:
            for p in parts:
                if type(p) is FileSlice:
                    p.close()

    def _send_files(self, parts: list) -> None:
        """:meth:`_send` of parts with file data (:class:`FileSlice`): each slice by ``sendfile`` while the socket
        takes it; what is left from the first part the socket refuses on is read and queued on the transport."""
        t = self.transport
        fast = self._fast
        if not is_open(t):  # nobody to send to: nothing is read
            for p in parts:
                if type(p) is FileSlice:
                    p.close()
            return
        start = 0
        if fast is not None and fast.idle():
            fileno = fast.fileno
            run: list = []
            for i, p in enumerate(parts):
                if type(p) is not FileSlice:
                    run.append(p)
                    continue
                if run:
                    total = sum(map(len, run))
                    sent = fast.send_now(run) or 0  # never None here: nothing was queued since idle()
                    if sent < total:  # the rest of the run, then the rest of the parts, through the transport
                        parts = [b"".join(p if type(p) is bytes else bytes(p) for p in run)[sent:], *parts[i:]]
                        start = 0
                        break
                    run = []
                try:
                    done = p.send(fileno)
                except ShortFile:
                    self._short(parts[i:])
                    return
                except OSError:
                    done = False
                if not done:
                    start = i
                    break
                p.close()
            else:
                if run:
                    self._send(run)
                return
        try:
            t.writeSequence(_materialized(parts[start:]))
        except ShortFile:
            self._short(parts)

    def _short(self, parts: list) -> None:
        """A file shrank under a READ whose reply promised its bytes: the record cannot be finished, so the
        connection goes (the client sends the READ again, and gets what the file now holds)."""
        for p in parts:
            if type(p) is FileSlice:
                p.close()
        log.warn("closing connection from {peer}: a file was truncated while its READ was being sent", peer=self.peer)
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.factory.idle_timeout:
            self.resetTimeout()
        try:
            records = self.reader.feed(data)
        except RecordTooLarge as e:
            log.warn("closing connection from {peer}: {error}", peer=self.peer, error=e)
            self.transport.abortConnection()
            return
        if records and not self._handle(records):
            return
        fast = self._fast
        if fast is not None:
            # The rest of a large record (a 1 MiB WRITE) goes from the socket straight into a buffer of its size,
            # rather than arriving as Twisted's chunks and being joined: one copy instead of two.
            recv_into = fast.recv_into
            window = self.reader.window()
            for _ in range(64):
                if window is None or self._paused_for_calls:
                    break
                try:
                    n = recv_into(window)
                except OSError:  # EAGAIN: wait for more; anything else: Twisted's next read sees it too
                    break
                if not n:
                    break  # end of stream: Twisted's next read sees it
                records = self.reader.filled(n)
                if records and not self._handle(records):
                    return
                window = self.reader.window()
        if self.in_flight >= self.factory.max_in_flight and not self._paused_for_calls:
            self._paused_for_calls = True
            self.transport.pauseProducing()

    def _handle(self, records: list) -> bool:
        """Dispatch ``records`` and send the replies ready now; False if the connection was closed."""
        out = []
        done = 0
        started = perf_counter()
        handle = self.dispatcher.handle
        for record in records:
            try:
                reply = handle(record, self.factory.netid, self.peer, self.local)
            except BadMessage as e:
                log.info("closing connection from {peer}: {error}", peer=self.peer, error=e)
                if out:
                    self._send(out)
                self.transport.loseConnection()
                return False
            if reply is None:
                continue
            kind = type(reply)
            if kind is bytes:
                out.append(U32.pack(LAST_FRAGMENT | len(reply)))
                out.append(reply)
            elif kind is list:
                out.append(U32.pack(LAST_FRAGMENT | sum(map(len, reply))))
                out.extend(reply)
            else:
                self.in_flight += 1
                reply.addBoth(self._late_reply)
                continue
            done += 1
            if done == FLUSH_EVERY or perf_counter() - started > FLUSH_AFTER:
                # Let the first replies go while the rest are worked on: the client works on them meanwhile.
                self._send(out)
                out = []
                done = 0
                started = perf_counter()
        if out:
            self._send(out)
        return True

    def _late_reply(self, reply) -> None:
        self.in_flight -= 1
        if isinstance(reply, Failure):
            log.failure("reply failed", reply)
            reply = None
        if reply is not None and self._open:
            if type(reply) is list:
                parts = [U32.pack(LAST_FRAGMENT | sum(map(len, reply))), *reply]
            else:
                parts = [U32.pack(LAST_FRAGMENT | len(reply)), reply]
            held = self._batcher.connections
            if held is None:
                self._send(parts)
            else:
                if not self._late:
                    held.append(self)
                self._late.extend(parts)
        if self._paused_for_calls and self.in_flight < self.factory.max_in_flight // 2:
            self._paused_for_calls = False
            if self._open and not self._paused_for_writes:
                self.transport.resumeProducing()


class RPCStreamFactory(protocol.ServerFactory):
    """Builds :class:`RPCStreamProtocol`; refuses connections beyond ``max_connections``."""

    noisy = False

    def __init__(
        self,
        dispatcher: Dispatcher,
        netid: str = "tcp",
        max_record: int = DEFAULT_MAX_RECORD,
        idle_timeout: float = 360.0,
        max_connections: int = 1024,
        max_in_flight: int = 128,
        reply_batcher: Optional[ReplyBatcher] = None,
    ) -> None:
        self.dispatcher = dispatcher
        #: Holds the connections' late replies while a batch is open (one per stack; a factory of its own else).
        self.reply_batcher = reply_batcher if reply_batcher is not None else ReplyBatcher()
        self.netid = netid
        self.max_record = max_record
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_in_flight = max_in_flight
        self.connections: set[RPCStreamProtocol] = set()
        self.refused = 0

    def buildProtocol(self, addr) -> Optional[RPCStreamProtocol]:
        if len(self.connections) >= self.max_connections:
            self.refused += 1
            log.warn("refusing connection from {addr}: {n} connections open", addr=addr, n=len(self.connections))
            return None
        return RPCStreamProtocol(self)


class RPCDatagramProtocol(protocol.DatagramProtocol):
    """RPC over UDP: one call per datagram, one reply per call."""

    noisy = False

    def __init__(self, dispatcher: Dispatcher, netid: str = "udp") -> None:
        self.dispatcher = dispatcher
        self.netid = netid
        self.dropped = 0
        self.local: tuple[str, int] = ("", 0)

    def startProtocol(self) -> None:
        self.local = _address(self.transport.getHost())
        set_datagram_size(self.transport, 65536)  # Twisted reads 8 KiB of a datagram by default

    def datagramReceived(self, data: bytes, addr) -> None:
        peer = (addr[0], addr[1])
        try:
            reply = self.dispatcher.handle(data, self.netid, peer, self.local)
        except BadMessage:
            self.dropped += 1
            return
        if reply is None:
            return
        if type(reply) is bytes or type(reply) is list:
            self._send(joined(reply), peer)
        else:
            reply.addCallback(self._send_late, peer)
            reply.addErrback(lambda f: log.failure("reply failed", f))

    def _send_late(self, reply, peer) -> None:
        if reply is not None and self.transport is not None:
            self._send(joined(reply), peer)

    def _send(self, reply: bytes, peer) -> None:
        if len(reply) > MAX_UDP_PAYLOAD:
            # The reply does not fit a datagram: say so rather than go silent.
            reply = too_large_reply(reply)
        try:
            self.transport.write(reply, peer)
        except OSError as e:
            log.debug("UDP reply to {peer} failed: {error}", peer=peer, error=e)
