"""Whose rights a call runs with: AUTH_SYS credential + export squashing -> fsuid, fsgid, groups.

Each filesystem call runs with the caller's (squashed) ids, switched for this
thread only with the raw setfsuid/setfsgid/setgroups system calls (glibc's
setgroups would change every thread), so the kernel enforces exactly what it
would for a local user.  Back to root between calls: resolving handles needs
CAP_DAC_READ_SEARCH, which a non-zero fsuid drops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import threading
from contextlib import contextmanager
from typing import Iterator, NamedTuple, Optional

from nfsstack.exports import ExportOptions
from nfsstack.rpc.message import Credential

_NR = {"x86_64": (122, 123, 116), "aarch64": (151, 152, 159)}
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long


class Identity(NamedTuple):
    uid: int
    gid: int
    gids: tuple[int, ...] = ()


ROOT = Identity(0, 0, ())


def effective(cred: Optional[Credential], options: ExportOptions) -> Identity:
    """The identity a call gets on an export (exports(5): root_squash, all_squash, anonuid/anongid)."""
    anon = Identity(options.anonuid, options.anongid, ())
    if cred is None or options.all_squash:
        return anon
    uid, gid, gids = cred.uid, cred.gid, cred.gids
    if options.root_squash:
        if uid == 0:
            uid = options.anonuid
        if gid == 0:
            gid = options.anongid
        gids = tuple(g for g in gids if g != 0)
    return Identity(uid, gid, tuple(gids))


class Switcher:
    """Switches the calling thread's filesystem identity, skipping the system calls when nothing changes."""

    def __init__(self) -> None:
        self._state = threading.local()
        nrs = _NR.get(platform.machine())
        if nrs is None:
            raise OSError(f"no setfsuid system call numbers for {platform.machine()}")
        self._setfsuid, self._setfsgid, self._setgroups = nrs

    @property
    def current(self) -> Identity:
        return getattr(self._state, "who", ROOT)

    def become(self, who: Identity) -> None:
        current = self.current
        if who == current:
            return
        if who.gids != current.gids:
            array = (ctypes.c_uint32 * max(1, len(who.gids)))(*who.gids)
            if _libc.syscall(self._setgroups, len(who.gids), array) != 0:
                e = ctypes.get_errno()
                raise OSError(e, "setgroups failed")
        if who.gid != current.gid:
            _libc.syscall(self._setfsgid, who.gid)
        if who.uid != current.uid:
            _libc.syscall(self._setfsuid, who.uid)
        self._state.who = who

    def root(self) -> None:
        self.become(ROOT)

    @contextmanager
    def acting_as(self, who: Identity) -> Iterator[None]:
        """Run the block's filesystem calls as ``who``, then back to root."""
        self.become(who)
        try:
            yield
        finally:
            self.become(ROOT)
