"""Builds the whole stack, one Twisted MultiService, from command-line options.

Start order: portmapper, then the services that register with it; stop order
is the reverse, so every service unregisters while the portmapper still runs.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import time
from pathlib import Path

from twisted.application import service
from twisted.application.internet import TimerService
from twisted.internet import threads
from twisted.python import usage

from nfsstack.cluster.metrics import CallStats, StackCollector
from nfsstack.cluster.metrics import registry as metrics_registry
from nfsstack.cluster.service import ClusterService, Node, parse_networks, parse_peer
from nfsstack.export_table import ExportTable
from nfsstack.exports import Exports, ExportsError, load_exports, parse_exports
from nfsstack.logs import LEVELS, logger, set_level
from nfsstack.mount.mountlist import MountList
from nfsstack.mount.program import Mountd
from nfsstack.nfs3.aiosync import open_syncer
from nfsstack.nfs3.handles import HandleCodec, kernel_handles_work, load_key
from nfsstack.nfs3.identity import can_switch
from nfsstack.nfs3.program import Nfsd, Workers
from nfsstack.nlm.program import Nlm
from nfsstack.nsm.program import Nsm
from nfsstack.nsm.state import NsmState

from nfsstack.portmap.client import PortmapClient
from nfsstack.portmap.program import Portmapper
from nfsstack.portmap.registrar import LocalRegistrar, RpcbindRegistrar
from nfsstack.portmap.registry import Registry
from nfsstack.portmap.types import PMAP_PORT
from nfsstack.rpc.client import RPCDatagramClient
from nfsstack.rpc.remote import RemoteCaller
from nfsstack.rpc.server import DEFAULT_MAX_RECORD, replies_held
from nfsstack.rpc.service import RPCService
from nfsstack.statefile import make_private


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} is not in 0..65535")
    return port


_port.coerceDoc = "A port number, 0..65535."  # type: ignore[attr-defined]


def _log_level(value: str) -> str:
    if value not in LEVELS:
        raise ValueError(f"{value!r} is not one of {', '.join(LEVELS)}")
    return value


_log_level.coerceDoc = f"One of {', '.join(LEVELS)}."  # type: ignore[attr-defined]


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Serve NFSv3 and its helper RPC services from one process. "
        "Services running in this release: the portmapper (rpcbind v2/v3/v4), status (NSM v1), nlockmgr "
        "(v1/v3/v4), mountd (v1/v2/v3), nfsd (v3), and on port 1110 nfsd-status (HTTP: /status, /metrics, "
        "/healthz) and nfsd-keepalive (UDP). SIGHUP reloads the exports file."
    )

    optFlags = [
        ["system-rpcbind", None, "Register with the rpcbind already running on this host instead of serving one."],
        [
            "remote-calls",
            None,
            "Enable portmapper CALLIT/BCAST/INDIRECT (off by default, as in rpcbind: they amplify UDP floods).",
        ],
        ["no-aio-fsync", None, "Hand COMMIT's fsync to the thread pool instead of the kernel's asynchronous fsync."],
    ]

    optParameters = [
        ["config", None, None, "INI file in the style of /etc/nfs.conf with any of these options "
                               "(etc/nfsstack.conf); the command line wins over it."],
        ["exports", None, None, "exports(5) file (default: export ./export to this machine only, rw, root_squash)."],
        ["state-dir", None, "var", "Directory for persistent state: handle key, mount list, NSM state."],
        ["bind", None, "", "Addresses (comma-separated, IPv4 and IPv6) the RPC services listen on "
         "(default: all IPv4 and, if the host has IPv6, all IPv6 addresses).", RPCService.check_bind],
        ["portmap-port", None, PMAP_PORT, "Port of the portmapper (TCP and UDP).", _port],
        ["nfs-port", None, 2049, "Port of nfsd, 0 = dynamic.", _port],
        ["mountd-port", None, 0, "Port of mountd, 0 = dynamic.", _port],
        ["nlm-port", None, 0, "Port of nlockmgr, 0 = dynamic (4045 is customary).", _port],
        ["statd-port", None, 0, "Port of status (NSM), 0 = dynamic.", _port],
        ["grace-time", None, 90.0, "Seconds after start in which clients reclaim their locks.", float],
        ["status-port", None, 1110, "Port of nfsd-status (TCP) and nfsd-keepalive (UDP), 0 = dynamic.", _port],
        ["status-bind", None, "127.0.0.1", "Addresses (comma-separated) port 1110 listens on."],
        ["status-allow", None, "127.0.0.0/8,::1/128", "Networks (comma-separated) port 1110 takes callers from."],
        ["peers", None, "", "Peer servers (host[:port], comma-separated) to exchange keepalives with."],
        ["keepalive-interval", None, 5.0, "Seconds between keepalives to the peers.", float],
        ["keepalive-misses", None, 3, "Missed intervals after which a client or peer is stale.", int],
        ["keepalive-key", None, None, "File with the shared key: keepalives carry an HMAC-SHA256."],
        ["node-name", None, None, "This server's name in keepalives and the status (default: the host name)."],
        ["rpcbind-socket", None, None, "rpcbind's local socket: served by the stack's portmapper (by default "
         "/run/rpcbind.sock, when on port 111 and no other rpcbind serves it), or where --system-rpcbind "
         "registers; '' = none."],
        ["max-record", None, DEFAULT_MAX_RECORD, "Largest RPC record accepted over TCP, in bytes.", int],
        ["idle-timeout", None, 360.0, "Seconds after which an idle TCP connection is closed (0 = never).", float],
        ["max-connections", None, 1024, "TCP connections each service accepts at once.", int],
        ["threads", None, 64, "Threads for the NFS calls that may wait on the disk.", int],
        ["log-level", None, "info", "Least level of the stack's own log messages: debug, info, warn, error or "
                                    "critical.", _log_level],
    ]

    def parseOptions(self, options=None) -> None:
        # Which options the command line gives, so that --config fills in only the others (postOptions).
        import sys

        from nfsstack.config import command_line_options

        self.command_line = command_line_options(self, sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def postOptions(self) -> None:
        if self["config"] is not None:
            from nfsstack.config import ConfigError, apply_config

            try:
                self.config_settings = apply_config(self, self["config"], getattr(self, "command_line", ()))
            except ConfigError as e:
                raise usage.UsageError(str(e))
        if self["exports"] is not None:
            try:
                self.exports = load_exports(self["exports"])
            except ExportsError as e:
                raise usage.UsageError(str(e))
        else:
            check_default_export(os.path.abspath(DEFAULT_EXPORT))
            self.exports = None
        if self["max-record"] < 1024:
            raise usage.UsageError("--max-record must be at least 1024")
        try:
            self.status_networks = parse_networks(self["status-allow"])
            self.peers = [parse_peer(p) for p in self["peers"].split(",") if p.strip()]
        except ValueError as e:
            raise usage.UsageError(f"--status-allow / --peers: {e}")
        self.keepalive_key = None
        if self["keepalive-key"]:
            try:
                self.keepalive_key = open(self["keepalive-key"], "rb").read().strip()
            except OSError as e:
                raise usage.UsageError(f"--keepalive-key: {e}")
            if len(self.keepalive_key) < 16:
                raise usage.UsageError("--keepalive-key: the key must have at least 16 bytes")
        if self["keepalive-interval"] <= 0 or self["keepalive-misses"] < 1:
            raise usage.UsageError("--keepalive-interval must be positive and --keepalive-misses at least 1")
        if self["grace-time"] < 0:
            raise usage.UsageError("--grace-time cannot be negative")
        if self["max-connections"] < 1:
            raise usage.UsageError("--max-connections must be at least 1")


class NfsStackService(service.MultiService):
    """The stack: children start in the order they were added and stop in reverse."""

    def __init__(self) -> None:
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
        self.call_stats = CallStats()
        self.started_at = time.time()

    def rpc_services(self) -> list[RPCService]:
        return [child for child in self if isinstance(child, RPCService)]

    def down(self) -> list[str]:
        """The services that are not listening (for /healthz)."""
        out = [s.name for s in self.rpc_services() if s.tcp is None or s.udp is None]
        cluster = self.getServiceNamed("cluster") if "cluster" in self.namedServices else None
        if cluster is None or not cluster.listening:
            out.append("nfsd-status")
        return out

    def report(self) -> dict:
        """What ``GET /status`` answers (the keepalive key never appears)."""
        services = []
        for s in self.rpc_services():
            for program in s.programs:
                services.append({"service": s.name, "program": program.number, "name": program.name,
                                 "versions": sorted(program.versions), "protocols": ["tcp", "udp"],
                                 "port": s.port, "listening": s.tcp is not None})
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
                "rpc_calls": sum(v[0] for v in self.call_stats.stats.values()),
                "nfs_bytes_read": self.nfsd.bytes_read if self.nfsd else 0,
                "nfs_bytes_written": self.nfsd.bytes_written if self.nfsd else 0,
                "tcp_connections": sum(len(s.stream_factory.connections) for s in self.rpc_services()
                                       if s.stream_factory is not None),
            },
        }

    def stat(self) -> dict:
        """What ``nfsstack stat`` shows (``nfsstat -s``): calls per program and procedure, per client, and the
        errors: RPC error replies per service, NFS statuses other than OK per procedure."""
        calls = [{"program": program, "procedure": procedure, "calls": n}
                 for (program, procedure), (n, _, _) in sorted(self.call_stats.stats.items())]
        clients: dict[str, dict[str, int]] = {}
        for (client, program), n in self.call_stats.clients.items():
            clients.setdefault(client, {})[program] = n
        return {
            "calls": calls,
            "clients": [{"client": c, "calls": by_program} for c, by_program in sorted(clients.items())],
            "rpc_errors": [{"service": s.name, "error": error, "count": n}
                           for s in self.rpc_services() for error, n in sorted(s.dispatcher.errors.items())],
            "nfs_errors": [{"procedure": proc, "status": status, "count": n}
                           for (proc, status), n in sorted(self.nfsd.failures.items())] if self.nfsd else [],
        }

    def counters(self) -> dict:
        """The raw counters /metrics turns into metric families."""
        out = {
            "rpc_errors": {(s.name, error): n for s in self.rpc_services() for error, n in s.dispatcher.errors.items()},
            "nfs_failures": dict(self.nfsd.failures) if self.nfsd else {},
            "bytes_read": self.nfsd.bytes_read if self.nfsd else 0,
            "bytes_written": self.nfsd.bytes_written if self.nfsd else 0,
            "connections": {s.name: len(s.stream_factory.connections) for s in self.rpc_services()
                            if s.stream_factory is not None},
            "locks": self.nlm.table.counts() if self.nlm else {},
        }
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

    def __init__(self, table: ExportTable, path: str, reactor, mounts: MountList | None = None) -> None:
        self.table = table
        self.path = path
        self.reactor = reactor
        self.mounts = mounts
        self._previous = None

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
            log.info("reloaded {path}: {n} exports, {what}", path=self.path, n=len(exports),
                     what=f"{len(changes)} changed" if changes else "nothing changed")
            for change in changes:
                log.info("{change}", change=change)
            for warning in exports.warnings:
                log.warn("{warning}", warning=warning)
            if self.mounts is not None:
                _forget_unexported_mounts(self.mounts, self.table)
            return {"ok": True, "file": self.path, "exports": describe_exports(exports), "changes": changes,
                    "warnings": exports.warnings}

        def failed(f) -> dict:
            log.error("exports not reloaded, the old ones stay in force: {error}", error=f.value)
            errors = getattr(f.value, "errors", None) or [str(f.value)]
            return {"ok": False, "file": self.path, "errors": errors}

        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), load_exports,
                                         self.path).addCallbacks(loaded, failed)


class LockingStart(service.Service):
    """Starts NSM (new state number, SM_NOTIFY to the hosts monitored before) and sets the lock grace period.

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


def make_forwarder(reactor, interface: str = "127.0.0.1"):
    """A CALLIT forwarder: UDP calls to 127.0.0.1:port with the caller's credential."""
    client = RPCDatagramClient("127.0.0.1", 0, reactor)
    listening = []

    def forward(port, prog, vers, proc, args, cred):
        if not listening:
            listening.append(reactor.listenUDP(0, client, interface=interface))
        return client.call(prog, vers, proc, args, cred, timeout=5.0, retransmit=1.0, address=("127.0.0.1", port))

    return forward


log = logger("nfsstack")

DEFAULT_EXPORT = "export"
#: Who may mount the default export: this machine only.  Other hosts need an exports file that names them.
DEFAULT_CLIENTS = ("127.0.0.0/8", "::1")


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


def default_exports() -> Exports:
    """``./export`` (created world-writable and sticky, like /tmp), to this machine's clients only, rw with
    root_squash."""
    path = os.path.abspath(DEFAULT_EXPORT)
    check_default_export(path)
    try:
        os.mkdir(path, 0o1777)
        os.chmod(path, 0o1777)  # the umask took its share
    except FileExistsError:
        check_default_export(path)  # made between the check and here
    clients = " ".join(f"{c}(rw)" for c in DEFAULT_CLIENTS)
    exports = parse_exports(f'"{path}" {clients}\n', "<default export>")
    log.info("no --exports given: exporting {path} to this machine only ({clients}: rw,root_squash,secure); "
             "to export to other hosts, write an exports(5) file and start with --exports FILE",
             path=path, clients=", ".join(DEFAULT_CLIENTS))
    return exports


def _raise_fd_limit() -> None:
    """Descriptors: cached file handles and connections need more than a shell's usual 1,024."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def makeService(options: Options, reactor=None) -> NfsStackService:
    if reactor is None:
        from twisted.internet import reactor
    set_level(options["log-level"])
    stack = NfsStackService()
    _raise_fd_limit()
    common = dict(
        interface=options["bind"],
        reactor=reactor,
        max_record=options["max-record"],
        idle_timeout=options["idle-timeout"],
        max_connections=options["max-connections"],
    )
    from nfsstack.portmap.local import DEFAULT_SOCKET, foreign_network_namespace

    rpcbind_socket = options["rpcbind-socket"]
    if options["system-rpcbind"]:
        stack.registrar = RpcbindRegistrar(
            reactor, port=options["portmap-port"],
            socket_path=DEFAULT_SOCKET if rpcbind_socket is None else (rpcbind_socket or None),
        )
    else:
        registry = Registry()
        stack.registrar = LocalRegistrar(registry)
        stack.portmapper = Portmapper(
            registry,
            remote_calls=options["remote-calls"],
            forwarder=make_forwarder(reactor) if options["remote-calls"] else None,
        )
        if rpcbind_socket is None:  # the default: rpcbind's socket, if this is the host's portmapper
            rpcbind_socket = DEFAULT_SOCKET if options["portmap-port"] == PMAP_PORT else ""
            if rpcbind_socket and foreign_network_namespace(rpcbind_socket):
                log.info("not serving {path}: this network namespace is not the one of the machine's {dir} "
                         "(--rpcbind-socket PATH serves one anyway)", path=rpcbind_socket,
                         dir=os.path.dirname(rpcbind_socket))
                rpcbind_socket = ""
        portmap = RPCService(
            "portmapper", [stack.portmapper.program], options["portmap-port"], registrar=stack.registrar,
            unix_socket=rpcbind_socket or None, **common
        )
        portmap.listen_hint = (
            " (is the system's rpcbind running? Then start with --system-rpcbind to register with it instead.)"
        )
        portmap.setServiceParent(stack)
    if not kernel_handles_work(os.getcwd()):
        log.error("mountd, nfsd, nlockmgr and status not started: file handles need root "
                  "(CAP_DAC_READ_SEARCH for open_by_handle_at)")
    elif (cannot_switch := can_switch()) is not None:
        # Serving anyway would give every client this process's rights (CAP_DAC_READ_SEARCH reads any file).
        log.error("mountd, nfsd, nlockmgr and status not started: this process cannot act as its clients "
                  "({why}); run it as root, or give it CAP_SETUID and CAP_SETGID", why=cannot_switch)
    else:
        _file_services(stack, options, common, reactor)
    _cluster_service(stack, options, reactor)
    return stack


def _file_services(stack: NfsStackService, options: Options, common: dict, reactor) -> None:
    """status, nlockmgr, mountd and nfsd, in that order, on the exports."""
    state_dir = os.path.abspath(options["state-dir"])
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
    exports = getattr(options, "exports", None) or default_exports()
    for warning in exports.warnings:
        log.warn("{warning}", warning=warning)
    for line in describe_exports(exports):
        log.info("export {line}", line=line)
    for export in exports:
        if not os.path.isdir(export.path):
            log.error("{path} (exported on {src} line {line}) is not a directory", path=export.path,
                      src=exports.source, line=export.line)
    stack.exports = ExportTable(exports, HandleCodec(load_key(state_dir)))
    stack.mounts = MountList(state_dir)
    _forget_unexported_mounts(stack.mounts, stack.exports)
    TimerService(5.0, stack.exports.sweep).setServiceParent(stack)
    if options["exports"] is not None:
        ExportsReloader(stack.exports, os.path.abspath(options["exports"]), reactor,
                        stack.mounts).setServiceParent(stack)
    remote = RemoteCaller(reactor, PortmapClient(reactor).getport)  # a client's portmapper, on 111
    stack.nsm = Nsm(NsmState(state_dir), reactor, remote)
    stack.nlm = Nlm(stack.exports, reactor, remote, stack.nsm, grace=options["grace-time"])
    stack.nsm.listeners.append(stack.nlm.host_rebooted)
    RPCService("status", [stack.nsm.program], options["statd-port"], registrar=stack.registrar,
               **common).setServiceParent(stack)
    LockingStart(stack.nsm, stack.nlm, remote).setServiceParent(stack)
    RPCService("nlockmgr", [stack.nlm.program], options["nlm-port"], registrar=stack.registrar,
               **common).setServiceParent(stack)
    stack.mountd = Mountd(stack.exports, stack.mounts)
    RPCService("mountd", [stack.mountd.program], options["mountd-port"], registrar=stack.registrar,
               **common).setServiceParent(stack)
    workers = Workers(reactor, max(1, options["threads"]))
    reactor.addSystemEventTrigger("after", "shutdown", workers.stop)
    syncer = None if options["no-aio-fsync"] else open_syncer(reactor)
    if syncer is not None:
        syncer.batch = replies_held  # a batch of completions answers its calls with one send per connection
        reactor.addSystemEventTrigger("after", "shutdown", syncer.close)
    stack.nfsd = Nfsd(stack.exports, in_thread=workers, syncer=syncer)
    reactor.addSystemEventTrigger("after", "shutdown", stack.nfsd.listings.close)
    TimerService(1.0, stack.nfsd.files.sweep).setServiceParent(stack)
    reactor.addSystemEventTrigger("after", "shutdown", stack.nfsd.files.close)
    RPCService("nfsd", [stack.nfsd.program], options["nfs-port"], registrar=stack.registrar,
               **common).setServiceParent(stack)


def _forget_unexported_mounts(mounts: MountList, table: ExportTable) -> None:
    """The mount list keeps no entry of a directory that no export holds any more (``showmount -a``)."""
    for host, directory in mounts.keep_only(lambda d: table.containing(d) is not None):
        log.info("mount list: {host}:{dir} forgotten, no export holds it any more", host=host, dir=directory)


def _cluster_service(stack: NfsStackService, options: Options, reactor) -> None:
    """Port 1110: the status report, metrics and health over HTTP, keepalives over UDP."""
    stack.node = Node(options["node-name"] or socket.gethostname(), options.status_networks, options.keepalive_key,
                      options["keepalive-interval"], options["keepalive-misses"], reactor.seconds, options.peers)
    for child in stack.rpc_services():
        child.dispatcher.observer = stack.call_stats
    collector = StackCollector(stack.call_stats, stack.counters)
    binds = [b.strip() for b in options["status-bind"].split(",") if b.strip()] or ["127.0.0.1"]
    reloader = stack.namedServices.get("exports-reload")
    ClusterService(stack.node, options["status-port"], binds, stack.report, stack.down, metrics_registry(collector),
                   reactor, stat=stack.stat, reload=reloader.reload if reloader else None).setServiceParent(stack)
