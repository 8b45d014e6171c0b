"""Honest start-up: a configured service that cannot start stops the process with one line, unless the user
asked for a partial stack (``--partial``).

The configured services are the portmapper (unless ``--system-rpcbind``),
mountd, nfsd, nlockmgr, status and nfsd-status (port 1110).  One that
:func:`nfsstack.tap.makeService` could not build (the process may not open
kernel handles, or may not act as its clients) is an
:class:`UnavailableServices` child standing where those services would start;
one that cannot listen raises :class:`~twisted.internet.error.CannotListenError`
from its ``startService``.  :class:`nfsstack.service.NfsStackService` turns
either into one line (:func:`failure_line`) naming the service, the reason
and what to do, and then either stops the start (:class:`StartupError`) or,
with ``--partial``, logs it and starts the rest; ``/healthz``, ``/metrics``,
``/status`` and ``nfsstack status`` then name what is not serving.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from twisted.application import service
from twisted.internet.error import CannotListenError

from nfsstack.logs import logger
from nfsstack.rpc.ports import PortUnavailable, listen_failure
from nfsstack.rpc.service import RPCService

log = logger("nfsstack")

#: The services the stack may be configured to run, by the names /healthz and /status give them.
SERVICES = ("portmapper", "mountd", "nfsd", "nlockmgr", "status", "nfsd-status")

#: The option that moves each service's port (nfsd-status is the cluster service, on port 1110).
PORT_OPTIONS = {
    "portmapper": "--portmap-port",
    "nfsd": "--nfs-port",
    "mountd": "--mountd-port",
    "nlockmgr": "--nlm-port",
    "status": "--statd-port",
    "nfsd-status": "--status-port",
}

#: Who may be on a well-known port already, and what to do about it (for services that are not RPC services;
#: an RPCService says its own, nfsstack.tap gives it).
IN_USE_HINTS = {
    "nfsd-status": "another nfsstack? move it with --status-port",
}


class StartupError(SystemExit, Exception):
    """The stack cannot start: ``str()`` is the one line saying why (already logged).

    A :class:`SystemExit` (with exit status 1) so that ``twistd -n`` exits 1
    without a traceback when ``startService`` raises it before the reactor
    runs; an :class:`Exception` too, so that a daemonizing twistd hands it
    to its parent, which prints it and exits 1 (twistd's
    ``UnixApplicationRunner.postApplication`` reports only Exceptions).
    """

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.code = 1  # not the line: Python would print it to stderr, which twistd logs a second time


def health_name(child: service.IService) -> str:
    """The name /healthz and /status give a service (the cluster service is nfsd-status)."""
    return "nfsd-status" if child.name == "cluster" else child.name


def failure_line(child: service.IService, failure: BaseException) -> str | None:
    """The one line for a service that failed to start with an expected failure; None for anything else
    (a bug, whose traceback is worth more than a line)."""
    name = health_name(child)
    if isinstance(failure, StartupError):
        return str(failure)
    if isinstance(failure, PortUnavailable):
        return str(failure)
    if isinstance(failure, CannotListenError):
        option = PORT_OPTIONS.get(name, "")
        return listen_failure(name, failure.port, failure.socketError, option, None,
                              IN_USE_HINTS.get(name) or f"move {name} with {option or 'another port option'}")
    if isinstance(failure, OSError):
        return f"{name} cannot start: {failure}"
    return None


class UnavailableServices(service.Service):
    """Configured services :func:`nfsstack.tap.makeService` could not build, standing where they would start:
    starting it fails with the line saying which and why (the stack then stops, or with ``--partial`` says it
    and goes on)."""

    name = "unavailable"

    def __init__(self, names: list[str], why: str) -> None:
        self.names = list(names)
        self.why = why

    @property
    def line(self) -> str:
        names = self.names
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        return f"{listed} cannot run: {self.why}"

    def startService(self) -> None:
        raise StartupError(self.line)


def start_in_order(children: Iterable[service.IService], partial: bool, not_serving: dict[str, str]) -> None:
    """Start ``children`` in order.  A configured service that fails with an expected failure gives one line:
    with ``partial`` it is logged, kept in ``not_serving`` (name -> the line) and the next child starts;
    otherwise it is logged and :class:`StartupError` stops the start.  Any other failure (a service owning a
    resource, or a bug) propagates as it is."""
    children = list(children)
    for child in children:
        try:
            child.startService()
        except Exception as e:
            line = failure_line(child, e)
            if line is None:
                raise
            names = child.names if isinstance(child, UnavailableServices) else [health_name(child)]
            if partial and all(name in SERVICES for name in names):
                log.error("{line}; the other services start (--partial)", line=line)
                for name in names:
                    not_serving[name] = line
                continue
            log.error("{line}", line=line)
            _leave(children)
            raise StartupError(line) from None


def _leave(children: list) -> None:
    """What a stopped start leaves behind once the process exits without running the reactor: the local
    socket a portmapper serves (rpcbind's) would stay as a file nobody listens on.  Ports close with the
    process, and no registration has been sent (registrars send once the reactor runs)."""
    for child in children:
        if isinstance(child, RPCService) and child.unix is not None and child.unix_socket:
            try:
                os.unlink(child.unix_socket)
            except OSError:
                pass


def serving(children: Iterable[service.IService]) -> dict[str, bool]:
    """Every configured service among ``children``, in start order, and whether it serves: an RPC service while
    it listens on TCP and UDP, nfsd-status while port 1110 listens (False when it is not among them), and never
    one that could not be built."""
    out: dict[str, bool] = {}
    cluster = None
    for child in children:
        if isinstance(child, RPCService):
            out[child.name] = child.tcp is not None and child.udp is not None
        elif isinstance(child, UnavailableServices):
            out.update((name, False) for name in child.names)
        elif child.name == "cluster":
            cluster = child
    out["nfsd-status"] = bool(cluster is not None and cluster.listening)
    return out
