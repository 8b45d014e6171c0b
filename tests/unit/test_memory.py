"""The memory backend (nfs3/memory/) where the conformance suite does not reach: its limit (NFS3ERR_NOSPC and
FSSTAT), handles of removed objects once their fileid is used again, the sticky bit and chown's rules, cookies
while other names go, and what it is filled with.  Calls go through nfsd's dispatcher, as a client's do."""

import os

import pytest
from twisted.internet import defer

from nfsstack.exports import parse_exports
from nfsstack.exports.handles import HandleCodec
from nfsstack.exports.table import ExportTable
from nfsstack.nfs3.client import PROC, Sattr3, decode, encode
from nfsstack.nfs3.codec import Stat
from nfsstack.nfs3.memory import MemoryFilesystem
from nfsstack.nfs3.memory.inodes import INODE_COST
from nfsstack.nfs3.program import Nfsd
from nfsstack.rpc.message import Credential, decode_reply, encode_call
from nfsstack.rpc.server import Dispatcher, joined

ROOT = Credential(0, 0, (), "test")
USER = Credential(1000, 1000, (1000, 50), "test")
OTHER = Credential(1001, 1001, (1001,), "test")
UNCHECKED, GUARDED = 0, 1
FILE_SYNC = 2
VERF0 = b"\0" * 8
LIMIT = 64 * 1024


class Server:
    """nfsd over a MemoryFilesystem of one export (``rw,no_root_squash`` to 127.0.0.1); calls it as a client."""

    def __init__(self, limit=LIMIT, **kw):
        self.exports = parse_exports("/mem 127.0.0.1(rw,no_root_squash)\n")
        self.fs = MemoryFilesystem(self.exports, limit_bytes=limit, **kw)
        nfsd = Nfsd(ExportTable(self.exports, HandleCodec(os.urandom(32))), self.fs,
                    in_thread=lambda f, *a: defer.maybeDeferred(f, *a))
        self.dispatcher = Dispatcher([nfsd.program])
        self.root = self.fs.root_handle(next(iter(self.exports)))
        self.xid = 0

    def __call__(self, proc, *args, cred=ROOT):
        self.xid += 1
        call = encode_call(self.xid, 100003, 3, PROC[proc], cred.to_auth()) + encode(proc, *args)
        reply = joined(self.dispatcher.handle(call, "tcp", ("127.0.0.1", 700), ("127.0.0.1", 2049)))
        header = decode_reply(reply)
        assert header.error is None, header.error
        return decode(proc, reply, header.offset)

    def create(self, directory, name, mode=0o644, data=b"", cred=ROOT):
        r = self("CREATE", directory, name, UNCHECKED, Sattr3(mode=mode), cred=cred)
        assert r.ok, r.status
        if data:
            assert self("WRITE", r.obj, 0, data, FILE_SYNC, cred=cred).ok
        return r.obj

    def mkdir(self, directory, name, mode=0o755, cred=ROOT):
        r = self("MKDIR", directory, name, Sattr3(mode=mode), cred=cred)
        assert r.ok, r.status
        return r.obj

    def attrs(self, handle):
        r = self("GETATTR", handle)
        assert r.ok, r.status
        return r.obj_attributes


@pytest.fixture
def nfs():
    return Server()


# -- the limit ------------------------------------------------------------------------------------------------


def test_a_write_beyond_the_limit_is_nospc_and_changes_nothing(nfs):
    """RFC 1813 section 3.3.7: NFS3ERR_NOSPC, the file as it was; once a file is removed its space comes back."""
    big = nfs.create(nfs.root, b"big", data=b"x" * (LIMIT // 2))
    f = nfs.create(nfs.root, b"f", data=b"keep")
    before = nfs.attrs(f)
    r = nfs("WRITE", f, 0, b"y" * (LIMIT // 2), FILE_SYNC)
    assert r.status == Stat.NOSPC and r.file_wcc[1].size == 4
    assert nfs.attrs(f) == before and nfs("READ", f, 0, 100).data == b"keep"
    assert nfs("REMOVE", nfs.root, b"big").ok and nfs("GETATTR", big).status == Stat.STALE
    w = nfs("WRITE", f, 0, b"y" * (LIMIT // 2), FILE_SYNC)
    assert w.ok and w.count == LIMIT // 2 and nfs.attrs(f).size == LIMIT // 2


def test_setattr_and_create_beyond_the_limit_are_nospc(nfs):
    """RFC 1813 sections 3.3.2, 3.3.8, 3.3.9, 3.3.10: growing a file, creating one with a size, or making
    anything once the space is taken: NFS3ERR_NOSPC, and nothing is made or changed."""
    f = nfs.create(nfs.root, b"f", data=b"abc")
    assert nfs("SETATTR", f, Sattr3(size=2 * LIMIT)).status == Stat.NOSPC and nfs.attrs(f).size == 3
    r = nfs("CREATE", nfs.root, b"sized", GUARDED, Sattr3(size=2 * LIMIT))
    assert r.status == Stat.NOSPC and nfs("LOOKUP", nfs.root, b"sized").status == Stat.NOENT
    free = nfs("FSSTAT", nfs.root).fbytes
    assert nfs("SETATTR", f, Sattr3(size=3 + free - 10)).ok  # all but 10 bytes: no room for an object
    for r in (nfs("CREATE", nfs.root, b"g", GUARDED, Sattr3()), nfs("MKDIR", nfs.root, b"d", Sattr3()),
              nfs("SYMLINK", nfs.root, b"s", Sattr3(), b"target"), nfs("LINK", f, nfs.root, b"again")):
        assert r.status == Stat.NOSPC
    listed = nfs("READDIR", nfs.root, 0, VERF0, 4096)
    assert [e.name for e in listed.entries] == [b".", b"..", b"f"]
    assert nfs("SETATTR", f, Sattr3(size=0)).ok and nfs("MKDIR", nfs.root, b"d", Sattr3()).ok


def test_fsstat_shows_the_limit_and_what_is_used(nfs):
    """RFC 1813 section 3.3.18: total bytes are the limit; free bytes drop by the data written (and a little per
    object) and come back when it is removed; files are counted in objects' worth of bytes."""
    empty = nfs("FSSTAT", nfs.root)
    assert empty.tbytes == LIMIT and empty.fbytes == empty.abytes < LIMIT
    assert empty.tfiles == LIMIT // INODE_COST and empty.ffiles == empty.fbytes // INODE_COST
    nfs.create(nfs.root, b"f", data=b"z" * 10000)
    used = nfs("FSSTAT", nfs.root)
    assert 10000 < empty.fbytes - used.fbytes < 10000 + 2 * INODE_COST and used.ffiles < empty.ffiles
    assert nfs("REMOVE", nfs.root, b"f").ok
    assert nfs("FSSTAT", nfs.root).fbytes == empty.fbytes


# -- handles --------------------------------------------------------------------------------------------------


def test_a_removed_files_handle_stays_stale_when_its_fileid_is_used_again(nfs):
    """RFC 1813 section 2.6: the fileid of a removed file goes to the next object made (as inode numbers do), but
    the old handle names the old object only (its generation): NFS3ERR_STALE, not the new file."""
    f = nfs.create(nfs.root, b"f", data=b"old")
    fileid = nfs.attrs(f).fileid
    assert nfs("REMOVE", nfs.root, b"f").ok
    g = nfs.create(nfs.root, b"g", data=b"new")
    assert nfs.attrs(g).fileid == fileid and g != f
    assert nfs("GETATTR", f).status == Stat.STALE and nfs("READ", f, 0, 10).status == Stat.STALE
    assert nfs("WRITE", f, 0, b"x", FILE_SYNC).status == Stat.STALE and nfs("READ", g, 0, 10).data == b"new"


def test_forged_handles_are_badhandle(nfs):
    """RFC 1813 section 2.6: a handle with one bit changed, or one of another server (another key), is
    NFS3ERR_BADHANDLE."""
    f = nfs.create(nfs.root, b"f")
    for i in range(len(f)):
        forged = bytearray(f)
        forged[i] ^= 1
        assert nfs("GETATTR", bytes(forged)).status == Stat.BADHANDLE, i
    other = Server()
    assert nfs("GETATTR", other.root).status == Stat.BADHANDLE
    assert Server(key=b"k" * 32).root == Server(key=b"k" * 32).root  # the same key: the same handles


def test_a_handle_of_an_export_gone_is_stale(nfs):
    """A reload without the export: its handles are NFS3ERR_STALE; with it back, they work again."""
    f = nfs.create(nfs.root, b"f")
    nfs.fs.reload(parse_exports("/other 127.0.0.1(rw)\n"))
    assert nfs("GETATTR", f).status == Stat.STALE
    nfs.fs.reload(nfs.exports)
    assert nfs("GETATTR", f).ok


# -- permissions ----------------------------------------------------------------------------------------------


def test_sticky_directory(nfs):
    """A sticky directory (mode 01777, /tmp's rule): only the owner of a name's object, the directory's owner or
    root removes or replaces it; others get NFS3ERR_PERM, though they may write to the directory."""
    tmp = nfs.mkdir(nfs.root, b"tmp", mode=0o1777)
    assert nfs("SETATTR", tmp, Sattr3(uid=1001)).ok  # OTHER owns the directory
    nfs.create(tmp, b"users", cred=USER)
    nfs.create(tmp, b"roots")
    assert nfs("REMOVE", tmp, b"roots", cred=USER).status == Stat.PERM
    assert nfs("RENAME", tmp, b"roots", tmp, b"x", cred=USER).status == Stat.PERM
    assert nfs("RENAME", tmp, b"users", tmp, b"roots", cred=USER).status == Stat.PERM  # replace root's
    assert nfs("RENAME", tmp, b"users", tmp, b"mine", cred=USER).ok
    assert nfs("REMOVE", tmp, b"roots", cred=OTHER).ok  # the directory's owner
    nfs.create(tmp, b"roots")
    assert nfs("REMOVE", tmp, b"mine", cred=USER).ok and nfs("REMOVE", tmp, b"roots").ok
    plain = nfs.mkdir(nfs.root, b"plain", mode=0o777)
    nfs.create(plain, b"roots")
    assert nfs("REMOVE", plain, b"roots", cred=USER).ok  # not sticky: write permission is enough


def test_chown_and_chgrp(nfs):
    """Only root gives a file to another uid; the owner gives it to a group it is in, no other; someone else may
    not even set the owner or group it has; a chown clears set-user-ID (NFS3ERR_PERM for each refusal)."""
    f = nfs.create(nfs.mkdir(nfs.root, b"d", mode=0o777), b"f", mode=0o4755, cred=USER)
    assert nfs("SETATTR", f, Sattr3(uid=1001), cred=USER).status == Stat.PERM
    assert nfs("SETATTR", f, Sattr3(gid=1001), cred=USER).status == Stat.PERM
    assert nfs("SETATTR", f, Sattr3(uid=1000, gid=1000), cred=OTHER).status == Stat.PERM
    assert nfs("SETATTR", f, Sattr3(mode=0o644), cred=OTHER).status == Stat.PERM
    r = nfs("SETATTR", f, Sattr3(gid=50), cred=USER)
    assert r.ok and (r.obj_wcc[1].uid, r.obj_wcc[1].gid, r.obj_wcc[1].mode) == (1000, 50, 0o755)
    r = nfs("SETATTR", f, Sattr3(uid=1001, gid=1001))
    assert r.ok and (r.obj_wcc[1].uid, r.obj_wcc[1].gid) == (1001, 1001)
    assert nfs("SETATTR", f, Sattr3(mode=0o600), cred=OTHER).ok and nfs.attrs(f).mode == 0o600


def test_hard_links_to_anothers_file_need_read_and_write(nfs):
    """Linux's ``fs.protected_hardlinks`` (its default): a link to someone else's file needs read and write
    permission on it (NFS3ERR_PERM otherwise); its owner and root link it whatever its mode."""
    d = nfs.mkdir(nfs.root, b"d", mode=0o777)
    f = nfs.create(d, b"f", mode=0o644, cred=USER)
    assert nfs("LINK", f, d, b"other", cred=OTHER).status == Stat.PERM
    assert nfs("LINK", f, d, b"mine", cred=USER).ok and nfs("LINK", f, d, b"roots").ok
    assert nfs("SETATTR", f, Sattr3(mode=0o666), cred=USER).ok
    assert nfs("LINK", f, d, b"other", cred=OTHER).ok and nfs.attrs(f).nlink == 4


# -- listings -------------------------------------------------------------------------------------------------


def test_cookies_stay_while_other_names_go(nfs):
    """RFC 1813 section 3.3.16: names removed before and after a cookie change neither the cookie nor the
    cookies of the names left; the listing goes on after it with exactly the names left there."""
    for i in range(60):
        nfs.create(nfs.root, b"f%02d" % i)
    first = nfs("READDIR", nfs.root, 0, VERF0, 512)
    assert first.ok and not first.eof
    seen = [e.name for e in first.entries]
    cookies = {e.name: e.cookie for e in first.entries}
    last = first.entries[-1]
    for name in (seen[3], seen[-2], b"f59", b"f58"):  # before the cookie, and after it
        assert nfs("REMOVE", nfs.root, name).ok
    rest, cookie = [], last.cookie
    while True:
        r = nfs("READDIR", nfs.root, cookie, VERF0, 512)
        assert r.ok, r.status
        rest += [e.name for e in r.entries]
        if r.eof:
            break
        cookie = r.entries[-1].cookie
    assert rest == [b"f%02d" % i for i in range(len(seen) - 2, 58)]
    again = {e.name: e.cookie for e in nfs("READDIR", nfs.root, 0, VERF0, 4096).entries}
    left = {name: cookie for name, cookie in cookies.items() if name not in (seen[3], seen[-2])}
    assert {name: again[name] for name in left} == left


def test_a_cookie_never_given_is_bad_cookie(nfs):
    """RFC 1813 section 3.3.16: a cookie the directory never gave is NFS3ERR_BAD_COOKIE."""
    nfs.create(nfs.root, b"f")
    assert nfs("READDIR", nfs.root, 2, VERF0, 4096).ok
    assert nfs("READDIR", nfs.root, 1000, VERF0, 4096).status == Stat.BAD_COOKIE


# -- filling --------------------------------------------------------------------------------------------------


def test_initial_content():
    """``initial``: files and directories every tree starts with, root's."""
    nfs = Server(initial={"hello.txt": b"hello\n", "docs": {"a": "A"}})
    hello = nfs("LOOKUP", nfs.root, b"hello.txt")
    assert hello.ok and nfs("READ", hello.object, 0, 100).data == b"hello\n"
    a = nfs("LOOKUP", nfs("LOOKUP", nfs.root, b"docs").object, b"a")
    assert a.ok and (a.obj_attributes.uid, a.obj_attributes.mode) == (0, 0o644)
    assert nfs("READ", a.object, 0, 10).data == b"A"
