"""nfsstack.nfs3.tree.ReadOnlyTree, the base of a read-only backend of one's own: through nfsd's dispatcher, its
handles survive a restart and go STALE when their path leaves the tree, its cookies resume a listing, every change
is NFS3ERR_ROFS, and a file's bytes may come later (a Deferred, a coroutine) without holding up other calls."""

import pytest
from twisted.internet import defer
from zope.interface.verify import verifyObject

from nfsstack.exports import parse_exports
from nfsstack.exports.handles import HandleCodec
from nfsstack.exports.table import ExportTable
from nfsstack.mount.mountlist import MountList
from nfsstack.mount.program import Mountd
from nfsstack.nfs3.client import PROC, Sattr3, decode, encode
from nfsstack.nfs3.codec import Stat
from nfsstack.nfs3.interface import IFilesystem
from nfsstack.nfs3.program import Nfsd
from nfsstack.nfs3.tree import Node, ReadOnlyTree
from nfsstack.rpc.message import Credential, decode_reply, encode_call
from nfsstack.rpc.server import Dispatcher, joined

CRED = Credential(1000, 1000, (1000,), "test")
FILES = {f"f{i:02d}": f"file {i}\n".encode() for i in range(30)}


class Tree(ReadOnlyTree):
    def __init__(self, table, files, how="now"):
        super().__init__(table)
        self.files, self.how, self.waiting = files, how, []

    def nodes(self):
        for name, data in self.files.items():
            yield f"docs/{name}", Node("file", len(data), 0o444, 10**18)
        yield "docs/link", Node("link", target=b"f00")

    def read_file(self, path, offset, count):
        data = self.files[path.rpartition("/")[2]][offset:offset + count]
        if self.how == "deferred":
            d = defer.Deferred()
            self.waiting.append((d, data))
            return d
        if self.how == "coroutine":
            async def later():
                return data
            return later()
        return data


class Served:
    def __init__(self, tmp_path, how="now", files=FILES, key=b"k" * 32):
        self.table = ExportTable(parse_exports("/docs 127.0.0.1(rw,insecure)\n"), HandleCodec(key))
        self.tree = Tree(self.table, dict(files), how)
        self.nfsd = Dispatcher([Nfsd(self.table, self.tree).program])
        mountd = Mountd(self.table, MountList(str(tmp_path / "state")), self.tree.mount)
        self.root = mountd.mount(next(iter(self.table.exports)), "/docs", None, "127.0.0.1")
        self.xid = 0

    def send(self, proc, *args):
        self.xid += 1
        msg = encode_call(self.xid, 100003, 3, PROC[proc], CRED.to_auth()) + encode(proc, *args)
        return self.nfsd.handle(msg, "tcp", ("127.0.0.1", 40000), ("127.0.0.1", 2049))

    def __call__(self, proc, *args):
        reply = joined(self.send(proc, *args))
        return decode(proc, reply, decode_reply(reply).offset)


def test_the_tree_provides_the_interface(tmp_path):
    assert verifyObject(IFilesystem, Served(tmp_path).tree)


def test_handles_survive_a_restart_and_go_stale_when_the_path_goes(tmp_path):
    nfs = Served(tmp_path)
    docs = nfs("LOOKUP", nfs.root, b"docs").object
    fh = nfs("LOOKUP", docs, b"f07").object
    again = Served(tmp_path)  # a restart: the same key, a new tree
    assert again("READ", fh, 0, 100).data == b"file 7\n"
    gone = Served(tmp_path, files={k: v for k, v in FILES.items() if k != "f07"})
    assert gone("READ", fh, 0, 100).status == Stat.STALE
    assert Served(tmp_path, key=b"x" * 32)("GETATTR", fh).status == Stat.BADHANDLE


def test_a_listing_resumes_at_its_cookie_and_shows_every_name_once(tmp_path):
    nfs = Served(tmp_path)
    docs = nfs("LOOKUP", nfs.root, b"docs").object
    names, cookie = [], 0
    for _ in range(50):
        r = nfs("READDIR", docs, cookie, b"\0" * 8, 200)
        assert r.ok, r.status
        names += [e.name for e in r.entries]
        cookie = r.entries[-1].cookie
        if r.eof:
            break
    assert sorted(names) == sorted([b".", b"..", b"link"] + [n.encode() for n in FILES])
    assert nfs("READLINK", nfs("LOOKUP", docs, b"link").object).data == b"f00"


def test_every_change_is_rofs(tmp_path):
    nfs = Served(tmp_path)
    docs = nfs("LOOKUP", nfs.root, b"docs").object
    f = nfs("LOOKUP", docs, b"f01").object
    assert nfs("WRITE", f, 0, b"x", 2).status == Stat.ROFS
    assert nfs("CREATE", docs, b"new", 0, Sattr3(mode=0o644)).status == Stat.ROFS
    assert nfs("REMOVE", docs, b"f01").status == Stat.ROFS
    assert nfs("READ", f, 0, 100).data == b"file 1\n"


@pytest.mark.parametrize("how", ["deferred", "coroutine"])
def test_bytes_that_come_later(tmp_path, how):
    nfs = Served(tmp_path, how)
    docs = nfs("LOOKUP", nfs.root, b"docs").object
    f = nfs("LOOKUP", docs, b"f03").object
    pending = nfs.send("READ", f, 0, 100)
    if how == "deferred":
        assert isinstance(pending, defer.Deferred) and not pending.called
        assert nfs("GETATTR", f).obj_attributes.size == 7  # answered meanwhile
        d, data = nfs.tree.waiting.pop()
        d.callback(data)
    got = []
    defer.maybeDeferred(lambda: pending).addCallback(got.append)
    reply = joined(got[0])
    read = decode("READ", reply, decode_reply(reply).offset)
    assert read.ok and read.data == b"file 3\n" and read.eof
