"""``--workers N``: nfsd served by N worker processes on one port, supervised by the stack's process.

Python does a call's protocol work on one core, so nfsd scales out as
processes.  The stack's process makes nfsd's sockets, a reuseport group of N
per address and transport, steered by the client's address
(:mod:`nfsstack.rpc.reuseport`), registers nfsd with the portmapper, and
lends socket ``i`` of every group to worker ``i`` (:mod:`nfsstack.worker`),
which serves nfsd as the stack's process would.  Everything else (the
portmapper, mountd, nlockmgr, status, port 1110) stays here.

:class:`NfsdWorkers` starts the workers, restarts one that exits while the
stack runs (at most once a second, and slower while it keeps dying at
start), passes an exports reload on to every worker (SIGHUP), asks them for
their counters (a line on the worker's standard input, a JSON line back, a
worker that does not answer in time is reported as not answering) and stops
them with the stack (SIGTERM, then SIGKILL after :attr:`NfsdWorkers.stop_timeout`).
Since the sockets stay open here, a dead worker's clients wait in its
socket's queues and reach the restarted worker: each client always reaches
the same place, whose duplicate-request cache knows its calls.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Optional

from twisted.application import service
from twisted.internet import defer, error, protocol

import nfsstack
from nfsstack.logs import logger
from nfsstack.rpc.reuseport import SharedPortService

log = logger("nfsstack.workers")

#: The first descriptor number of the sockets a worker is lent (0, 1 and 2 are its pipes).
FIRST_SOCKET_FD = 3


def default_workers() -> int:
    """The CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class WorkerProcess(protocol.ProcessProtocol):
    """One worker: its log relayed line by line, its answers matched to the requests waiting for them."""

    def __init__(self, supervisor: "NfsdWorkers", index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.pid: Optional[int] = None
        self.started = 0.0
        #: Set when the stack stops it: its end is expected.
        self.stopping = False
        self.ended: defer.Deferred = defer.Deferred()
        self.waiting: dict[int, defer.Deferred] = {}
        self._out = b""
        self._err = b""

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def outReceived(self, data: bytes) -> None:
        self._out += data
        *lines, self._out = self._out.split(b"\n")
        for line in lines:
            try:
                answer = json.loads(line)
            except ValueError:
                log.warn("nfsd worker {i} (pid {pid}) said something unexpected: {line!r}", i=self.index,
                         pid=self.pid, line=line[:200])
                continue
            d = self.waiting.pop(answer.get("id"), None)
            if d is not None and not d.called:
                d.callback(answer)

    def errReceived(self, data: bytes) -> None:
        self._err += data
        *lines, self._err = self._err.split(b"\n")
        for line in lines:
            log.info("nfsd worker {i} (pid {pid}): {line}", i=self.index, pid=self.pid,
                     line=line.decode("utf-8", "replace"))

    def ask(self, number: int, timeout: float) -> defer.Deferred:
        """Its counters (a dict), or None if it does not answer in ``timeout`` seconds."""
        d: defer.Deferred = defer.Deferred()
        self.waiting[number] = d
        try:
            self.transport.write(b"counters %d\n" % number)
        except Exception:  # noqa: BLE001 (a worker just gone: not answering)
            self.waiting.pop(number, None)
            return defer.succeed(None)
        timer = self.supervisor.reactor.callLater(timeout, lambda: d.called or (self.waiting.pop(number, None),
                                                                                d.callback(None)))
        d.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])
        return d

    def processEnded(self, reason) -> None:
        for d in list(self.waiting.values()):
            if not d.called:
                d.callback(None)
        self.waiting.clear()
        self.supervisor.ended(self, reason)
        self.ended.callback(None)


def how_it_ended(reason) -> str:
    value = reason.value
    if isinstance(value, error.ProcessTerminated):
        if value.signal is not None:
            return f"was killed by signal {value.signal}"
        return f"exited with status {value.exitCode}"
    return "exited"


class NfsdWorkers(service.Service):
    """Starts, restarts, reloads, asks and stops the nfsd workers serving ``shared``'s sockets."""

    name = "nfsd-workers"
    #: Seconds a stopping worker gets after SIGTERM before SIGKILL.
    stop_timeout = 10.0
    #: Seconds a worker gets to answer a request for its counters.
    answer_timeout = 2.0
    #: A worker restarts at most once in this many seconds; one dying sooner after its start waits longer,
    #: doubling up to :attr:`max_backoff`.
    min_interval = 1.0
    max_backoff = 30.0

    def __init__(self, shared: SharedPortService, config: dict, reactor, size: int) -> None:
        self.shared = shared
        self.config = config
        self.reactor = reactor
        self.size = size
        self.processes: list[Optional[WorkerProcess]] = [None] * size
        self.restarts = [0] * size
        self._backoff = [0.0] * size
        self._pending: dict[int, object] = {}
        self._requests = 0

    def startService(self) -> None:
        super().startService()
        if not self.shared.groups:
            return  # nfsd's port could not be had (a partial stack, --partial): it is reported as not serving
        for index in range(self.size):
            self._spawn(index)
        log.info("nfsd served by {n} worker processes (pids {pids}) on port {port}, each client steered to one "
                 "by its address", n=self.size, pids=", ".join(str(p.pid) for p in self.processes if p),
                 port=self.shared.port)

    def _spawn(self, index: int) -> None:
        self._pending.pop(index, None)
        fds: dict[int, object] = {0: "w", 1: "r", 2: "r"}
        sockets = []
        for n, (group, sock) in enumerate(self.shared.member_sockets(index)):
            fds[FIRST_SOCKET_FD + n] = sock.fileno()
            sockets.append({"fd": FIRST_SOCKET_FD + n, "netid": group.netid, "host": group.host})
        config = dict(self.config, index=index, sockets=sockets, cwd=os.getcwd(), parent=os.getpid())
        env = dict(os.environ)
        # The worker imports this very nfsstack, wherever it was found.
        here = os.path.dirname(os.path.dirname(os.path.abspath(nfsstack.__file__)))
        env["PYTHONPATH"] = os.pathsep.join([here] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        process = WorkerProcess(self, index)
        process.started = self.reactor.seconds()
        self.reactor.spawnProcess(process, sys.executable, [sys.executable, "-m", "nfsstack.worker",
                                                            json.dumps(config)],
                                  env=env, path=os.getcwd(), childFDs=fds)
        self.processes[index] = process

    def ended(self, process: WorkerProcess, reason) -> None:
        index = process.index
        if self.processes[index] is not process:
            return
        self.processes[index] = None
        if process.stopping or not self.running:
            return
        lived = self.reactor.seconds() - process.started
        if lived < self.min_interval * 2:
            self._backoff[index] = min(self.max_backoff, max(self.min_interval, self._backoff[index] * 2))
        else:
            self._backoff[index] = 0.0
        delay = max(self._backoff[index], process.started + self.min_interval - self.reactor.seconds(), 0.0)
        self.restarts[index] += 1
        log.error("nfsd worker {i} (pid {pid}) {how} after {lived:.1f} s; restarting it{when} (restart {n})",
                  i=index, pid=process.pid, how=how_it_ended(reason), lived=lived,
                  when=f" in {delay:.1f} s" if delay else "", n=self.restarts[index])
        self._pending[index] = self.reactor.callLater(delay, self._spawn, index)

    def reload(self) -> None:
        """Pass an exports reload on: each worker reads the exports file again (SIGHUP)."""
        for process in self.processes:
            if process is not None:
                try:
                    process.transport.signalProcess("HUP")
                except error.ProcessExitedAlready:
                    pass

    def counters(self) -> defer.Deferred:
        """Every worker's counters: a list of {"worker", "pid", "restarts", "answering", and its counters}."""
        asks = []
        for index, process in enumerate(self.processes):
            self._requests += 1
            d = process.ask(self._requests, self.answer_timeout) if process is not None else defer.succeed(None)
            asks.append(d.addCallback(lambda answer, i=index, p=process: dict(
                answer or {}, worker=i, pid=p.pid if p is not None else None, restarts=self.restarts[i],
                answering=answer is not None)))
        return defer.gatherResults(asks)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        waits = []
        for process in self.processes:
            if process is None:
                continue
            process.stopping = True
            waits.append(process.ended)
            try:
                process.transport.signalProcess("TERM")
            except error.ProcessExitedAlready:
                continue
            kill = self.reactor.callLater(self.stop_timeout, self._kill, process)
            process.ended.addBoth(lambda result, k=kill: (k.active() and k.cancel(), result)[1])
        return defer.gatherResults(waits)

    @staticmethod
    def _kill(process: WorkerProcess) -> None:
        log.warn("nfsd worker {i} (pid {pid}) did not stop after SIGTERM: SIGKILL", i=process.index, pid=process.pid)
        try:
            process.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass
