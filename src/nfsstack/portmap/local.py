"""rpcbind's local socket (``/run/rpcbind.sock``): where it is, and whether this stack should serve it.

libtirpc's daemons (``rpcb_set``) and ``rpcinfo`` without a host talk to
rpcbind over this AF_UNIX stream socket first.  The stack serves it by
default only when it runs the host's portmapper: on port 111, in the network
namespace that owns the file system the socket lives on.  A stack started in
another network namespace (``ip netns exec``) that shares the machine's
``/run`` would otherwise send the machine's daemons to a portmapper they
cannot reach over IP.
"""

from __future__ import annotations

import os

DEFAULT_SOCKET = "/run/rpcbind.sock"


def _same(a: str, b: str) -> bool:
    sa, sb = os.stat(a), os.stat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _named_netns_dir(directory: str) -> str:
    return os.path.join(directory, "netns")  # ip-netns(8) keeps its namespaces in /run/netns


def foreign_network_namespace(path: str = DEFAULT_SOCKET) -> bool:
    """True if the directory of ``path`` is shared with processes of another network namespace.

    Two signs: this process's network namespace is one that ``ip netns add`` made and mounted under that
    same directory (``/run/netns/NAME``: the directory is the machine's, the namespace is not); or (when
    /proc lets us look) init's network namespace differs from ours while its ``/run`` is ours.
    """
    directory = os.path.dirname(os.path.abspath(path)) or "/"
    try:
        ours = os.stat("/proc/self/ns/net")
    except OSError:
        return False
    named = _named_netns_dir(directory)
    try:
        names = os.listdir(named)
    except OSError:
        names = []
    for name in names:
        try:
            st = os.stat(os.path.join(named, name))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino):
            return True
    try:
        if _same("/proc/self/ns/net", "/proc/1/ns/net"):
            return False
        return _same(directory, f"/proc/1/root{directory}")
    except OSError:
        return False  # cannot tell (init is not ours to inspect): assume ours
