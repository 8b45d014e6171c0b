"""status, program 100024 version 1 (XNFS C702 chapter 11): the network status monitor.

It answers what rpc.statd answers: SM_STAT and SM_MON give the state number,
SM_MON / SM_UNMON / SM_UNMON_ALL keep the list of monitored hosts (only for
callers on this host, as statd allows), SM_SIMU_CRASH acts as a reboot, and
SM_NOTIFY from a host that rebooted is handed to whoever monitors it: the
in-process lock manager directly, other local daemons by an RPC callback.
At start the state number advances and every host monitored before is sent
SM_NOTIFY, retried for a bounded time, as sm-notify does.
"""

from __future__ import annotations

import socket
from typing import Callable, Optional

from twisted.internet import defer, threads

from nfsstack.logs import logger
from nfsstack.nsm.state import Monitor, NsmState
from nfsstack.nsm.types import (
    SM_PROG,
    SM_VERS,
    STAT_FAIL,
    STAT_SUCC,
    Mon,
    MyId,
    Proc,
    StatChge,
    pack_stat_chge,
    pack_stat_res,
    pack_status,
    unpack_mon,
    unpack_mon_id,
    unpack_my_id,
    unpack_name,
    unpack_stat_chge,
)
from nfsstack.rpc.program import CallContext, Procedure, Program, null_procedure
from nfsstack.xdr import Packer

log = logger("nfsstack.nsm")

NLM_PROG = 100021
#: Seconds to wait before each try of SM_NOTIFY to a host (about 2 minutes in all).
NOTIFY_BACKOFF = (0.0, 2.0, 5.0, 10.0, 20.0, 40.0, 60.0)


def _pack_int(p: Packer, value: int) -> None:
    p.pack_int(value)


class Nsm:
    """The status monitor; :attr:`program` is its procedure table."""

    def __init__(self, state: NsmState, reactor, remote=None, backoff=NOTIFY_BACKOFF) -> None:
        self.state = state
        self.reactor = reactor
        self.remote = remote
        self.backoff = backoff
        #: In-process listeners told of every reboot notice: f(mon_name, address, state).
        self.listeners: list[Callable[[str, Optional[str], int], None]] = []
        self.notices = {"received": 0, "sent": 0, "failed": 0}
        self.program = Program(SM_PROG, "status", {SM_VERS: {
            0: null_procedure(),
            Proc.STAT: Procedure("SM_STAT", self.sm_stat, unpack_name, pack_stat_res),
            Proc.MON: Procedure("SM_MON", self.sm_mon, unpack_mon, pack_stat_res, idempotent=False),
            Proc.UNMON: Procedure("SM_UNMON", self.sm_unmon, unpack_mon_id, _pack_int, idempotent=False),
            Proc.UNMON_ALL: Procedure("SM_UNMON_ALL", self.sm_unmon_all, unpack_my_id, _pack_int,
                                      idempotent=False),
            Proc.SIMU_CRASH: Procedure("SM_SIMU_CRASH", self.sm_simu_crash, None, None, idempotent=False),
            Proc.NOTIFY: Procedure("SM_NOTIFY", self.sm_notify, unpack_stat_chge, None),
        }})

    def start(self) -> int:
        """Advance the state number and tell every host monitored before that we restarted."""
        state = self.state.start()
        log.info("NSM state {state}; {n} hosts to notify", state=state, n=len(self.state.to_notify))
        self.notify_all()
        return state

    # -- procedures -----------------------------------------------------------------------

    def sm_stat(self, ctx: CallContext, name: str) -> tuple[int, int]:
        return STAT_SUCC, self.state.state

    def sm_mon(self, ctx: CallContext, mon: Mon) -> tuple[int, int]:
        if not ctx.is_loopback:
            log.warn("SM_MON for {name} from {peer} refused: not from this host", name=mon.mon_name,
                     peer=ctx.peer[0])
            return STAT_FAIL, self.state.state
        m = mon.my_id
        self.state.monitor(Monitor(mon.mon_name, m.my_name, m.my_prog, m.my_vers, m.my_proc, mon.priv.hex()))
        return STAT_SUCC, self.state.state

    def sm_unmon(self, ctx: CallContext, args: tuple[str, MyId]) -> int:
        name, m = args
        if ctx.is_loopback:
            self.state.unmonitor(name, Monitor(name, m.my_name, m.my_prog, m.my_vers, m.my_proc))
        return self.state.state

    def sm_unmon_all(self, ctx: CallContext, m: MyId) -> int:
        if ctx.is_loopback:
            self.state.unmonitor_all(Monitor("", m.my_name, m.my_prog, m.my_vers, m.my_proc))
        return self.state.state

    def sm_simu_crash(self, ctx: CallContext, _) -> None:
        if ctx.is_loopback:
            log.info("SM_SIMU_CRASH: state {state}", state=self.state.crash())
            self.notify_all()
        return None

    def sm_notify(self, ctx: CallContext, chge: StatChge) -> None:
        """A host rebooted: tell whoever monitors it (by its name, or by the address the notice came from)."""
        self.notices["received"] += 1
        log.info("SM_NOTIFY from {peer}: {name} is at state {state}", peer=ctx.peer[0], name=chge.mon_name,
                 state=chge.state)
        matches = self.state.matching(chge.mon_name, ctx.peer[0])
        for listener in self.listeners:
            listener(chge.mon_name, ctx.peer[0], chge.state)
        for m in matches:
            if not m.internal:
                self._callback(m, chge)
        return None

    # -- for the in-process lock manager ---------------------------------------------------

    def monitor_internal(self, mon_name: str, address: str, local: str) -> None:
        """Monitor a lock client: its locks go when it reboots, and it is told when we do."""
        self.state.monitor(Monitor(mon_name, "localhost", NLM_PROG, 4, 16, address=address, local=local,
                                   internal=True))

    # -- calls out --------------------------------------------------------------------------

    def _callback(self, m: Monitor, chge: StatChge) -> None:
        """SM callback (struct status) to a local daemon that asked with SM_MON."""
        if self.remote is None:
            return
        p = Packer()
        pack_status(p, chge.mon_name, chge.state, m.priv_bytes)
        host = "127.0.0.1"  # SM_MON is only taken from this host: its my_name is this host
        self.remote.call(host, m.my_prog, m.my_vers, m.my_proc, p.getvalue(), "udp", timeout=5.0).addErrback(
            lambda f: log.info("status callback to {name} failed: {e}", name=m.my_name, e=f.value))

    def notify_all(self) -> None:
        for m in list(self.state.to_notify):
            self._notify(m, 0)

    def _notify(self, m: Monitor, attempt: int) -> None:
        if self.remote is None:
            return
        if attempt >= len(self.backoff):
            log.warn("gave up telling {host} that we restarted", host=m.address or m.mon_name)
            self.notices["failed"] += 1
            self.state.notified(m)
            return

        @defer.inlineCallbacks
        def send():
            address = m.address or (yield threads.deferToThread(socket.gethostbyname, m.mon_name))
            p = Packer()
            pack_stat_chge(p, StatChge(m.local or socket.gethostname(), self.state.state))
            yield self.remote.call(address, SM_PROG, SM_VERS, Proc.NOTIFY, p.getvalue(), "udp", timeout=5.0)

        def sent(_):
            self.notices["sent"] += 1
            log.info("told {host} of our state {state}", host=m.address or m.mon_name, state=self.state.state)
            self.state.notified(m)

        def failed(f):
            log.info("SM_NOTIFY to {host} failed ({e}); trying again", host=m.address or m.mon_name, e=f.value)
            self._notify(m, attempt + 1)

        self.reactor.callLater(self.backoff[attempt], lambda: send().addCallbacks(sent, failed))
