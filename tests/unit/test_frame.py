"""nfsd's frame with a backend that answers later (nfs3/frame.py, nfs3/interface.py): a Deferred that fires after
the call returned is waited for without holding up other calls, and a failure that arrives late still gets the
attributes RFC 1813 gives the procedure's failure arm."""

import os

import pytest
from twisted.internet import defer
from zope.interface import alsoProvides

from nfsstack.exports import parse_exports
from nfsstack.exports.handles import HandleCodec, kernel_handles_work
from nfsstack.exports.table import ExportTable
from nfsstack.nfs3.client import PROC, decode, encode
from nfsstack.nfs3.codec import Stat
from nfsstack.nfs3.interface import IFilesystem
from nfsstack.nfs3.local.filesystem import LocalFilesystem
from nfsstack.nfs3.program import Nfsd
from nfsstack.rpc.message import Credential, decode_reply, encode_call
from nfsstack.rpc.server import Dispatcher, joined

pytestmark = pytest.mark.skipif(not kernel_handles_work("/"), reason="needs root (open_by_handle_at)")
ROOT_CRED = Credential(0, 0, (), "test")


class Slow:
    """The local backend, except that READ and REMOVE answer only when the test fires them."""

    blocking = False

    def __init__(self, inner):
        self.inner = inner
        self.waiting = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _later(self, method, *args):
        d = defer.Deferred()
        self.waiting.append((d, method, args))
        return d

    def read(self, *args):
        return self._later(self.inner.read, *args)

    def remove(self, *args):
        return self._later(self.inner.remove, *args)

    def fire(self):
        d, method, args = self.waiting.pop(0)
        try:
            d.callback(method(*args))
        except Exception as e:  # as a backend whose work failed remotely
            d.errback(e)


@pytest.fixture
def served(tmp_path):
    top = tmp_path / "export"
    top.mkdir()
    (top / "a").write_bytes(b"alpha")
    exports = parse_exports(f"{top} 127.0.0.1(rw,no_root_squash)\n")
    table = ExportTable(exports, HandleCodec(os.urandom(32)))
    local = LocalFilesystem(table, lambda f, *a: defer.maybeDeferred(f, *a))
    slow = Slow(local)
    alsoProvides(slow, IFilesystem)
    dispatcher = Dispatcher([Nfsd(table, slow).program])
    export = next(iter(exports))
    handles = {}
    for name in ("", "a"):
        fd = os.open(top / name, os.O_PATH)
        handles[name] = table.handle(export, fd)
        os.close(fd)
    xid = [0]

    def call(proc, *args):
        xid[0] += 1
        msg = encode_call(xid[0], 100003, 3, PROC[proc], ROOT_CRED.to_auth()) + encode(proc, *args)
        return dispatcher.handle(msg, "tcp", ("127.0.0.1", 700), ("127.0.0.1", 2049))

    def result(proc, reply):
        body = joined(reply)
        return decode(proc, body, decode_reply(body).offset)

    yield call, result, slow, handles, top
    local.close()
    table.close()


def test_a_late_answer_holds_up_no_other_call(served):
    call, result, slow, handles, _ = served
    pending = call("READ", handles["a"], 0, 100)
    assert isinstance(pending, defer.Deferred) and not pending.called
    got = call("GETATTR", handles["a"])  # answered while the READ waits on its backend
    assert not isinstance(got, defer.Deferred) and result("GETATTR", got).obj_attributes.size == 5
    replies = []
    pending.addCallback(replies.append)
    slow.fire()
    read = result("READ", replies[0])
    assert read.ok and read.data == b"alpha" and read.eof


def test_a_late_failure_carries_the_failure_arms_attributes(served):
    call, result, slow, handles, top = served
    pending = call("REMOVE", handles[""], b"missing")
    replies = []
    pending.addCallback(replies.append)
    slow.fire()  # ENOENT, as an errback
    removed = result("REMOVE", replies[0])
    assert removed.status == Stat.NOENT
    assert removed.dir_wcc[1] is not None and removed.dir_wcc[1].fileid == os.stat(top).st_ino
    assert not slow.waiting


def test_a_write_answered_by_a_coroutine_is_awaited(served):
    """A backend may answer with a coroutine (nfs3/interface.py); WRITE, a plain function rather than a
    generator (frame.then), waits for it as for a Deferred."""
    call, result, slow, handles, top = served
    gate = defer.Deferred()

    async def write(*args):
        await gate
        return slow.inner.write(*args)

    slow.write = write
    pending = call("WRITE", handles["a"], 0, b"omega", 0)  # UNSTABLE: the inner backend answers at once
    assert isinstance(pending, defer.Deferred) and not pending.called
    replies = []
    pending.addCallback(replies.append)
    gate.callback(None)
    written = result("WRITE", replies[0])
    assert written.ok and written.count == 5 and written.file_wcc[1].size == 5
    assert (top / "a").read_bytes() == b"omega"
