"""The backends the conformance suite judges, and how a server is built for each.

Everything that depends on a backend is in :func:`serve` and :data:`CAPS`: a new backend adds its name to
:data:`BACKENDS`, a branch to :func:`serve` that builds an nfsd over it with an export of an empty directory
(``rw,no_root_squash``, for 127.0.0.1), and its capabilities to :data:`CAPS`.  The checks in ``test_backend.py``
see only what an NFSv3 client sees: calls go through the RPC :class:`~nfsstack.rpc.server.Dispatcher` the server
uses and replies are decoded with the project's client codec (:mod:`nfsstack.nfs3.client`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import pytest
from twisted.internet import defer

from nfsstack.nfs3.client import PROC, Result, decode, encode
from nfsstack.rpc.message import Credential, decode_reply, encode_call
from nfsstack.rpc.server import Dispatcher, joined

#: The backends judged; a new one is added here and in :func:`serve`.
#: ``local-deferred`` and ``local-coroutine`` are the local backend answering all its work with Deferreds, or as
#: coroutines (:class:`Answering`): what a backend that talks to the network does, which nfsd must serve alike.
#: ``local-unprivileged`` is the local backend resolving handles through its map of places (exports/paths.py), as
#: without CAP_DAC_READ_SEARCH, but run as root so that the permission checks are the same.
#: ``memory`` is the memory backend (nfs3/memory/), held to what the kernel does for the local one.
BACKENDS = ["local", "local-deferred", "local-coroutine", "local-unprivileged", "memory"]

#: What each backend can do, among what a backend may legitimately not: a check needing a capability is marked
#: ``@pytest.mark.needs("name")`` and is skipped on the backends without it.
#:
#: - ``permissions``: the caller's AUTH_SYS uid and gids are checked against the mode bits and owners of the
#:   objects (RFC 1813 section 4.4), and new objects belong to their creator;
#: - ``symlinks``, ``hard_links``: SYMLINK and READLINK; LINK;
#: - ``special_files``: MKNOD of FIFOs and sockets;
#: - ``mknod_device``: MKNOD of character and block devices (by root).
CAPS: dict[str, frozenset[str]] = {
    "local": frozenset({"permissions", "symlinks", "hard_links", "special_files", "mknod_device"}),
}
CAPS["local-deferred"] = CAPS["local-coroutine"] = CAPS["local-unprivileged"] = CAPS["memory"] = CAPS["local"]

#: The methods of IFilesystem that do work, and may answer with a Deferred or as a coroutine.
WORK = ("setattr", "access", "lookup", "readlink", "read", "write", "commit", "create", "mkdir", "symlink", "mknod",
        "remove", "rmdir", "rename", "link", "readdir", "fsstat", "pathconf")


class Answering:
    """A backend answering every piece of work of ``inner`` with a Deferred (``how="deferred"``), or as a
    coroutine (``how="coroutine"``), instead of at once; the rest (resolve, attributes, end, release) it passes
    on.  Nothing blocks, so nfsd runs every call inline (``blocking`` is False)."""

    blocking = False

    def __init__(self, inner, how: str) -> None:
        self.inner = inner
        for name in WORK:
            setattr(self, name, self._answering(getattr(inner, name), how))

    @staticmethod
    def _answering(method, how: str):
        if how == "deferred":
            def answer(*args):
                return defer.maybeDeferred(method, *args)
        else:
            async def answer(*args):
                got = method(*args)
                return (await got) if isinstance(got, defer.Deferred) else got
        return answer

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

PRIVILEGED = ("127.0.0.1", 700)
ROOT_CRED = Credential(0, 0, (), "conformance")


class Client:
    """Calls nfsd's procedures through the dispatcher, from a privileged port of 127.0.0.1, and decodes the
    results: ``nfs("LOOKUP", dirfh, b"name")``, with ``cred=`` for another caller."""

    def __init__(self, dispatcher: Dispatcher, cred: Credential = ROOT_CRED) -> None:
        self.dispatcher, self.cred = dispatcher, cred
        self.xid = 0

    def __call__(self, proc: str, *args: Any, cred: Credential | None = None) -> Result:
        self.xid += 1
        call = encode_call(self.xid, 100003, 3, PROC[proc], (cred or self.cred).to_auth()) + encode(proc, *args)
        reply = self.dispatcher.handle(call, "tcp", PRIVILEGED, ("127.0.0.1", 2049))
        if isinstance(reply, defer.Deferred):  # a backend answering later must have answered by now: see serve
            fired: list = []
            reply.addBoth(fired.append)
            assert fired, f"{proc} has not answered"
            reply = fired[0]
        reply = joined(reply)
        header = decode_reply(reply)
        assert header.error is None, header.error
        return decode(proc, reply, header.offset)


@dataclass
class Served:
    """A server over one backend: the client calling it, the handle of its export's root, and how to stop it."""

    nfs: Client
    root: bytes
    close: Callable[[], None]
    #: The backend itself (an IFilesystem).
    fs: object = None


def serve(backend: str, tmp_path) -> Served:
    """An nfsd over ``backend`` exporting one empty directory (owned by root, mode 0755), ``rw,no_root_squash``
    and ``secure``, to 127.0.0.1; the checks call from port 700 as root or as users 1000 and 1001.

    Its work must be done when a call returns (blocking work runs inline, not in a thread pool), so that the
    client reads each reply at once.  The only function in the suite that knows how a backend is built."""
    if backend.startswith("local"):
        from zope.interface import alsoProvides

        from nfsstack.exports.table import ExportTable
        from nfsstack.exports import parse_exports
        from nfsstack.exports.handles import HandleCodec, kernel_handles_work
        from nfsstack.exports.identity import ROOT
        from nfsstack.nfs3.local.filesystem import LocalFilesystem
        from nfsstack.nfs3.program import Nfsd

        if backend != "local-unprivileged" and not kernel_handles_work("/"):
            pytest.skip("the local backend needs root (open_by_handle_at)")
        top = tmp_path / "export"
        top.mkdir()
        top.chmod(0o755)
        exports = parse_exports(f"{top} 127.0.0.1(rw,no_root_squash)\n")
        if backend == "local-unprivileged":
            from nfsstack.exports.paths import PathHandles

            # No descriptor cache: every handle of every call is found through the map.
            table = PathHandles(exports, HandleCodec(os.urandom(32)), str(tmp_path / "state"), cache_size=0)
        else:
            table = ExportTable(exports, HandleCodec(os.urandom(32)))
        in_thread = lambda f, *a: defer.maybeDeferred(f, *a)  # noqa: E731
        local = LocalFilesystem(table, in_thread)
        fs = local
        if backend in ("local-deferred", "local-coroutine"):
            from nfsstack.nfs3.interface import IFilesystem

            fs = Answering(local, backend.partition("-")[2])
            alsoProvides(fs, IFilesystem)
        nfsd = Nfsd(table, fs, in_thread=in_thread)
        fd = os.open(top, os.O_RDONLY)
        try:
            root = table.handle(next(iter(exports)), fd)
        finally:
            os.close(fd)

        def close() -> None:
            try:
                assert local.caller.ids.current == ROOT, "every call ends as root"
                # Nothing is renamed behind the server's back here: the map alone must find every object.
                assert getattr(table, "searches", 0) == 0, "a handle was found by a search, not by the map"
            finally:
                local.close()
                table.close()

        return Served(Client(Dispatcher([nfsd.program])), root, close, fs)
    if backend == "memory":
        from nfsstack.exports import parse_exports
        from nfsstack.exports.handles import HandleCodec
        from nfsstack.exports.table import ExportTable
        from nfsstack.nfs3.memory import MemoryFilesystem
        from nfsstack.nfs3.program import Nfsd

        exports = parse_exports(f"{tmp_path / 'export'} 127.0.0.1(rw,no_root_squash)\n")
        # For the admission only (options_for, needs_names, names): an ExportTable opens an export's root only
        # when asked for handles, which nfsd never does with another backend.
        table = ExportTable(exports, HandleCodec(os.urandom(32)))
        fs = MemoryFilesystem(exports)
        nfsd = Nfsd(table, fs, in_thread=lambda f, *a: defer.maybeDeferred(f, *a))
        root = fs.root_handle(next(iter(exports)))
        return Served(Client(Dispatcher([nfsd.program])), root, table.close, fs)
    raise ValueError(f"no such backend: {backend}")


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "needs(capability): skipped on backends without it (conformance CAPS)")


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """The backend's name; skips the check if it needs a capability the backend lacks."""
    for mark in request.node.iter_markers("needs"):
        missing = set(mark.args) - CAPS[request.param]
        if missing:
            pytest.skip(f"{request.param} backend: no {', '.join(sorted(missing))}")
    return request.param


@pytest.fixture
def served(backend, tmp_path):
    server = serve(backend, tmp_path)
    yield server
    server.close()
