"""The client side of RPCSEC_GSS version 1 (RFC 2203) with Kerberos 5, without I/O.

:class:`GssSession` is one security context as a client holds it: it makes
the context creation calls (section 5.2.2) and reads their replies, makes
DATA calls with the service asked for (none, integrity, privacy: 5.3.1,
5.3.2) and reads their replies, checking the verifier (5.3.3.2) and
unwrapping the results, and makes the DESTROY call (5.4).  The caller sends
the messages over whatever it likes: the tests' blocking client
(tests/support.py ``NfsClient``), the fuzzers, bench/.

The initiator's credentials are the process's (its ``KRB5CCNAME`` ticket
cache, found through ``KRB5_CONFIG``), or ``credentials``.  ``gssapi`` is
imported when a session is made, so the rest of the stack runs without it.
"""

from __future__ import annotations

import struct
from typing import Optional

from nfsstack.rpc.gss import (
    GSS_S_COMPLETE,
    GSS_S_CONTINUE_NEEDED,
    GssCredential,
    GssInitResult,
    GssProc,
    GssService,
    decode_integ_data,
    decode_priv_data,
    encode_init_arg,
    encode_integ_data,
    encode_priv_data,
    integ_body,
    seq_bytes,
    split_data,
)
from nfsstack.rpc.message import (
    CALL,
    RPC_VERSION,
    AuthFlavor,
    DeniedError,
    OpaqueAuth,
    RPCError,
    decode_reply,
    encode_call,
)
from nfsstack.xdr import Packer, Unpacker, XDRError

_CALL_HEAD = struct.Struct(">6I")


class GssReplyError(RPCError):
    """A reply that does not check out: a wrong verifier, results that do not unwrap, a refused creation."""


class GssSession:
    """One RPCSEC_GSS context, from the client's side (module docstring).

    ``target`` is the server's host-based service name (``nfs@nfsserver``: the principal nfs/nfsserver);
    ``service`` the default service of its DATA calls.
    """

    def __init__(self, target: str, service: int = GssService.NONE, credentials=None) -> None:
        import gssapi

        self.gssapi = gssapi
        name = gssapi.Name(target, gssapi.NameType.hostbased_service)
        # Mutual authentication only, as Linux's rpc.gssd asks: RPCSEC_GSS has its own sequence window, and
        # GSS sequencing would flag the calls a client sends in parallel.
        self.gss = gssapi.SecurityContext(name=name, usage="initiate", creds=credentials,
                                          mech=gssapi.MechType.kerberos,
                                          flags=[gssapi.RequirementFlag.mutual_authentication])
        self.service = GssService(service)
        self.handle = b""
        self.window = 0
        #: The sequence number of the next DATA call.
        self.seq = 1
        self._server_token: Optional[bytes] = None

    @property
    def established(self) -> bool:
        return self.window > 0

    # -- context creation (RFC 2203 section 5.2) --------------------------------------------------------------

    def init_message(self, xid: int, prog: int, vers: int) -> bytes:
        """The next context creation call: INIT, or CONTINUE_INIT after a GSS_S_CONTINUE_NEEDED reply."""
        token = self.gss.step(self._server_token) if self._server_token is not None else self.gss.step()
        proc = GssProc.CONTINUE_INIT if self.handle else GssProc.INIT
        cred = GssCredential(proc, 0, self.service, self.handle)
        return encode_call(xid, prog, vers, 0, OpaqueAuth(AuthFlavor.RPCSEC_GSS, cred.encode())) + \
            encode_init_arg(token or b"")

    def init_reply(self, data: bytes) -> bool:
        """Read a context creation reply; True once the context is established (its verifier checked).

        Raises :class:`RPCError` for a refused call, :class:`GssReplyError` for a GSS failure or a wrong
        verifier."""
        header = decode_reply(data)
        if header.error is not None:
            raise header.error
        result = GssInitResult.decode(Unpacker(data, header.offset))
        if result.major not in (GSS_S_COMPLETE, GSS_S_CONTINUE_NEEDED):
            raise GssReplyError(f"context creation failed: major {result.major:#x}, minor {result.minor}")
        self.handle = result.handle
        self._server_token = result.token
        if result.major == GSS_S_CONTINUE_NEEDED:
            return False
        if not self.gss.complete:
            self.gss.step(result.token)
        # 5.2.3.1.1: the reply's verifier is the server's MIC of the window: this is where the client learns the
        # server holds the key.
        if header.verf.flavor != AuthFlavor.RPCSEC_GSS or not self._verified(seq_bytes(result.window),
                                                                                 header.verf.body):
            raise GssReplyError("the context creation reply's verifier is wrong")
        self.window = result.window
        return True

    # -- data (RFC 2203 section 5.3) and destruction (5.4) ----------------------------------------------------

    def call_message(self, xid: int, prog: int, vers: int, proc: int, args: bytes = b"",
                     service: Optional[int] = None, gss_proc: int = GssProc.DATA,
                     seq: Optional[int] = None) -> tuple[bytes, int]:
        """A DATA (or DESTROY) call and its sequence number: the header's verifier is the MIC of the header
        through the credential (5.3.1), the arguments wrapped for ``service`` (5.3.2)."""
        service = self.service if service is None else GssService(service)
        if seq is None:
            seq = self.seq
            self.seq += 1
        p = Packer()
        p.pack_struct(_CALL_HEAD, xid, CALL, RPC_VERSION, prog, vers, proc)
        OpaqueAuth(AuthFlavor.RPCSEC_GSS, GssCredential(gss_proc, seq, service, self.handle).encode()).pack(p)
        head = p.getvalue()
        p = Packer()
        p.pack_raw(head)
        OpaqueAuth(AuthFlavor.RPCSEC_GSS, self.gss.get_signature(head)).pack(p)
        if gss_proc == GssProc.DATA:
            p.pack_raw(self.wrap(args, seq, service))
        return p.getvalue(), seq

    def destroy_message(self, xid: int, prog: int, vers: int) -> tuple[bytes, int]:
        """The DESTROY call of this context (5.4), through the NULL procedure."""
        return self.call_message(xid, prog, vers, 0, gss_proc=GssProc.DESTROY)

    def wrap(self, args: bytes, seq: int, service: Optional[int] = None) -> bytes:
        """``args`` as the body of a call with ``service`` (5.3.2.2 integrity, 5.3.2.3 privacy)."""
        service = self.service if service is None else service
        if service == GssService.NONE:
            return args
        body = integ_body(seq, args)
        if service == GssService.INTEGRITY:
            return encode_integ_data(body, self.gss.get_signature(body))
        return encode_priv_data(self.gss.wrap(body, True).message)

    def reply_results(self, data: bytes, seq: int, service: Optional[int] = None,
                      wrapped: bool = True) -> bytes:
        """The results of the reply to call ``seq``, its verifier checked (the MIC of ``seq``, 5.3.3.2) and
        unwrapped for ``service``; ``wrapped`` False for a DESTROY's void result, which is not wrapped.

        Raises the reply's :class:`RPCError`, or :class:`GssReplyError` when it does not check out."""
        header = decode_reply(data)
        if isinstance(header.error, DeniedError):
            raise header.error  # refused (MSG_DENIED): no verifier to check
        if header.verf.flavor != AuthFlavor.RPCSEC_GSS or not self._verified(seq_bytes(seq), header.verf.body):
            raise GssReplyError(f"the verifier of the reply to seq {seq} is wrong")
        if header.error is not None:
            raise header.error
        service = self.service if service is None else service
        if not wrapped or service == GssService.NONE:
            return data[header.offset:]
        u = Unpacker(data, header.offset)
        try:
            if service == GssService.INTEGRITY:
                body, checksum = decode_integ_data(u, len(data))
                if not self._verified(body, checksum):
                    raise GssReplyError(f"the checksum of the results of seq {seq} is wrong")
            else:
                unwrapped = self.gss.unwrap(decode_priv_data(u, len(data)))
                if not unwrapped.encrypted:
                    raise GssReplyError(f"the results of seq {seq} came unencrypted")
                body = unwrapped.message
            return split_data(body, seq)
        except (XDRError, self.gssapi.exceptions.GSSError) as e:
            raise GssReplyError(f"the results of seq {seq} do not unwrap: {e}") from None

    def _verified(self, message: bytes, mic: bytes) -> bool:
        try:
            self.gss.verify_signature(message, mic)
        except self.gssapi.exceptions.GSSError:
            return False
        return True
