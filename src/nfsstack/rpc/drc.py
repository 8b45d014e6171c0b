"""The duplicate request cache.

A client that does not hear a reply retransmits the call with the same xid.
For a non-idempotent procedure (SET, CREATE, REMOVE, RENAME, ...) running it
twice gives a wrong answer (the second REMOVE fails with NOENT), so the server
remembers recent replies by caller and xid, as knfsd's reply cache does:
a retransmission of a call still in progress is dropped, and one that has
finished gets the first reply again.

The caller is its address without its port: a client whose TCP connection
broke retransmits on a new connection, from another port, and a REMOVE
(RFC 1813 section 3.3.12) whose first reply was lost must not then answer
NFS3ERR_NOENT.  Two clients behind one address are still told apart by
xid, procedure and the checksum of the arguments, and by who they are
(:func:`caller`): a call of another user, or in another security flavour,
never gets this user's reply (knfsd tells them apart by port; without the
port, an AUTH_NONE call with the same xid and arguments would otherwise get a
krb5p user's reply, in clear, or answer for it first).
"""

from __future__ import annotations

import time
import zlib
from collections import OrderedDict
from typing import Callable, Hashable, Optional, Union

IN_PROGRESS = object()

CacheKey = tuple


def caller(header) -> Hashable:
    """Who made a call (a :class:`~nfsstack.rpc.message.CallHeader`), as far as a retransmission shows it
    again: the Kerberos flavour and principal (the credential's sequence number changes with every
    retransmission, RFC 2203 section 5.3.3.1), else the flavour and the AUTH_SYS ids (not the stamp nor the
    machine name, which a client may write anew)."""
    if header.pseudoflavor:
        return (header.pseudoflavor, header.principal)
    cred = header.credential
    return (header.cred.flavor,) if cred is None else (1, cred.uid, cred.gid, cred.gids)


def request_key(peer: tuple, netid: str, xid: int, prog: int, vers: int, proc: int, args: bytes,
                who: Hashable = None) -> CacheKey:
    """Identify a call: caller address (not its port: a reconnect comes from another one), transport, xid,
    procedure, a checksum of the arguments, and who made it (:func:`caller`)."""
    return (peer[0], netid, xid, prog, vers, proc, len(args), zlib.crc32(args), who)


class ReplyCache:
    """A bounded LRU of replies to non-idempotent calls, each kept for ``ttl`` seconds."""

    def __init__(self, size: int = 4096, ttl: float = 120.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self.ttl = ttl
        self.clock = clock
        self._entries: "OrderedDict[Hashable, tuple[float, object]]" = OrderedDict()
        self.hits = 0
        self.drops = 0

    def __len__(self) -> int:
        return len(self._entries)

    def begin(self, key: Hashable) -> Union[None, bytes, object]:
        """Look a call up.

        Returns ``None`` for a new call (now marked in progress), the cached
        reply bytes for a finished one, or :data:`IN_PROGRESS`.
        """
        now = self.clock()
        entry = self._entries.get(key)
        if entry is not None:
            stamp, value = entry
            if now - stamp <= self.ttl:
                if value is IN_PROGRESS:
                    self.drops += 1
                else:
                    self.hits += 1
                return value
            del self._entries[key]
        self._entries[key] = (now, IN_PROGRESS)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return None

    def finish(self, key: Hashable, reply: Optional[bytes]) -> None:
        """Record the reply to a call that :meth:`begin` marked in progress."""
        if key in self._entries:
            if reply is None:
                del self._entries[key]
            else:
                self._entries[key] = (self.clock(), reply)
