"""An nfsd worker process: ``python -m nfsstack.worker`` as :mod:`nfsstack.workers` starts it.

It serves nfsd on sockets it is lent (the stack's process made them, one per
reuseport group, :mod:`nfsstack.rpc.reuseport`), with the nfsd the stack's
process would build (:func:`nfsstack.service.build_nfsd`): the same export
table (read from the same exports file), the same handle key (from the state
directory), the local backend.  It does not register with the portmapper:
the stack's process did, for the port they all serve.

Its configuration is one JSON object, its one argument; each line of its
standard input ``counters ID`` is answered with one JSON line on standard
output (its call counters, ``"id": ID``).  Its log goes to standard error,
one event a line, which the stack's process relays.  SIGHUP reloads its
exports file, as the stack's does; SIGTERM stops it; the end of its
standard input (the stack's process is gone) too.
"""

from __future__ import annotations

import json
import os
import socket
import sys

from twisted.application import service
from twisted.application.internet import TimerService
from twisted.internet import stdio
from twisted.logger import formatEvent, globalLogBeginner
from twisted.protocols.basic import LineReceiver

from nfsstack.cluster.metrics import CallStats
from nfsstack.exports import load_exports
from nfsstack.exports.handles import HandleCodec, load_key
from nfsstack.exports.identity import local_realms
from nfsstack.nfsacl.program import nfsd_port_programs
from nfsstack.exports.table import ExportTable
from nfsstack.logs import logger, set_level
from nfsstack.rpc.server import ReplyBatcher
from nfsstack.rpc.service import RPCService
from nfsstack.service import ExportsReloader, NfsStackService, build_nfsd, default_export_list, kerberos_engine

log = logger("nfsstack.worker")


class LentSockets(RPCService):
    """nfsd on the sockets the stack's process lent this one (``sockets``: fd, netid, host), unregistered."""

    def __init__(self, name, programs, sockets: list[dict], **kwargs) -> None:
        super().__init__(name, programs, 0, **kwargs)
        self.lent = sockets

    def _listen(self) -> None:
        from nfsstack.rpc.server import RPCStreamFactory

        self.stream_factory = RPCStreamFactory(self.dispatcher, self.lent[0]["netid"].replace("udp", "tcp"),
                                               max_record=self.max_record, idle_timeout=self.idle_timeout,
                                               max_connections=self.max_connections,
                                               reply_batcher=self.reply_batcher)
        sockets = [(lent["netid"], lent["host"], socket.socket(fileno=lent["fd"])) for lent in self.lent]
        try:
            self._adopt(sockets)
        finally:
            for _, _, s in sockets:
                s.close()  # Twisted holds duplicates; the stack's process holds the originals
        for _, _, port in self.listening:
            # Stopping must not shut the listening socket down: it is the group's, shared with the stack's
            # process (shutdown(2) would take it out of the group for everyone); closing our duplicate is all.
            port._shouldShutdown = False
        self.port = self.listening[0][2].getHost().port


def counters(nfsd, dispatcher, calls: CallStats, factory) -> dict:
    """What the stack's process sums over its workers (:meth:`nfsstack.service.NfsStackService.report`)."""
    return {
        "pid": os.getpid(),
        "calls": [[program, procedure, n, total, buckets]
                  for (program, procedure), (n, total, buckets) in calls.stats.items()],
        "clients": [[client, program, n] for (client, program), n in calls.clients.items()],
        "rpc_errors": [[error, n] for error, n in dispatcher.errors.items()],
        "nfs_failures": [[procedure, status, n] for (procedure, status), n in nfsd.failures.items()],
        "bytes_read": nfsd.bytes_read,
        "bytes_written": nfsd.bytes_written,
        "connections": len(factory.connections) if factory is not None else 0,
        "write_verifier": nfsd.write_verifier.hex(),
        "gss": ({"contexts": len(dispatcher.gss.contexts), "events": [[event, n] for event, n in
                                                                      dispatcher.gss.counters.items()]}
                if dispatcher.gss is not None else None),
    }


class Control(LineReceiver):
    """Standard input and output: requests from the stack's process, answers to it."""

    delimiter = b"\n"

    def __init__(self, answer, reactor) -> None:
        self.answer = answer
        self.reactor = reactor

    def lineReceived(self, line: bytes) -> None:
        words = line.decode("ascii", "replace").split()
        if words[:1] == ["counters"]:
            out = self.answer()
            out["id"] = int(words[1]) if len(words) > 1 else 0
            self.sendLine(json.dumps(out).encode())

    def connectionLost(self, reason=None) -> None:
        if self.reactor.running:
            self.reactor.stop()  # the stack's process is gone


def _log_to_stderr(event: dict) -> None:
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text += "\n" + failure.getTraceback()
    sys.stderr.write(text.rstrip("\n") + "\n")
    sys.stderr.flush()


def build(config: dict, reactor) -> tuple[service.MultiService, callable]:
    """The worker's services, built from ``config``, and the function answering its counters."""
    set_level(config["log-level"])
    exports = load_exports(config["exports"]) if config["exports"] else default_export_list()
    table = ExportTable(exports, HandleCodec(load_key(config["state-dir"])))
    top = NfsStackService(local_realms(config.get("local-realms")))  # for its order: resources first, stopped last
    top.exports = table
    nfsd = build_nfsd(table, config, reactor, top.reply_batcher, principals=top.principals)
    top.nfsd = nfsd.nfsd
    for child in nfsd.resources:
        child.setServiceParent(top)
    TimerService(5.0, table.sweep).setServiceParent(top)
    if config["exports"]:
        ExportsReloader(table, config["exports"], reactor, quiet=True).setServiceParent(top)
    for child in nfsd.timers:
        child.setServiceParent(top)
    served = LentSockets("nfsd", nfsd_port_programs(nfsd.nfsd), config["sockets"], reactor=reactor,
                         max_record=config["max-record"], idle_timeout=config["idle-timeout"],
                         max_connections=config["max-connections"], reply_batcher=top.reply_batcher,
                         gss=_kerberos(config, reactor, top.principals))
    calls = CallStats()
    served.dispatcher.observer = calls
    served.setServiceParent(top)
    return top, lambda: counters(nfsd.nfsd, served.dispatcher, calls, served.stream_factory)


def _kerberos(config: dict, reactor, principals):
    """The worker's own RPCSEC_GSS engine, from the stack's ``--keytab``: its contexts are its own (a client is
    steered to one worker by its address).  The stack's process said already whether Kerberos is on."""
    return kerberos_engine(config.get("keytab"), reactor, principals, quiet=True)


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the stack's process dies (prctl(2) PR_SET_PDEATHSIG), so that nfsd's port is free at once for
    the stack started next; if it died already, exit now."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        pass  # the end of standard input stops the worker instead
    if os.getppid() != parent:
        os._exit(1)


def main() -> None:
    from twisted.internet import reactor

    config = json.loads(sys.argv[1])
    _die_with_parent(config["parent"])
    globalLogBeginner.beginLoggingTo([_log_to_stderr], redirectStandardIO=False)
    os.chdir(config.get("cwd", os.getcwd()))
    top, answer = build(config, reactor)
    stdio.StandardIO(Control(answer, reactor), reactor=reactor)

    def start() -> None:
        try:
            top.startService()
        except Exception:
            log.failure("nfsd worker could not start")
            reactor.stop()

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", lambda: top.stopService() if top.running else None)
    reactor.run()


if __name__ == "__main__":
    main()
