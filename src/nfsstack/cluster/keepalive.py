"""The nfsd-keepalive datagram (UDP port 1110): nfsstack's own format, as no RFC defines one.

XDR (RFC 4506), at most :data:`MAX_DATAGRAM` bytes::

    struct keepalive {
        unsigned int   magic;        /* 0x4E46534B, "NFSK" */
        unsigned int   version;      /* 1 */
        unsigned int   kind;         /* 1 = NFS client, 2 = server peer */
        unsigned int   flags;        /* bit 0: this is an answer (never answered again) */
        string         sender<255>;  /* the sender's id: its node name */
        unsigned hyper seq;          /* counts up from 1 at each start of the sender */
        opaque         boot[8];      /* the sender's boot verifier: new at every start */
        opaque         mac<32>;      /* empty, or HMAC-SHA256 (shared key) of every byte before this field */
    };

A server answers each valid keepalive with one of its own (flag ANSWER), so a
client learns of a server restart from the changed boot verifier.  When a key
is configured, a keepalive without the right MAC is dropped.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Optional

from nfsstack.xdr import Packer, Unpacker, XDRError

MAGIC = 0x4E46534B
VERSION = 1
CLIENT, PEER = 1, 2
ANSWER = 0x1
MAX_SENDER = 255
MAX_DATAGRAM = 512
PORT = 1110


class BadKeepalive(ValueError):
    """Malformed, of another version, too large, or with a missing or wrong MAC."""


@dataclass(frozen=True, slots=True)
class Keepalive:
    kind: int
    sender: str
    seq: int
    boot: bytes
    flags: int = 0

    @property
    def is_answer(self) -> bool:
        return bool(self.flags & ANSWER)


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()


def encode(k: Keepalive, key: Optional[bytes] = None) -> bytes:
    p = Packer()
    for value in (MAGIC, VERSION, k.kind, k.flags):
        p.pack_uint(value)
    p.pack_string(k.sender)
    p.pack_uhyper(k.seq)
    p.pack_fopaque(8, k.boot)
    body = p.getvalue()
    tail = Packer()
    tail.pack_opaque(_mac(key, body) if key else b"")
    return body + tail.getvalue()


def decode(data: bytes, key: Optional[bytes] = None) -> Keepalive:
    """The keepalive in ``data``; BadKeepalive for anything else (with a key: a missing or wrong MAC too)."""
    if len(data) > MAX_DATAGRAM:
        raise BadKeepalive(f"{len(data)} bytes")
    try:
        u = Unpacker(data)
        magic, version, kind, flags = (u.unpack_uint() for _ in range(4))
        if magic != MAGIC:
            raise BadKeepalive("not a keepalive")
        if version != VERSION:
            raise BadKeepalive(f"version {version}")
        if kind not in (CLIENT, PEER):
            raise BadKeepalive(f"sender kind {kind}")
        sender = u.unpack_string(MAX_SENDER)
        seq = u.unpack_uhyper()
        boot = u.unpack_fopaque(8)
        end = u.position
        mac = u.unpack_opaque(32)
        u.done()
    except XDRError as e:
        raise BadKeepalive(str(e)) from None
    if key:
        if not hmac.compare_digest(mac, _mac(key, bytes(data[:end]))):
            raise BadKeepalive("missing or wrong MAC")
    if not sender or any(c in sender for c in "\0\n\r"):
        raise BadKeepalive("bad sender id")
    return Keepalive(kind, sender, seq, boot, flags)
