"""The twistd plugin's options and service maker (the ``tap.py`` convention of ``twisted.names``).

:func:`makeService` only builds the service tree of :mod:`nfsstack.service`:
nothing is opened, made or written until the tree starts.  It decides which
services exist from read-only probes (may this process open kernel handles,
and act as its clients?); everything else (the state directory, the handle
key, the default export, io_uring, the thread pool) is opened by the service
that owns it (docs/architecture.md, "Lifecycle").
"""

from __future__ import annotations

import os
import socket
from typing import Optional

from twisted.application.internet import TimerService
from twisted.python import usage

from nfsstack.cluster.metrics import StackCollector
from nfsstack.cluster.metrics import registry as metrics_registry
from nfsstack.cluster.service import ClusterService, Node, parse_networks, parse_peer
from nfsstack.exports import ExportsError, load_exports
from nfsstack.exports.handles import NO_CAPABILITY, filesystem_without_handles, opening_handles_refused
from nfsstack.exports.identity import can_switch, local_realms
from nfsstack.exports.table import ExportTable
from nfsstack.logs import LEVELS, logger, set_level
from nfsstack.mount.program import Mountd
from nfsstack.nfsacl.program import nfsd_port_programs
from nfsstack.nlm.program import Nlm
from nfsstack.nsm.program import Nsm
from nfsstack.nsm.state import NsmState
from nfsstack.portmap.client import PortmapClient
from nfsstack.portmap.program import Portmapper
from nfsstack.portmap.registrar import LocalRegistrar, RpcbindRegistrar
from nfsstack.portmap.registry import Registry
from nfsstack.portmap.types import PMAP_PORT
from nfsstack.rpc.client import RPCDatagramClient
from nfsstack.rpc.ports import may_bind
from nfsstack.rpc.remote import RemoteCaller
from nfsstack.rpc.server import DEFAULT_MAX_RECORD
from nfsstack.rpc.service import RPCService
from nfsstack.service import (DEFAULT_EXPORT, ExportsReloader, FileState, LockingService, NfsStackService, build_nfsd,
                              check_default_export, default_export_list, kerberos_engine)
from nfsstack.startup import UnavailableServices

log = logger("nfsstack")


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} is not in 0..65535")
    return port


_port.coerceDoc = "A port number, 0..65535."  # type: ignore[attr-defined]


#: The ports of a plain user's stack, one that may not listen below 1024 (neither root nor CAP_NET_BIND_SERVICE):
#: fixed, so that the mount command (README "Running") is written once.  An option the command line or --config
#: gives wins.
UNPRIVILEGED_PORTS = {"portmap-port": 10111, "nfs-port": 12049, "mountd-port": 12050, "nlm-port": 12051,
                      "statd-port": 12052}


def pick_ports(options: Options) -> dict[str, int]:
    """Give the port options left unset the plain user's ports of :data:`UNPRIVILEGED_PORTS`, if this process may
    not listen on port 111; the options changed.  With --system-rpcbind the portmapper's port stays that of the
    rpcbind already running."""
    if may_bind(PMAP_PORT):
        return {}
    given = set(getattr(options, "command_line", ())) | set(getattr(options, "config_settings", {}))
    picked = {}
    for option, port in UNPRIVILEGED_PORTS.items():
        if option not in given and not (option == "portmap-port" and options["system-rpcbind"]):
            options[option] = picked[option] = port
    return picked


def _workers(value: str) -> int:
    n = int(value)
    if n < 0:
        raise ValueError(f"{n} workers: 0 (as many as CPUs) or more")
    return n


_workers.coerceDoc = "A number of processes; 0 = as many as the CPUs."  # type: ignore[attr-defined]


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
        ["partial", None, ("Keep running when a service cannot start (it is logged; /healthz then answers 503 "
                           "naming it, and nfsstack status exits non-zero). Without it the process exits 1.")],
    ]

    optParameters = [
        ["config", None, None, "INI file in the style of /etc/nfs.conf with any of these options "
                               "(etc/nfsstack.conf); the command line wins over it."],
        ["exports", None, None, "exports(5) file (default: export ./export to this machine only, rw, root_squash)."],
        ["state-dir", None, "var", "Directory for persistent state: handle key, mount list, NSM state."],
        ["bind", None, "", "Addresses (comma-separated, IPv4 and IPv6) the RPC services listen on "
         "(default: all IPv4 and, if the host has IPv6, all IPv6 addresses).", RPCService.check_bind],
        ["portmap-port", None, PMAP_PORT, "Port of the portmapper (TCP and UDP); 10111 as a plain user.", _port],
        ["nfs-port", None, 2049, "Port of nfsd, 0 = dynamic; 12049 as a plain user.", _port],
        ["mountd-port", None, 0, "Port of mountd, 0 = dynamic; 12050 as a plain user.", _port],
        ["nlm-port", None, 0, "Port of nlockmgr, 0 = dynamic (4045 is customary); 12051 as a plain user.", _port],
        ["statd-port", None, 0, "Port of status (NSM), 0 = dynamic; 12052 as a plain user.", _port],
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
        ["threads", None, 64, "Threads for the NFS calls that may wait on the disk (in each nfsd worker).", int],
        ["workers", None, 0, "nfsd worker processes sharing nfsd's port, each client steered to one by its "
                             "address (0, the default: the CPUs this process may use; 1 = nfsd in this process). "
                                "Only the local backend has workers; the others serve nfsd in this process.",
         _workers],
        ["backend", None, "local", "What the exports serve: local (this machine's directories; without "
                                   "CAP_DAC_READ_SEARCH it is local-unprivileged), local-unprivileged (handles "
                                   "found through a map of paths in --state-dir), memory (a tree in memory per "
                                   "export, empty at start, its root mode 1777), or module:factory (your own: "
                                   "factory(export_table) returns an IFilesystem, docs/architecture.md)."],
        ["search-entries", None, 100_000, "local-unprivileged: directory entries a search for a handle's lost "
                                          "object looks at, at most.", int],
        ["search-seconds", None, 1.0, "local-unprivileged: seconds a search for a handle's object takes at "
                                      "most.", float],
        ["memory-limit", None, 1024, "With --backend memory: MiB of file data it holds at most (then NOSPC).", int],
        ["keytab", None, None, "Keytab with the server's Kerberos keys (principal nfs/HOSTNAME), for RPCSEC_GSS "
                               "(sec=krb5, krb5i, krb5p) on every RPC service; default /etc/krb5.keytab. Without "
                               "it (or the gssapi package) Kerberos calls are refused and the rest is served."],
        ["local-realms", None, None, "Kerberos realms whose users (user@REALM) are the local users of the same "
                                     "name, comma-separated, as idmapd.conf's Local-Realms ('': none); default: "
                                     "that, else krb5.conf's default_realm. Other realms' principals are the "
                                     "anonymous user."],
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
        self.unprivileged_ports = pick_ports(self)
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
        self.backend_factory = _backend_factory(self["backend"])
        if self["memory-limit"] < 1:
            raise usage.UsageError("--memory-limit must be at least 1 (MiB)")


def _backend_factory(name: str):
    """``--backend``: None for the local backend (either kind), else ``factory(export_table, options)`` making the
    backend."""
    if name in ("local", "local-unprivileged"):
        return None
    if name == "memory":
        def memory(table, options):
            from nfsstack.nfs3.memory import MemoryFilesystem

            # Each export's root is everyone's, sticky, as /tmp: squashed root and every user may make things there.
            return MemoryFilesystem(table.exports, limit_bytes=options["memory-limit"] << 20, root_mode=0o1777)

        return memory
    module, _, attribute = name.partition(":")
    if not module or not attribute:
        raise usage.UsageError(f"--backend {name}: local, local-unprivileged, memory, or module:factory")
    import importlib

    try:
        factory = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as e:
        raise usage.UsageError(f"--backend {name}: {e}")
    return lambda table, options: factory(table)


def make_forwarder(reactor, interface: str = "127.0.0.1"):
    """A CALLIT forwarder: UDP calls to 127.0.0.1:port with the caller's credential."""
    client = RPCDatagramClient("127.0.0.1", 0, reactor)
    listening = []

    def forward(port, prog, vers, proc, args, cred):
        if not listening:
            listening.append(reactor.listenUDP(0, client, interface=interface))
        return client.call(prog, vers, proc, args, cred, timeout=5.0, retransmit=1.0, address=("127.0.0.1", port))

    return forward


def makeService(options: Options, reactor=None) -> NfsStackService:
    if reactor is None:
        from twisted.internet import reactor
    set_level(options["log-level"])
    stack = NfsStackService(local_realms(options["local-realms"]))
    stack.partial = bool(options["partial"])
    common = dict(
        interface=options["bind"],
        reactor=reactor,
        max_record=options["max-record"],
        idle_timeout=options["idle-timeout"],
        max_connections=options["max-connections"],
        reply_batcher=stack.reply_batcher,
        gss=_kerberos(options, reactor, stack.principals),
    )
    from nfsstack.portmap.local import DEFAULT_SOCKET, foreign_network_namespace

    portmap = None
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
    # Which services exist is decided here, by read-only probes: both look, neither changes anything.  Only the
    # local backend needs them: another backend's storage is its own, and so are its permissions.  The services
    # that cannot exist stand where they would start (startup.UnavailableServices): the stack stops there with the
    # reason, or with --partial says it and serves the rest.
    unavailable = None
    #: The local backend without open_by_handle_at: None (kernel handles), "switching" (acts as its clients, as
    #: root in a container does), or "plain user" (every client acts as this process's user).
    unprivileged = None
    if getattr(options, "backend_factory", None) is not None:
        pass
    elif options["backend"] == "local-unprivileged":
        unprivileged, unavailable = _unprivileged(options, "--backend local-unprivileged")
    elif (refused := _kernel_handles_refused(options)) is not None:
        why, servable = refused
        unprivileged, unavailable = _unprivileged(options, why) if servable else (None, why)
    elif (cannot_switch := can_switch()) is not None:
        # Serving anyway would give every client this process's rights (CAP_DAC_READ_SEARCH reads any file).
        unavailable = (f"this process cannot act as its clients ({cannot_switch}): run it as root, or give it "
                       "CAP_SETUID and CAP_SETGID")
    # The services that own resources start first and stop last (NfsStackService.stopService).
    if unavailable is None:
        resources, services = _file_services(stack, options, common, reactor, unprivileged)
    else:
        resources, services = [], [UnavailableServices(["mountd", "nfsd", "nlockmgr", "status"], unavailable)]
    for child in resources:
        child.setServiceParent(stack)
    if portmap is not None:
        portmap.setServiceParent(stack)
    for child in services:
        child.setServiceParent(stack)
    for child in stack.rpc_services():
        _explain_port(child, options)
    if getattr(options, "unprivileged_ports", None):
        _log_unprivileged_ports(options)
    _cluster_service(stack, options, reactor)
    return stack


def _kerberos(options: Options, reactor, principals):
    """The process's RPCSEC_GSS engine from ``--keytab`` (default /etc/krb5.keytab), or None (logged why)."""
    return kerberos_engine(options.get("keytab"), reactor, principals)


#: The option that sets each RPC service's port.
PORT_OPTIONS = {"portmapper": "portmap-port", "nfsd": "nfs-port", "mountd": "mountd-port", "nlockmgr": "nlm-port",
                "status": "statd-port"}


def _explain_port(service: RPCService, options: Options) -> None:
    """What ``service`` says when its port cannot be had: the option to change, and who may hold the port."""
    option = PORT_OPTIONS.get(service.name)
    if option is None:
        return
    service.port_option = f"--{option}"
    service.unprivileged_port = UNPRIVILEGED_PORTS[option]
    port = options[option]
    if service.name == "portmapper":
        holder = "is the system's rpcbind running?" if port == PMAP_PORT else "another nfsstack or portmapper?"
        service.in_use_hint = f"{holder} Then start with --system-rpcbind to register with it instead"
    elif service.name == "nfsd" and port == 2049:
        service.in_use_hint = "is knfsd running? Stop nfs-server first, or choose another --nfs-port"


def _log_unprivileged_ports(options: Options) -> None:
    """The one line a plain user's stack starts with: its ports, and the kernel mount command that needs no
    portmapper on port 111 (nfs(5): port=, mountport=)."""
    exports = getattr(options, "exports", None)
    if exports is None:  # the default export, which admits this machine only
        export, host = os.path.abspath(DEFAULT_EXPORT), "127.0.0.1"
    else:
        export, host = next((e.path for e in exports), "/EXPORT"), "SERVER"
    binds = [b for b in options["bind"].split(",") if b not in ("", "0.0.0.0", "::")]
    if binds:
        host = f"[{binds[0]}]" if ":" in binds[0] else binds[0]
    log.info("no root or CAP_NET_BIND_SERVICE: listening on high ports (portmapper {pmap}, nfsd {nfs}, mountd "
             "{mountd}, nlockmgr {nlm}, status {statd}); mount with: mount -t nfs -o vers=3,proto=tcp,port={nfs},"
             "mountport={mountd},mountproto=tcp,nolock {host}:{export} DIR (nolock: the client's locks stay on "
             "the client; locking through this server needs its portmapper on port 111, where the kernel's lock "
             "manager looks)", pmap=options["portmap-port"], nfs=options["nfs-port"],
             mountd=options["mountd-port"], nlm=options["nlm-port"], statd=options["statd-port"], host=host,
             export=export)


def _kernel_handles_refused(options: Options) -> Optional[tuple[str, bool]]:
    """Why the local backend cannot find its objects by kernel handles, and whether the backend by paths can
    serve them instead; or None: kernel handles serve.

    Probed on each export that exists now, but not on one whose every line says ``mountpoint`` while nothing is
    mounted there yet (the directory below is not what will be served); for the default export, not made yet,
    in the working directory where it will be.  Whether its filesystem gives file handles (overlayfs does not,
    without ``nfs_export=on``), and whether this process may open them (CAP_DAC_READ_SEARCH: a property of the
    process, so asked even when no export could be probed, of the working directory or ``/``).  If every
    export lies on filesystems without handles, or the process may not open them, all are served by paths
    (unless every export was probed and none gives identities to know its files by either: nothing could be
    served); where only some lie on such filesystems, the others keep kernel handles (their clients' handles,
    and ``crossmnt``, go on working) and those are refused by mountd, saying why, as an export a reload adds on
    such a filesystem is."""
    exports = getattr(options, "exports", None)
    default = exports is None
    exports = list(default_export_list() if default else exports)
    waiting = {id(export) for export in exports if _waits_for_its_mount(export)}
    probed = [export.path for export in exports if id(export) not in waiting and os.path.isdir(export.path)]
    every_export = bool(exports) and len(probed) == len(exports)
    candidates = probed or ([os.getcwd()] if default else [])
    without = {path: no for path in candidates if (no := filesystem_without_handles(path)) is not None}
    with_handles = [path for path in candidates if path not in without]
    if candidates and not with_handles:
        servable = not every_export or any(no.identities for no in without.values())
        return "; ".join(no.why for no in without.values()), servable
    for path in with_handles or [os.getcwd(), "/"]:
        refused = opening_handles_refused(path)
        if refused == NO_CAPABILITY:
            return refused, True
        if refused is None:
            break
        if path in with_handles:  # e.g. handles that do not open again
            log.warn("{why}: calls on {path} may fail", why=refused, path=path)
    for path, no in without.items():
        log.warn("not serving {path}: {why} (mount it with nfs_export=on, or serve every export by paths: "
                 "--backend local-unprivileged)", path=path, why=no.why)
    return None


def _waits_for_its_mount(export) -> bool:
    """Whether every line of ``export`` serves it only while a path is a mount point (``mountpoint``) that is not
    one now."""
    return bool(export.clients) and all(
        options.mountpoint is not None and not os.path.ismount(options.mountpoint or export.path)
        for _, options in export.clients)


def _unprivileged(options: Options, why: str) -> tuple[Optional[str], Optional[str]]:
    """Choose the unprivileged local backend (exports/paths.py) and say so (``why``): ("switching" or "plain
    user", None), or (None, why not) if the exports ask for what it cannot serve (naming the file and line)."""
    from nfsstack.exports.paths import refuse_unservable

    exports = getattr(options, "exports", None)
    if exports is None:
        exports = default_export_list()
    cannot_switch = can_switch()
    try:
        refuse_unservable(exports, (os.getuid(), os.getgid()) if cannot_switch is not None else None)
    except ExportsError as e:
        return None, "; ".join(str(error) for error in e.errors)
    log.info("local backend without open_by_handle_at ({why}): handles are found through the map of places in "
             "{state}/handles.sqlite", why=why, state=os.path.abspath(options["state-dir"]))
    if cannot_switch is not None:
        log.warn("this process cannot act as its clients ({why}): every client acts as uid {uid} gid {gid}, "
                 "whoever it says it is", why=cannot_switch, uid=os.getuid(), gid=os.getgid())
        return "plain user", None
    return "switching", None


def _file_services(stack: NfsStackService, options: Options, common: dict, reactor,
                   unprivileged: Optional[str] = None) -> tuple[list, list]:
    """(the services owning the state and nfsd's resources, then status, nlockmgr, mountd and nfsd, in that
    order, on the exports): built, not started."""
    state_dir = os.path.abspath(options["state-dir"])
    exports = getattr(options, "exports", None)
    default_export = exports is None
    if default_export:
        exports = default_export_list()
    # The codec (the handle key) is loaded by FileState at start.
    if unprivileged is None:
        stack.exports = ExportTable(exports, None)
    else:
        from nfsstack.exports.paths import PathHandles

        stack.exports = PathHandles(exports, None, state_dir, search_entries=options["search-entries"],
                                    search_seconds=options["search-seconds"],
                                    plain_user=(os.getuid(), os.getgid()) if unprivileged == "plain user" else None)
    reloader = None
    if options["exports"] is not None:
        reloader = ExportsReloader(stack.exports, os.path.abspath(options["exports"]), reactor)
    remote = RemoteCaller(reactor, PortmapClient(reactor).getport)  # a client's portmapper, on 111
    stack.nsm = Nsm(NsmState(state_dir), reactor, remote)
    nfsd = build_nfsd(stack.exports, options, reactor, stack.reply_batcher, unprivileged,
                      principals=stack.principals)
    local, fs = nfsd.local, nfsd.fs
    log.info("storage: {backend}", backend=options["backend"] if local is None else
             "local directories" + (" (unprivileged: handles through a map of places)" if unprivileged else ""))
    stack.nlm = Nlm(stack.exports, reactor, remote, stack.nsm, fs, grace=options["grace-time"],
                    principals=stack.principals)
    stack.nsm.listeners.append(stack.nlm.host_rebooted)
    stack.mountd = Mountd(stack.exports, None, fs.mount, principals=stack.principals)
    stack.nfsd = nfsd.nfsd
    resources: list = [FileState(state_dir, stack.exports, default_export,
                                 [h for h in (stack, stack.mountd, reloader) if h is not None])]
    resources += nfsd.resources
    services: list = [TimerService(5.0, stack.exports.sweep)]
    if reloader is not None:
        services.append(reloader)
    services.append(RPCService("status", [stack.nsm.program], options["statd-port"], registrar=stack.registrar,
                               **common))
    services.append(LockingService(stack.nsm, stack.nlm, remote))
    services.append(RPCService("nlockmgr", [stack.nlm.program], options["nlm-port"], registrar=stack.registrar,
                               **common))
    services.append(RPCService("mountd", [stack.mountd.program], options["mountd-port"], registrar=stack.registrar,
                               **common))
    services += nfsd.timers
    size = _worker_count(options, local, unprivileged)
    if size == 1:
        services.append(RPCService("nfsd", nfsd_port_programs(stack.nfsd), options["nfs-port"], registrar=stack.registrar,
                                   **common))
        return resources, services
    from nfsstack.rpc.reuseport import SharedPortService
    from nfsstack.workers import NfsdWorkers

    shared = SharedPortService("nfsd", nfsd_port_programs(stack.nfsd), options["nfs-port"], registrar=stack.registrar,
                               size=size, **common)
    config = {"exports": os.path.abspath(options["exports"]) if options["exports"] is not None else None,
              "state-dir": state_dir, "backend": "local"}
    for option in ("threads", "no-aio-fsync", "max-record", "idle-timeout", "max-connections", "log-level", "keytab"):
        config[option] = options[option]
    config["local-realms"] = ",".join(sorted(stack.principals.realms))  # as the stack read them at its start
    stack.workers = NfsdWorkers(shared, config, reactor, size)
    if reloader is not None:
        reloader.followers.append(stack.workers.reload)
    services += [shared, stack.workers]
    return resources, services


def _worker_count(options: Options, local, unprivileged: Optional[str]) -> int:
    """How many nfsd worker processes: ``--workers``, by default the CPUs; 1 for a backend whose state lives in
    this process (the memory backend, a module's, and the unprivileged one's map of handles), said in one line
    if more were asked for."""
    asked = options["workers"]
    if not asked:
        from nfsstack.workers import default_workers

        asked, explicit = default_workers(), False
    else:
        explicit = True
    if asked > 1 and (local is None or unprivileged is not None):
        if explicit:
            why = ("--backend " + options["backend"]) if local is None else "the unprivileged local backend"
            log.info("--workers {n}: nfsd runs in this process instead ({why} keeps its state in this process, "
                     "which worker processes could not share)", n=asked, why=why)
        return 1
    return asked


def _cluster_service(stack: NfsStackService, options: Options, reactor) -> None:
    """Port 1110: the status report, metrics and health over HTTP, keepalives over UDP."""
    stack.node = Node(options["node-name"] or socket.gethostname(), options.status_networks, options.keepalive_key,
                      options["keepalive-interval"], options["keepalive-misses"], reactor.seconds, options.peers)
    for child in stack.rpc_services():
        child.dispatcher.observer = stack.call_stats
    collector = StackCollector(stack.all_calls, stack.counters)
    binds = [b.strip() for b in options["status-bind"].split(",") if b.strip()] or ["127.0.0.1"]
    reloader = stack.namedServices.get("exports-reload")
    ClusterService(stack.node, options["status-port"], binds, stack.report, stack.down, metrics_registry(collector),
                   reactor, stat=stack.stat, reload=reloader.reload if reloader else None,
                   refresh=stack.refresh if stack.workers is not None else None).setServiceParent(stack)
