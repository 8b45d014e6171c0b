"""The portmapper program 100000: portmapper v2 and rpcbind v3/v4 (RFC 1833).

Behaves as Linux's rpcbind does where RFC 1833 leaves room:

* SET and UNSET only from loopback callers, else AUTH_ERROR / AUTH_TOOWEAK;
  UNSET only by the registration's owner or the superuser; v2 UNSET removes
  the TCP and the UDP entry.
* GETPORT and GETADDR answer 0 / "" for an entry whose port nobody holds any
  more (and drop it); GETADDR looks the program up on the netid the query
  arrived on and fills a wildcard address with the address the caller used.
* CALLIT / BCAST / INDIRECT are absent (PROC_UNAVAIL) unless enabled, because
  they make UDP amplifiers (US-CERT TA14-017A); when enabled they never
  forward to the portmapper itself, NFS, MOUNT, NLM, NSM, YPPASSWD or RQUOTA,
  and a result larger than a bounded factor of the request is not relayed.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from typing import Any, Callable, Optional

from twisted.internet import defer

from nfsstack.portmap.registry import SUPERUSER, Registration, Registry
from nfsstack.portmap.types import (
    MAX_UADDR,
    PMAP_PROG,
    PMAP_VERS,
    RPCB,
    RPCBSTAT_HIGHPROC,
    STAT_VERSIONS,
    AddrStat,
    CallArgs,
    CallResult,
    Mapping,
    Netbuf,
    RmtcallResult,
    RmtcallStat,
    RPCBEntry,
    VersionStat,
)
from nfsstack.rpc.address import (
    NETIDS,
    PROT_TO_NETID,
    is_wildcard,
    parse_uaddr,
    taddr_from_uaddr,
    uaddr,
    uaddr_from_taddr,
)
from nfsstack.rpc.message import AuthStat
from nfsstack.rpc.program import AuthDenied, CallContext, NoReply, Procedure, Program, null_procedure
from nfsstack.xdr import Packer, Unpacker

#: Programs CALLIT never forwards to (rpcbind's list, plus the lock managers and NFS_ACL).
NO_FORWARD = frozenset({PMAP_PROG, 100003, 100005, 100009, 100011, 100021, 100024, 100227})
#: A forwarded result may be at most this many times the size of the call that asked for it.
MAX_AMPLIFICATION = 4
#: The netids of local (AF_UNIX) transports: their callers are on this host by construction.
LOCAL_NETIDS = frozenset({"local", "unix"})
#: Bound on the per-(prog, vers, netid) lookup statistics kept for GETSTAT.
MAX_STAT_ENTRIES = 256


def caller_owner(ctx: CallContext) -> str:
    """The owner string rpcbind records for a caller.

    Over the local socket, the caller's uid as the kernel tells it
    (SO_PEERCRED): 0 is the superuser.  Over IP, a privileged source port
    means root on the caller's side; otherwise the AUTH_SYS uid (never 0,
    which an unprivileged port cannot prove).
    """
    if ctx.netid in LOCAL_NETIDS:
        uid = ctx.peer[1]
        return SUPERUSER if uid == 0 else str(uid) if uid > 0 else "unknown"
    if ctx.privileged_port:
        return SUPERUSER
    cred = ctx.credential
    if cred is not None and cred.uid != 0:
        return str(cred.uid)
    return "unknown"


def _pack(p: Packer, item: Any) -> None:
    item.pack(p)


def _pack_list(p: Packer, items: list) -> None:
    p.pack_list(items, _pack)


def _pack_bool(p: Packer, value: bool) -> None:
    p.pack_bool(value)


def _unpack_uaddr(u: Unpacker) -> str:
    return u.unpack_string(MAX_UADDR)


def _pack_stats(p: Packer, stats: list[VersionStat]) -> None:
    for s in stats:
        s.pack(p)


class Portmapper:
    """Holds the registry and statistics; :attr:`program` is its procedure table."""

    def __init__(
        self,
        registry: Registry,
        remote_calls: bool = False,
        forwarder: Optional[Callable[..., defer.Deferred]] = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.remote_calls = remote_calls
        self.forwarder = forwarder
        self.clock = clock
        self.stats = {v: VersionStat([0] * RPCBSTAT_HIGHPROC, addrinfo={}, rmtinfo={}) for v in STAT_VERSIONS}
        self._route_cache: dict[str, str] = {}
        # Version 2 (the portmapper protocol) knows IPv4 only: registered on tcp and udp, as rpcbind does.
        self.program = Program(PMAP_PROG, "portmapper", self._table(), only_on={PMAP_VERS: ("tcp", "udp")})

    # -- the table ----------------------------------------------------------------

    def _table(self) -> dict[int, dict[int, Procedure]]:
        null = null_procedure()
        v2 = {
            0: null,
            1: Procedure("SET", self.pmap_set, Mapping.unpack, _pack_bool, idempotent=False),
            2: Procedure("UNSET", self.pmap_unset, Mapping.unpack, _pack_bool, idempotent=False),
            3: Procedure("GETPORT", self.pmap_getport, Mapping.unpack, Packer.pack_uint),
            4: Procedure("DUMP", self.pmap_dump, None, _pack_list),
        }
        v3 = {
            0: null,
            1: Procedure("SET", self.rpcb_set, RPCB.unpack, _pack_bool, idempotent=False),
            2: Procedure("UNSET", self.rpcb_unset, RPCB.unpack, _pack_bool, idempotent=False),
            3: Procedure("GETADDR", self.rpcb_getaddr, RPCB.unpack, Packer.pack_string),
            4: Procedure("DUMP", self.rpcb_dump, None, _pack_list),
            6: Procedure("GETTIME", self.rpcb_gettime, None, Packer.pack_uint),
            7: Procedure("UADDR2TADDR", self.uaddr2taddr, _unpack_uaddr, _pack),
            8: Procedure("TADDR2UADDR", self.taddr2uaddr, Netbuf.unpack, Packer.pack_string),
        }
        v4 = dict(v3)
        v4[9] = Procedure("GETVERSADDR", self.rpcb_getversaddr, RPCB.unpack, Packer.pack_string)
        v4[11] = Procedure("GETADDRLIST", self.rpcb_getaddrlist, RPCB.unpack, _pack_list)
        v4[12] = Procedure("GETSTAT", self.rpcb_getstat, None, _pack_stats)
        if self.remote_calls:
            v2[5] = Procedure("CALLIT", self.pmap_callit, CallArgs.unpack, _pack)
            v3[5] = Procedure("CALLIT", self.rpcb_callit, CallArgs.unpack, _pack)
            v4[5] = Procedure("BCAST", self.rpcb_callit, CallArgs.unpack, _pack)
            v4[10] = Procedure("INDIRECT", self.rpcb_indirect, CallArgs.unpack, _pack)
        table = {2: v2, 3: v3, 4: v4}
        return {
            vers: {num: self._counted(vers, num, proc) for num, proc in procs.items()} for vers, procs in table.items()
        }

    def _counted(self, vers: int, num: int, proc: Procedure) -> Procedure:
        info = self.stats[vers].info
        handler = proc.handler

        def counted(ctx: CallContext, args: Any) -> Any:
            info[num] += 1
            return handler(ctx, args)

        return dataclasses.replace(proc, handler=counted)

    # -- helpers ------------------------------------------------------------------

    @staticmethod
    def _require_local(ctx: CallContext) -> None:
        """SET and UNSET: from the local socket, 127.0.0.0/8 or ::1 (a v4-mapped loopback address too)."""
        if ctx.netid not in LOCAL_NETIDS and not ctx.is_loopback:
            raise AuthDenied(AuthStat.AUTH_TOOWEAK, f"SET/UNSET from {ctx.peer[0]}")

    def _count_lookup(self, vers: int, prog: int, pvers: int, netid: str, found: bool) -> None:
        addrinfo = self.stats[vers].addrinfo
        key = (prog, pvers, netid)
        entry = addrinfo.get(key)
        if entry is None:
            if len(addrinfo) >= MAX_STAT_ENTRIES:
                return
            entry = addrinfo[key] = AddrStat(prog, pvers, netid)
        if found:
            entry.success += 1
        else:
            entry.failure += 1

    def _caller_side_host(self, ctx: CallContext) -> str:
        """The local address the caller reached us at."""
        host = ctx.local[0]
        if not is_wildcard(host):
            return host
        peer = ctx.peer[0]
        cached = self._route_cache.get(peer)
        if cached is not None:
            return cached
        family = socket.AF_INET6 if ":" in peer else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((peer, 9))  # no packet is sent: this only asks the routing table
                host = s.getsockname()[0]
        except OSError:
            host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        if len(self._route_cache) < 1024:
            self._route_cache[peer] = host
        return host

    def _merged(self, ctx: CallContext, reg: Registration) -> str:
        """The registration's address, a wildcard host replaced by the one the caller used."""
        try:
            host, port = parse_uaddr(reg.addr)
        except ValueError:
            return reg.addr
        nc = NETIDS.get(reg.netid)
        caller_family = socket.AF_INET6 if ctx.netid.endswith("6") else socket.AF_INET
        if is_wildcard(host) and nc is not None and nc.family == caller_family:
            return uaddr(self._caller_side_host(ctx), port)
        return reg.addr

    # -- portmapper v2 (RFC 1833 section 3.2) -------------------------------------

    def pmap_set(self, ctx: CallContext, m: Mapping) -> bool:
        self._require_local(ctx)
        netid = PROT_TO_NETID.get(m.prot)
        if netid is None or not 0 < m.port <= 0xFFFF:
            return False
        ok = self.registry.set(Registration(m.prog, m.vers, netid, uaddr("0.0.0.0", m.port), caller_owner(ctx)))
        if ok:
            self.stats[2].setinfo += 1
        return ok

    def pmap_unset(self, ctx: CallContext, m: Mapping) -> bool:
        self._require_local(ctx)
        owner = caller_owner(ctx)
        tcp = self.registry.unset(m.prog, m.vers, "tcp", owner)
        udp = self.registry.unset(m.prog, m.vers, "udp", owner)
        if tcp or udp:
            self.stats[2].unsetinfo += 1
        return tcp or udp

    def pmap_getport(self, ctx: CallContext, m: Mapping) -> int:
        netid = PROT_TO_NETID.get(m.prot)
        reg = self.registry.lookup(m.prog, m.vers, netid) if netid else None
        self._count_lookup(2, m.prog, m.vers, ctx.netid, reg is not None)
        return reg.port if reg is not None else 0

    def pmap_dump(self, ctx: CallContext, _: None) -> list[Mapping]:
        return [
            Mapping(r.prog, r.vers, NETIDS[r.netid].ipproto, r.port)
            for r in self.registry
            if r.netid in ("tcp", "udp")
        ]

    # -- rpcbind v3 and v4 (RFC 1833 section 2.2) ---------------------------------

    def rpcb_set(self, ctx: CallContext, r: RPCB) -> bool:
        self._require_local(ctx)
        if not r.netid:
            return False
        if r.netid in NETIDS:
            try:
                parse_uaddr(r.addr)
            except ValueError:
                return False
        ok = self.registry.set(Registration(r.prog, r.vers, r.netid, r.addr, caller_owner(ctx)))
        if ok:
            self.stats[ctx.header.vers].setinfo += 1
        return ok

    def rpcb_unset(self, ctx: CallContext, r: RPCB) -> bool:
        self._require_local(ctx)
        ok = self.registry.unset(r.prog, r.vers, r.netid or None, caller_owner(ctx))
        if ok:
            self.stats[ctx.header.vers].unsetinfo += 1
        return ok

    def _getaddr(self, ctx: CallContext, r: RPCB, exact: bool) -> str:
        reg = self.registry.lookup(r.prog, r.vers, ctx.netid, exact=exact)
        self._count_lookup(ctx.header.vers, r.prog, r.vers, ctx.netid, reg is not None)
        return self._merged(ctx, reg) if reg is not None else ""

    def rpcb_getaddr(self, ctx: CallContext, r: RPCB) -> str:
        return self._getaddr(ctx, r, exact=False)

    def rpcb_getversaddr(self, ctx: CallContext, r: RPCB) -> str:
        return self._getaddr(ctx, r, exact=True)

    def rpcb_dump(self, ctx: CallContext, _: None) -> list[RPCB]:
        return [RPCB(r.prog, r.vers, r.netid, r.addr, r.owner) for r in self.registry]

    def rpcb_gettime(self, ctx: CallContext, _: None) -> int:
        return int(self.clock()) & 0xFFFFFFFF

    def uaddr2taddr(self, ctx: CallContext, text: str) -> Netbuf:
        try:
            buf = taddr_from_uaddr(text)
        except ValueError:
            return Netbuf(0, b"")
        return Netbuf(len(buf), buf)

    def taddr2uaddr(self, ctx: CallContext, nb: Netbuf) -> str:
        try:
            return uaddr_from_taddr(nb.buf)
        except ValueError:
            return ""

    def rpcb_getaddrlist(self, ctx: CallContext, r: RPCB) -> list[RPCBEntry]:
        entries = []
        for reg in self.registry:
            if reg.prog != r.prog or reg.vers != r.vers:
                continue
            live = self.registry.lookup(reg.prog, reg.vers, reg.netid, exact=True)
            if live is None:
                continue
            nc = NETIDS.get(live.netid)
            if nc is None:
                entries.append(RPCBEntry(live.addr, live.netid, 0, "-", "-"))
            else:
                entries.append(RPCBEntry(self._merged(ctx, live), live.netid, nc.semantics, nc.protofmly, nc.proto))
        self._count_lookup(4, r.prog, r.vers, ctx.netid, bool(entries))
        return entries

    def rpcb_getstat(self, ctx: CallContext, _: None) -> list[VersionStat]:
        return [self.stats[v] for v in STAT_VERSIONS]

    # -- remote calls (only with remote_calls=True) ----------------------------------

    def _forward(self, ctx: CallContext, a: CallArgs, indirect: bool) -> defer.Deferred:
        vers = ctx.header.vers
        rmtinfo = self.stats[vers].rmtinfo
        key = (a.prog, a.vers, a.proc, ctx.netid, indirect)
        stat = rmtinfo.get(key)
        if stat is None and len(rmtinfo) < MAX_STAT_ENTRIES:
            stat = rmtinfo[key] = RmtcallStat(a.prog, a.vers, a.proc, ctx.netid, int(indirect))

        def failed(reason: str):
            if stat is not None:
                stat.failure += 1
            raise NoReply(reason)

        if a.prog in NO_FORWARD:
            return defer.maybeDeferred(failed, f"CALLIT to program {a.prog} refused")
        reg = self.registry.lookup(a.prog, a.vers, "udp", exact=True)
        if reg is None or self.forwarder is None:
            return defer.maybeDeferred(failed, f"program {a.prog} v{a.vers} not registered on udp")
        request_size = ctx.size or (64 + len(a.args))

        def relayed(result: bytes):
            if len(result) > MAX_AMPLIFICATION * request_size:
                failed(f"result of {len(result)} bytes for a {request_size}-byte request")
            if stat is not None:
                stat.success += 1
            return reg, result

        d = self.forwarder(reg.port, a.prog, a.vers, a.proc, a.args, ctx.header.cred)
        d.addCallbacks(relayed, lambda f: failed(str(f.value)))
        return d

    def pmap_callit(self, ctx: CallContext, a: CallArgs) -> defer.Deferred:
        d = self._forward(ctx, a, indirect=False)
        return d.addCallback(lambda rr: CallResult(rr[0].port, rr[1]))

    def rpcb_callit(self, ctx: CallContext, a: CallArgs, indirect: bool = False) -> defer.Deferred:
        d = self._forward(ctx, a, indirect=indirect)
        return d.addCallback(lambda rr: RmtcallResult(self._merged(ctx, rr[0]), rr[1]))

    def rpcb_indirect(self, ctx: CallContext, a: CallArgs) -> defer.Deferred:
        return self.rpcb_callit(ctx, a, indirect=True)
