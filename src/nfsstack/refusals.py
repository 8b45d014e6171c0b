"""Access refused by export policy, logged per client without letting one client flood the log.

mountd and nfsd refuse a client that no export admits (ACCES), a call from an
unprivileged port to a ``secure`` export (PERM), a change to a ``ro`` export
(ROFS) and a handle of an export that was removed (STALE).  An admin wants to
see each of these, with the client's address, as knfsd's and rpc.mountd's
messages show them; a hostile or misconfigured client may repeat them
thousands of times a second.  So each (client, what, where) is logged at most
once per :attr:`RefusalLog.interval`, and the next message says how many were
not.
"""

from __future__ import annotations

from typing import Callable

from nfsstack.logs import logger

log = logger("nfsstack.access")


class RefusalLog:
    def __init__(self, clock: Callable[[], float], interval: float = 60.0, limit: int = 4096) -> None:
        self.clock = clock
        self.interval = interval
        self.limit = limit
        #: (client, what, where) -> [when last logged, refusals not logged since]
        self._seen: dict[tuple[str, str, str], list] = {}

    def refused(self, client: str, what: str, where: str) -> None:
        """``client`` was refused ``what`` (a short reason) on ``where`` (an export or path)."""
        key = (client, what, where)
        now = self.clock()
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return
        quiet = entry[1] if entry is not None else 0
        if len(self._seen) >= self.limit:
            self._seen.clear()  # bounded: at worst a client is logged once more than it would have been
        self._seen[key] = [now, 0]
        log.warn("refused {client}: {what} ({where}){more}", client=client, what=what, where=where,
                 more=f"; {quiet} more since the last message" if quiet else "")
