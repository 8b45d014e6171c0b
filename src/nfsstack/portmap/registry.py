"""The table of registered RPC services, as rpcbind keeps it (RFC 1833).

One entry per (program, version, netid).  Entries registered from inside this
process are known alive; entries from other processes are checked on lookup,
the way rpcbind's ``is_bound`` does: if the registered address can be bound,
nobody holds it any more, and the program's dead entries are dropped.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

from nfsstack.rpc.address import NETIDS, parse_uaddr

SUPERUSER = "superuser"


@dataclass(frozen=True, slots=True)
class Registration:
    prog: int
    vers: int
    netid: str
    addr: str
    owner: str
    #: The port of ``addr`` (0 if it is no IP address), parsed once.
    port: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        try:
            port = parse_uaddr(self.addr)[1]
        except ValueError:
            port = 0
        object.__setattr__(self, "port", port)


def address_is_bound(reg: Registration) -> bool:
    """True unless the registration's address could be bound right now (rpcbind's is_bound)."""
    netid = NETIDS.get(reg.netid)
    if netid is None:
        return True  # not an IP transport: nothing we can check
    try:
        host, port = parse_uaddr(reg.addr)
    except ValueError:
        return True
    if port == 0:
        return False
    try:
        s = socket.socket(netid.family, netid.socktype)
    except OSError:
        return True
    try:
        s.bind((host, port))
    except OSError:
        return True  # in use (or not ours to test): count it alive
    else:
        return False
    finally:
        s.close()


class Registry:
    """The registrations, in the order they were made."""

    def __init__(self, is_alive: Callable[[Registration], bool] = address_is_bound) -> None:
        self._entries: dict[tuple[int, int, str], Registration] = {}
        self._internal: set[tuple[int, int, str]] = set()
        self.is_alive = is_alive

    def __iter__(self) -> Iterator[Registration]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def set(self, reg: Registration, internal: bool = False) -> bool:
        """Register; False if (prog, vers, netid) is taken by a different address."""
        key = (reg.prog, reg.vers, reg.netid)
        old = self._entries.get(key)
        if old is not None:
            return old.addr == reg.addr
        self._entries[key] = reg
        if internal:
            self._internal.add(key)
        return True

    def unset(self, prog: int, vers: int, netid: Optional[str], owner: str) -> bool:
        """Remove (prog, vers) on ``netid`` (all netids if None) where ``owner`` may.

        The superuser may remove anything; others only what they registered.
        """
        removed = False
        for key, reg in list(self._entries.items()):
            if reg.prog != prog or reg.vers != vers or (netid is not None and reg.netid != netid):
                continue
            if owner != SUPERUSER and owner != reg.owner:
                continue
            del self._entries[key]
            self._internal.discard(key)
            removed = True
        return removed

    def find(self, prog: int, vers: int, netid: str) -> Optional[Registration]:
        """The entry for (prog, vers, netid), else another version of prog on netid (rpcbind's find_service)."""
        exact = self._entries.get((prog, vers, netid))
        if exact is not None:
            return exact
        hit = None
        for reg in self._entries.values():
            if reg.prog == prog and reg.netid == netid:
                hit = reg
        return hit

    def lookup(self, prog: int, vers: int, netid: str, exact: bool = False) -> Optional[Registration]:
        """Like :meth:`find`, but only a live entry; dead entries of the program are dropped."""
        reg = self.find(prog, vers, netid)
        if reg is None or (exact and reg.vers != vers):
            return None
        if (reg.prog, reg.vers, reg.netid) in self._internal or self.is_alive(reg):
            return reg
        self.drop_dead(prog)
        return None

    def drop_dead(self, prog: int) -> None:
        for key, reg in list(self._entries.items()):
            if reg.prog == prog and key not in self._internal and not self.is_alive(reg):
                del self._entries[key]
