"""NFS_ACL v3 (program 100227): GETACL and SETACL through the RPC dispatcher nfsd's port uses, over the local
backend (the files' ``system.posix_acl_*`` attributes, checked on the server's side) and over a backend without
ACLs; the wire format's decoders fuzzed."""

from __future__ import annotations

import os
import stat
import struct

import pytest
from hypothesis import given, strategies as st
from twisted.internet import defer

from nfsstack.exports import parse_exports
from nfsstack.exports.handles import HandleCodec, kernel_handles_work
from nfsstack.exports.table import ExportTable
from nfsstack.nfs3.client import PROC, Sattr3, decode, encode
from nfsstack.nfs3.codec import ACCESS_MODIFY, ACCESS_READ, Stat
from nfsstack.nfs3.client import unpack_post_op_attr
from nfsstack.nfs3.interface import (
    ACL_GROUP, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER, ACL_UNDEFINED_ID, ACL_USER, ACL_USER_OBJ, AclEntry,
    IAccessControlLists,
)
from nfsstack.nfs3.local import filesystem as local_fs
from nfsstack.nfs3.local.acls import ACCESS_XATTR, DEFAULT_XATTR, acl_from_xattr, acl_to_xattr
from nfsstack.nfs3.program import Nfsd
from nfsstack.nfsacl.codec import (
    NFS_ACL, NFS_ACL_DEFAULT, NFS_ACLCNT, NFS_DFACL, NFS_DFACLCNT, pack_getacl_args, pack_setacl_args,
    unpack_acl, unpack_getacl, unpack_getacl_res, unpack_setacl,
)
from nfsstack.nfsacl.program import nfsd_port_programs
from nfsstack.rpc.message import AcceptStat, Credential, decode_reply, encode_call
from nfsstack.rpc.server import Dispatcher, joined
from nfsstack.xdr import Packer, Unpacker, XDRError
from tests.unit.test_nfs3 import settled

PRIVILEGED = ("127.0.0.1", 700)
ROOT = Credential(0, 0, (), "test")
USER = Credential(1000, 1000, (1000,), "test")
OTHER_USER = Credential(1001, 1001, (1001,), "test")
ALL = NFS_ACL | NFS_ACLCNT | NFS_DFACL | NFS_DFACLCNT
U = ACL_UNDEFINED_ID

def e(tag, perm, who=U):
    return AclEntry(tag, who, perm)


def minimal(mode):
    return (e(ACL_USER_OBJ, (mode >> 6) & 7), e(ACL_GROUP_OBJ, (mode >> 3) & 7), e(ACL_OTHER, mode & 7))


#: u::rw-, u:1000:rw-, g::r--, g:100:r--, m::rw-, o::---
EXTENDED = (e(ACL_USER_OBJ, 6), e(ACL_USER, 6, 1000), e(ACL_GROUP_OBJ, 4), e(ACL_GROUP, 4, 100),
            e(ACL_MASK, 6), e(ACL_OTHER, 0))
#: A directory's default ACL: u::rwx, u:1000:rwx, g::r-x, m::rwx, o::---
DEFAULT = (e(ACL_USER_OBJ, 7), e(ACL_USER, 7, 1000), e(ACL_GROUP_OBJ, 5), e(ACL_MASK, 7), e(ACL_OTHER, 0))


class Caller:
    """Calls NFS_ACL (and nfsd, on the same dispatcher) from a privileged port of 127.0.0.1."""

    def __init__(self, dispatcher, cred=ROOT):
        self.dispatcher, self.cred, self.xid = dispatcher, cred, 0

    def rpc(self, prog, proc, args: bytes, cred=None) -> tuple:
        self.xid += 1
        msg = encode_call(self.xid, prog, 3, proc, (cred or self.cred).to_auth()) + args
        reply = settled(self.dispatcher.handle(msg, "tcp", PRIVILEGED, ("127.0.0.1", 2049)))
        header = decode_reply(reply)
        return header, reply

    def nfs(self, proc, *args, cred=None):
        header, reply = self.rpc(100003, PROC[proc], encode(proc, *args), cred)
        assert header.error is None, header.error
        return decode(proc, reply, header.offset)

    def getacl(self, handle, mask=ALL, cred=None):
        """(status, mask, access, default) as a client decodes them."""
        p = Packer()
        pack_getacl_args(p, handle, mask)
        header, reply = self.rpc(100227, 1, p.getvalue(), cred)
        assert header.error is None, header.error
        status, _, mask, access, default = unpack_getacl_res(Unpacker(reply, header.offset))
        return status, mask, access, default

    def getacl_raw(self, handle, mask=ALL):
        p = Packer()
        pack_getacl_args(p, handle, mask)
        header, reply = self.rpc(100227, 1, p.getvalue())
        u = Unpacker(reply, header.offset)
        assert u.unpack_uint() == 0
        assert unpack_post_op_attr(u) is not None
        return u

    def setacl(self, handle, access, default=None, mask=None, cred=None):
        """The status of a SETACL (and checks its post_op_attr is there)."""
        if mask is None:
            mask = NFS_ACL | (NFS_DFACL if default is not None else 0)
        p = Packer()
        pack_setacl_args(p, handle, mask, access, default)
        header, reply = self.rpc(100227, 2, p.getvalue(), cred)
        assert header.error is None, header.error
        u = Unpacker(reply, header.offset)
        status = u.unpack_uint()
        unpack_post_op_attr(u)
        u.done()
        return status


@pytest.fixture
def env(tmp_path):
    if not kernel_handles_work("/"):
        pytest.skip("needs root (open_by_handle_at)")
    for name in ("data", "squash", "noacl", "ro"):
        (tmp_path / name).mkdir()
        (tmp_path / name).chmod(0o777)
    exports = parse_exports(
        f"{tmp_path / 'data'} 127.0.0.1(rw,no_root_squash)\n"
        f"{tmp_path / 'squash'} 127.0.0.1(rw)\n"
        f"{tmp_path / 'noacl'} 127.0.0.1(rw,no_root_squash,no_acl)\n"
        f"{tmp_path / 'ro'} 127.0.0.1(ro,no_root_squash)\n"
    )
    table = ExportTable(exports, HandleCodec(b"k" * 32))
    in_thread = lambda f, *a: defer.maybeDeferred(f, *a)  # noqa: E731
    nfsd = Nfsd(table, local_fs.LocalFilesystem(table, in_thread), in_thread=in_thread)
    dispatcher = Dispatcher(nfsd_port_programs(nfsd))
    roots = {}
    for export in exports:
        fd = os.open(export.path, os.O_RDONLY)
        roots[os.path.basename(export.path)] = table.handle(export, fd)
        os.close(fd)
    yield tmp_path, Caller(dispatcher), roots, dispatcher
    assert dispatcher.errors["SYSTEM_ERR"] == 0
    nfsd.fs.close()
    table.close()


def made(path, mode=0o600, uid=0, gid=0, directory=False):
    if directory:
        path.mkdir()
    else:
        path.write_text("x")
    os.chown(path, uid, gid)
    path.chmod(mode)
    return path


def handle_of(acl: Caller, root, name: bytes):
    found = acl.nfs("LOOKUP", root, name)
    assert found.ok, found.status
    return found.object


def xattr(path, name=ACCESS_XATTR):
    try:
        return acl_from_xattr(os.getxattr(path, name))
    except OSError:
        return None


# -- GETACL -------------------------------------------------------------------------


def test_getacl_of_a_file_without_acl_is_the_minimal_acl_of_its_mode(env):
    """knfsd (Solaris): no access ACL -> the mode as owner, group, others; on the wire four entries, the mask
    equal to the group, the owner's and group's entries with the file's uid and gid; no default ACL."""
    tmp, acl, roots, _ = env
    made(tmp / "data" / "f", 0o640, 1000, 100)
    f = handle_of(acl, roots["data"], b"f")
    status, mask, access, default = acl.getacl(f)
    assert (status, mask, access, default) == (0, ALL, minimal(0o640), None)
    u = acl.getacl_raw(f)
    assert u.unpack_uint() == ALL
    assert (u.unpack_uint(), u.unpack_uint()) == (4, 4)
    entries = [(u.unpack_uint(), u.unpack_uint(), u.unpack_uint()) for _ in range(4)]
    assert entries == [(ACL_USER_OBJ, 1000, 6), (ACL_GROUP_OBJ, 100, 4), (ACL_MASK, 0, 4), (ACL_OTHER, 0, 0)]
    assert (u.unpack_uint(), u.unpack_uint()) == (0, 0)  # no default ACL
    u.done()


def test_getacl_counts_only_when_the_entries_are_not_asked_for(env):
    tmp, acl, roots, _ = env
    made(tmp / "data" / "f", 0o644)
    u = acl.getacl_raw(handle_of(acl, roots["data"], b"f"), NFS_ACLCNT)
    assert u.unpack_uint() == NFS_ACLCNT
    assert (u.unpack_uint(), u.unpack_uint()) == (4, 0)
    assert (u.unpack_uint(), u.unpack_uint()) == (0, 0)
    u.done()


def test_getacl_with_unknown_mask_bits_is_inval(env):
    tmp, acl, roots, _ = env
    status, *_ = acl.getacl(roots["data"], 0x10)
    assert status == Stat.INVAL


# -- SETACL -------------------------------------------------------------------------


def test_setacl_then_getacl_round_trips_and_the_server_file_has_it(env):
    tmp, acl, roots, _ = env
    path = made(tmp / "data" / "f", 0o600)
    f = handle_of(acl, roots["data"], b"f")
    assert acl.setacl(f, EXTENDED) == Stat.OK
    assert xattr(path) == EXTENDED  # what getfacl on the server reads
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660  # the group bits are the mask
    assert acl.getacl(f) == (0, ALL, EXTENDED, None)
    # The mode's group bits are the mask's: GETATTR shows rw for the group.
    assert acl.nfs("GETATTR", f).obj_attributes.mode & 0o777 == 0o660


def test_setacl_changes_the_ctime(env):
    tmp, acl, roots, _ = env
    path = made(tmp / "data" / "f", 0o600)
    f = handle_of(acl, roots["data"], b"f")
    os.utime(path, ns=(0, 0))
    os.setxattr(path, "user.touch", b"1")  # a known ctime, before
    before = os.stat(path).st_ctime_ns
    assert acl.setacl(f, EXTENDED) == Stat.OK
    assert os.stat(path).st_ctime_ns > before


def test_a_minimal_acl_sent_clears_the_acl_and_sets_the_mode(env):
    tmp, acl, roots, _ = env
    path = made(tmp / "data" / "f", 0o600)
    f = handle_of(acl, roots["data"], b"f")
    assert acl.setacl(f, EXTENDED) == Stat.OK
    assert acl.setacl(f, minimal(0o640)) == Stat.OK
    assert xattr(path) is None  # the kernel keeps an ACL equal to the mode as the mode
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert acl.getacl(f)[2] == minimal(0o640)


def test_default_acl_on_a_directory_round_trips_and_is_inherited_by_a_file_created_over_nfs(env):
    tmp, acl, roots, _ = env
    path = made(tmp / "data" / "d", 0o755, directory=True)
    d = handle_of(acl, roots["data"], b"d")
    assert acl.setacl(d, minimal(0o755), DEFAULT) == Stat.OK
    assert xattr(path, DEFAULT_XATTR) == DEFAULT
    assert acl.getacl(d) == (0, ALL, minimal(0o755), DEFAULT)
    made_file = acl.nfs("CREATE", d, b"new", 0, Sattr3(mode=0o666))
    assert made_file.ok
    # The default ACL narrowed by the mode asked for (no umask): u::rw, u:1000:rw (effective), m::rw, o::---
    inherited = xattr(path / "new")
    assert inherited == (e(ACL_USER_OBJ, 6), e(ACL_USER, 7, 1000), e(ACL_GROUP_OBJ, 5), e(ACL_MASK, 6),
                         e(ACL_OTHER, 0))
    assert stat.S_IMODE(os.stat(path / "new").st_mode) == 0o660
    assert acl.nfs("MKDIR", d, b"sub", Sattr3(mode=0o777)).ok
    assert xattr(path / "sub", DEFAULT_XATTR) == DEFAULT


def test_removing_the_default_acl(env):
    tmp, acl, roots, _ = env
    path = made(tmp / "data" / "d", 0o755, directory=True)
    d = handle_of(acl, roots["data"], b"d")
    assert acl.setacl(d, minimal(0o755), DEFAULT) == Stat.OK
    assert acl.setacl(d, minimal(0o755), None, mask=NFS_ACL | NFS_DFACL) == Stat.OK
    assert xattr(path, DEFAULT_XATTR) is None


def test_a_default_acl_on_a_file_is_acces(env):
    tmp, acl, roots, _ = env
    made(tmp / "data" / "f", 0o600)
    f = handle_of(acl, roots["data"], b"f")
    assert acl.setacl(f, minimal(0o600), DEFAULT) == Stat.ACCES


def test_an_invalid_acl_is_inval(env):
    """Named entries without a mask, or a user named twice: what Linux's posix_acl_valid refuses."""
    tmp, acl, roots, _ = env
    made(tmp / "data" / "f", 0o600)
    f = handle_of(acl, roots["data"], b"f")
    no_mask = (e(ACL_USER_OBJ, 6), e(ACL_USER, 6, 1000), e(ACL_GROUP_OBJ, 4), e(ACL_OTHER, 0))
    assert acl.setacl(f, no_mask) == Stat.INVAL
    twice = (e(ACL_USER_OBJ, 6), e(ACL_USER, 6, 7), e(ACL_USER, 4, 7), e(ACL_GROUP_OBJ, 4), e(ACL_MASK, 6),
             e(ACL_OTHER, 0))
    assert acl.setacl(f, twice) == Stat.INVAL
    assert acl.setacl(f, (e(ACL_USER_OBJ, 6), e(ACL_OTHER, 0), e(ACL_MASK, 0), e(ACL_USER, 1, 3))) == Stat.INVAL


def test_setacl_by_someone_not_owning_the_file_is_perm(env):
    tmp, acl, roots, _ = env
    path = made(tmp / "data" / "f", 0o666)  # writable by anyone, owned by root
    f = handle_of(acl, roots["data"], b"f")
    assert acl.setacl(f, EXTENDED, cred=USER) == Stat.PERM
    assert xattr(path) is None
    mine = made(tmp / "data" / "mine", 0o600, 1000, 1000)
    assert acl.setacl(handle_of(acl, roots["data"], b"mine"), EXTENDED, cred=USER) == Stat.OK
    assert xattr(mine) == EXTENDED


def test_the_acl_is_enforced_for_the_user_it_names(env):
    """u:1000:rw on a root file of mode 0600: user 1000 reads and writes over NFS, user 1001 does not."""
    tmp, acl, roots, _ = env
    made(tmp / "data" / "f", 0o600)
    f = handle_of(acl, roots["data"], b"f")
    assert acl.setacl(f, (e(ACL_USER_OBJ, 6), e(ACL_USER, 6, 1000), e(ACL_GROUP_OBJ, 0), e(ACL_MASK, 6),
                          e(ACL_OTHER, 0))) == Stat.OK
    granted = acl.nfs("ACCESS", f, ACCESS_READ | ACCESS_MODIFY, cred=USER)
    assert granted.access == ACCESS_READ | ACCESS_MODIFY
    assert acl.nfs("ACCESS", f, ACCESS_READ | ACCESS_MODIFY, cred=OTHER_USER).access == 0
    assert acl.nfs("WRITE", f, 0, b"by 1000", 2, cred=USER).ok
    assert acl.nfs("WRITE", f, 0, b"by 1001", 2, cred=OTHER_USER).status == Stat.ACCES
    assert (tmp / "data" / "f").read_bytes() == b"by 1000"


def test_root_squash_applies(env):
    """Root of a root_squash export is nobody: not the owner of root's file."""
    tmp, acl, roots, _ = env
    path = made(tmp / "squash" / "f", 0o644)
    f = handle_of(acl, roots["squash"], b"f")
    assert acl.getacl(f)[0] == Stat.OK
    assert acl.setacl(f, EXTENDED) == Stat.PERM
    assert xattr(path) is None


def test_a_read_only_export_is_rofs(env):
    tmp, acl, roots, _ = env
    made(tmp / "ro" / "f", 0o644)
    assert acl.setacl(handle_of(acl, roots["ro"], b"f"), EXTENDED) == Stat.ROFS


def test_no_acl_shows_the_mode_bits_and_refuses_to_set(env):
    """``no_acl``: the file's ACL is hidden behind its mode bits; SETACL is NOTSUPP, so the client falls back
    to the mode bits."""
    tmp, acl, roots, _ = env
    path = made(tmp / "noacl" / "f", 0o600)
    os.setxattr(path, ACCESS_XATTR, acl_to_xattr(EXTENDED))
    d = made(tmp / "noacl" / "d", 0o755, directory=True)
    os.setxattr(d, DEFAULT_XATTR, acl_to_xattr(DEFAULT))
    f = handle_of(acl, roots["noacl"], b"f")
    assert acl.getacl(f) == (0, ALL, minimal(0o660), None)
    assert acl.getacl(handle_of(acl, roots["noacl"], b"d")) == (0, ALL, minimal(0o755), None)
    assert acl.setacl(f, EXTENDED) == Stat.NOTSUPP
    assert xattr(path) == EXTENDED


def test_a_bad_handle_is_badhandle(env):
    _, acl, _, _ = env
    assert acl.getacl(b"\1" * 32)[0] == Stat.BADHANDLE
    assert acl.setacl(b"\1" * 32, EXTENDED) == Stat.BADHANDLE


# -- a backend without ACLs -----------------------------------------------------------


def test_a_backend_without_acls_answers_notsupp(tmp_path):
    from nfsstack.nfs3.memory import MemoryFilesystem

    exports = parse_exports(f"{tmp_path / 'export'} 127.0.0.1(rw,no_root_squash)\n")
    table = ExportTable(exports, HandleCodec(os.urandom(32)))
    fs = MemoryFilesystem(exports)
    assert not IAccessControlLists.providedBy(fs)
    nfsd = Nfsd(table, fs, in_thread=lambda f, *a: defer.maybeDeferred(f, *a))
    dispatcher = Dispatcher(nfsd_port_programs(nfsd))
    acl = Caller(dispatcher)
    root = fs.root_handle(next(iter(exports)))
    try:
        assert acl.getacl(root)[0] == Stat.NOTSUPP
        assert acl.setacl(root, EXTENDED) == Stat.NOTSUPP
        header, _ = acl.rpc(100227, 0, b"")
        assert header.error is None  # NULL
        assert dispatcher.errors["SYSTEM_ERR"] == 0
    finally:
        table.close()


# -- the codecs -----------------------------------------------------------------------


def test_xattr_format():
    """posix_acl_xattr.h: le32 version 2, then {le16 tag, le16 perm, le32 id} per entry."""
    value = acl_to_xattr((e(ACL_USER_OBJ, 6), e(ACL_USER, 4, 1000), e(ACL_OTHER, 0)))
    assert value == struct.pack("<I", 2) + struct.pack("<HHI", 1, 6, U) + struct.pack("<HHI", 2, 4, 1000) \
        + struct.pack("<HHI", 0x20, 0, U)
    assert acl_from_xattr(value) == (e(ACL_USER_OBJ, 6), e(ACL_USER, 4, 1000), e(ACL_OTHER, 0))
    assert acl_from_xattr(struct.pack("<I", 2)) is None
    for bad in (b"", struct.pack("<I", 1), struct.pack("<I", 2) + b"\0" * 7, struct.pack("<IHHI", 2, 0x40, 0, 0)):
        with pytest.raises(ValueError):
            acl_from_xattr(bad)


def test_received_acls_are_sorted_with_the_minimal_mask_dropped_and_the_default_flag_ignored():
    p = Packer()
    p.pack_uint(4)
    p.pack_uint(4)
    for tag, who, perm in ((ACL_OTHER, 9, 4), (ACL_MASK, 9, 0o75), (ACL_GROUP_OBJ, 100, 5),
                           (ACL_USER_OBJ | NFS_ACL_DEFAULT, 1000, 7)):
        p.pack_uint(tag)
        p.pack_uint(who)
        p.pack_uint(perm)
    assert unpack_acl(Unpacker(p.getvalue())) == minimal(0o754)


@pytest.mark.parametrize("words", [
    [1025, 0],  # more than NFS_ACL_MAX_ENTRIES
    [2, 3],  # more entries than announced
    [2, 1, 1, 0, 6],  # fewer sent than announced
    [1, 1, 0x40, 0, 0],  # no such type
    [1, 1, ACL_USER, 0, 8],  # permissions beyond rwx
    [1000, 1000],  # data ends
])
def test_bad_acls_do_not_decode(words):
    with pytest.raises(XDRError):
        unpack_acl(Unpacker(b"".join(struct.pack(">I", w) for w in words)))


def test_an_acl_of_more_than_1024_entries_does_not_decode():
    """NFS_ACL_MAX_ENTRIES (nfsacl.h): 1,024 entries decode, 1,025 complete ones do not."""
    def wire(n):
        entries = [(ACL_USER_OBJ, 0, 6), (ACL_GROUP_OBJ, 0, 4), (ACL_MASK, 0, 6), (ACL_OTHER, 0, 0)]
        entries += [(ACL_USER, uid, 4) for uid in range(n - 4)]
        return struct.pack(">II", n, n) + b"".join(struct.pack(">III", *x) for x in entries)

    assert len(unpack_acl(Unpacker(wire(1024)))) == 1024
    with pytest.raises(XDRError):
        unpack_acl(Unpacker(wire(1025)))


def test_setacl_with_unknown_mask_bits_is_garbage_args(env):
    _, acl, roots, dispatcher = env
    p = Packer()
    p.pack_opaque(roots["data"])
    p.pack_uint(0x20)
    p.pack_uint(0)
    p.pack_uint(0)
    p.pack_uint(0)
    p.pack_uint(0)
    header, _ = acl.rpc(100227, 2, p.getvalue())
    assert header.error.stat == AcceptStat.GARBAGE_ARGS


_entry = st.builds(AclEntry, st.sampled_from([ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK,
                                              ACL_OTHER]), st.integers(0, 2**32 - 1), st.integers(0, 7))


@given(st.binary(max_size=300))
def test_fuzz_nfsacl_argument_decoders(data):
    for decoder in (unpack_getacl, unpack_setacl, unpack_acl):
        try:
            decoder(Unpacker(data))
        except XDRError:
            pass
    try:
        acl_from_xattr(data)
    except ValueError:
        pass


@given(st.lists(_entry, min_size=1, max_size=30))
def test_sent_acls_decode_as_the_kernel_keeps_them(entries):
    """What a client sends decodes sorted, the ids of the unnamed entries undefined."""
    p = Packer()
    pack_setacl_args(p, b"h", NFS_ACL, tuple(entries), None)
    handle, mask, access, default = unpack_setacl(Unpacker(p.getvalue()))
    assert (handle, mask, default) == (b"h", NFS_ACL, None)
    assert list(access) == sorted(access)
    assert all(x.id == U for x in access if x.tag not in (ACL_USER, ACL_GROUP))


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory):
    if not kernel_handles_work("/"):
        pytest.skip("needs root (open_by_handle_at)")
    tmp = tmp_path_factory.mktemp("aclfuzz")
    (tmp / "data").mkdir()
    (tmp / "data" / "f").write_text("x")
    exports = parse_exports(f"{tmp / 'data'} 127.0.0.1(rw,no_root_squash)\n")
    table = ExportTable(exports, HandleCodec(b"k" * 32))
    in_thread = lambda f, *a: defer.maybeDeferred(f, *a)  # noqa: E731
    nfsd = Nfsd(table, local_fs.LocalFilesystem(table, in_thread), in_thread=in_thread)
    dispatcher = Dispatcher(nfsd_port_programs(nfsd))
    fd = os.open(tmp / "data", os.O_RDONLY)
    root = table.handle(list(exports)[0], fd)
    os.close(fd)
    caller = Caller(dispatcher)
    f = handle_of(caller, root, b"f")
    yield dispatcher, (root, f)
    nfsd.fs.close()
    table.close()


@given(st.sampled_from([1, 2]), st.integers(0, 1), st.integers(0, 0x1F), st.lists(_entry, max_size=8),
       st.lists(_entry, max_size=8), st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255)), max_size=6),
       st.integers(0, 300))
def test_fuzz_nfsacl_handlers_with_damaged_calls(fuzz_env, proc, which, mask, access, default, flips, cut):
    """Valid GETACL and SETACL calls with bytes changed or cut short: every one gets an answer, GARBAGE_ARGS or
    a status, never SERVERFAULT nor SYSTEM_ERR (a handler that raised)."""
    dispatcher, handles = fuzz_env
    p = Packer()
    if proc == 1:
        pack_getacl_args(p, handles[which], mask)
    else:
        pack_setacl_args(p, handles[which], mask & 0xF, tuple(access) or None, tuple(default) or None)
    args = bytearray(p.getvalue())
    for pos, value in flips:
        if pos < len(args):
            args[pos] = value
    if cut < len(args) and flips:
        del args[cut:]
    msg = encode_call(1, 100227, 3, proc, ROOT.to_auth()) + bytes(args)
    reply = settled(dispatcher.handle(msg, "tcp", PRIVILEGED, ("127.0.0.1", 2049)))
    header = decode_reply(reply)
    assert dispatcher.errors["SYSTEM_ERR"] == 0
    if header.error is not None:
        assert header.error.stat == AcceptStat.GARBAGE_ARGS, header.error
        return
    status = int.from_bytes(reply[header.offset: header.offset + 4], "big")
    assert status != Stat.SERVERFAULT, (proc, bytes(args).hex())
    if status == Stat.OK and proc == 1:
        unpack_getacl_res(Unpacker(reply, header.offset))  # an OK reply decodes
