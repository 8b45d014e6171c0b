"""One lifecycle (docs/architecture.md, "Lifecycle"): makeService only builds, resources open at start and close at
stop, after every service started after them has stopped."""

from __future__ import annotations

import os

from twisted.application import service
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from nfsstack.exports.handles import kernel_handles_work
from nfsstack.exports.identity import can_switch
from nfsstack.service import NfsStackService, Resource
from nfsstack.tap import Options, makeService


def _options(tmp_path) -> Options:
    options = Options()
    options.parseOptions(["--state-dir", str(tmp_path / "state"), "--bind", "127.0.0.1", "--portmap-port", "0",
                          "--nfs-port", "0", "--status-port", "0", "--rpcbind-socket", ""])
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
        assert stack.nfsd.fs.syncer is None and stack.nfsd.in_thread.pool is None  # opened by their services
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
