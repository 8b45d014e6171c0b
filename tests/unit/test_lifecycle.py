"""One lifecycle (docs/architecture.md, "Lifecycle"): makeService only builds, resources open at start and close at
stop, after every service started after them has stopped."""

from __future__ import annotations

import errno
import os

import pytest
from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock

from nfsstack.exports.handles import kernel_handles_work
from nfsstack.exports.identity import can_switch
from nfsstack.service import NfsStackService, Resource
from nfsstack.startup import StartupError, UnavailableServices
from nfsstack.tap import Options, makeService


def _options(tmp_path, *extra: str) -> Options:
    options = Options()
    options.parseOptions(["--state-dir", str(tmp_path / "state"), "--bind", "127.0.0.1", "--portmap-port", "0",
                          "--nfs-port", "0", "--status-port", "0", "--rpcbind-socket", "", *extra])
    return options


def test_make_service_only_builds(tmp_path, monkeypatch):
    """No directory, key or file is made, and no clean-up is left with the reactor: the tree owns them all."""
    monkeypatch.chdir(tmp_path)
    reactor = MemoryReactorClock()
    stack = makeService(_options(tmp_path), reactor)
    assert sorted(os.listdir(tmp_path)) == []
    assert not any(reactor.triggers.values()), reactor.triggers
    names = [child.name for child in stack]
    if kernel_handles_work(os.getcwd()) and can_switch() is None:
        assert names[:5] == ["state", "nfsd-caches", "nfsd-ring", "nfsd-threads", "portmapper"], names
        assert names.index("nfsd") > names.index("mountd") > names.index("nlockmgr") > names.index("status")
        assert stack.nfsd.fs.kernel_io is None and stack.nfsd.in_thread.pool is None  # opened by their services
    else:
        assert names[0] == "portmapper" and "nfsd" not in names, names
    assert names[-1] == "cluster"


def test_the_stack_has_one_reply_batcher(tmp_path, monkeypatch):
    """Every RPC service holds its late replies in the stack's one batcher, and nfsd's ring opens its batches:
    a batch of io_uring completions answers calls on any service's connections with one send per connection."""
    monkeypatch.chdir(tmp_path)
    stack = makeService(_options(tmp_path), MemoryReactorClock())
    services = stack.rpc_services()
    assert services and all(s.reply_batcher is stack.reply_batcher for s in services)
    if "nfsd-ring" in stack.namedServices:
        assert stack.getServiceNamed("nfsd-ring").reply_batcher is stack.reply_batcher


def test_local_realms_reach_the_stacks_principals_and_its_workers(tmp_path, monkeypatch):
    """--local-realms is the stack's accepted realms, and is handed to each nfsd worker, which builds its own."""
    from nfsstack.worker import build

    monkeypatch.chdir(tmp_path)
    options = _options(tmp_path, "--local-realms", "OUR.REALM,PARTNER.REALM", "--workers", "2")
    stack = makeService(options, MemoryReactorClock())
    assert stack.principals.realms == {"OUR.REALM", "PARTNER.REALM"}
    if stack.workers is None:
        pytest.skip("nfsd runs without workers here (no kernel handles)")
    assert stack.workers.config["local-realms"] == "OUR.REALM,PARTNER.REALM"
    top, _ = build({**stack.workers.config, "sockets": [], "parent": 0}, MemoryReactorClock())
    assert top.principals.realms == {"OUR.REALM", "PARTNER.REALM"}


class _Recorder(service.Service):
    def __init__(self, name: str, log: list, stopped: defer.Deferred | None = None) -> None:
        self.name, self.log, self.stopped = name, log, stopped

    def stopService(self):
        super().stopService()
        self.log.append(self.name)
        return self.stopped


class _Owner(_Recorder, Resource):
    pass


def test_a_resource_closes_only_after_the_services_started_after_it_stopped():
    log: list = []
    later = defer.Deferred()  # nfsd still unregistering
    stack = NfsStackService()
    for child in (_Owner("threads", log), _Recorder("portmapper", log), _Recorder("nfsd", log, later),
                  _Recorder("cluster", log)):
        child.setServiceParent(stack)
    stack.startService()
    done = stack.stopService()
    assert log == ["cluster", "nfsd", "portmapper"] and not done.called
    later.callback(None)
    assert log == ["cluster", "nfsd", "portmapper", "threads"] and done.called


class _Failing(service.Service):
    def __init__(self, name: str, error: Exception) -> None:
        self.name, self.error = name, error

    def startService(self):
        raise self.error


def _stack(partial: bool, *children) -> NfsStackService:
    stack = NfsStackService()
    stack.partial = partial
    for child in children:
        child.setServiceParent(stack)
    return stack


IN_USE = CannotListenError("", 2049, OSError(errno.EADDRINUSE, "Address already in use"))


def test_a_service_that_cannot_start_stops_the_start_with_one_line():
    """The line names the service, the port and who may hold it; nothing after it starts; twistd exits 1
    (a SystemExit with code 1, that its daemonizing parent also sees as an Exception)."""
    later = _Recorder("cluster", [])
    stack = _stack(False, _Recorder("portmapper", []), _Failing("nfsd", IN_USE), later)
    with pytest.raises(StartupError) as e:
        stack.startService()
    assert str(e.value) == "nfsd: port 2049 is in use (move nfsd with --nfs-port)"
    assert e.value.code == 1 and isinstance(e.value, SystemExit) and isinstance(e.value, Exception)
    assert not later.running


def test_a_partial_stack_starts_the_others_and_names_the_ones_not_serving():
    later = _Recorder("locking", [])
    unavailable = UnavailableServices(["mountd", "nfsd"], "no handles")
    stack = _stack(True, _Failing("nlockmgr", IN_USE), unavailable, later)
    stack.startService()
    assert later.running
    assert stack.not_serving == {"nlockmgr": "nlockmgr: port 2049 is in use (move nlockmgr with --nlm-port)",
                                 "mountd": "mountd and nfsd cannot run: no handles",
                                 "nfsd": "mountd and nfsd cannot run: no handles"}
    assert stack.down() == ["mountd", "nfsd", "nfsd-status"]  # nlockmgr is a stand-in here, no RPCService


def test_partial_covers_services_only_a_resource_that_cannot_open_stops_the_start():
    stack = _stack(True, _Failing("state", PermissionError(errno.EACCES, "Permission denied", "var")))
    with pytest.raises(StartupError, match=r"^state cannot start: \[Errno 13\] Permission denied: 'var'$"):
        stack.startService()


def test_a_bug_keeps_its_traceback():
    stack = _stack(True, _Failing("nfsd", ZeroDivisionError()))
    with pytest.raises(ZeroDivisionError):
        stack.startService()
