"""mountd in process (RFC 1813 appendix I): MNT decisions, handles, the mount list."""

import errno
import os

import pytest
from hypothesis import given, strategies as st

from nfsstack.exports import parse_exports
from nfsstack.exports.handles import (
    MAX_HANDLE, MAX_KERNEL_HANDLE, BadHandle, Decoded, HandleCodec, StaleHandle, kernel_handles_work,
)
from nfsstack.exports.table import ExportTable
from nfsstack.mount.mountlist import MountList
from nfsstack.mount.program import MountStat, Mountd
from nfsstack.nfs3.local.filesystem import LocalFilesystem
from nfsstack.rpc.message import decode_reply, encode_call
from nfsstack.rpc.server import Dispatcher
from nfsstack.xdr import Packer, Unpacker

pytestmark = pytest.mark.skipif(not kernel_handles_work("/"), reason="needs root (open_by_handle_at)")

ROOT_PORT = ("127.0.0.1", 700)
USER_PORT = ("127.0.0.1", 40000)


@pytest.fixture
def env(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "file").write_text("x")
    (tmp_path / "secret").mkdir()
    os.symlink(str(tmp_path / "secret"), data / "escape")
    open_ = tmp_path / "open"
    open_.mkdir()
    exports = parse_exports(f"{data} 127.0.0.1(rw) 192.0.2.0/24(ro)\n{open_} *(ro,insecure)\n")
    table = ExportTable(exports, HandleCodec(b"k" * 32))
    mountd = Mountd(table, MountList(str(tmp_path / "state")), LocalFilesystem(table, None).mount)
    yield tmp_path, table, mountd, Dispatcher([mountd.program])
    table.close()


def call(dispatcher, vers, proc, args=b"", peer=ROOT_PORT):
    reply = dispatcher.handle(encode_call(1, 100005, vers, proc) + args, "udp", peer, ("127.0.0.1", 635))
    header = decode_reply(reply)
    assert header.error is None, header.error
    return Unpacker(reply, header.offset)


def path_arg(path):
    p = Packer()
    p.pack_string(str(path))
    return p.getvalue()


def mnt3(dispatcher, path, peer=ROOT_PORT, flavors=(1,)):
    u = call(dispatcher, 3, 1, path_arg(path), peer)
    status = u.unpack_int()
    if status != 0:
        return MountStat(status), None
    handle = u.unpack_opaque(64)
    assert u.unpack_array(Unpacker.unpack_int, 10) == list(flavors)  # AUTH_SYS unless sec= says otherwise
    return MountStat.MNT3_OK, handle


def test_mnt_returns_a_handle_that_resolves_to_the_export(env):
    tmp, table, mountd, d = env
    status, handle = mnt3(d, tmp / "data")
    assert status == MountStat.MNT3_OK and len(handle) <= 64
    export, fd = table.resolve(handle)
    try:
        assert os.readlink(f"/proc/self/fd/{fd}") == str(tmp / "data")
    finally:
        os.close(fd)
    status, sub = mnt3(d, tmp / "data" / "sub")  # a directory inside an export
    assert status == MountStat.MNT3_OK and sub != handle


@pytest.mark.parametrize("path,peer,expected", [
    ("data", ("10.9.9.9", 700), MountStat.MNT3ERR_ACCES),   # no client match
    ("data", USER_PORT, MountStat.MNT3ERR_ACCES),            # secure export, unprivileged port
    ("nonexistent", ROOT_PORT, MountStat.MNT3ERR_NOENT),
    ("data/missing", ROOT_PORT, MountStat.MNT3ERR_NOENT),
    ("data/file", ROOT_PORT, MountStat.MNT3ERR_NOTDIR),
    ("data/escape", ROOT_PORT, MountStat.MNT3ERR_ACCES),    # a symlink out of the export
    ("secret", ROOT_PORT, MountStat.MNT3ERR_ACCES),          # exists, not exported
])
def test_mnt_refusals(env, path, peer, expected):
    tmp, table, mountd, d = env
    assert mnt3(d, tmp / path, peer)[0] == expected


def test_mnt_resolves_symlinks_on_both_sides_as_rpc_mountd(tmp_path):
    """An export written as a symlink is mounted by the path the link names too, and a path that reaches an
    export through a symlink (a link to it elsewhere) is that export's: rpc.mountd canonicalizes both
    (realpath) before it matches them.  The handle is the export's root either way."""
    (tmp_path / "disk" / "data" / "sub").mkdir(parents=True)
    os.symlink(tmp_path / "disk" / "data", tmp_path / "data")  # exported by this name
    os.symlink(tmp_path / "disk", tmp_path / "elsewhere")
    table = ExportTable(parse_exports(f"{tmp_path / 'data'} 127.0.0.1(rw)\n"), HandleCodec(b"k" * 32))
    d = Dispatcher([Mountd(table, MountList(str(tmp_path / "state")), LocalFilesystem(table, None).mount).program])
    try:
        status, root = mnt3(d, tmp_path / "data")
        assert status == MountStat.MNT3_OK
        assert mnt3(d, tmp_path / "disk" / "data") == (MountStat.MNT3_OK, root)
        assert mnt3(d, tmp_path / "elsewhere" / "data") == (MountStat.MNT3_OK, root)
        status, sub = mnt3(d, tmp_path / "disk" / "data" / "sub")
        assert status == MountStat.MNT3_OK and sub != root
        assert mnt3(d, tmp_path / "disk")[0] == MountStat.MNT3ERR_ACCES  # above the export: not exported
        assert mnt3(d, f"{tmp_path}/data\0/sub")[0] == MountStat.MNT3ERR_NOENT  # no file has a NUL in its name
    finally:
        table.close()


def test_mnt_of_a_path_whose_symlinks_lead_into_another_export_is_that_exports(tmp_path):
    """As rpc.mountd: the path resolved is matched, so a directory reached through the symlink of one export
    that is itself exported gets its own export (its handle, its options), not the first's."""
    (tmp_path / "real" / "sub").mkdir(parents=True)
    os.symlink(tmp_path / "real", tmp_path / "link")
    table = ExportTable(parse_exports(f"{tmp_path / 'link'} 127.0.0.1(ro)\n{tmp_path / 'real' / 'sub'} 127.0.0.1(rw)\n"),
                        HandleCodec(b"k" * 32))
    d = Dispatcher([Mountd(table, MountList(str(tmp_path / "state")), LocalFilesystem(table, None).mount).program])
    try:
        status, sub = mnt3(d, tmp_path / "real" / "sub")
        assert status == MountStat.MNT3_OK
        assert mnt3(d, tmp_path / "link" / "sub") == (MountStat.MNT3_OK, sub)
        export, fd = table.resolve(sub)
        os.close(fd)
        assert export.path == str(tmp_path / "real" / "sub")
    finally:
        table.close()


def test_two_exports_of_one_directory_are_told_apart_by_the_path_written(tmp_path):
    """``/link`` (a symlink to ``/real``) and ``/real`` both exported, each to another client: each client mounts
    the one it names, whichever the file lists first (the resolved paths tie)."""
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    table = ExportTable(parse_exports(f"{tmp_path / 'link'} 127.0.0.1(rw)\n{tmp_path / 'real'} 127.0.0.2(rw)\n"),
                        HandleCodec(b"k" * 32))
    d = Dispatcher([Mountd(table, MountList(str(tmp_path / "state")), LocalFilesystem(table, None).mount).program])
    try:
        assert mnt3(d, tmp_path / "real", ("127.0.0.2", 700))[0] == MountStat.MNT3_OK
        assert mnt3(d, tmp_path / "link", ("127.0.0.1", 700))[0] == MountStat.MNT3_OK
        assert mnt3(d, tmp_path / "real", ("127.0.0.1", 700))[0] == MountStat.MNT3ERR_ACCES
    finally:
        table.close()


def test_insecure_export_admits_unprivileged_ports(env):
    tmp, table, mountd, d = env
    assert mnt3(d, tmp / "open", USER_PORT)[0] == MountStat.MNT3_OK


def test_v1_mnt_pads_to_32_bytes(env):
    tmp, table, mountd, d = env
    u = call(d, 1, 1, path_arg(tmp / "data"))
    assert u.unpack_uint() == 0
    handle = u.unpack_fopaque(32)
    export, fd = table.resolve(handle)  # trailing zeros are accepted
    os.close(fd)


def test_dump_umnt_umntall_and_persistence(env):
    tmp, table, mountd, d = env
    mnt3(d, tmp / "data")
    mnt3(d, tmp / "open", ("127.0.0.2", 40001))
    dump = call(d, 3, 2).unpack_list(lambda u: (u.unpack_string(255), u.unpack_string(1024)), 100)
    assert dump == [("127.0.0.1", str(tmp / "data")), ("127.0.0.2", str(tmp / "open"))]
    assert MountList(str(tmp / "state")).entries == dump  # on disk: a restart keeps it
    call(d, 3, 3, path_arg(tmp / "data"))
    assert [e[0] for e in mountd.mounts.entries] == ["127.0.0.2"]
    call(d, 3, 4, peer=("127.0.0.2", 40001))
    assert mountd.mounts.entries == [] and MountList(str(tmp / "state")).entries == []


def test_export_lists_paths_and_clients(env):
    tmp, table, mountd, d = env
    for vers in (1, 3):
        exports = call(d, vers, 5).unpack_list(
            lambda u: (u.unpack_string(1024), u.unpack_list(lambda v: v.unpack_string(255), 100)), 100)
        assert exports == [(str(tmp / "data"), ["127.0.0.1", "192.0.2.0/24"]), (str(tmp / "open"), ["*"])]


def test_forged_and_stale_handles(env):
    tmp, table, mountd, d = env
    _, handle = mnt3(d, tmp / "data")
    for i in range(len(handle)):
        flipped = bytearray(handle)
        flipped[i] ^= 0x01
        with pytest.raises((BadHandle, StaleHandle)):
            table.resolve(bytes(flipped))
    with pytest.raises(BadHandle):
        table.resolve(handle[:-1])
    with pytest.raises(BadHandle):
        HandleCodec(b"other key" * 4).decode(handle)
    status, sub = mnt3(d, tmp / "data" / "sub")
    os.rmdir(tmp / "data" / "sub")
    with pytest.raises(StaleHandle):
        table.resolve(sub)


def test_corrupt_mount_list_is_reported_and_rebuilt(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "rmtab").write_text('{"host": "h", "dir": "/d"}\nnot json\n{"nohost": 1}\n')
    assert MountList(str(state)).entries == [("h", "/d")]


def test_handle_rename_survives(env):
    """A handle names the object, not its path: renames inside the export keep it valid."""
    tmp, table, mountd, d = env
    _, sub = mnt3(d, tmp / "data" / "sub")
    os.rename(tmp / "data" / "sub", tmp / "data" / "renamed")
    export, fd = table.resolve(sub)
    try:
        assert os.readlink(f"/proc/self/fd/{fd}") == str(tmp / "data" / "renamed")
    finally:
        os.close(fd)


def test_handles_fit_nfs3_fhsize_and_a_kernel_handle_too_large_is_refused(env):
    """RFC 1813's NFS3_FHSIZE is 64 bytes: the handles mountd gives for this filesystem's objects fit and decode
    back; the largest kernel handle the codec takes makes a handle of exactly 64 bytes, one byte more is refused
    (EOVERFLOW), never a longer handle a client cannot carry."""
    tmp, table, mountd, d = env
    for path in (tmp / "data", tmp / "data" / "sub"):
        status, handle = mnt3(d, path)
        assert status == MountStat.MNT3_OK and len(handle) <= MAX_HANDLE
        export, fd = table.resolve(handle)
        os.close(fd)
    codec = HandleCodec(b"k" * 32)
    for size in (0, 8, MAX_KERNEL_HANDLE):
        data = bytes(range(size))
        handle = codec.encode(7, 1, data)
        assert len(handle) <= MAX_HANDLE
        assert codec.decode(handle) == Decoded(7, 1, data)
    assert len(codec.encode(7, 1, bytes(MAX_KERNEL_HANDLE))) == MAX_HANDLE == 64
    with pytest.raises(OSError) as e:
        codec.encode(7, 1, bytes(MAX_KERNEL_HANDLE + 1))
    assert e.value.errno == errno.EOVERFLOW


@pytest.fixture(scope="module")
def fuzz_mountd(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mountfuzz")
    (tmp / "data").mkdir()
    table = ExportTable(parse_exports(f"{tmp / 'data'} *(rw,insecure)\n"), HandleCodec(b"k" * 32))
    yield Dispatcher([Mountd(table, MountList(str(tmp / "state")), LocalFilesystem(table, None).mount).program])
    table.close()


@given(st.sampled_from([1, 2, 3]), st.integers(0, 7), st.binary(max_size=200))
def test_fuzz_mountd_dispatch(fuzz_mountd, vers, proc, data):
    """Random arguments to every mountd procedure: an answer or GARBAGE_ARGS, never SYSTEM_ERR."""
    reply = fuzz_mountd.handle(encode_call(9, 100005, vers, proc) + data, "udp", USER_PORT, ("127.0.0.1", 635))
    error = decode_reply(reply).error
    assert error is None or str(error) in ("GARBAGE_ARGS", "PROC_UNAVAIL"), error


def test_mnt_answers_the_exports_flavours_in_their_order(tmp_path):
    """RFC 1813 section 5.2.1 mountres3_ok.auth_flavors: the client's sec= list, its order kept (the client takes
    the first it supports, RFC 2623 section 2.7); an AUTH_SYS MNT is answered for a sec=krb5 export, as
    rpc.mountd does: the flavour is checked by nfsd, not by MNT."""
    for name in ("krb", "mixed", "plain", "other"):
        (tmp_path / name).mkdir()
    exports = parse_exports(f"{tmp_path / 'krb'} 127.0.0.1(rw,sec=krb5)\n"
                            f"{tmp_path / 'mixed'} 127.0.0.1(rw,sec=krb5p:krb5i:krb5:sys) *(sec=sys:krb5)\n"
                            f"{tmp_path / 'plain'} 127.0.0.1(rw)\n")
    table = ExportTable(exports, HandleCodec(b"k" * 32))
    try:
        mountd = Mountd(table, MountList(str(tmp_path / "state")), LocalFilesystem(table, None).mount)
        d = Dispatcher([mountd.program])
        assert mnt3(d, tmp_path / "krb", flavors=[390003])[0] == MountStat.MNT3_OK
        assert mnt3(d, tmp_path / "mixed", flavors=[390005, 390004, 390003, 1])[0] == MountStat.MNT3_OK
        assert mnt3(d, tmp_path / "mixed", ("127.0.0.2", 700), flavors=[1, 390003])[0] == MountStat.MNT3_OK
        assert mnt3(d, tmp_path / "plain", flavors=[1])[0] == MountStat.MNT3_OK
        u = call(d, 1, 1, path_arg(tmp_path / "krb"))  # version 1: no flavour list, the handle only
        assert u.unpack_uint() == 0 and len(u.unpack_fopaque(32)) == 32
        u.done()
    finally:
        table.close()
