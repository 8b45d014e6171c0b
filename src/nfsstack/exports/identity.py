"""Whose rights a call runs with: AUTH_SYS credential or Kerberos principal + export squashing -> fsuid,
fsgid, groups.

An AUTH_SYS call names its ids itself (:func:`effective`).  An RPCSEC_GSS call (RFC 2203) names a Kerberos
principal, which :class:`Principals` maps to a local user through the system's name service, as rpc.svcgssd /
gssproxy do with krb5's default ``auth_to_local`` rule: ``user@REALM`` is the local user ``user`` (its uid,
primary gid and every group ``getgrouplist`` gives, not only 16), if REALM is one of the accepted realms; a
machine principal (``nfs/host@REALM``, ``host/host@REALM``, ``root/host@REALM``: what the Linux client's
root uses) is root; anything else, an unknown user, or another realm, is the anonymous user
(``anonuid``/``anongid``).  The export's squashing applies to the result as to an AUTH_SYS credential
(:func:`caller_identity`).

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

A thread's supplementary groups are not assumed: a server started with some
(Docker gives its root 0, 1, 2, 3, 4, 6 "disk", 10, 11, 20, 26, 27) would
otherwise lend them to every caller whose own list is empty (a squashed or
anonymous user), so the first switch in each thread sets them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import pwd
import threading
import time
from typing import Any, Callable, Iterable, NamedTuple, Optional

from twisted.internet.defer import Deferred

from nfsstack.exports.file import ANON_ID, ExportOptions
from nfsstack.logs import logger
from nfsstack.rpc.message import CallHeader, Credential

log = logger("nfsstack.exports")

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
    if cred is None or options.all_squash:
        return Identity(options.anonuid, options.anongid, ())
    return _squashed(cred.uid, cred.gid, cred.gids, options)


def _squashed(uid: int, gid: int, gids: Iterable[int], options: ExportOptions) -> Identity:
    """``root_squash``: uid 0 and gid 0 become anonuid/anongid, and group 0 leaves the supplementary groups."""
    if options.root_squash:
        if uid == 0:
            uid = options.anonuid
        if gid == 0:
            gid = options.anongid
        gids = tuple(g for g in gids if g != 0)
    return Identity(uid, gid, tuple(gids))


# -- Kerberos principals ----------------------------------------------------------------------

#: The service names of a machine principal (``SERVICE/host@REALM``): the Linux client uses its host's
#: ``nfs/``, ``host/`` or ``root/`` key for root's calls (and for lock and state calls), and knfsd's
#: rpc.svcgssd / gssproxy map it to uid 0.
MACHINE_SERVICES = frozenset({"nfs", "host", "root"})

#: What :meth:`Principals.user` answers for a principal that is no local user: the anonymous user.
UNKNOWN = None


def krb5_default_realm(path: Optional[str] = None) -> Optional[str]:
    """``[libdefaults] default_realm`` of krb5.conf(5) (``$KRB5_CONFIG``, else /etc/krb5.conf), or None.

    Read as text, so this module needs no Kerberos library: for a server that wants
    ``Principals(realms={krb5_default_realm()})``, the local realm of krb5's ``auth_to_local`` default rule.
    """
    path = path or os.environ.get("KRB5_CONFIG", "/etc/krb5.conf").split(":")[0]
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 20)
    except OSError:
        return None
    section = ""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == "libdefaults" and "=" in line:
            name, _, value = line.partition("=")
            if name.strip() == "default_realm" and value.strip():
                return value.strip()
    return None


#: Context creations (and calls) that wait for one principal's lookup at most; more are answered at once (a name
#: service that never answers must not gather every retried creation).
MAX_WAITING = 64
#: Seconds a context creation or a call waits for its principal's lookup at most (with :attr:`Principals.in_thread`):
#: a name service that does not answer delays them no longer; a call whose principal is still not known then
#: gets :class:`LookupPending` (NFS3ERR_JUKEBOX: the client tries again later).
WAIT_LIMIT = 10.0


class LookupPending(OSError):
    """A principal's user is being looked up in a thread and is not known yet: the call is to be tried again
    later (EAGAIN: NFS3ERR_JUKEBOX), rather than looked up here, which would hold up the reactor's thread."""

    def __init__(self, principal: str) -> None:
        super().__init__(errno.EAGAIN, f"the local user of {principal} is still being looked up")


class Principals:
    """Kerberos principals -> local users, looked up in the name service and kept :attr:`lifetime` seconds.

    ``realms``: the realms whose ``user@REALM`` is the local ``user`` (a stack's take :func:`local_realms`,
    krb5's default ``auth_to_local``); None accepts every realm (tests).  A principal of another realm is the
    anonymous user.

    A lookup may reach a directory server (LDAP, sssd), so each principal is looked up once per
    :attr:`lifetime` (60 s: a user added to a group is seen within a minute), negative answers too, and the
    cache is bounded (:attr:`size` entries: the expired ones, then the older half, go).  The lookups
    (``getpwnam``, ``getgrouplist``) and the ``clock`` are parameters, for tests.

    With :attr:`in_thread` (a stack's RPCSEC_GSS engine sets it: its reactor's threads), a slow directory server
    never holds up the reactor's thread: :meth:`prefetch` looks a principal up in a thread when its security
    context is made (before the client's first call), an answer past its lifetime is still given while a thread
    looks the principal up again, and a call of a principal not known (dropped from a full cache, or the
    creation stopped waiting) waits for the lookup (:meth:`pending`).  Nobody waits longer than
    :data:`WAIT_LIMIT`: a call whose principal is still not known then gets :class:`LookupPending`.  Only the
    threads of nfsd's pool, off the reactor already, look up inline.
    """

    def __init__(self, realms: Optional[Iterable[str]] = None, clock: Callable[[], float] = time.monotonic,
                 lifetime: float = 60.0, size: int = 4096,
                 getpwnam: Callable[[str], pwd.struct_passwd] = pwd.getpwnam,
                 getgrouplist: Callable[[str, int], list[int]] = os.getgrouplist) -> None:
        self.realms = None if realms is None else frozenset(realms)
        self.clock = clock
        self.lifetime = lifetime
        self.size = size
        self._getpwnam = getpwnam
        self._getgrouplist = getgrouplist
        #: principal -> (local identity, unsquashed, or UNKNOWN; when the entry expires)
        self._users: dict[str, tuple[Optional[Identity], float]] = {}
        #: Runs ``f(*args)`` in a thread: ``in_thread(f, *args)`` -> Deferred of its result; None: every lookup
        #: inline (:meth:`look_up_in_threads` sets it).
        self.in_thread: Optional[Callable[..., Any]] = None
        #: The thread that may start lookups in threads and gets their answers: the reactor's.
        self._home: Optional[int] = None
        #: principal -> the Deferreds waiting for the lookup of it running in a thread
        self._looking: dict[str, list] = {}
        #: ``call_later(seconds, f)`` (the reactor's callLater): ends a wait of :data:`WAIT_LIMIT`.
        self._call_later: Optional[Callable[..., Any]] = None
        self.wait_limit = WAIT_LIMIT
        self._keeping = threading.Lock()

    def look_up_in_threads(self, in_thread: Callable[..., Any], call_later: Callable[..., Any]) -> None:
        """From now on, principals are looked up with ``in_thread`` (``deferToThread``), started from the thread
        calling this (the reactor's) only: a call running in one of nfsd's pool threads (a large READ or WRITE)
        is off the reactor already, and looks up inline what it needs.  ``call_later`` (the same reactor's
        ``callLater``) bounds the waits (:data:`WAIT_LIMIT`)."""
        self.in_thread = in_thread
        self._home = threading.get_ident()
        self._call_later = call_later

    def user(self, principal: Optional[str]) -> tuple[Optional[Identity], float]:
        """The local user ``principal`` is (unsquashed; :data:`ROOT` for a machine principal; UNKNOWN for none)
        and until when that answer holds (:attr:`clock` time; already past for an answer given while it is
        looked up again)."""
        now = self.clock()
        if principal is None:
            return UNKNOWN, now + self.lifetime
        entry = self._users.get(principal)
        if entry is not None:
            if now < entry[1]:
                return entry
            if self._look_up_in_thread(principal):
                return self._users.get(principal, entry)  # the old answer while a thread looks again
        elif self._look_up_in_thread(principal):
            entry = self._users.get(principal)  # an in_thread that answered at once
            if entry is None:
                raise LookupPending(principal)
            return entry
        entry = (self._lookup(principal), now + self.lifetime)
        self._keep(principal, entry)
        return entry

    def pending(self, principal: Optional[str]):
        """A Deferred to wait for before a call of ``principal`` is admitted: None when its answer is known
        (fresh or old: :meth:`user` gives it at once) or is looked up inline (no :attr:`in_thread`, or off the
        reactor's thread); else it fires (with None) once a thread has looked it up, or after
        :data:`WAIT_LIMIT` seconds, whichever comes first."""
        if principal is None or principal in self._users:
            return None
        return self._wait_for(principal)

    def _wait_for(self, principal: str):
        """Start a lookup of ``principal`` in a thread unless one runs, and a Deferred of its end (bounded in
        time and in number: None when :data:`MAX_WAITING` already wait, or when nothing can be waited for)."""
        if not self._look_up_in_thread(principal):
            return None
        waiters = self._looking.get(principal)
        if waiters is None or len(waiters) >= MAX_WAITING:  # answered at once (None: it already was)
            return None
        waiting = Deferred()
        waiters.append(waiting)
        if self._call_later is not None:
            timer = self._call_later(self.wait_limit, self._stop_waiting, principal, waiting)
            waiting.addBoth(lambda result: (timer.cancel() if timer.active() else None, result)[1])
        return waiting

    def _stop_waiting(self, principal: str, waiting: Deferred) -> None:
        waiters = self._looking.get(principal)
        if waiters is not None and waiting in waiters:
            waiters.remove(waiting)
        if not waiting.called:
            waiting.callback(None)

    def prefetch(self, principal: str):
        """Look ``principal`` up in a thread unless its answer is fresh: a Deferred firing (with None) once it
        is known, or None when nothing need be waited for (known, looked up inline when a call needs it
        without :attr:`in_thread`, or too many creations already waiting for it)."""
        entry = self._users.get(principal)
        if entry is not None and self.clock() < entry[1]:
            return None
        return self._wait_for(principal)

    def _look_up_in_thread(self, principal: str) -> bool:
        """Start a lookup of ``principal`` in a thread unless one runs: whether one was started or runs (False
        without :attr:`in_thread`, or off the thread that may start them)."""
        if self.in_thread is None or threading.get_ident() != self._home:
            return False
        if principal in self._looking:
            return True
        started = self.clock()
        try:
            looking = self.in_thread(self._lookup, principal)
        except Exception:
            log.failure("starting the lookup of the Kerberos principal {principal}", principal=principal)
            return False
        self._looking[principal] = []

        def found(user: Optional[Identity]) -> None:
            self._keep(principal, (user, started + self.lifetime))

        def failed(failure) -> None:  # _lookup catches what the name service raises: this is a bug, said once
            log.failure("looking up the Kerberos principal {principal}", failure, principal=principal)
            # The answer a name service's error gives (the anonymous user), for the lifetime: else each call
            # would start the lookup again and get JUKEBOX, and its client would retry for ever.
            self._keep(principal, (UNKNOWN, started + self.lifetime))

        def done(_) -> None:
            for waiting in self._looking.pop(principal, ()):
                if not waiting.called:
                    waiting.callback(None)

        looking.addCallbacks(found, failed).addBoth(done)
        return True

    def _keep(self, principal: str, entry: tuple[Optional[Identity], float]) -> None:
        """Keep ``entry`` as the newest answer; when :attr:`size` are kept, the expired ones go, and if that is
        not enough, the older half (the order answers came in): the principals of the last minutes stay, so the
        clients at work do not all wait for a new lookup at once, as they would if the cache were emptied."""
        users = self._users
        with self._keeping:  # nfsd's pool threads keep what they looked up inline, beside the reactor's thread
            users.pop(principal, None)
            if len(users) >= self.size:
                now = self.clock()
                for name in [name for name, (_, expires) in list(users.items()) if expires <= now]:
                    del users[name]
                if len(users) >= self.size:
                    for name in list(users)[: len(users) - self.size // 2]:
                        del users[name]
            users[principal] = entry

    def _lookup(self, principal: str) -> Optional[Identity]:
        name, at, realm = principal.rpartition("@")
        if not at:
            name, realm = principal, ""
        if self.realms is not None and realm not in self.realms:
            return UNKNOWN
        service, slash, host = name.partition("/")
        if slash:
            # SERVICE/instance: a machine's key if the service is one of those, else not a user at all
            # (alice/admin@REALM is not alice: krb5's default rule maps one-component names only).
            return ROOT if service in MACHINE_SERVICES and host and "/" not in host else UNKNOWN
        if not name:
            return UNKNOWN
        try:
            entry = self._getpwnam(name)
            groups = self._getgrouplist(name, entry.pw_gid)
        except (KeyError, OSError, UnicodeError, ValueError):
            return UNKNOWN
        return Identity(entry.pw_uid, entry.pw_gid, tuple(groups))

    def effective(self, principal: Optional[str], options: ExportOptions) -> tuple[Identity, float]:
        """The identity a call of ``principal`` gets on an export, and until when (see :meth:`user`):
        the local user squashed as an AUTH_SYS credential is (root_squash, all_squash, anonuid/anongid)."""
        user, expires = self.user(principal)
        if user is UNKNOWN or options.all_squash:
            return Identity(options.anonuid, options.anongid, ()), expires
        who = _squashed(user.uid, user.gid, user.gids, options)
        return (ROOT if who.uid == 0 and who.gid == 0 else who), expires


#: nfs-utils' idmapd.conf(5), whose ``[General] Local-Realms`` lists the realms whose users are local users.
IDMAPD_CONF = "/etc/idmapd.conf"


def idmapd_local_realms(path: Optional[str] = None) -> Optional[frozenset[str]]:
    """``[General] Local-Realms`` of idmapd.conf(5) (:data:`IDMAPD_CONF`), or None when it sets none.

    A comma-separated list; sections and names are matched without regard to case, as libnfsidmap's
    configuration reader does.  Read as text, as :func:`krb5_default_realm` is."""
    try:
        with open(path or IDMAPD_CONF, encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 20)
    except OSError:
        return None
    section = ""
    found = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().lower()
        elif section == "general" and "=" in line:
            name, _, value = line.partition("=")
            if name.strip().lower() == "local-realms":
                found = realm_list(value)
    return found or None


def realm_list(text: str) -> frozenset[str]:
    """The realms of a comma-separated list (``--local-realms``, idmapd.conf's ``Local-Realms``)."""
    return frozenset(realm.strip() for realm in text.split(",") if realm.strip())


def local_realms(given: Optional[str] = None) -> frozenset[str]:
    """The realms whose users are local users: ``given`` (``--local-realms``, a comma-separated list; empty:
    none), else idmapd.conf's ``Local-Realms`` (as libnfsidmap, which knfsd's rpc.svcgssd maps principals
    with), else as krb5's default ``auth_to_local`` rule has it, krb5.conf's ``default_realm`` alone; none
    (every principal the anonymous user) when none of them names one.  A principal of a realm not listed, one
    that only trusts ours (cross-realm) for instance, is never taken for the local user of the same name."""
    if given is not None:
        return realm_list(given)
    listed = idmapd_local_realms()
    if listed is not None:
        return listed
    realm = krb5_default_realm()
    return frozenset({realm}) if realm else frozenset()


#: The principals of programs made without a stack's own (tests, embedding): the users of krb5.conf's default
#: realm (read once, at import) are local users, looked up inline.  A stack has its own
#: (``NfsStackService.principals``), which its RPCSEC_GSS engine looks up in threads.
PRINCIPALS = Principals(realms=local_realms())


def caller_identity(header: CallHeader, options: ExportOptions, principals: Principals = PRINCIPALS) -> Identity:
    """The identity a call gets on an export: from its Kerberos principal for an RPCSEC_GSS call
    (:class:`Principals`), else from its AUTH_SYS credential (:func:`effective`; AUTH_NONE is anonymous).

    Both are cached; :class:`~nfsstack.exports.policy.Admission` keeps each client's verdict besides, so nfsd
    calls neither on most calls."""
    if header.pseudoflavor:
        return principals.effective(header.principal, options)[0]
    return effective(header.credential, options)


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
        self._state.groups = None
        self._main = self._state  # the thread that made the switcher (the reactor's) starts as root
        nrs = _NR.get(platform.machine())
        if nrs is None:
            raise OSError(f"no setfsuid system call numbers for {platform.machine()}")
        self._setfsuid, self._setfsgid, self._setgroups = nrs

    @property
    def current(self) -> Identity:
        return getattr(self._state, "who", ROOT)

    def become(self, who: Identity) -> None:
        state = self._state
        try:
            current = state.who
        except AttributeError:  # a thread's first call: threads start as root, with groups not known here
            current = state.who = ROOT
            state.groups = None
        if who is current or who == current:
            return
        try:
            self._switch(who, current, state)
        except OSError:
            state.who, state.groups = _UNSURE, None
            if who != ROOT:
                try:
                    self._switch(ROOT, _UNSURE, state)
                    state.who = ROOT
                except OSError:
                    pass  # stays _UNSURE: every later switch tries everything again, and checks it
            raise
        state.who = who

    def _switch(self, who: Identity, current: Identity, state) -> None:
        """Set the thread's groups (where they are not ``who``'s, or not known: ``state.groups`` None), fsgid
        and fsuid (where ``current``'s differ), each checked."""
        syscall = _libc.syscall
        if who.gids != state.groups:
            array = _GROUP_ARRAYS.get(who.gids)
            if array is None:
                if len(_GROUP_ARRAYS) >= 4096:
                    _GROUP_ARRAYS.clear()
                array = _GROUP_ARRAYS[who.gids] = (ctypes.c_uint32 * max(1, len(who.gids)))(*who.gids)
            if syscall(self._setgroups, len(who.gids), array) != 0:
                e = ctypes.get_errno()
                raise OSError(e, "setgroups failed")
            state.groups = who.gids
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
