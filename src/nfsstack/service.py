"""The service tree of the stack: one Twisted MultiService and the services that own its resources.

:mod:`nfsstack.tap` builds the tree from the command-line options; this module
holds what it is built of.  Start order: the services that own resources (the
state directory and handle key, nfsd's caches, its io_uring or AIO ring, its
thread pool), then the portmapper, then the services that register with it;
stop order is the reverse, so every service unregisters while the portmapper
still runs, and a resource closes only once every service started after it
has stopped.  docs/architecture.md describes the whole lifecycle.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import stat
import time
from functools import partial
from pathlib import Path
from typing import Iterable, Optional

from twisted.application import service
from twisted.internet import defer, threads
from twisted.python import usage

from nfsstack.cluster.metrics import CallStats
from nfsstack.cluster.service import Node
from nfsstack.exports import Exports, load_exports, parse_exports
from nfsstack.exports.handles import HandleCodec, load_key
from nfsstack.exports.identity import Principals, local_realms
from nfsstack.exports.table import ExportTable
from nfsstack.logs import logger
from nfsstack.mount.mountlist import MountList
from nfsstack.mount.program import Mountd
from nfsstack.nfs3.local.aiosync import open_kernel_io
from nfsstack.nfs3.local.filesystem import LocalFilesystem
from nfsstack.nfs3.program import Nfsd, Workers
from nfsstack.nlm.program import Nlm
from nfsstack.nsm.program import Nsm
from nfsstack.portmap.program import Portmapper
from nfsstack.rpc.gss_server import DEFAULT_KEYTAB, load_gss_server
from nfsstack.rpc.remote import RemoteCaller
from nfsstack.rpc.server import ReplyBatcher
from nfsstack.rpc.service import RPCService
from nfsstack.startup import serving, start_in_order
from nfsstack.statefile import make_private

log = logger("nfsstack")

class NfsStackService(service.MultiService):
    """The stack: children start in the order they were added and stop in reverse."""

    def __init__(self, realms: Optional[Iterable[str]] = None) -> None:
        """``realms``: those whose Kerberos users are local users (``--local-realms``); None: :func:`local_realms`."""
        super().__init__()
        self.portmapper: Portmapper | None = None
        self.registrar = None
        self.exports: ExportTable | None = None
        self.mounts: MountList | None = None
        self.mountd: Mountd | None = None
        self.nfsd: Nfsd | None = None
        self.nsm: Nsm | None = None
        self.nlm: Nlm | None = None
        self.node: Node | None = None
        #: nfsd's worker processes (nfsstack.workers.NfsdWorkers) with --workers above 1, else None.
        self.workers = None
        #: What the workers answered when last asked (:meth:`refresh`): one dict each, "answering" false for one
        #: that did not.
        self.worker_counters: list[dict] = []
        self.call_stats = CallStats()
        #: Holds late replies while a batch of io_uring completions is answered: given to every RPC service
        #: (tap.py) and to nfsd's kernel I/O (NfsdRing).
        self.reply_batcher = ReplyBatcher()
        #: Kerberos principals -> local users (the users of ``realms``, else of :func:`local_realms`), for this
        #: stack's programs and its RPCSEC_GSS engine (:func:`kerberos_engine`), which looks them up in its
        #: reactor's threads.
        self.principals = Principals(realms=local_realms() if realms is None else realms)
        self.started_at = time.time()
        #: ``--partial``: a configured service that cannot start is reported, and the others start anyway.
        self.partial = False
        #: The configured services that did not start in a partial stack: name -> the line saying why.
        self.not_serving: dict[str, str] = {}

    def privilegedStartService(self) -> None:
        _raise_fd_limit()  # before any port is bound: the sockets count too
        super().privilegedStartService()

    def startService(self) -> None:
        """Children start in order; a configured service that cannot start stops the start with one line
        (:class:`nfsstack.startup.StartupError`: twistd exits 1), or with ``--partial`` is reported and the
        others start (:func:`nfsstack.startup.start_in_order`)."""
        _raise_fd_limit()
        service.Service.startService(self)
        start_in_order(self, self.partial, self.not_serving)

    def stopService(self) -> defer.Deferred:
        """Children stop in reverse order, as in any MultiService; a :class:`Resource` stops only once every
        child started after it has finished stopping (nfsd unregisters and closes its connections before its
        thread pool and ring close)."""
        service.Service.stopService(self)
        children = list(self)
        children.reverse()
        pending: list[defer.Deferred] = []
        for child in children:
            if isinstance(child, Resource):
                pending = [defer.DeferredList(pending).addCallback(lambda _, c=child: c.stopService())]
            else:
                pending.append(defer.maybeDeferred(child.stopService))
        return defer.DeferredList(pending)

    def rpc_services(self) -> list[RPCService]:
        return [child for child in self if isinstance(child, RPCService)]

    def serving(self) -> dict[str, bool]:
        """Every configured service and whether it serves (:func:`nfsstack.startup.serving`)."""
        return serving(self)

    def down(self) -> list[str]:
        """The configured services that are not serving (for /healthz)."""
        return [name for name, up in self.serving().items() if not up]

    def refresh(self) -> defer.Deferred:
        """Ask nfsd's worker processes for their counters, for the next report (port 1110 asks before each)."""
        if self.workers is None:
            return defer.succeed(None)

        def got(answers: list[dict]) -> None:
            self.worker_counters = answers

        return self.workers.counters().addCallback(got)

    def _answering(self) -> list[dict]:
        return [w for w in self.worker_counters if w.get("answering")]

    def all_calls(self) -> CallStats:
        """The calls counted here and by every worker that answered."""
        return self.call_stats.merged(self._answering()) if self.workers is not None else self.call_stats

    def _workers_report(self) -> list[dict]:
        """Each worker: its number, pid, restarts, and whether it answered (with its calls and connections)."""
        return [{"worker": w["worker"], "pid": w["pid"], "restarts": w["restarts"], "answering": w["answering"],
                 "rpc_calls": sum(row[2] for row in w.get("calls", ())), "tcp_connections": w.get("connections", 0),
                 "write_verifier": w.get("write_verifier")} for w in self.worker_counters]

    def report(self) -> dict:
        """What ``GET /status`` answers (the keepalive key never appears)."""
        services = []
        for s in self.rpc_services():
            for program in s.programs:
                services.append({"service": s.name, "program": program.number, "name": program.name,
                                 "versions": sorted(program.versions), "protocols": ["tcp", "udp"],
                                 "port": s.port, "listening": s.tcp is not None})
        unavailable = self.namedServices.get("unavailable")
        for name in unavailable.names if unavailable is not None else ():
            services.append({"service": name, "protocols": ["tcp", "udp"], "port": None, "listening": False})
        cluster = self.getServiceNamed("cluster") if "cluster" in self.namedServices else None
        if cluster is not None:
            services.append({"service": "nfsd-status", "protocols": ["tcp"], "port": cluster.port,
                             "listening": bool(cluster.listening)})
            services.append({"service": "nfsd-keepalive", "protocols": ["udp"], "port": cluster.port,
                             "listening": bool(cluster.listening)})
        exports = []
        if self.exports is not None:
            for e in self.exports.exports:
                exports.append({"path": e.path, "export_id": e.export_id,
                                "clients": [{"client": spec.text, "options": o.describe()} for spec, o in e.clients]})
        node = self.node
        return {
            "node": node.name if node else socket.gethostname(),
            "boot_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started_at)),
            "boot_verifier": node.boot.hex() if node else "",
            "nsm_state": self.nsm.state.state if self.nsm else None,
            "write_verifier": self.nfsd.write_verifier.hex() if self.nfsd else None,
            "services": services,
            # The configured services not serving (a partial stack, --partial), each with why when known.
            "not_serving": [{"service": name, "reason": self.not_serving.get(name, "not listening")}
                            for name in self.down()],
            "exports": exports,
            "mounts": [{"host": h, "path": d} for h, d in (self.mounts.entries if self.mounts else [])],
            "locks": self.nlm.status() if self.nlm else {},
            "keepalive": {
                "interval": node.members.interval if node else None,
                "stale_after": node.members.timeout if node else None,
                "hmac": bool(node and node.key),
                "members": node.members.table() if node else [],
                "datagrams": dict(node.datagrams) if node else {},
            },
            "counters": {
                "rpc_calls": sum(v[0] for v in self.all_calls().stats.values()),
                "nfs_bytes_read": self._nfsd_sum("bytes_read"),
                "nfs_bytes_written": self._nfsd_sum("bytes_written"),
                "tcp_connections": sum(len(s.stream_factory.connections) for s in self.rpc_services()
                                       if s.stream_factory is not None)
                + sum(w.get("connections", 0) for w in self._answering()),
            },
            # nfsd's worker processes (--workers), each with what it answered when asked for this report.
            "workers": self._workers_report(),
            # RPCSEC_GSS (--keytab): contexts established now, and what the engines did ({} without Kerberos).
            "kerberos": self._kerberos(),
        }

    def _nfsd_sum(self, counter: str) -> int:
        """nfsd's ``counter`` here and in every worker that answered."""
        return (getattr(self.nfsd, counter) if self.nfsd else 0) + sum(w.get(counter, 0) for w in self._answering())

    def _kerberos(self) -> dict:
        """The RPCSEC_GSS engines' counts, here and in every worker that answered: ``contexts`` (established,
        now) and ``events`` (contexts made, replays dropped, refusals by auth_stat, ...); {} without Kerberos."""
        engines = {id(s.dispatcher.gss): s.dispatcher.gss for s in self.rpc_services() if s.dispatcher.gss}
        reports = [w["gss"] for w in self._answering() if w.get("gss")]
        if not engines and not reports:
            return {}
        events = collections.Counter()
        contexts = 0
        for engine in engines.values():
            events.update(engine.counters)
            contexts += len(engine.contexts)
        for report in reports:
            events.update(dict(report["events"]))
            contexts += report["contexts"]
        return {"contexts": contexts, "events": dict(events)}

    def _nfs_failures(self) -> dict:
        out = collections.Counter(self.nfsd.failures if self.nfsd else {})
        for w in self._answering():
            for procedure, status, n in w.get("nfs_failures", ()):
                out[(procedure, status)] += n
        return dict(out)

    def _rpc_errors(self) -> dict:
        out = collections.Counter({(s.name, error): n for s in self.rpc_services()
                                   for error, n in s.dispatcher.errors.items()})
        for w in self._answering():
            for error, n in w.get("rpc_errors", ()):
                out[("nfsd", error)] += n
        return dict(out)

    def stat(self) -> dict:
        """What ``nfsstack stat`` shows (``nfsstat -s``): calls per program and procedure, per client, and the
        errors: RPC error replies per service, NFS statuses other than OK per procedure."""
        all_calls = self.all_calls()
        calls = [{"program": program, "procedure": procedure, "calls": n}
                 for (program, procedure), (n, _, _) in sorted(all_calls.stats.items())]
        clients: dict[str, dict[str, int]] = {}
        for (client, program), n in all_calls.clients.items():
            clients.setdefault(client, {})[program] = n
        return {
            "calls": calls,
            "clients": [{"client": c, "calls": by_program} for c, by_program in sorted(clients.items())],
            "rpc_errors": [{"service": service, "error": error, "count": n}
                           for (service, error), n in sorted(self._rpc_errors().items())],
            "nfs_errors": [{"procedure": proc, "status": status, "count": n}
                           for (proc, status), n in sorted(self._nfs_failures().items())] if self.nfsd else [],
            "workers": self._workers_report(),
        }

    def counters(self) -> dict:
        """The raw counters /metrics turns into metric families."""
        out = {
            "rpc_errors": self._rpc_errors(),
            "nfs_failures": self._nfs_failures(),
            "bytes_read": self._nfsd_sum("bytes_read"),
            "bytes_written": self._nfsd_sum("bytes_written"),
            "connections": {s.name: len(s.stream_factory.connections) for s in self.rpc_services()
                            if s.stream_factory is not None},
            "locks": self.nlm.table.counts() if self.nlm else {},
            "services": self.serving(),
            "kerberos": self._kerberos(),
        }
        if self.workers is not None:
            out["connections"]["nfsd"] = sum(w.get("connections", 0) for w in self._answering())
            out["workers_not_answering"] = sum(not w.get("answering") for w in self.worker_counters)
        if self.node is not None:
            out.update(self.node.counts())
        return out


def describe_exports(exports: Exports) -> list[str]:
    """One line per export: its path and each client with its options, as ``exportfs -v`` shows them."""
    return [f"{e.path} " + " ".join(f"{spec.text}({o.describe()})" for spec, o in e.clients) for e in exports]


def export_changes(before: Exports, after: Exports) -> list[str]:
    """What a reload changed: exports added, removed, or with other clients or options."""
    old = {e.path: line for e, line in zip(before, describe_exports(before))}
    new = {e.path: line for e, line in zip(after, describe_exports(after))}
    out = [f"export removed: {old[path]}" for path in old if path not in new]
    out += [f"export added: {new[path]}" for path in new if path not in old]
    out += [f"export changed: {old[path]} -> {new[path]}" for path in new if path in old and old[path] != new[path]]
    return out


class ExportsReloader(service.Service):
    """Reads the exports file again on SIGHUP, as ``exportfs -r`` does; a bad file keeps the old exports.

    Handles stay valid across a reload: they name their export by id, which
    the path (or ``fsid=``) fixes.
    """

    name = "exports-reload"

    def __init__(self, table: ExportTable, path: str, reactor, mounts: MountList | None = None,
                 quiet: bool = False) -> None:
        #: An nfsd worker's reloader: one line per reload, the changes being the stack's to say.
        self.quiet = quiet
        self.table = table
        self.path = path
        self.reactor = reactor
        self.mounts = mounts
        self._previous = None
        #: Called after each reload that took (nfsd's worker processes then reload theirs).
        self.followers: list = []

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._on_signal)

    def stopService(self):
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None
        return super().stopService()

    def _on_signal(self, signum, frame) -> None:
        self.reactor.callFromThread(self.reload)

    def reload(self):
        """Load the file in a thread (host names are looked up), then swap it in."""

        def loaded(exports: Exports) -> dict:
            before = self.table.exports
            self.table.reload(exports)
            changes = export_changes(before, exports)
            if self.quiet:
                log.info("exports read again: {n} exports", n=len(exports))
                return {"ok": True}
            log.info("reloaded {path}: {n} exports, {what}", path=self.path, n=len(exports),
                     what=f"{len(changes)} changed" if changes else "nothing changed")
            for change in changes:
                log.info("{change}", change=change)
            for warning in exports.warnings:
                log.warn("{warning}", warning=warning)
            if self.mounts is not None:
                _forget_unexported_mounts(self.mounts, self.table)
            for follower in self.followers:
                follower()
            return {"ok": True, "file": self.path, "exports": describe_exports(exports), "changes": changes,
                    "warnings": exports.warnings}

        def failed(f) -> dict:
            log.error("exports not reloaded, the old ones stay in force: {error}", error=f.value)
            errors = getattr(f.value, "errors", None) or [str(f.value)]
            return {"ok": False, "file": self.path, "errors": errors}

        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), load_exports,
                                         self.path).addCallback(loaded).addErrback(failed)


class LockingService(service.Service):
    """The lock services' lifetime: at start, NSM's (a new state number, SM_NOTIFY to the hosts monitored before)
    and the lock grace period; at stop, NLM's (its locks and waiters) and the calls to other hosts.

    Without any host monitored before this start, nobody can have locks to
    reclaim, and the grace period is skipped.
    """

    name = "locking"

    def __init__(self, nsm: Nsm, nlm: Nlm, remote: RemoteCaller) -> None:
        self.nsm, self.nlm, self.remote = nsm, nlm, remote

    def startService(self) -> None:
        super().startService()
        self.nsm.start()
        reclaimers = len(self.nsm.state.to_notify)
        if reclaimers:
            self.nlm.grace.begin()
            log.info("lock grace period: {s:.0f} s for {n} hosts to reclaim their locks",
                     s=max(0.0, self.nlm.grace.ends - self.nlm.reactor.seconds()), n=reclaimers)
        else:
            self.nlm.grace.end()
            log.info("no lock grace period: no host held locks before this start")

    def stopService(self):
        super().stopService()
        self.remote.close()
        return self.nlm.stop()


class Resource(service.Service):
    """A service that owns a resource: opens it in :meth:`startService`, closes it in :meth:`stopService`."""


class FileState(Resource):
    """The state directory, the handle key, the mount list and the default export.

    At start: the state directory is made (mode 0700) and made private with the
    handle key if others could read them, ``./export`` is made when no exports
    file is given, the exports are announced, the handle key is loaded (made on
    first use) into the export table's codec, and the mount list is read and
    forgets directories no export holds.  At stop: the export table closes the
    descriptors it keeps (export roots, recently used handles).
    """

    name = "state"

    def __init__(self, state_dir: str, table: ExportTable, default_export: bool, holders: list) -> None:
        self.state_dir = state_dir
        self.table = table
        self.default_export = default_export
        #: Objects whose ``mounts`` attribute gets the mount list once it is read (the stack, mountd, the reloader).
        self.holders = holders
        self.mounts: MountList | None = None

    def startService(self) -> None:
        state_dir = self.state_dir
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        # The handle key signs every handle: whoever reads it can forge one for any file of an export.
        for path, mode in ((state_dir, 0o700), (os.path.join(state_dir, "handle.key"), 0o600)):
            try:
                was = make_private(Path(path), mode)
            except FileNotFoundError:
                continue
            if was is not None:
                log.warn("{path} was open to other users (mode {was:04o}): its mode is now {mode:04o}", path=path,
                         was=was, mode=mode)
        exports = self.table.exports
        if self.default_export:
            make_default_export()
        for warning in exports.warnings:
            log.warn("{warning}", warning=warning)
        for line in describe_exports(exports):
            log.info("export {line}", line=line)
        for export in exports:
            if not os.path.isdir(export.path):
                log.error("{path} (exported on {src} line {line}) is not a directory", path=export.path,
                          src=exports.source, line=export.line)
        self.table.codec = HandleCodec(load_key(state_dir))
        self.mounts = MountList(state_dir)
        for holder in self.holders:
            holder.mounts = self.mounts
        _forget_unexported_mounts(self.mounts, self.table)
        super().startService()

    def stopService(self):
        super().stopService()
        self.table.close()


class NfsdCaches(Resource):
    """The local backend's kept open files and listing cache (with its inotify descriptor): both empty at start,
    closed at stop."""

    name = "nfsd-caches"

    def __init__(self, fs: LocalFilesystem) -> None:
        self.fs = fs

    def stopService(self):
        super().stopService()
        self.fs.close()


class NfsdRing(Resource):
    """The local backend's asynchronous fsync (and, where the kernel has them, opens and writes): an io_uring ring,
    else a Linux AIO context, probed and opened at start (nothing: the thread pool syncs), closed at stop."""

    name = "nfsd-ring"

    def __init__(self, fs: LocalFilesystem, reactor, reply_batcher: ReplyBatcher) -> None:
        self.fs = fs
        self.reactor = reactor
        self.reply_batcher = reply_batcher

    def startService(self) -> None:
        kernel = open_kernel_io(self.reactor)
        if kernel is not None:
            kernel.batch = self.reply_batcher  # a batch of completions answers its calls with one send per connection
        self.fs.kernel_io = kernel
        super().startService()

    def stopService(self):
        super().stopService()
        kernel, self.fs.kernel_io = self.fs.kernel_io, None
        if kernel is not None:
            kernel.close()


class NfsdThreads(Resource):
    """nfsd's thread pool for the calls that may wait on the disk: made at start, shut at stop."""

    name = "nfsd-threads"

    def __init__(self, workers: Workers) -> None:
        self.workers = workers

    def startService(self) -> None:
        self.workers.start()
        super().startService()

    def stopService(self):
        super().stopService()
        self.workers.stop()



class NfsdParts:
    """nfsd and what it is made of (:func:`build_nfsd`): built, not started."""

    def __init__(self, threads: Workers, local, fs, nfsd: Nfsd, resources: list, timers: list) -> None:
        #: The thread pool for the calls that may wait on the disk.
        self.threads = threads
        #: The local backend (None for another backend), and the backend as an IFilesystem.
        self.local = local
        self.fs = fs
        self.nfsd = nfsd
        #: The services owning nfsd's resources (caches, ring, threads), to start before and stop after nfsd.
        self.resources = resources
        #: The services sweeping nfsd's caches, to start with the others.
        self.timers = timers


def build_nfsd(table: ExportTable, options, reactor, reply_batcher: ReplyBatcher,
               unprivileged: str | None = None, *, principals: Principals) -> NfsdParts:
    """nfsd on ``table``, with its backend and resources, from the stack's options (``threads``, ``backend``,
    ``no-aio-fsync``, and the factory of a backend other than the local one as ``options.backend_factory``).

    The one place nfsd is made: the stack's process builds it this way, and so does each nfsd worker process
    (:mod:`nfsstack.worker`), so that a worker serves exactly what the single process would.  ``principals``:
    the stack's (``NfsStackService.principals``), which its RPCSEC_GSS engine looks up in threads.
    """
    from twisted.application.internet import TimerService

    from nfsstack.nfs3.interface import IFilesystem

    threads = Workers(reactor, max(1, options["threads"]))
    factory = getattr(options, "backend_factory", None)
    caller = None
    if unprivileged == "plain user":
        from nfsstack.exports.identity import NoSwitching
        from nfsstack.nfs3.local.as_caller import LocalFS

        caller = LocalFS(NoSwitching())
    local = LocalFilesystem(table, threads, caller) if factory is None else None
    fs = IFilesystem(local if factory is None else factory(table, options))
    if factory is not None and callable(getattr(fs, "reload", None)):
        table.reloaded.append(fs.reload)  # a backend with a tree per export follows SIGHUP
    nfsd = Nfsd(table, fs, in_thread=threads, principals=principals)
    resources: list = []
    timers: list = []
    if local is not None:
        # Directory syncs start once the reactor has handled the calls it has read: they share one (dirsync.py).
        local.directories.later = reactor.callLater
        resources.append(NfsdCaches(local))
        if not options["no-aio-fsync"]:
            resources.append(NfsdRing(local, reactor, reply_batcher))
        timers.append(TimerService(1.0, local.files.sweep))
    resources.append(NfsdThreads(threads))
    return NfsdParts(threads, local, fs, nfsd, resources, timers)


DEFAULT_EXPORT = "export"
#: Who may mount the default export: this machine only.  Other hosts need an exports file that names them.
DEFAULT_CLIENTS = ("127.0.0.0/8", "::1")


def kerberos_engine(keytab: Optional[str], reactor, principals: Principals, quiet: bool = False):
    """The process's RPCSEC_GSS engine from ``keytab`` (``--keytab``; None: the default, /etc/krb5.keytab), or
    None when Kerberos cannot be served here (logged why unless ``quiet``: as a warning for a keytab given),
    with each new context's principal looked up in ``principals`` (those of the stack's programs) in a thread
    of ``reactor``'s pool before its creation is answered (:meth:`~nfsstack.exports.identity.Principals.prefetch`),
    waits bounded by ``reactor``'s timers."""
    gss = load_gss_server(keytab or DEFAULT_KEYTAB, explicit=bool(keytab), quiet=quiet)
    if gss is not None and not quiet:
        if principals.realms:
            log.info("Kerberos: the users of {realms} are local users, their machine principals root; other realms' "
                     "principals are the anonymous user", realms=", ".join(sorted(principals.realms)))
        else:
            log.warn("Kerberos: no realm's users are local users (none from --local-realms, idmapd.conf's "
                     "Local-Realms or krb5.conf's default_realm): every principal, machine principals too, is the "
                     "anonymous user; name the realms with --local-realms")
    if gss is not None:
        principals.look_up_in_threads(partial(threads.deferToThreadPool, reactor, reactor.getThreadPool()),
                                      reactor.callLater)
        gss.on_established = principals.prefetch
    return gss


def check_default_export(path: str) -> None:
    """Refuse a ``./export`` that is not a plain directory of the server's own user: a symlink would export
    whatever it points to (a link to / exported the whole root filesystem), and another user's directory is
    not ours to open to clients."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise usage.UsageError(f"{path} is a symlink (to {os.readlink(path)}): not exported. Make it a directory of "
                               "your own, or name what to export in an exports file (--exports FILE).")
    if not stat.S_ISDIR(st.st_mode):
        raise usage.UsageError(f"{path} is not a directory: not exported. Remove it, or use --exports FILE.")
    if st.st_uid != os.geteuid():
        raise usage.UsageError(f"{path} belongs to uid {st.st_uid}, not to the server's user (uid {os.geteuid()}): "
                               "not exported. Use a directory of your own, or --exports FILE.")


def default_export_list() -> Exports:
    """The default export as an exports table: ``./export`` to this machine's clients only, rw with
    root_squash (nothing is made or looked at)."""
    path = os.path.abspath(DEFAULT_EXPORT)
    clients = " ".join(f"{c}(rw)" for c in DEFAULT_CLIENTS)
    return parse_exports(f'"{path}" {clients}\n', "<default export>")


def make_default_export() -> str:
    """Make ``./export`` (world-writable and sticky, like /tmp) unless it is there, and say what is exported."""
    path = os.path.abspath(DEFAULT_EXPORT)
    check_default_export(path)
    try:
        os.mkdir(path, 0o1777)
        os.chmod(path, 0o1777)  # the umask took its share
    except FileExistsError:
        check_default_export(path)  # made between the check and here
    log.info("no --exports given: exporting {path} to this machine only ({clients}: rw,root_squash,secure); "
             "to export to other hosts, write an exports(5) file and start with --exports FILE",
             path=path, clients=", ".join(DEFAULT_CLIENTS))
    return path


def default_exports() -> Exports:
    """``./export`` (created world-writable and sticky, like /tmp), to this machine's clients only, rw with
    root_squash."""
    make_default_export()
    return default_export_list()


def _raise_fd_limit() -> None:
    """Descriptors: connections and the objects clients work on (the export table keeps one per object in use,
    for working sets of 100,000 files) need more than a shell's usual 1,024.  The soft limit goes to the hard
    one; a process that may (root: CAP_SYS_RESOURCE) raises the hard one to :data:`WANTED_FDS` first, within
    the kernel's ``fs.nr_open``."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < WANTED_FDS:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                most = int(f.read())
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(WANTED_FDS, most),) * 2)
            return
        except (ValueError, OSError):
            pass
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


#: Descriptors the process asks for: twice the export table's most (exports/table.py MAX_KEPT), with room.
WANTED_FDS = 1 << 20


def _forget_unexported_mounts(mounts: MountList, table: ExportTable) -> None:
    """The mount list keeps no entry of a directory that no export holds any more (``showmount -a``)."""
    for host, directory in mounts.keep_only(lambda d: table.locate(d) is not None):
        log.info("mount list: {host}:{dir} forgotten, no export holds it any more", host=host, dir=directory)


def __getattr__(name: str):
    """``nfsstack.service.Options`` and ``makeService`` still answer, from :mod:`nfsstack.tap` (a plugin file
    installed before the tap module existed imports them from here)."""
    if name in ("Options", "makeService"):
        from nfsstack import tap

        return getattr(tap, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
