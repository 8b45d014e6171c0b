"""Privileged ports: whether this process may listen on one, and what to say when a port cannot be had.

Linux lets a process bind a port below ``net.ipv4.ip_unprivileged_port_start``
(1024 unless changed; a sysctl of each network namespace, which rootless
containers often set to 0) only with CAP_NET_BIND_SERVICE in its effective set,
whatever its uid: root in a container without that capability cannot, and a
plain user given it can.  So the probe reads the capability (``CapEff`` of
``/proc/self/status``, capabilities(7)) and the sysctl; it binds nothing.
The effective uid decides only where /proc cannot be read.

The portmapper's port 111 and nfsd's 2049 are both privileged, so a plain
user's stack listens elsewhere (the assembly picks the ports), and a port
asked for explicitly that the process may not have is one line saying why
and what to do, not a traceback and not "is rpcbind running?".
"""

from __future__ import annotations

import errno
import os
from typing import Optional

from twisted.internet.error import CannotListenError

#: capabilities(7): the bit of CAP_NET_BIND_SERVICE in the capability sets.
CAP_NET_BIND_SERVICE = 10
#: The first port anyone may bind when the sysctl cannot be read (the kernel's default).
DEFAULT_UNPRIVILEGED_PORT_START = 1024


def unprivileged_port_start(path: str = "/proc/sys/net/ipv4/ip_unprivileged_port_start") -> int:
    """The lowest port a process without CAP_NET_BIND_SERVICE may bind, in this network namespace."""
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return DEFAULT_UNPRIVILEGED_PORT_START


def has_net_bind_service(status_path: str = "/proc/self/status") -> bool:
    """True if CAP_NET_BIND_SERVICE is in this process's effective capabilities (``CapEff``); where
    /proc cannot tell, True for an effective uid of 0 (root has every capability unless something
    took them away, and we cannot see that)."""
    try:
        with open(status_path) as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_BIND_SERVICE & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


def may_bind(port: int) -> bool:
    """True if this process may listen on ``port`` as far as privileges go (it may still be in use)."""
    return port == 0 or port >= unprivileged_port_start() or has_net_bind_service()


def listen_failure(name: str, port: int, error: Optional[BaseException], option: str = "",
                   unprivileged_port: Optional[int] = None, in_use: str = "") -> str:
    """One line saying why service ``name`` cannot listen on ``port``, and what to do.

    ``error`` is the socket's error; ``option`` the command-line option that set the port (named in
    the hint), ``unprivileged_port`` the port the service takes when a plain user leaves that option
    unset, ``in_use`` what probably holds the port (for example "is knfsd running?"), said when the
    port is in use.
    """
    code = getattr(error, "errno", None)
    if code in (errno.EACCES, errno.EPERM):
        start = unprivileged_port_start()
        instead = []
        if option and unprivileged_port is not None:
            instead.append(f"leave {option} unset for {unprivileged_port}")
        instead.append(f"choose one above {start - 1}" if start > 0 else "choose another")
        return f"{name}: port {port} needs root or CAP_NET_BIND_SERVICE; {', or '.join(instead)}"
    if code == errno.EADDRINUSE:
        return f"{name}: port {port} is in use ({in_use or 'by another program: another nfsstack?'})"
    reason = getattr(error, "strerror", None) or str(error)
    return f"{name}: cannot listen on port {port}: {reason}"


class PortUnavailable(CannotListenError):
    """A service cannot listen on its port; ``str()`` is the one line of :func:`listen_failure`."""

    def __init__(self, line: str, interface: str, port: int, socket_error: BaseException) -> None:
        super().__init__(interface, port, socket_error)
        self.line = line

    def __str__(self) -> str:
        return self.line
