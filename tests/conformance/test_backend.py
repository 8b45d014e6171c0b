"""Backend conformance (issue 19): what an NFSv3 client sees, the same for every backend.

Each check runs once per backend of :data:`tests.conformance.conftest.BACKENDS`, sends calls through the real
RPC dispatcher and reads the replies with the client codec; nothing looks at the server's storage.  Section
numbers are RFC 1813's.  Checks that a backend may legitimately not support are marked ``needs(...)``
(see ``CAPS``).  Implementation details of one backend (caches, io_uring, kept descriptors) are tested beside it.
"""

import os
import time

import pytest

from nfsstack.nfs3.client import Sattr3
from nfsstack.nfs3.codec import Stat
from nfsstack.rpc.message import Credential

REG, DIR, BLK, CHR, LNK, SOCK, FIFO = 1, 2, 3, 4, 5, 6, 7  # ftype3 (section 2.5)
A_READ, A_LOOKUP, A_MODIFY, A_EXTEND, A_DELETE, A_EXECUTE = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
A_ALL = 0x3F
UNSTABLE, DATA_SYNC, FILE_SYNC = 0, 1, 2  # stable_how (section 3.3.7)
UNCHECKED, GUARDED, EXCLUSIVE = 0, 1, 2  # createmode3 (section 3.3.8)
VERF0 = b"\0" * 8
USER = Credential(1000, 1000, (1000,), "conformance")
OTHER = Credential(1001, 1001, (1001,), "conformance")
SEC = 1_000_000_000


@pytest.fixture
def nfs(served):
    return served.nfs


@pytest.fixture
def root(served):
    return served.root


def test_the_backend_provides_the_filesystem_interface(served):
    """Every method of IFilesystem is there, with the interface's signature (nfs3/interface.py)."""
    from zope.interface.verify import verifyObject

    from nfsstack.nfs3.interface import IFilesystem

    assert verifyObject(IFilesystem, served.fs)


def lookup(nfs, dirfh, name, **kw):
    r = nfs("LOOKUP", dirfh, name, **kw)
    assert r.ok, r.status
    return r.object


def attrs(nfs, fh):
    r = nfs("GETATTR", fh)
    assert r.ok, r.status
    return r.obj_attributes


def create(nfs, dirfh, name, mode=0o644, data=b"", **kw):
    r = nfs("CREATE", dirfh, name, UNCHECKED, Sattr3(mode=mode), **kw)
    assert r.ok, r.status
    if data:
        assert nfs("WRITE", r.obj, 0, data, FILE_SYNC, **kw).ok
    return r.obj


def mkdir(nfs, dirfh, name, mode=0o755, **kw):
    r = nfs("MKDIR", dirfh, name, Sattr3(mode=mode), **kw)
    assert r.ok, r.status
    return r.obj


def pre(a):
    """The wcc_attr (section 2.5) a server should report as "before" for attributes ``a``."""
    return (a.size, a.mtime, a.ctime)


def listing(nfs, dirfh, plus=False, count=1024):
    """Every entry of a directory, in order, from READDIR(PLUS) calls of ``count`` bytes following the cookies
    and the cookie verifier as a client does (sections 3.3.16, 3.3.17); and how many calls it took."""
    entries, cookie, verf = [], 0, VERF0
    for calls in range(1, 10_000):
        r = (nfs("READDIRPLUS", dirfh, cookie, verf, count, 4 * count) if plus
             else nfs("READDIR", dirfh, cookie, verf, count))
        assert r.ok, r.status
        entries += r.entries
        if r.eof:
            return entries, calls
        assert r.entries, "a reply that is not the last carries an entry"
        cookie, verf = r.entries[-1].cookie, r.cookieverf
    raise AssertionError("no end of the listing")


def names(entries):
    return [e.name for e in entries if e.name not in (b".", b"..")]


# -- NULL, GETATTR (sections 3.3.0, 3.3.1) -------------------------------------------------------------------


def test_null_answers(nfs):
    """Section 3.3.0: NULL does no work and answers."""
    assert nfs("NULL").ok


def test_getattr_of_the_root(nfs, root):
    """Section 3.3.1: the export's root is a directory with a nonzero fileid and times."""
    a = attrs(nfs, root)
    assert a.type == DIR and a.nlink >= 2 and a.fileid != 0
    assert a.mtime > 0 and a.ctime > 0 and a.mode & 0o777 == 0o755


def test_getattr_of_a_new_file(nfs, root):
    """Sections 3.3.1, 3.3.8: a new file's attributes are those it was made with; the fileid stays the same."""
    f = create(nfs, root, b"f", mode=0o640)
    a = attrs(nfs, f)
    assert (a.type, a.mode, a.nlink, a.size) == (REG, 0o640, 1, 0)  # owners: the "permissions" checks
    assert a.fsid == attrs(nfs, root).fsid and a.fileid != attrs(nfs, root).fileid
    assert attrs(nfs, f) == a and lookup(nfs, root, b"f") == f
    assert abs(a.mtime - time.time_ns()) < 60 * SEC


def test_a_write_moves_size_mtime_and_ctime(nfs, root):
    """Section 3.3.1: size follows the data, and a change of the data moves mtime and ctime."""
    f = create(nfs, root, b"f")
    assert nfs("SETATTR", f, Sattr3(atime=1000 * SEC, mtime=1000 * SEC)).ok
    before = attrs(nfs, f)
    assert nfs("WRITE", f, 0, b"12345", FILE_SYNC).ok
    after = attrs(nfs, f)
    assert after.size == 5 and after.mtime > before.mtime == 1000 * SEC and after.ctime >= before.ctime
    assert after.fileid == before.fileid


# -- SETATTR (section 3.3.2) ---------------------------------------------------------------------------------


def test_setattr_mode_with_wcc(nfs, root):
    """Section 3.3.2: the mode changes, and obj_wcc carries the attributes before and after."""
    f = create(nfs, root, b"f")
    before = attrs(nfs, f)
    r = nfs("SETATTR", f, Sattr3(mode=0o600))
    assert r.ok and r.obj_wcc[0] is not None and (r.obj_wcc[0].size, r.obj_wcc[0].mtime) == pre(before)[:2]
    assert r.obj_wcc[1].mode == 0o600 and attrs(nfs, f).mode == 0o600 and r.obj_wcc[1] == attrs(nfs, f)


def test_setattr_size_truncates_and_extends(nfs, root):
    """Section 3.3.2: a smaller size cuts the data, a larger one adds zeros."""
    f = create(nfs, root, b"f", data=b"hello world")
    r = nfs("SETATTR", f, Sattr3(size=5))
    assert r.ok and r.obj_wcc[0].size == 11 and r.obj_wcc[1].size == 5
    assert nfs("READ", f, 0, 100).data == b"hello"
    assert nfs("SETATTR", f, Sattr3(size=20)).ok
    r = nfs("READ", f, 0, 100)
    assert r.data == b"hello" + bytes(15) and r.eof and attrs(nfs, f).size == 20


def test_setattr_times_to_client_time(nfs, root):
    """Section 3.3.2 (SET_TO_CLIENT_TIME): atime and mtime become exactly the times sent."""
    f = create(nfs, root, b"f")
    r = nfs("SETATTR", f, Sattr3(atime=1_000_000_000 * SEC, mtime=1_200_000_000 * SEC))
    assert r.ok and (r.obj_wcc[1].atime, r.obj_wcc[1].mtime) == (1_000_000_000 * SEC, 1_200_000_000 * SEC)
    a = attrs(nfs, f)
    assert (a.atime, a.mtime) == (1_000_000_000 * SEC, 1_200_000_000 * SEC)


def test_setattr_times_to_server_time(nfs, root):
    """Section 3.3.2 (SET_TO_SERVER_TIME): the times become the server's clock (the same machine's here)."""
    f = create(nfs, root, b"f")
    assert nfs("SETATTR", f, Sattr3(atime=SEC, mtime=SEC)).ok
    assert nfs("SETATTR", f, Sattr3(atime="now", mtime="now")).ok
    a = attrs(nfs, f)
    assert abs(a.mtime - time.time_ns()) < 60 * SEC and abs(a.atime - time.time_ns()) < 60 * SEC


def test_setattr_guard(nfs, root):
    """Section 3.3.2: with a guard that is not the object's ctime, NOT_SYNC and nothing changes; with the right
    one, the change is made."""
    f = create(nfs, root, b"f", mode=0o644)
    ctime = attrs(nfs, f).ctime
    r = nfs("SETATTR", f, Sattr3(mode=0o600), ctime + 1)
    assert r.status == Stat.NOT_SYNC and attrs(nfs, f).mode == 0o644
    assert nfs("SETATTR", f, Sattr3(mode=0o600), ctime).ok and attrs(nfs, f).mode == 0o600


def test_setattr_size_of_a_directory_is_refused(nfs, root):
    """Section 3.3.2: only a regular file has a size to set (Linux says ISDIR, others INVAL)."""
    d = mkdir(nfs, root, b"d")
    assert nfs("SETATTR", d, Sattr3(size=0)).status in (Stat.ISDIR, Stat.INVAL)


# -- LOOKUP (section 3.3.3) ----------------------------------------------------------------------------------


def test_lookup_found(nfs, root):
    """Section 3.3.3: the handle, its attributes (those GETATTR gives) and the directory's attributes."""
    f = create(nfs, root, b"f", data=b"abc")
    r = nfs("LOOKUP", root, b"f")
    assert r.ok and r.object == f and r.obj_attributes == attrs(nfs, f) and r.obj_attributes.size == 3
    assert r.dir_attributes.fileid == attrs(nfs, root).fileid and r.dir_attributes.type == DIR


def test_lookup_noent_carries_the_directory_attributes(nfs, root):
    """Section 3.3.3: a missing name is NOENT, with the directory's post-op attributes."""
    r = nfs("LOOKUP", root, b"missing")
    assert r.status == Stat.NOENT and r.dir_attributes is not None
    assert r.dir_attributes.fileid == attrs(nfs, root).fileid


def test_lookup_in_a_file_is_notdir(nfs, root):
    """Section 3.3.3: the "directory" must be one."""
    f = create(nfs, root, b"f")
    assert nfs("LOOKUP", f, b"x").status == Stat.NOTDIR


def test_lookup_dot_and_dotdot(nfs, root):
    """Sections 3.3.3, 4.3: "." is the directory, ".." its parent, and ".." of the export's root is the root
    (a client never walks out of an export)."""
    d = mkdir(nfs, root, b"d")
    sub = mkdir(nfs, d, b"sub")
    assert attrs(nfs, lookup(nfs, d, b".")).fileid == attrs(nfs, d).fileid
    assert attrs(nfs, lookup(nfs, sub, b"..")).fileid == attrs(nfs, d).fileid
    assert attrs(nfs, lookup(nfs, d, b"..")).fileid == attrs(nfs, root).fileid
    assert attrs(nfs, lookup(nfs, root, b"..")).fileid == attrs(nfs, root).fileid


# -- ACCESS (section 3.3.4) ----------------------------------------------------------------------------------


@pytest.mark.needs("permissions")
def test_access_follows_the_mode_bits(nfs, root):
    """Section 3.3.4: the bits granted are those the mode gives the caller, owner or other."""
    d = mkdir(nfs, root, b"d", mode=0o777)
    f = create(nfs, d, b"f", mode=0o640, cred=USER)
    assert nfs("ACCESS", f, A_ALL, cred=USER).access == A_READ | A_MODIFY | A_EXTEND
    assert nfs("ACCESS", f, A_ALL, cred=OTHER).access == 0
    assert nfs("SETATTR", f, Sattr3(mode=0o754), cred=USER).ok
    assert nfs("ACCESS", f, A_ALL, cred=USER).access == A_READ | A_MODIFY | A_EXTEND | A_EXECUTE
    assert nfs("ACCESS", f, A_ALL, cred=OTHER).access == A_READ
    mine = mkdir(nfs, d, b"mine", mode=0o755, cred=USER)
    assert nfs("ACCESS", mine, A_ALL, cred=USER).access == A_READ | A_LOOKUP | A_MODIFY | A_EXTEND | A_DELETE
    assert nfs("ACCESS", mine, A_ALL, cred=OTHER).access == A_READ | A_LOOKUP


def test_access_grants_only_what_was_asked(nfs, root):
    """Section 3.3.4: the reply's bits are a subset of the request's, with the object's attributes."""
    f = create(nfs, root, b"f", mode=0o644)
    r = nfs("ACCESS", f, A_READ)
    assert r.ok and r.access == A_READ and r.obj_attributes.fileid == attrs(nfs, f).fileid
    assert nfs("ACCESS", f, A_LOOKUP | A_DELETE).access == 0  # not a directory: nothing to look up or delete


# -- READLINK, SYMLINK (sections 3.3.5, 3.3.10) --------------------------------------------------------------


@pytest.mark.needs("symlinks")
def test_symlink_and_readlink(nfs, root):
    """Sections 3.3.10, 3.3.5: the link is made, is a link (LOOKUP does not follow it) and reads back."""
    target = b"some/where/../else"
    r = nfs("SYMLINK", root, b"s", Sattr3(), target)
    assert r.ok and r.obj_attributes.type == LNK and r.obj_attributes.size == len(target)
    assert r.dir_wcc[1] is not None
    looked = nfs("LOOKUP", root, b"s")
    assert looked.object == r.obj and looked.obj_attributes.type == LNK
    rl = nfs("READLINK", r.obj)
    assert rl.ok and rl.data == target and rl.symlink_attributes.type == LNK
    assert nfs("SYMLINK", root, b"s", Sattr3(), b"x").status == Stat.EXIST
    assert nfs("READLINK", r.obj).data == target


def test_readlink_of_a_file_is_inval(nfs, root):
    """Section 3.3.5: READLINK of anything but a symbolic link is INVAL."""
    f = create(nfs, root, b"f")
    assert nfs("READLINK", f).status == Stat.INVAL
    assert nfs("READLINK", root).status == Stat.INVAL


# -- READ (section 3.3.6) ------------------------------------------------------------------------------------


def test_read_data_and_eof(nfs, root):
    """Section 3.3.6: the bytes asked for; eof exactly when the read reaches the end of the file."""
    data = os.urandom(100)
    f = create(nfs, root, b"f", data=data)
    r = nfs("READ", f, 0, 50)
    assert r.ok and r.data == data[:50] and r.count == 50 and not r.eof and r.file_attributes.size == 100
    r = nfs("READ", f, 50, 50)
    assert r.data == data[50:] and r.count == 50 and r.eof
    r = nfs("READ", f, 90, 4096)
    assert r.data == data[90:] and r.count == 10 and r.eof


def test_read_past_the_end_and_count_zero(nfs, root):
    """Section 3.3.6: at or past the end: no data and eof; a count of 0: no data, and no eof before the end."""
    f = create(nfs, root, b"f", data=b"abc")
    for offset in (3, 1000, 1 << 40):
        r = nfs("READ", f, offset, 10)
        assert r.ok and r.data == b"" and r.count == 0 and r.eof, offset
    r = nfs("READ", f, 0, 0)
    assert r.ok and r.data == b"" and r.count == 0 and not r.eof


def test_read_of_a_directory_is_refused(nfs, root):
    """Section 3.3.6: READ is of regular files (Linux says ISDIR, others INVAL)."""
    assert nfs("READ", root, 0, 10).status in (Stat.ISDIR, Stat.INVAL)


# -- WRITE, COMMIT (sections 3.3.7, 3.3.21) ------------------------------------------------------------------


@pytest.mark.parametrize("stable", [UNSTABLE, DATA_SYNC, FILE_SYNC])
def test_write_returns_count_committed_and_verifier(nfs, root, stable):
    """Section 3.3.7: all is written, committed at least as stably as asked, and the data reads back."""
    f = create(nfs, root, b"f")
    w = nfs("WRITE", f, 0, b"hello", stable)
    assert w.ok and w.count == 5 and w.committed >= stable and w.committed in (0, 1, 2) and len(w.verf) == 8
    assert w.file_wcc[0].size == 0 and w.file_wcc[1].size == 5
    assert nfs("READ", f, 0, 10).data == b"hello"


def test_write_verifier_is_stable_and_commit_matches(nfs, root):
    """Sections 3.3.7, 3.3.21: one server instance gives one verifier; COMMIT returns the WRITE's."""
    f = create(nfs, root, b"f")
    g = create(nfs, root, b"g")
    first = nfs("WRITE", f, 0, b"a" * 1000, UNSTABLE)
    second = nfs("WRITE", g, 0, b"b" * 10, FILE_SYNC)
    third = nfs("WRITE", f, 1000, b"c", UNSTABLE)
    assert first.verf == second.verf == third.verf
    c = nfs("COMMIT", f, 0, 0)
    assert c.ok and c.verf == first.verf and c.file_wcc[1].size == 1001
    assert nfs("COMMIT", f, 0, 0).verf == first.verf


def test_writes_at_offsets_read_back(nfs, root):
    """Section 3.3.7: a write past the end leaves zeros between; overwrites replace only their bytes."""
    f = create(nfs, root, b"f", data=b"0123456789")
    assert nfs("WRITE", f, 4, b"ab", UNSTABLE).count == 2
    w = nfs("WRITE", f, 20, b"end", UNSTABLE)
    assert w.file_wcc[0].size == 10 and w.file_wcc[1].size == 23
    assert nfs("READ", f, 0, 100).data == b"0123ab6789" + bytes(10) + b"end"


def test_write_to_a_directory_is_refused(nfs, root):
    """Section 3.3.7: WRITE is of regular files (ISDIR or INVAL)."""
    assert nfs("WRITE", root, 0, b"x", FILE_SYNC).status in (Stat.ISDIR, Stat.INVAL)


# -- CREATE, MKDIR, MKNOD (sections 3.3.8, 3.3.9, 3.3.11) ----------------------------------------------------


def test_create_reply_and_dir_wcc(nfs, root):
    """Section 3.3.8: the new handle and attributes, and the directory's wcc: before as it was, after changed."""
    before = attrs(nfs, root)
    r = nfs("CREATE", root, b"f", GUARDED, Sattr3(mode=0o600))
    assert r.ok and r.obj_attributes.type == REG and r.obj_attributes.mode == 0o600
    assert attrs(nfs, r.obj) == r.obj_attributes
    assert pre(r.dir_wcc[0]) == pre(before) and r.dir_wcc[1] == attrs(nfs, root)
    assert r.dir_wcc[1].mtime >= before.mtime and lookup(nfs, root, b"f") == r.obj


def test_create_unchecked_keeps_data_unless_a_size_is_given(nfs, root):
    """Section 3.3.8: UNCHECKED on an existing file is the file as it is, or cut to the size sent."""
    f = create(nfs, root, b"f", data=b"keep me")
    r = nfs("CREATE", root, b"f", UNCHECKED, Sattr3())
    assert r.ok and nfs("READ", f, 0, 100).data == b"keep me"
    r = nfs("CREATE", root, b"f", UNCHECKED, Sattr3(size=0))
    assert r.ok and attrs(nfs, f).size == 0 and nfs("READ", f, 0, 100).data == b""


def test_create_guarded_on_an_existing_name_is_exist_with_wcc(nfs, root):
    """Sections 3.3.8, 2.6: GUARDED fails with EXIST on an existing name, the file unchanged, and the failure
    carries the directory's wcc_data."""
    f = create(nfs, root, b"f", data=b"keep me")
    before = attrs(nfs, root)
    r = nfs("CREATE", root, b"f", GUARDED, Sattr3(size=0))
    assert r.status == Stat.EXIST and pre(r.dir_wcc[0]) == pre(before) and r.dir_wcc[1] is not None
    assert nfs("READ", f, 0, 100).data == b"keep me"
    assert nfs("CREATE", root, b"d", GUARDED, Sattr3()).ok and nfs("MKDIR", root, b"dd", Sattr3()).ok
    assert nfs("CREATE", root, b"dd", GUARDED, Sattr3()).status == Stat.EXIST


def test_create_exclusive_is_idempotent_by_verifier(nfs, root):
    """Section 3.3.8: EXCLUSIVE again with the same verifier is the same file (a retransmission); with another
    verifier it is EXIST.  The client then sets the attributes with SETATTR."""
    verf = b"\x12\x34\x56\x78\x9a\xbc\xde\xf0"
    first = nfs("CREATE", root, b"x", EXCLUSIVE, verf)
    again = nfs("CREATE", root, b"x", EXCLUSIVE, verf)
    assert first.ok and again.ok and first.obj == again.obj
    assert attrs(nfs, first.obj).type == REG
    assert nfs("CREATE", root, b"x", EXCLUSIVE, b"\0" * 8).status == Stat.EXIST
    assert nfs("SETATTR", first.obj, Sattr3(mode=0o640, atime="now", mtime="now")).ok
    assert attrs(nfs, first.obj).mode == 0o640
    assert nfs("CREATE", root, b"y", EXCLUSIVE, b"\0" * 8).ok  # verifiers are per name


def test_create_in_a_file_is_notdir(nfs, root):
    """Section 3.3.8: the "directory" must be one."""
    f = create(nfs, root, b"f")
    assert nfs("CREATE", f, b"x", UNCHECKED, Sattr3()).status == Stat.NOTDIR


def test_mkdir_and_exist(nfs, root):
    """Section 3.3.9: a directory with the mode sent, found by LOOKUP; an existing name is EXIST with wcc."""
    r = nfs("MKDIR", root, b"d", Sattr3(mode=0o750))
    assert r.ok and (r.obj_attributes.type, r.obj_attributes.mode) == (DIR, 0o750)
    assert lookup(nfs, root, b"d") == r.obj and r.dir_wcc[1].mtime >= r.dir_wcc[0].mtime
    e = nfs("MKDIR", root, b"d", Sattr3(mode=0o700))
    assert e.status == Stat.EXIST and e.dir_wcc[1] is not None and attrs(nfs, r.obj).mode == 0o750
    create(nfs, root, b"f")
    assert nfs("MKDIR", root, b"f", Sattr3()).status == Stat.EXIST


@pytest.mark.needs("special_files")
def test_mknod_fifo_and_socket(nfs, root):
    """Section 3.3.11: FIFOs and sockets are made with their type and mode; regular files and directories are
    not MKNOD's (BADTYPE)."""
    r = nfs("MKNOD", root, b"fifo", FIFO, Sattr3(mode=0o640))
    assert r.ok and (r.obj_attributes.type, r.obj_attributes.mode) == (FIFO, 0o640)
    assert attrs(nfs, lookup(nfs, root, b"fifo")).type == FIFO
    assert nfs("MKNOD", root, b"sock", SOCK, Sattr3(mode=0o600)).obj_attributes.type == SOCK
    assert nfs("MKNOD", root, b"fifo", FIFO, Sattr3()).status == Stat.EXIST
    assert nfs("MKNOD", root, b"reg", REG, Sattr3()).status == Stat.BADTYPE
    assert nfs("MKNOD", root, b"dir", DIR, Sattr3()).status == Stat.BADTYPE


@pytest.mark.needs("mknod_device")
def test_mknod_character_device_as_root(nfs, root):
    """Section 3.3.11: a device node with the major and minor numbers sent."""
    r = nfs("MKNOD", root, b"null", CHR, Sattr3(mode=0o666), (1, 3))
    assert r.ok and r.obj_attributes.type == CHR and r.obj_attributes.rdev == (1, 3)
    assert attrs(nfs, r.obj).rdev == (1, 3)


# -- REMOVE, RMDIR (sections 3.3.12, 3.3.13) -----------------------------------------------------------------


def test_remove(nfs, root):
    """Section 3.3.12: the name is gone, the wcc shows the directory before and after, and the file's handle
    is STALE (section 2.6) once its last link is gone."""
    f = create(nfs, root, b"f", data=b"x")
    before = attrs(nfs, root)
    r = nfs("REMOVE", root, b"f")
    assert r.ok and pre(r.dir_wcc[0]) == pre(before) and r.dir_wcc[1] == attrs(nfs, root)
    assert nfs("LOOKUP", root, b"f").status == Stat.NOENT
    assert nfs("GETATTR", f).status == Stat.STALE
    assert nfs("READ", f, 0, 10).status == Stat.STALE
    assert nfs("WRITE", f, 0, b"x", FILE_SYNC).status == Stat.STALE


def test_remove_noent_carries_wcc(nfs, root):
    """Sections 3.3.12, 2.6: a failed REMOVE still carries the directory's wcc_data."""
    r = nfs("REMOVE", root, b"missing")
    assert r.status == Stat.NOENT and r.dir_wcc[0] is not None and r.dir_wcc[1] is not None
    assert pre(r.dir_wcc[0]) == pre(attrs(nfs, root))


def test_rmdir(nfs, root):
    """Section 3.3.13: an empty directory goes; a non-empty one is NOTEMPTY; a file is NOTDIR; REMOVE does
    not remove a directory."""
    d = mkdir(nfs, root, b"d")
    create(nfs, d, b"f")
    assert nfs("RMDIR", root, b"d").status == Stat.NOTEMPTY
    assert nfs("REMOVE", root, b"d").status != Stat.OK and lookup(nfs, root, b"d") == d
    create(nfs, root, b"file")
    assert nfs("RMDIR", root, b"file").status == Stat.NOTDIR
    assert nfs("REMOVE", d, b"f").ok
    r = nfs("RMDIR", root, b"d")
    assert r.ok and r.dir_wcc[1] is not None
    assert nfs("LOOKUP", root, b"d").status == Stat.NOENT and nfs("GETATTR", d).status == Stat.STALE
    assert nfs("RMDIR", root, b"d").status == Stat.NOENT


# -- RENAME, LINK (sections 3.3.14, 3.3.15) ------------------------------------------------------------------


def test_rename_over_an_existing_file(nfs, root):
    """Section 3.3.14: the target name now names the source; the old target is gone."""
    src = create(nfs, root, b"src", data=b"source")
    dst = create(nfs, root, b"dst", data=b"target")
    fileid = attrs(nfs, src).fileid
    r = nfs("RENAME", root, b"src", root, b"dst")
    assert r.ok and r.fromdir_wcc[1] is not None and r.todir_wcc[1] is not None
    assert nfs("LOOKUP", root, b"src").status == Stat.NOENT
    moved = lookup(nfs, root, b"dst")
    assert attrs(nfs, moved).fileid == fileid and nfs("READ", moved, 0, 100).data == b"source"
    assert nfs("GETATTR", dst).status == Stat.STALE


def test_rename_into_another_directory(nfs, root):
    """Section 3.3.14: both directories' wcc; the object keeps its handle's identity and its data."""
    a, b = mkdir(nfs, root, b"a"), mkdir(nfs, root, b"b")
    f = create(nfs, a, b"f", data=b"data")
    before_a, before_b = attrs(nfs, a), attrs(nfs, b)
    r = nfs("RENAME", a, b"f", b, b"g")
    assert r.ok and pre(r.fromdir_wcc[0]) == pre(before_a) and pre(r.todir_wcc[0]) == pre(before_b)
    assert r.fromdir_wcc[1] == attrs(nfs, a) and r.todir_wcc[1] == attrs(nfs, b)
    assert nfs("LOOKUP", a, b"f").status == Stat.NOENT
    g = lookup(nfs, b, b"g")
    assert attrs(nfs, g).fileid == attrs(nfs, f).fileid and nfs("READ", g, 0, 10).data == b"data"


def test_rename_errors(nfs, root):
    """Section 3.3.14: a missing source is NOENT (with both wccs); a directory into itself is INVAL; a
    directory over a non-empty one is EXIST or NOTEMPTY; a directory over a file NOTDIR."""
    r = nfs("RENAME", root, b"missing", root, b"x")
    assert r.status == Stat.NOENT and r.fromdir_wcc[1] is not None and r.todir_wcc[1] is not None
    d = mkdir(nfs, root, b"d")
    sub = mkdir(nfs, d, b"sub")
    assert nfs("RENAME", root, b"d", d, b"d2").status == Stat.INVAL
    assert nfs("RENAME", root, b"d", sub, b"deeper").status == Stat.INVAL
    full = mkdir(nfs, root, b"full")
    create(nfs, full, b"f")
    assert nfs("RENAME", root, b"d", root, b"full").status in (Stat.EXIST, Stat.NOTEMPTY)
    create(nfs, root, b"file")
    assert nfs("RENAME", root, b"d", root, b"file").status == Stat.NOTDIR
    assert lookup(nfs, d, b"sub") == sub


@pytest.mark.needs("hard_links")
def test_link(nfs, root):
    """Section 3.3.15: a second name for the same object: same fileid, nlink 2, one data; EXIST on a taken
    name; after REMOVE of one name the other still works."""
    f = create(nfs, root, b"f", data=b"shared")
    d = mkdir(nfs, root, b"d")
    r = nfs("LINK", f, d, b"hard")
    assert r.ok and r.file_attributes.nlink == 2 and r.linkdir_wcc[1] is not None
    h = lookup(nfs, d, b"hard")
    assert attrs(nfs, h).fileid == attrs(nfs, f).fileid and attrs(nfs, f).nlink == 2
    assert nfs("WRITE", h, 0, b"SH", FILE_SYNC).ok and nfs("READ", f, 0, 10).data == b"SHared"
    assert nfs("LINK", f, d, b"hard").status == Stat.EXIST
    assert nfs("REMOVE", root, b"f").ok
    assert attrs(nfs, h).nlink == 1 and nfs("READ", h, 0, 10).data == b"SHared"


# -- READDIR, READDIRPLUS (sections 3.3.16, 3.3.17) ----------------------------------------------------------


@pytest.mark.parametrize("plus", [False, True], ids=["readdir", "readdirplus"])
def test_every_name_exactly_once_across_calls(nfs, root, plus):
    """Sections 3.3.16, 3.3.17: small replies, followed by their cookies, list every name exactly once."""
    made = {f"file-{i:03}".encode() for i in range(150)}
    for name in made:
        create(nfs, root, name)
    entries, calls = listing(nfs, root, plus=plus, count=1024)
    assert calls > 3
    assert sorted(names(entries)) == sorted(made)
    assert len({e.cookie for e in entries}) == len(entries), "every entry its own cookie"
    ids = {e.name: e.fileid for e in entries}
    assert ids[b"file-007"] == attrs(nfs, lookup(nfs, root, b"file-007")).fileid


def test_readdirplus_attributes_and_handles_are_lookups(nfs, root):
    """Section 3.3.17: each entry's handle and attributes are those LOOKUP and GETATTR give."""
    create(nfs, root, b"f", data=b"abc")
    mkdir(nfs, root, b"d", mode=0o700)
    for i in range(20):
        create(nfs, root, f"g{i}".encode(), mode=0o600 + i)
    entries, _ = listing(nfs, root, plus=True, count=512)
    for e in entries:
        if e.name in (b".", b".."):
            continue
        looked = nfs("LOOKUP", root, e.name)
        assert e.handle == looked.object, e.name
        assert e.attributes == attrs(nfs, looked.object) and e.fileid == e.attributes.fileid, e.name


def test_cookies_survive_unrelated_additions(nfs, root):
    """Section 3.3.16: a cookie stays good while other entries are added: the rest of the listing follows it,
    and every name that was there is listed exactly once."""
    made = {f"old-{i:03}".encode() for i in range(120)}
    for name in made:
        create(nfs, root, name)
    r = nfs("READDIR", root, 0, VERF0, 1024)
    assert r.ok and not r.eof
    seen = [e.name for e in r.entries]
    for i in range(30):
        create(nfs, root, f"new-{i:03}".encode())
    cookie, verf = r.entries[-1].cookie, r.cookieverf
    while True:
        r = nfs("READDIR", root, cookie, verf, 1024)
        assert r.ok, r.status
        seen += [e.name for e in r.entries]
        if r.eof:
            break
        cookie, verf = r.entries[-1].cookie, r.cookieverf
    old = [n for n in seen if n.startswith(b"old-")]
    assert sorted(old) == sorted(made)
    assert len(seen) == len(set(seen)), "no name twice"


def test_a_cookie_of_a_removed_entry(nfs, root):
    """Section 3.3.16: when the entry a cookie points at is gone, the server either says BAD_COOKIE or goes on
    from where it was: no name twice and none of the remaining ones missed."""
    made = {f"f{i:03}".encode() for i in range(120)}
    for name in made:
        create(nfs, root, name)
    r = nfs("READDIR", root, 0, VERF0, 1024)
    first = [e.name for e in r.entries]
    last = r.entries[-1]
    assert nfs("REMOVE", root, last.name).ok
    r = nfs("READDIR", root, last.cookie, r.cookieverf, 1024)
    if r.status == Stat.BAD_COOKIE:
        return
    rest, cookie, verf = [], last.cookie, None
    while True:
        assert r.ok, r.status
        rest += [e.name for e in r.entries]
        if r.eof:
            break
        cookie, verf = r.entries[-1].cookie, r.cookieverf
        r = nfs("READDIR", root, cookie, verf, 1024)
    assert not set(first) & set(rest) and len(rest) == len(set(rest))
    assert set(first) | set(rest) >= made - {last.name} and last.name not in rest


def test_readdir_toosmall_notdir_and_empty(nfs, root):
    """Sections 3.3.16, 3.3.17: a count too small for one entry is TOOSMALL; a file is NOTDIR; an empty
    directory is listed in one reply, with eof and no name but "." and ".."."""
    for i in range(3):
        create(nfs, root, f"name-{i}".encode())
    assert nfs("READDIR", root, 0, VERF0, 8).status == Stat.TOOSMALL
    assert nfs("READDIRPLUS", root, 0, VERF0, 8, 8).status == Stat.TOOSMALL
    f = lookup(nfs, root, b"name-0")
    assert nfs("READDIR", f, 0, VERF0, 4096).status == Stat.NOTDIR
    assert nfs("READDIRPLUS", f, 0, VERF0, 4096, 8192).status == Stat.NOTDIR
    d = mkdir(nfs, root, b"empty")
    r = nfs("READDIR", d, 0, VERF0, 4096)
    assert r.ok and r.eof and names(r.entries) == [] and r.dir_attributes.fileid == attrs(nfs, d).fileid


# -- FSSTAT, FSINFO, PATHCONF (sections 3.3.18 - 3.3.20) -----------------------------------------------------


def test_fsstat(nfs, root):
    """Section 3.3.18: sizes and file counts that make sense together."""
    s = nfs("FSSTAT", root)
    assert s.ok and s.obj_attributes.type == DIR
    assert s.tbytes > 0 and s.tbytes >= s.fbytes >= s.abytes and s.tfiles >= s.ffiles >= s.afiles


def test_fsinfo(nfs, root):
    """Section 3.3.19: transfer sizes whose maxima are at least the preferred sizes, a positive maximum file
    size, a time resolution of at most a second, and the properties this suite relies on (CANSETTIME)."""
    i = nfs("FSINFO", root)
    assert i.ok and i.obj_attributes.type == DIR
    assert i.rtmax >= i.rtpref > 0 and i.wtmax >= i.wtpref > 0 and i.dtpref > 0
    assert i.maxfilesize > 0 and 0 < i.time_delta <= SEC and i.properties & 0x10  # FSF3_CANSETTIME


def test_pathconf(nfs, root):
    """Section 3.3.20: names of at least 255 bytes, longer ones refused (no_trunc), case kept."""
    p = nfs("PATHCONF", root)
    assert p.ok and p.name_max >= 255 and p.linkmax >= 1 and p.no_trunc and p.case_preserving


# -- errors (section 2.6) and names (section 3.2) ------------------------------------------------------------


@pytest.mark.parametrize("proc,args", [
    ("GETATTR", ()), ("LOOKUP", (b"x",)), ("READ", (0, 10)), ("WRITE", (0, b"x", FILE_SYNC)),
    ("READDIR", (0, VERF0, 4096)), ("CREATE", (b"x", UNCHECKED, Sattr3())), ("FSINFO", ()),
])
def test_garbage_handles_are_badhandle(nfs, root, proc, args):
    """Section 2.6: a handle that fails the server's consistency checks is BADHANDLE: empty, too short, or
    random bytes the length of a real one."""
    for bad in (b"", root[:3], os.urandom(len(root))):
        r = nfs(proc, bad, *args)
        assert r.status == Stat.BADHANDLE, (proc, bad)


def test_a_removed_directory_is_stale(nfs, root):
    """Section 2.6: STALE for the handle of an object that no longer exists, whatever the call."""
    d = mkdir(nfs, root, b"d")
    assert nfs("RMDIR", root, b"d").ok
    assert nfs("LOOKUP", d, b"x").status == Stat.STALE
    assert nfs("READDIR", d, 0, VERF0, 4096).status == Stat.STALE
    assert nfs("CREATE", d, b"x", UNCHECKED, Sattr3()).status == Stat.STALE


def test_names_too_long(nfs, root):
    """Sections 3.2, 3.3.20: a name of name_max bytes works; one longer is NAMETOOLONG, for every call that
    takes a name, with the directory's wcc on a failed CREATE."""
    name_max = nfs("PATHCONF", root).name_max
    assert nfs("CREATE", root, b"n" * name_max, UNCHECKED, Sattr3()).ok
    too = b"n" * (name_max + 1)
    r = nfs("CREATE", root, too, UNCHECKED, Sattr3())
    assert r.status == Stat.NAMETOOLONG and r.dir_wcc[1] is not None
    assert nfs("LOOKUP", root, too).status == Stat.NAMETOOLONG
    assert nfs("MKDIR", root, too, Sattr3()).status == Stat.NAMETOOLONG
    assert nfs("REMOVE", root, too).status == Stat.NAMETOOLONG
    assert names(listing(nfs, root)[0]) == [b"n" * name_max]


def test_names_with_a_slash_or_empty_are_refused(nfs, root):
    """Section 3.2: a name is one component: "a/b" and "" are not names (INVAL or ACCES), and nothing is made."""
    mkdir(nfs, root, b"a")
    for bad in (b"a/b", b""):
        assert nfs("CREATE", root, bad, UNCHECKED, Sattr3()).status in (Stat.INVAL, Stat.ACCES), bad
        assert nfs("MKDIR", root, bad, Sattr3()).status in (Stat.INVAL, Stat.ACCES), bad
    assert names(listing(nfs, root)[0]) == [b"a"]
    assert names(listing(nfs, lookup(nfs, root, b"a"))[0]) == []


# -- permissions (section 4.4) -------------------------------------------------------------------------------


@pytest.mark.needs("permissions")
def test_a_user_cannot_write_roots_0644_file(nfs, root):
    """Section 4.4: uid 1000 may read root's 0644 file but not write it (ACCES) nor change its mode (PERM)."""
    f = create(nfs, root, b"f", mode=0o644, data=b"root's")
    assert nfs("READ", f, 0, 100, cred=USER).data == b"root's"
    assert nfs("WRITE", f, 0, b"user's", FILE_SYNC, cred=USER).status == Stat.ACCES
    assert nfs("SETATTR", f, Sattr3(mode=0o666), cred=USER).status == Stat.PERM
    assert nfs("READ", f, 0, 100).data == b"root's" and attrs(nfs, f).mode == 0o644


@pytest.mark.needs("permissions")
def test_a_user_cannot_read_a_0600_file(nfs, root):
    """Section 4.4: uid 1000 may not read root's 0600 file."""
    f = create(nfs, root, b"f", mode=0o600, data=b"secret")
    assert nfs("READ", f, 0, 100, cred=USER).status == Stat.ACCES


@pytest.mark.needs("permissions")
def test_a_user_works_in_a_0777_directory_not_in_roots_0755_one(nfs, root):
    """Section 4.4: uid 1000 creates, writes and removes in a 0777 directory (the file is its own); in root's
    0755 root it may not create or remove (ACCES)."""
    d = mkdir(nfs, root, b"open", mode=0o777)
    f = create(nfs, d, b"mine", mode=0o600, cred=USER)
    a = attrs(nfs, f)
    assert (a.uid, a.gid) == (1000, 1000)
    assert nfs("WRITE", f, 0, b"mine", FILE_SYNC, cred=USER).ok and nfs("READ", f, 0, 10, cred=USER).data == b"mine"
    assert nfs("CREATE", root, b"x", UNCHECKED, Sattr3(), cred=USER).status == Stat.ACCES
    assert nfs("MKDIR", root, b"x", Sattr3(), cred=USER).status == Stat.ACCES
    create(nfs, root, b"roots")
    assert nfs("REMOVE", root, b"roots", cred=USER).status == Stat.ACCES
    assert nfs("REMOVE", d, b"mine", cred=USER).ok


@pytest.mark.needs("permissions")
def test_only_root_gives_a_file_away(nfs, root):
    """Section 4.4: the owner may not give its file to another uid (PERM); root may."""
    d = mkdir(nfs, root, b"open", mode=0o777)
    f = create(nfs, d, b"mine", cred=USER)
    assert nfs("SETATTR", f, Sattr3(uid=0), cred=USER).status == Stat.PERM
    r = nfs("SETATTR", f, Sattr3(uid=1234, gid=4321))
    assert r.ok and (r.obj_wcc[1].uid, r.obj_wcc[1].gid) == (1234, 4321)
