"""The lock table of nlockmgr: byte-range locks and DOS share reservations per file (XNFS, chapter 9-10).

Pure bookkeeping, no I/O: POSIX lock semantics per owner (a new lock by an
owner replaces that owner's locks on its range, so upgrades, downgrades,
splits and merges fall out), conflicts between owners (exclusive against
anything, shared against exclusive), blocked requests queued per file in
arrival order and granted in that order when they no longer conflict, and
freeing everything a host held when it reboots.

A :class:`Mirror` may hold every granted lock a second time outside the table
(nfsstack mirrors them as Linux OFD locks on the exported file, so local
processes see them); it can refuse a lock that the table would grant, because
somebody outside holds a conflicting one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Hashable, Iterable, Optional, Protocol

#: The last byte of a file, for ranges that run "to the end" (length 0).
END = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Owner:
    """Who holds a lock: the client host (its caller_name), the process id there, and its owner handle."""

    host: str
    svid: int
    oh: bytes = b""


@dataclass(frozen=True, slots=True)
class Lock:
    """A byte range ``start..end`` (inclusive) held shared or exclusive by ``owner``."""

    owner: Owner
    start: int
    end: int
    exclusive: bool

    @staticmethod
    def of(owner: Owner, offset: int, length: int, exclusive: bool) -> "Lock":
        """From NLM's offset and length, where length 0 means to the end of the file."""
        end = END if length == 0 or offset + length - 1 > END else offset + length - 1
        return Lock(owner, offset, end, exclusive)

    @property
    def length(self) -> int:
        """NLM's length: 0 for a range that runs to the end of the file."""
        return 0 if self.end >= END else self.end - self.start + 1

    def overlaps(self, start: int, end: int) -> bool:
        return self.start <= end and start <= self.end

    def conflicts(self, other: "Lock") -> bool:
        return (self.owner != other.owner and (self.exclusive or other.exclusive)
                and self.overlaps(other.start, other.end))


class Status(Enum):
    GRANTED = "granted"
    DENIED = "denied"
    BLOCKED = "blocked"


@dataclass(slots=True)
class Outcome:
    status: Status
    #: The conflicting lock for DENIED (a TEST's holder); its owner is Owner("", 0) for a lock held outside.
    holder: Optional[Lock] = None
    #: Waiters a granted downgrade let through, granted too.
    woken: list["Waiter"] = field(default_factory=list)


@dataclass(slots=True)
class Waiter:
    """A blocked request; ``data`` is whatever the caller needs to tell the client when it is granted."""

    lock: Lock
    data: Any = None


@dataclass(slots=True)
class Share:
    """A DOS share reservation (NLM SHARE): what the owner does (access) and denies others (mode), as bits R=1 W=2."""

    owner: Owner
    access: int
    mode: int


@dataclass(slots=True)
class FileLocks:
    """Everything held and awaited on one file; ``context`` is the caller's (e.g. the file handle, for the mirror)."""

    key: Hashable
    context: Any = None
    granted: list[Lock] = field(default_factory=list)
    waiters: list[Waiter] = field(default_factory=list)
    shares: list[Share] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.granted or self.waiters or self.shares)

    def holds(self, owner: Owner) -> bool:
        return any(lock.owner == owner for lock in self.granted)


class Mirror(Protocol):
    """Holds the table's locks a second time (OFD locks on the file)."""

    def acquire(self, files: FileLocks, lock: Lock) -> Optional[Lock]:
        """Take ``lock``; None when done, else the conflicting lock held outside the table."""

    def test(self, files: FileLocks, lock: Lock) -> Optional[Lock]:
        """The lock held outside the table that conflicts with ``lock``, if any."""

    def release(self, files: FileLocks, owner: Owner, start: int, end: int, holds_more: bool) -> None:
        """Drop ``owner``'s locks on the range; ``holds_more`` says whether it keeps others on this file."""


def _subtract(lock: Lock, start: int, end: int) -> list[Lock]:
    """What is left of ``lock`` outside ``start..end``: nothing, one piece or two."""
    if not lock.overlaps(start, end):
        return [lock]
    left = [Lock(lock.owner, lock.start, start - 1, lock.exclusive)] if lock.start < start else []
    right = [Lock(lock.owner, end + 1, lock.end, lock.exclusive)] if lock.end > end else []
    return left + right


def _merge(locks: list[Lock]) -> list[Lock]:
    """One owner's locks, sorted, with touching ranges of the same kind joined."""
    out: list[Lock] = []
    for lock in sorted(locks, key=lambda lk: lk.start):
        last = out[-1] if out else None
        if last is not None and last.exclusive == lock.exclusive and last.end + 1 >= lock.start:
            out[-1] = Lock(last.owner, last.start, max(last.end, lock.end), last.exclusive)
        else:
            out.append(lock)
    return out


class LockTable:
    """All files' locks, waiters and shares."""

    def __init__(self, mirror: Optional[Mirror] = None) -> None:
        self.mirror = mirror
        self.files: dict[Hashable, FileLocks] = {}

    # -- queries ------------------------------------------------------------------

    def file(self, key: Hashable, context: Any = None) -> FileLocks:
        files = self.files.get(key)
        if files is None:
            files = self.files[key] = FileLocks(key, context)
        elif context is not None:
            files.context = context
        return files

    def _tidy(self, files: FileLocks) -> None:
        if files.empty():
            self.files.pop(files.key, None)

    def _conflict(self, files: FileLocks, lock: Lock) -> Optional[Lock]:
        for held in files.granted:
            if held.conflicts(lock):
                return held
        return None

    def test(self, key: Hashable, lock: Lock, context: Any = None) -> Optional[Lock]:
        """The lock that would keep ``lock`` from being granted (NLM TEST), or None."""
        files = self.files.get(key)
        if files is not None:
            held = self._conflict(files, lock)
            if held is not None:
                return held
        if self.mirror is not None:
            files = files or FileLocks(key, context)
            return self.mirror.test(files, lock)
        return None

    def counts(self) -> dict[str, int]:
        return {
            "files": len(self.files),
            "granted": sum(len(f.granted) for f in self.files.values()),
            "waiting": sum(len(f.waiters) for f in self.files.values()),
            "shares": sum(len(f.shares) for f in self.files.values()),
        }

    def held_by(self, host: str) -> list[tuple[Hashable, Lock]]:
        return [(f.key, lock) for f in self.files.values() for lock in f.granted if lock.owner.host == host]

    # -- changes ------------------------------------------------------------------

    def _grant(self, files: FileLocks, lock: Lock) -> Optional[Lock]:
        """Take ``lock`` for its owner if nobody conflicts; the conflicting lock otherwise."""
        held = self._conflict(files, lock)
        if held is not None:
            return held
        if self.mirror is not None:
            held = self.mirror.acquire(files, lock)
            if held is not None:
                return held
        mine: list[Lock] = []
        others: list[Lock] = []
        for existing in files.granted:
            if existing.owner == lock.owner:
                mine.extend(_subtract(existing, lock.start, lock.end))
            else:
                others.append(existing)
        files.granted = others + _merge(mine + [lock])
        return None

    def lock(self, key: Hashable, lock: Lock, block: bool = False, data: Any = None,
             context: Any = None) -> Outcome:
        """NLM LOCK: granted, denied (with the holder), or, for a blocking request, queued."""
        files = self.file(key, context)
        waiting = self._waiter(files, lock)
        held = self._grant(files, lock)
        if held is None:
            if waiting is not None:
                files.waiters.remove(waiting)
            # A downgrade (exclusive to shared) may let others through.
            return Outcome(Status.GRANTED, woken=self.wake(key) if files.waiters else [])
        if not block:
            self._tidy(files)
            return Outcome(Status.DENIED, held)
        if waiting is None:
            files.waiters.append(Waiter(lock, data))
        elif data is not None:
            waiting.data = data
        return Outcome(Status.BLOCKED, held)

    @staticmethod
    def _waiter(files: FileLocks, lock: Lock) -> Optional[Waiter]:
        for waiter in files.waiters:
            if waiter.lock == lock:
                return waiter
        return None

    def cancel(self, key: Hashable, lock: Lock) -> bool:
        """NLM CANCEL: forget a blocked request; True if there was one."""
        files = self.files.get(key)
        if files is None:
            return False
        waiting = self._waiter(files, lock)
        if waiting is None:
            return False
        files.waiters.remove(waiting)
        self._tidy(files)
        return True

    def unlock(self, key: Hashable, owner: Owner, start: int, end: int) -> list[Waiter]:
        """NLM UNLOCK of ``start..end``: the owner's locks there go (splitting any that stick out).

        Returns the waiters that this let through, already granted, in the order they waited.
        """
        files = self.files.get(key)
        if files is None:
            return []
        kept: list[Lock] = []
        changed = False
        for lock in files.granted:
            if lock.owner == owner and lock.overlaps(start, end):
                kept.extend(_subtract(lock, start, end))
                changed = True
            else:
                kept.append(lock)
        files.granted = kept
        if changed and self.mirror is not None:
            self.mirror.release(files, owner, start, end, files.holds(owner))
        return self.wake(key)

    def wake(self, key: Hashable) -> list[Waiter]:
        """Grant, in arrival order, the waiters that no longer conflict (also after an outside lock went)."""
        files = self.files.get(key)
        if files is None:
            return []
        granted = []
        for waiter in list(files.waiters):
            if self._grant(files, waiter.lock) is None:
                files.waiters.remove(waiter)
                granted.append(waiter)
        self._tidy(files)
        return granted

    def free_host(self, host: str) -> list[Waiter]:
        """Everything ``host`` held or awaited goes (it rebooted: SM_NOTIFY, or FREE_ALL).

        Returns the other hosts' waiters this let through, granted.
        """
        granted: list[Waiter] = []
        for files in list(self.files.values()):
            mine = {lock.owner for lock in files.granted if lock.owner.host == host}
            files.granted = [lock for lock in files.granted if lock.owner.host != host]
            files.waiters = [w for w in files.waiters if w.lock.owner.host != host]
            files.shares = [s for s in files.shares if s.owner.host != host]
            if self.mirror is not None:
                for owner in mine:
                    self.mirror.release(files, owner, 0, END, False)
            granted.extend(self.wake(files.key))
            self._tidy(files)
        return granted

    def free_owner(self, key: Hashable, owner: Owner) -> list[Waiter]:
        """All of one owner's locks on one file go (a GRANTED callback the client refused)."""
        return self.unlock(key, owner, 0, END)

    # -- DOS share reservations (NLM SHARE / UNSHARE) -----------------------------

    def share(self, key: Hashable, owner: Owner, access: int, mode: int, context: Any = None) -> bool:
        """Reserve: refused if this access is denied by another owner's mode, or this mode denies its access."""
        files = self.file(key, context)
        for s in files.shares:
            if s.owner != owner and (s.mode & access or mode & s.access):
                self._tidy(files)
                return False
        files.shares = [s for s in files.shares if s.owner != owner] + [Share(owner, access, mode)]
        return True

    def unshare(self, key: Hashable, owner: Owner) -> None:
        files = self.files.get(key)
        if files is not None:
            files.shares = [s for s in files.shares if s.owner != owner]
            self._tidy(files)

    def hosts(self) -> set[str]:
        """The hosts holding or awaiting anything."""
        out: set[str] = set()
        for files in self.files.values():
            out.update(lock.owner.host for lock in files.granted)
            out.update(w.lock.owner.host for w in files.waiters)
            out.update(s.owner.host for s in files.shares)
        return out


def ranges(locks: Iterable[Lock]) -> list[tuple[int, int, bool]]:
    """(start, end, exclusive) of ``locks``, sorted: for tests and the status report."""
    return sorted((lock.start, lock.end, lock.exclusive) for lock in locks)
