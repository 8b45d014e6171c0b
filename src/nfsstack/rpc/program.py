"""RPC programs as tables: ``{version: {procedure: Procedure}}``.

Every service of the stack (portmapper, mountd, nfsd, nlockmgr, status) is a
:class:`Program`; one dispatcher (:mod:`nfsstack.rpc.server`) carries them all.
A procedure names its argument decoder, its result encoder and its handler;
handlers take a :class:`CallContext` and the decoded arguments and return the
result or a Deferred that fires with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Collection, Mapping, Optional

from nfsstack.rpc.address import is_loopback_host
from nfsstack.rpc.message import AuthStat, CallHeader, Credential
from nfsstack.xdr import Packer, Unpacker

Decoder = Callable[[Unpacker], Any]
Encoder = Callable[[Packer, Any], None]


class NoReply(Exception):
    """Raised by a handler that must not answer at all (for example a failed broadcast CALLIT)."""


class AuthDenied(Exception):
    """Raised by a handler to answer MSG_DENIED / AUTH_ERROR with ``stat``."""

    def __init__(self, stat: AuthStat, reason: str = "") -> None:
        super().__init__(reason or stat.name)
        self.stat = stat


class GarbageArgs(Exception):
    """Raised by a handler whose arguments decoded but make no sense: GARBAGE_ARGS."""


@dataclass(slots=True)
class CallContext:
    """What a handler knows about a call and its caller."""

    header: CallHeader
    #: The transport the call arrived on: "tcp", "udp", "tcp6" or "udp6".
    netid: str
    #: (host, port) of the caller.
    peer: tuple[str, int]
    #: (host, port) the call arrived at; host may be a wildcard for UDP.
    local: tuple[str, int]
    #: Size in bytes of the call message.
    size: int = 0

    @property
    def xid(self) -> int:
        return self.header.xid

    @property
    def credential(self) -> Optional[Credential]:
        """The AUTH_SYS credential, or None for AUTH_NONE."""
        return self.header.credential

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.peer[0])

    @property
    def privileged_port(self) -> bool:
        """The caller's source port is below 1024, which only root can bind."""
        return 0 < self.peer[1] < 1024


@dataclass(frozen=True, slots=True)
class Procedure:
    """One procedure: its name, codecs and handler.

    ``decode`` is None for void arguments, ``encode`` None for a void result.
    A procedure that is not ``idempotent`` goes through the duplicate request
    cache, so a retransmission gets the first reply instead of a second run.
    """

    name: str
    handler: Callable[[CallContext, Any], Any]
    decode: Optional[Decoder] = None
    encode: Optional[Encoder] = None
    idempotent: bool = True


def raw_parts(p: Packer, parts: list) -> None:
    """The encoder of a procedure whose handler returns its result already encoded, as a list of byte strings.

    The dispatcher hands such a reply on as a list (header first), so a large READ goes to the socket
    without being joined into one string.
    """
    for part in parts:
        p.pack_raw(part)


def null_procedure() -> Procedure:
    """Procedure 0 of every program: no arguments, no result (RFC 5531 section 12.1)."""
    return Procedure("NULL", lambda ctx, args: None)


class Program:
    """An RPC program: a number, a name, and its versions' procedure tables."""

    def __init__(
        self,
        number: int,
        name: str,
        versions: Mapping[int, Mapping[int, Procedure]],
        only_on: Optional[Mapping[int, Collection[str]]] = None,
    ) -> None:
        """``only_on`` names the versions registered on some netids only (version: netids);
        every other version is registered on every netid the program is served on."""
        if not versions:
            raise ValueError("a program needs at least one version")
        self.number = number
        self.name = name
        self.versions = {v: dict(procs) for v, procs in versions.items()}
        self.only_on = {v: frozenset(netids) for v, netids in (only_on or {}).items()}
        self.low = min(self.versions)
        self.high = max(self.versions)

    def __repr__(self) -> str:
        return f"<Program {self.name} {self.number} v{sorted(self.versions)}>"
