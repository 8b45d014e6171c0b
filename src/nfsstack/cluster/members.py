"""Who is alive: the keepalive table of clients and peer servers (nfsd-keepalive, UDP 1110).

A member is alive while its keepalives keep coming, and stale once
``misses`` intervals pass without one; a new boot verifier means it
restarted.  Peers named in the configuration are listed from the start,
as "unknown" until they first answer.  The table is bounded: when it is
full, the longest-stale member makes room, or the newcomer is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from nfsstack.cluster.keepalive import CLIENT, PEER, Keepalive

KIND_NAME = {CLIENT: "client", PEER: "peer"}


@dataclass(slots=True)
class Member:
    kind: str
    id: str
    address: str
    last_seen: Optional[float] = None
    boot: str = ""
    seq: int = 0
    state: str = "unknown"  # unknown | alive | stale
    restarts: int = 0
    configured: bool = False

    def as_dict(self, now: float) -> dict:
        return {
            "kind": self.kind, "id": self.id, "address": self.address, "state": self.state,
            "last_seen_seconds_ago": None if self.last_seen is None else round(now - self.last_seen, 3),
            "boot_verifier": self.boot, "seq": self.seq, "restarts": self.restarts, "configured": self.configured,
        }


class Members:
    def __init__(self, clock: Callable[[], float], interval: float, misses: int, limit: int = 4096,
                 on_change: Optional[Callable[[Member, str], None]] = None) -> None:
        self.clock = clock
        self.interval = interval
        self.misses = misses
        self.limit = limit
        self.on_change = on_change or (lambda member, change: None)
        self._members: dict[tuple[str, str], Member] = {}

    @property
    def timeout(self) -> float:
        return self.interval * self.misses

    def expect_peer(self, address: str) -> None:
        """A configured peer, listed before it first answers."""
        self._members[("peer", address)] = Member("peer", address, address, configured=True)

    def seen(self, k: Keepalive, address: str) -> Optional[Member]:
        """A valid keepalive from ``address``: the member, or None when the table is full."""
        kind = KIND_NAME[k.kind]
        key = (kind, k.sender)
        member = self._members.get(key)
        configured = False
        if member is None and kind == "peer":
            placeholder = self._members.get(("peer", address))
            if placeholder is not None and placeholder.last_seen is None:
                del self._members[("peer", address)]  # the configured peer, now known by its id
                configured = True
        if member is None:
            if len(self._members) >= self.limit and not self._make_room():
                return None
            member = self._members[key] = Member(kind, k.sender, address, configured=configured)
        now = self.clock()
        boot = k.boot.hex()
        change = None
        if member.state != "alive":
            change = "alive" if member.state == "unknown" else "alive again"
        if member.boot and boot != member.boot:
            member.restarts += 1
            change = "restarted"
        member.address, member.last_seen, member.boot, member.seq, member.state = address, now, boot, k.seq, "alive"
        if change:
            self.on_change(member, change)
        return member

    def _make_room(self) -> bool:
        stale = [m for m in self._members.values() if m.state == "stale" and not m.configured]
        if not stale:
            return False
        oldest = min(stale, key=lambda m: m.last_seen or 0.0)
        del self._members[(oldest.kind, oldest.id)]
        return True

    def sweep(self) -> list[Member]:
        """Mark members stale after ``misses`` silent intervals; the ones that just went stale."""
        now = self.clock()
        went = []
        for member in self._members.values():
            if member.state == "alive" and now - member.last_seen > self.timeout:
                member.state = "stale"
                went.append(member)
                self.on_change(member, "stale")
        return went

    def table(self) -> list[dict]:
        now = self.clock()
        return [m.as_dict(now) for m in sorted(self._members.values(), key=lambda m: (m.kind, m.id))]

    def get(self, kind: str, id: str) -> Optional[Member]:
        return self._members.get((kind, id))

    def __len__(self) -> int:
        return len(self._members)
