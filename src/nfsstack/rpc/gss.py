"""RPCSEC_GSS version 1 on the wire (RFC 2203 section 5): pure codecs, no GSS-API.

The credential (``rpc_gss_cred_vers_1_t``), the context creation arguments and
results (``rpc_gss_init_arg``, ``rpc_gss_init_res``) and the bodies of the
integrity and privacy services (``rpc_gss_integ_data``, ``rpc_gss_priv_data``).
The engine that holds the contexts and calls GSS-API is
:mod:`nfsstack.rpc.gss_server` (server side) and :mod:`nfsstack.rpc.gss_client`
(client side); this module is kept apart from both, as twisted.names keeps
dns.py apart from server.py, so the fuzzers reach every decoder alone.

Every decoder is bounded: the credential is at most 400 bytes already
(RFC 5531 section 8.2), a GSS token at most :data:`MAX_TOKEN` bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from nfsstack.xdr import Packer, Unpacker, XDRError

#: RFC 2203 section 5: the one version of the credential.
RPCSEC_GSS_VERS_1 = 1
#: RFC 2203 section 5.3.3.1: sequence numbers are below this; a context whose numbers reach it is used up.
MAXSEQ = 0x80000000
#: The sequence window this server offers (RFC 2203 section 5.2.3.1, ``seq_window``): as Linux knfsd (GSS_SEQ_WIN).
SEQ_WINDOW = 128
#: The largest GSS token accepted in a context creation call or reply.  A Kerberos AP-REQ with a PAC is a few KiB;
#: 64 KiB leaves room for large tickets and keeps a garbage length from costing memory.
MAX_TOKEN = 64 * 1024
#: The largest context handle decoded: whatever fits in a 400-byte credential (RFC 5531 section 8.2) beside the
#: four numbers and the length.  This server hands out :data:`HANDLE_SIZE`-byte handles; a longer one is unknown
#: here (RPCSEC_GSS_CREDPROBLEM, so the client makes a new context), not a malformed credential.
MAX_HANDLE = 400 - 5 * 4
#: The size of the handles this server makes: random, so one client cannot guess another's context.
HANDLE_SIZE = 16

#: GSS-API major status codes used in ``rpc_gss_init_res`` (RFC 2203 appendix A; RFC 2744 section 3.9.1).
GSS_S_COMPLETE = 0
GSS_S_CONTINUE_NEEDED = 1
GSS_S_FAILURE = 13 << 16
GSS_S_DEFECTIVE_TOKEN = 9 << 16
GSS_S_NO_CONTEXT = 8 << 16


class GssProc(IntEnum):
    """rpc_gss_proc_t (RFC 2203 section 5)."""

    DATA = 0
    INIT = 1
    CONTINUE_INIT = 2
    DESTROY = 3


class GssService(IntEnum):
    """rpc_gss_service_t (RFC 2203 section 5): krb5, krb5i and krb5p as ``sec=`` names them."""

    NONE = 1
    INTEGRITY = 2
    PRIVACY = 3


_CRED_HEAD = struct.Struct(">5I")  # version, gss_proc, seq_num, service, handle length
_U32 = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class GssCredential:
    """rpc_gss_cred_vers_1_t, the body of an RPCSEC_GSS credential (RFC 2203 section 5)."""

    proc: int
    seq: int
    service: int
    handle: bytes = b""
    version: int = RPCSEC_GSS_VERS_1

    def encode(self) -> bytes:
        p = Packer()
        p.pack_struct(_CRED_HEAD, self.version, self.proc, self.seq, self.service, len(self.handle))
        p.pack_raw(self.handle + b"\0" * ((-len(self.handle)) & 3))
        return p.getvalue()

    @classmethod
    def decode(cls, body: bytes) -> "GssCredential":
        """Parse a credential body; raise XDRError if it is malformed.

        A version other than 1 is malformed here too: RFC 2203 section 5.1 has the server refuse it.  The
        procedure and service are left as numbers: what to answer for an unknown one is the engine's to say.
        """
        u = Unpacker(body)
        version = u.unpack_uint()
        if version != RPCSEC_GSS_VERS_1:
            raise XDRError(f"RPCSEC_GSS version {version}")
        proc = u.unpack_uint()
        seq = u.unpack_uint()
        service = u.unpack_uint()
        handle = u.unpack_opaque(MAX_HANDLE)
        u.done()
        return cls(proc, seq, service, handle, version)


def encode_init_arg(token: bytes) -> bytes:
    """rpc_gss_init_arg: the arguments of a context creation call (RFC 2203 section 5.2.2)."""
    p = Packer()
    p.pack_opaque(token)
    return p.getvalue()


def decode_init_arg(u: Unpacker) -> bytes:
    """The GSS token of rpc_gss_init_arg (RFC 2203 section 5.2.2), at most :data:`MAX_TOKEN` bytes."""
    token = u.unpack_opaque(MAX_TOKEN)
    u.done()
    return token


@dataclass(frozen=True, slots=True)
class GssInitResult:
    """rpc_gss_init_res, the result of a context creation call (RFC 2203 section 5.2.3.1)."""

    handle: bytes
    major: int
    minor: int
    window: int
    token: bytes

    def encode(self) -> bytes:
        p = Packer()
        p.pack_opaque(self.handle)
        p.pack_uint(self.major)
        p.pack_uint(self.minor)
        p.pack_uint(self.window)
        p.pack_opaque(self.token)
        return p.getvalue()

    @classmethod
    def decode(cls, u: Unpacker) -> "GssInitResult":
        handle = u.unpack_opaque(MAX_HANDLE)
        major = u.unpack_uint()
        minor = u.unpack_uint()
        window = u.unpack_uint()
        token = u.unpack_opaque(MAX_TOKEN)
        return cls(handle, major, minor, window, token)


def seq_bytes(seq: int) -> bytes:
    """A sequence number as XDR: what a reply verifier's checksum is of (RFC 2203 section 5.3.3.2), and the
    window in a context creation reply's (section 5.2.3.1)."""
    return _U32.pack(seq)


def integ_body(seq: int, body: bytes) -> bytes:
    """rpc_gss_data_t: the sequence number, then the procedure's arguments or results (RFC 2203 section 5.3.2.2)."""
    return _U32.pack(seq) + body


def encode_integ_data(databody: bytes, checksum: bytes) -> bytes:
    """rpc_gss_integ_data (RFC 2203 section 5.3.2.2): ``databody`` (from :func:`integ_body`) and its MIC."""
    p = Packer()
    p.pack_opaque(databody)
    p.pack_opaque(checksum)
    return p.getvalue()


def decode_integ_data(u: Unpacker, limit: int) -> tuple[bytes, bytes]:
    """(databody_integ, checksum) of rpc_gss_integ_data; the body at most ``limit`` bytes, the MIC a token."""
    databody = u.unpack_opaque(limit)
    checksum = u.unpack_opaque(MAX_TOKEN)
    u.done()
    return databody, checksum


def encode_priv_data(wrapped: bytes) -> bytes:
    """rpc_gss_priv_data (RFC 2203 section 5.3.2.3): the GSS_Wrap of an rpc_gss_data_t."""
    p = Packer()
    p.pack_opaque(wrapped)
    return p.getvalue()


def decode_priv_data(u: Unpacker, limit: int) -> bytes:
    """The wrapped body of rpc_gss_priv_data, at most ``limit`` bytes."""
    wrapped = u.unpack_opaque(limit)
    u.done()
    return wrapped


def split_data(databody: bytes, seq: int) -> bytes:
    """The arguments or results in an rpc_gss_data_t, after checking that its sequence number is ``seq``
    (RFC 2203 section 5.3.3.1: the one inside must be the credential's, else the call is garbage)."""
    if len(databody) < 4:
        raise XDRError("rpc_gss_data_t without a sequence number")
    inner = _U32.unpack_from(databody, 0)[0]
    if inner != seq:
        raise XDRError(f"sequence number {inner} inside, {seq} in the credential")
    return databody[4:]
