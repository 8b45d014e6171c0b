"""Whose rights a call runs with: AUTH_SYS credential + export squashing -> fsuid, fsgid, groups.

Each filesystem call runs with the caller's (squashed) ids, switched for this
thread only with the raw setfsuid/setfsgid/setgroups system calls (glibc's
setgroups would change every thread), so the kernel enforces exactly what it
would for a local user.  Back to root between calls: resolving handles needs
CAP_DAC_READ_SEARCH, which a non-zero fsuid drops.

``setfsuid`` and ``setfsgid`` never fail: without CAP_SETUID / CAP_SETGID they
leave the ids as they were and return the old one.  A process that cannot
switch (a plain user given CAP_DAC_READ_SEARCH, a container without
CAP_SETUID) would then serve every client with its own rights, so every switch
is read back (``setfsuid(-1)`` answers the current id) and one that did not
take effect fails the call; :func:`can_switch` tells at start-up whether this
process can switch at all.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import threading
from typing import NamedTuple, Optional

from nfsstack.exports.file import ANON_ID, ExportOptions
from nfsstack.rpc.message import Credential

_NR = {"x86_64": (122, 123, 116), "aarch64": (151, 152, 159)}
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long


class Identity(NamedTuple):
    uid: int
    gid: int
    gids: tuple[int, ...] = ()


ROOT = Identity(0, 0, ())


#: (id(credential), id(options)) -> (credential, options, identity).  By identity, not by value: a client's
#: credential and its options are the same objects call after call (decoded once, looked up once), and hashing
#: two dataclasses by value cost more than the rest of this function.  The entry keeps both alive, so their ids
#: cannot be reused by other objects while it is there.
_EFFECTIVE: dict = {}


def effective(cred: Optional[Credential], options: ExportOptions) -> Identity:
    """The identity a call gets on an export (exports(5): root_squash, all_squash, anonuid/anongid)."""
    entry = _EFFECTIVE.get((id(cred), id(options)))
    if entry is not None and entry[0] is cred and entry[1] is options:
        return entry[2]
    who = _effective(cred, options)
    if who.uid == 0 and who.gid == 0:
        # Root's supplementary groups change nothing (it passes every permission check), so every
        # unsquashed root is the one ROOT and no call switches identity for it.
        who = ROOT
    if len(_EFFECTIVE) >= 4096:
        _EFFECTIVE.clear()
    _EFFECTIVE[(id(cred), id(options))] = (cred, options, who)
    return who


def _effective(cred: Optional[Credential], options: ExportOptions) -> Identity:
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


class IdentityNotSwitched(PermissionError):
    """The kernel kept the thread's previous filesystem identity: the call must not run (NFS3ERR_PERM)."""

    def __init__(self, what: str) -> None:
        super().__init__(errno.EPERM, f"{what} did not take effect (no CAP_SETUID/CAP_SETGID?)")


#: setgroups' argument for each list of groups, made once (the kernel copies it: never written, shared by threads).
_GROUP_ARRAYS: dict[tuple[int, ...], ctypes.Array] = {}

#: A thread whose identity is unknown after a failed switch: the next switch makes every system call again.
_UNSURE = Identity(-1, -1, (-1,))


class Switcher:
    """Switches the calling thread's filesystem identity, skipping the system calls when nothing changes.

    Every switch is checked: the ids are read back, and one the kernel did not
    take raises :class:`IdentityNotSwitched` after putting the thread back to
    root as far as it can.
    """

    def __init__(self) -> None:
        self._state = threading.local()
        self._state.who = ROOT
        self._main = self._state  # the thread that made the switcher (the reactor's) starts as root
        nrs = _NR.get(platform.machine())
        if nrs is None:
            raise OSError(f"no setfsuid system call numbers for {platform.machine()}")
        self._setfsuid, self._setfsgid, self._setgroups = nrs

    @property
    def current(self) -> Identity:
        return getattr(self._state, "who", ROOT)

    def become(self, who: Identity) -> None:
        try:
            current = self._state.who
        except AttributeError:  # a thread's first call: threads start as root
            current = ROOT
        if who is current or who == current:
            return
        try:
            self._switch(who, current)
        except OSError:
            self._state.who = _UNSURE
            if who != ROOT:
                try:
                    self._switch(ROOT, _UNSURE)
                    self._state.who = ROOT
                except OSError:
                    pass  # stays _UNSURE: every later switch tries everything again, and checks it
            raise
        self._state.who = who

    def _switch(self, who: Identity, current: Identity) -> None:
        syscall = _libc.syscall
        if who.gids != current.gids:
            array = _GROUP_ARRAYS.get(who.gids)
            if array is None:
                if len(_GROUP_ARRAYS) >= 4096:
                    _GROUP_ARRAYS.clear()
                array = _GROUP_ARRAYS[who.gids] = (ctypes.c_uint32 * max(1, len(who.gids)))(*who.gids)
            if syscall(self._setgroups, len(who.gids), array) != 0:
                e = ctypes.get_errno()
                raise OSError(e, "setgroups failed")
        if who.gid != current.gid:
            syscall(self._setfsgid, who.gid)
            if syscall(self._setfsgid, -1) != who.gid:  # -1 is no id: the call only answers the current one
                raise IdentityNotSwitched(f"setfsgid({who.gid})")
        if who.uid != current.uid:
            syscall(self._setfsuid, who.uid)
            if syscall(self._setfsuid, -1) != who.uid:
                raise IdentityNotSwitched(f"setfsuid({who.uid})")

    def root(self) -> None:
        self.become(ROOT)

    def acting_as(self, who: Identity) -> "_Acting":
        """A context manager: the block's filesystem calls run as ``who``, then back to root."""
        return _Acting(self, who)


class NoSwitching(Switcher):
    """The identity "switcher" of a plain user's server, which cannot act as anyone else: every call runs as the
    server's own user, whoever the client says it is (logged at start, and in the README).  Exports asking
    for another identity are refused at start (:func:`unhonoured_as_plain_user`)."""

    def become(self, who: Identity) -> None:
        self._state.who = who


def unhonoured_as_plain_user(exports, uid: int, gid: int) -> list[str]:
    """The options of ``exports`` a server running as ``uid``/``gid`` without CAP_SETUID cannot honour, as
    "FILE:LINE: ..." errors: ``no_root_squash`` (root would be the server's user, not root), and an
    ``anonuid``/``anongid`` other than the server's own (the default, nobody, is taken to mean "anyone": every
    client is the server's user anyway)."""
    errors = []
    for export in exports:
        for spec, options in export.clients:
            where = f"{exports.source}:{export.line}: {export.path} {spec.text}"
            if not options.root_squash and not options.all_squash:
                errors.append(f"{where}: no_root_squash cannot be honoured by a server running as uid {uid}: "
                              "every client acts as the server's user (run as root, or remove it)")
            if options.anonuid not in (ANON_ID, uid) or options.anongid not in (ANON_ID, gid):
                errors.append(f"{where}: anonuid={options.anonuid}/anongid={options.anongid} cannot be honoured "
                              f"by a server running as uid {uid} gid {gid}: every client acts as the server's user")
    return errors


def can_switch() -> Optional[str]:
    """None when this process can act as its clients (switch to another uid, gid and groups and back to root);
    else why not, in a few words.

    Probed in a thread of its own, so no other thread's identity is touched.
    """
    reasons: list[str] = []

    def probe() -> None:
        other = 65534 if os.getuid() != 65534 else 65533
        ids = Switcher()
        ids._state.who = _UNSURE  # check root too: a plain user's thread starts with its own ids
        try:
            ids.become(ROOT)
            ids.become(Identity(other, other, (other,)))
            ids.become(ROOT)
        except OSError as e:
            reasons.append(e.strerror or str(e))

    thread = threading.Thread(target=probe, name="identity-probe")
    thread.start()
    thread.join()
    return reasons[0] if reasons else None


class _Acting:
    __slots__ = ("switcher", "who")

    def __init__(self, switcher: Switcher, who: Identity) -> None:
        self.switcher = switcher
        self.who = who

    def __enter__(self) -> None:
        if self.who is not ROOT:
            self.switcher.become(self.who)

    def __exit__(self, *exc) -> None:
        if self.who is not ROOT:
            self.switcher.become(ROOT)
