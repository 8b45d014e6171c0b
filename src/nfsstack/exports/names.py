"""Reverse lookups of client addresses, for the wildcard client specifications of exports(5) (``*.example.org``).

A wildcard matches the client's name, so admitting such a client needs its
address looked up first (:class:`~nfsstack.exports.policy.Admission` does it
before deciding).  ``gethostbyaddr`` blocks, so it runs in a thread; answers,
failures included, are kept for :attr:`HostNames.ttl` seconds.
"""

from __future__ import annotations

import time
from typing import Optional

from twisted.internet import defer, threads


class HostNames:
    """Reverse lookups of client addresses, for wildcard client specifications; cached, done in a thread."""

    def __init__(self, ttl: float = 300.0, size: int = 4096, lookup=None) -> None:
        self.ttl = ttl
        self.size = size
        self._cache: dict[str, tuple[float, Optional[str]]] = {}
        self._lookup = lookup or self._gethostbyaddr

    @staticmethod
    def _gethostbyaddr(address: str) -> Optional[str]:
        import socket

        try:
            return socket.gethostbyaddr(address)[0]
        except OSError:
            return None

    def cached(self, address: str) -> Optional[str]:
        entry = self._cache.get(address)
        return entry[1] if entry else None

    def known(self, address: str) -> bool:
        """Whether a lookup of ``address`` is cached and fresh."""
        entry = self._cache.get(address)
        return entry is not None and time.monotonic() - entry[0] < self.ttl

    def resolve(self, address: str) -> defer.Deferred:
        entry = self._cache.get(address)
        if entry is not None and time.monotonic() - entry[0] < self.ttl:
            return defer.succeed(entry[1])

        def store(name):
            if len(self._cache) >= self.size:
                self._cache.clear()
            self._cache[address] = (time.monotonic(), name)
            return name

        return threads.deferToThread(self._lookup, address).addCallback(store)
