"""ONC RPC version 2 messages (RFC 5531 sections 8-9 and appendix A).

Pure codecs: call headers, reply headers, AUTH_NONE and AUTH_SYS credentials,
and the standard error replies.  Nothing here touches a transport.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Optional

from nfsstack.xdr import Packer, Unpacker, XDRError

RPC_VERSION = 2
CALL = 0
REPLY = 1
MSG_ACCEPTED = 0
MSG_DENIED = 1

#: RFC 5531 section 8.2: an opaque_auth body is at most 400 bytes.
MAX_AUTH_BYTES = 400
#: RFC 5531 appendix A: authsys_parms.machinename<255>, gids<16>.
MAX_MACHINE_NAME = 255
MAX_AUTH_SYS_GIDS = 16


class AcceptStat(IntEnum):
    """accept_stat (RFC 5531 section 9)."""

    SUCCESS = 0
    PROG_UNAVAIL = 1
    PROG_MISMATCH = 2
    PROC_UNAVAIL = 3
    GARBAGE_ARGS = 4
    SYSTEM_ERR = 5


class RejectStat(IntEnum):
    """reject_stat (RFC 5531 section 9)."""

    RPC_MISMATCH = 0
    AUTH_ERROR = 1


class AuthStat(IntEnum):
    """auth_stat (RFC 5531 section 9)."""

    AUTH_OK = 0
    AUTH_BADCRED = 1
    AUTH_REJECTEDCRED = 2
    AUTH_BADVERF = 3
    AUTH_REJECTEDVERF = 4
    AUTH_TOOWEAK = 5
    AUTH_INVALIDRESP = 6
    AUTH_FAILED = 7
    #: RFC 2203 section 5.3.3.3: no such context (an unknown handle), or the call's header checksum is bad.
    RPCSEC_GSS_CREDPROBLEM = 13
    #: RFC 2203 section 5.3.3.3: the context is known but no longer usable (expired, sequence numbers used up).
    RPCSEC_GSS_CTXPROBLEM = 14


class AuthFlavor(IntEnum):
    """auth_flavor (RFC 5531 section 8.2)."""

    AUTH_NONE = 0
    AUTH_SYS = 1
    AUTH_SHORT = 2
    AUTH_DH = 3
    RPCSEC_GSS = 6


class Pseudoflavor(IntEnum):
    """The Kerberos security flavours as exports(5) ``sec=`` and MNT name them (RFC 2623 section 2.2.1).

    On the wire they are all RPCSEC_GSS (flavor 6) with the Kerberos 5 mechanism; the service of the
    credential (RFC 2203 section 5: none, integrity, privacy) tells them apart.
    """

    KRB5 = 390003
    KRB5I = 390004
    KRB5P = 390005


@dataclass(frozen=True, slots=True)
class OpaqueAuth:
    """opaque_auth: a flavor and up to 400 bytes of body (RFC 5531 section 8.2)."""

    flavor: int = AuthFlavor.AUTH_NONE
    body: bytes = b""

    def pack(self, p: Packer) -> None:
        p.pack_uint(self.flavor)
        p.pack_opaque(self.body)

    @classmethod
    def unpack(cls, u: Unpacker) -> "OpaqueAuth":
        flavor = u.unpack_uint()
        return cls(flavor, u.unpack_opaque(MAX_AUTH_BYTES))


AUTH_NULL = OpaqueAuth()


@dataclass(frozen=True, slots=True)
class Credential:
    """An AUTH_SYS credential, authsys_parms (RFC 5531 appendix A)."""

    uid: int
    gid: int
    gids: tuple[int, ...] = ()
    machine: str = ""
    stamp: int = 0

    def encode(self) -> bytes:
        p = Packer()
        p.pack_uint(self.stamp)
        p.pack_string(self.machine)
        p.pack_uint(self.uid)
        p.pack_uint(self.gid)
        p.pack_array(list(self.gids), Packer.pack_uint)
        return p.getvalue()

    def to_auth(self) -> OpaqueAuth:
        return OpaqueAuth(AuthFlavor.AUTH_SYS, self.encode())

    @classmethod
    def decode(cls, body: bytes) -> "Credential":
        """Parse an AUTH_SYS body; raise XDRError if it is malformed."""
        u = Unpacker(body)
        stamp = u.unpack_uint()
        machine = u.unpack_string(MAX_MACHINE_NAME)
        uid = u.unpack_uint()
        gid = u.unpack_uint()
        gids = u.unpack_array(Unpacker.unpack_uint, MAX_AUTH_SYS_GIDS)
        u.done()
        return cls(uid, gid, tuple(gids), machine, stamp)


@dataclass(slots=True)
class CallHeader:
    """The fixed part of a call message (RFC 5531 section 9, call_body)."""

    xid: int
    prog: int
    vers: int
    proc: int
    cred: OpaqueAuth = AUTH_NULL
    verf: OpaqueAuth = AUTH_NULL
    #: The parsed AUTH_SYS credential, or None for AUTH_NONE.
    credential: Optional[Credential] = field(default=None)
    #: For an RPCSEC_GSS call whose context is established: the client's principal ("alice@REALM").
    principal: Optional[str] = None
    #: For an RPCSEC_GSS call: the :class:`Pseudoflavor` of its service; 0 for every other flavour.
    pseudoflavor: int = 0

    @property
    def security(self) -> int:
        """The flavour the call was made with as ``sec=`` names it: AUTH_NONE, AUTH_SYS or a :class:`Pseudoflavor`."""
        return self.pseudoflavor or self.cred.flavor


# -- errors -----------------------------------------------------------------


class CallRejected(Exception):
    """A call that must be answered with an error before any dispatch.

    ``reply`` is the complete reply message to send.
    """

    def __init__(self, xid: int, reply: bytes, reason: str) -> None:
        super().__init__(reason)
        self.xid = xid
        self.reply = reply


class NotACall(XDRError):
    """The message is a REPLY, not a CALL: a server ignores it."""


class RPCError(Exception):
    """A call that did not succeed, as a client sees it."""


class AcceptedError(RPCError):
    def __init__(self, stat: AcceptStat, low: int = 0, high: int = 0) -> None:
        self.stat = AcceptStat(stat)
        self.low = low
        self.high = high
        detail = f" (versions {low}..{high})" if stat == AcceptStat.PROG_MISMATCH else ""
        super().__init__(f"{self.stat.name}{detail}")


class DeniedError(RPCError):
    def __init__(self, stat: RejectStat, auth_stat: int = 0, low: int = 0, high: int = 0) -> None:
        self.stat = RejectStat(stat)
        self.auth_stat = auth_stat
        self.low = low
        self.high = high
        if self.stat == RejectStat.AUTH_ERROR:
            try:
                name = AuthStat(auth_stat).name
            except ValueError:
                name = str(auth_stat)
            super().__init__(f"AUTH_ERROR {name}")
        else:
            super().__init__(f"RPC_MISMATCH (versions {low}..{high})")


# -- calls ------------------------------------------------------------------

_CALL_FIXED = struct.Struct(">8I")  # xid, CALL, rpcvers, prog, vers, proc, cred flavor, cred length
_VERF_HEAD = struct.Struct(">II")
_CALL_HEAD = struct.Struct(">6I")


def _not_a_call(mtype: int) -> XDRError:
    # A stray REPLY is ignored; anything else is not an RPC message at all.
    return NotACall("a reply, not a call") if mtype == REPLY else XDRError(f"message type {mtype}")


#: Decoded AUTH_SYS bodies (bounded: cleared when full).
_SYS_CACHE: dict[bytes, tuple] = {}
_SYS_CACHE_SIZE = 4096


def decode_call(data: bytes | memoryview) -> tuple[CallHeader, int]:
    """Decode a call header; return it and the offset of the arguments.

    Raises :class:`CallRejected` for calls that get an RPC_MISMATCH or
    AUTH_ERROR reply, :class:`NotACall` for replies, and :class:`XDRError` for
    anything that cannot be decoded far enough to answer.
    """
    n = len(data)
    if n >= 32:
        xid, mtype, rpcvers, prog, vers, proc, cflavor, clen = _CALL_FIXED.unpack_from(data, 0)
    else:
        u = Unpacker(data)
        xid = u.unpack_uint()
        mtype = u.unpack_uint()
        if mtype != CALL:
            raise _not_a_call(mtype)
        rpcvers = u.unpack_uint()
        if rpcvers != RPC_VERSION:
            raise CallRejected(xid, rpc_mismatch_reply(xid), f"RPC version {rpcvers}")
        raise XDRError("call header truncated")
    if mtype != CALL:
        raise _not_a_call(mtype)
    if rpcvers != RPC_VERSION:
        raise CallRejected(xid, rpc_mismatch_reply(xid), f"RPC version {rpcvers}")
    if clen > MAX_AUTH_BYTES:
        raise CallRejected(xid, auth_error_reply(xid, AuthStat.AUTH_BADCRED), f"credential of {clen} bytes")
    pos = 32 + clen + ((-clen) & 3)
    if pos + 8 > n:
        raise XDRError("call header truncated in the credential")
    cbody = bytes(data[32 : 32 + clen])
    vflavor, vlen = _VERF_HEAD.unpack_from(data, pos)
    pos += 8
    if vlen > MAX_AUTH_BYTES:
        raise CallRejected(xid, auth_error_reply(xid, AuthStat.AUTH_BADVERF), f"verifier of {vlen} bytes")
    vend = pos + vlen + ((-vlen) & 3)
    if vend > n:
        raise XDRError("call header truncated in the verifier")
    verf = AUTH_NULL if (vflavor == 0 and vlen == 0) else OpaqueAuth(vflavor, bytes(data[pos : pos + vlen]))
    credential = None
    if cflavor == AuthFlavor.AUTH_NONE:
        cred = AUTH_NULL if clen == 0 else OpaqueAuth(cflavor, cbody)
    elif cflavor == AuthFlavor.AUTH_SYS:
        # A client sends the same credential on every call: decode each one once.
        cached = _SYS_CACHE.get(cbody)
        if cached is None:
            try:
                credential = Credential.decode(cbody)
            except XDRError as e:
                raise CallRejected(xid, auth_error_reply(xid, AuthStat.AUTH_BADCRED), f"bad AUTH_SYS: {e}") from None
            if len(_SYS_CACHE) >= _SYS_CACHE_SIZE:
                _SYS_CACHE.clear()
            cached = _SYS_CACHE[cbody] = (OpaqueAuth(cflavor, cbody), credential)
        cred, credential = cached
        if vflavor != AuthFlavor.AUTH_NONE:
            raise CallRejected(xid, auth_error_reply(xid, AuthStat.AUTH_BADVERF), "AUTH_SYS with a verifier")
    elif cflavor == AuthFlavor.RPCSEC_GSS:
        # Its credential and verifier are checked by the dispatcher's RPCSEC_GSS engine (rpc/gss_server.py),
        # which needs the context they name; a stack without one answers AUTH_REJECTEDCRED there.
        cred = OpaqueAuth(cflavor, cbody)
    else:
        # Flavors we do not speak (AUTH_DH, ...): as libtirpc's _authenticate.
        raise CallRejected(xid, auth_error_reply(xid, AuthStat.AUTH_REJECTEDCRED), f"auth flavor {cflavor}")
    return CallHeader(xid, prog, vers, proc, cred, verf, credential), vend


def encode_call(
    xid: int,
    prog: int,
    vers: int,
    proc: int,
    cred: OpaqueAuth = AUTH_NULL,
    verf: OpaqueAuth = AUTH_NULL,
) -> bytes:
    """The header of a call message; the arguments follow it."""
    p = Packer()
    p.pack_struct(_CALL_HEAD, xid, CALL, RPC_VERSION, prog, vers, proc)
    cred.pack(p)
    verf.pack(p)
    return p.getvalue()


# -- replies ----------------------------------------------------------------

_ACCEPTED = struct.Struct(">6I")  # xid, REPLY, MSG_ACCEPTED, verf flavor, verf len 0, accept_stat
_MISMATCH = struct.Struct(">8I")
_DENIED_MISMATCH = struct.Struct(">6I")  # xid, REPLY, MSG_DENIED, RPC_MISMATCH, low, high
_DENIED_AUTH = struct.Struct(">5I")  # xid, REPLY, MSG_DENIED, AUTH_ERROR, auth_stat


def accepted_reply(xid: int, stat: int = AcceptStat.SUCCESS) -> bytes:
    """An accepted reply header with an AUTH_NONE verifier; results follow on SUCCESS."""
    return _ACCEPTED.pack(xid, REPLY, MSG_ACCEPTED, 0, 0, stat)


def prog_mismatch_reply(xid: int, low: int, high: int) -> bytes:
    return _MISMATCH.pack(xid, REPLY, MSG_ACCEPTED, 0, 0, AcceptStat.PROG_MISMATCH, low, high)


def rpc_mismatch_reply(xid: int) -> bytes:
    return _DENIED_MISMATCH.pack(xid, REPLY, MSG_DENIED, RejectStat.RPC_MISMATCH, RPC_VERSION, RPC_VERSION)


def auth_error_reply(xid: int, stat: int) -> bytes:
    return _DENIED_AUTH.pack(xid, REPLY, MSG_DENIED, RejectStat.AUTH_ERROR, stat)


@dataclass(frozen=True, slots=True)
class ReplyHeader:
    """A decoded reply: ``offset`` is where the results start (on SUCCESS)."""

    xid: int
    offset: int
    error: Optional[RPCError] = None
    #: The verifier of an accepted reply (an RPCSEC_GSS client checks it: RFC 2203 section 5.3.3.2).
    verf: OpaqueAuth = AUTH_NULL


def decode_reply_xid(data: bytes | memoryview) -> int:
    if len(data) < 8:
        raise XDRError("reply too short")
    xid, mtype = _VERF_HEAD.unpack_from(data, 0)
    if mtype != REPLY:
        raise XDRError(f"message type {mtype} is not a reply")
    return xid


def decode_reply(data: bytes | memoryview) -> ReplyHeader:
    """Decode a reply header (RFC 5531 section 9, reply_body)."""
    u = Unpacker(data)
    xid = u.unpack_uint()
    if u.unpack_uint() != REPLY:
        raise XDRError("not a reply")
    stat = u.unpack_uint()
    if stat == MSG_ACCEPTED:
        verf = OpaqueAuth.unpack(u)
        astat = u.unpack_uint()
        if astat == AcceptStat.SUCCESS:
            return ReplyHeader(xid, u.position, None, verf)
        if astat == AcceptStat.PROG_MISMATCH:
            low, high = u.unpack_uint(), u.unpack_uint()
            return ReplyHeader(xid, u.position, AcceptedError(AcceptStat.PROG_MISMATCH, low, high), verf)
        if astat not in AcceptStat._value2member_map_:
            raise XDRError(f"accept_stat {astat}")
        return ReplyHeader(xid, u.position, AcceptedError(AcceptStat(astat)), verf)
    if stat == MSG_DENIED:
        rstat = u.unpack_uint()
        if rstat == RejectStat.RPC_MISMATCH:
            low, high = u.unpack_uint(), u.unpack_uint()
            return ReplyHeader(xid, u.position, DeniedError(RejectStat.RPC_MISMATCH, low=low, high=high))
        if rstat == RejectStat.AUTH_ERROR:
            return ReplyHeader(xid, u.position, DeniedError(RejectStat.AUTH_ERROR, u.unpack_uint()))
        raise XDRError(f"reject_stat {rstat}")
    raise XDRError(f"reply_stat {stat}")

