"""exports(5) parsing and client matching."""

import pytest

from nfsstack.exports import ANON_ID, ExportOptions, ExportsError, parse_exports
from nfsstack.nfs3.local.filesystem import LocalFilesystem

HOSTS = {"server1": ["192.0.2.10"], "dual": ["192.0.2.11", "2001:db8::11"]}
NAMES = {"192.0.2.20": "ws1.lab.example", "192.0.2.21": "printer.other.example"}


def parse(text, name="exports"):
    return parse_exports(text, name, resolve=lambda h: HOSTS.get(h, []))


def options(exports, path, address):
    return exports.find(path).options_for(address, NAMES.get)


def test_defaults_are_ro_root_squash_secure_sync():
    e = parse("/srv *\n")
    o = options(e, "/srv", "198.51.100.1")
    assert o == ExportOptions() and o.read_only and o.root_squash and o.secure and o.sync
    assert (o.anonuid, o.anongid) == (ANON_ID, ANON_ID)


def test_every_client_kind_and_option():
    e = parse(
        "# comment\n"
        '/srv/data  192.0.2.0/24(rw,no_root_squash) *.lab.example(ro,all_squash,anonuid=1000,anongid=100) \\\n'
        "           server1(rw,insecure,async) 2001:db8::/32(rw) 10.0.0.0/255.0.0.0(ro) *(ro)  # trailing\n"
        '"/srv/with space" 192.0.2.5(rw,fsid=7,no_subtree_check,wdelay,sec=sys)\n'
    )
    assert [x.path for x in e] == ["/srv/data", "/srv/with space"]
    # A host beats a network beats a wildcard beats '*', whatever the order on the line.
    assert options(e, "/srv/data", "192.0.2.10") == ExportOptions(read_only=False, secure=False, sync=False)
    assert options(e, "/srv/data", "192.0.2.20") == ExportOptions(read_only=False, root_squash=False)
    assert options(e, "/srv/data", "10.1.2.3").read_only
    assert options(e, "/srv/data", "2001:db8::99").read_only is False
    assert options(e, "/srv/data", "::ffff:192.0.2.10").secure is False  # IPv4-mapped
    o = options(e, "/srv/data", "198.51.100.1")
    assert o == ExportOptions()
    assert options(e, "/srv/with space", "192.0.2.5").fsid == "7"
    assert e.find("/srv/with space").export_id == 7
    assert options(e, "/srv/with space", "192.0.2.6") is None
    assert e.find("/srv/data/") is e.find("/srv/data")


def test_wildcard_names_use_the_reverse_lookup():
    e = parse("/srv *.lab.example(rw,all_squash,anonuid=1000,anongid=100)\n")
    o = options(e, "/srv", "192.0.2.20")
    assert o.all_squash and (o.anonuid, o.anongid) == (1000, 100) and not o.read_only
    assert options(e, "/srv", "192.0.2.21") is None
    assert options(e, "/srv", "192.0.2.99") is None  # no reverse name


def test_dash_defaults_apply_to_the_clients_after_them():
    e = parse("/srv -rw,insecure server1 dual(ro)\n")
    assert options(e, "/srv", "192.0.2.10") == ExportOptions(read_only=False, secure=False)
    assert options(e, "/srv", "2001:db8::11") == ExportOptions(read_only=True, secure=False)


@pytest.mark.parametrize("text,message", [
    ("/srv *(rw,bogus)\n", "exports:1: unknown export option 'bogus'"),
    ("\n\nsrv *(rw)\n", "exports:3: export path 'srv' is not absolute"),
    ("/srv *(rw\n", "exports:1: unbalanced parentheses"),
    ("/srv @group(rw)\n", "exports:1: netgroups"),
    ("/srv 300.1.2.3/8(rw)\n", "is not a network"),
    ("/srv nosuchhost(rw)\n", "exports:1: host 'nosuchhost' does not resolve"),
    ("/srv *(anonuid=x)\n", "anonuid needs a number"),
    ("/srv *(fsid=abcd-ef)\n", "fsid must be"),
    ("/srv *(sec=krb4)\n", "exports:1: unknown security flavour 'krb4' in sec=krb4"),
    ("/srv\n", "names no clients"),
    ("/srv *(rw)\n/srv/ 1.2.3.4(ro)\n", "exports:2: /srv is already exported on line 1"),
    ("/a *(fsid=3)\n/b *(fsid=3)\n", "exports:2: /b has the same fsid"),
    ('/srv "unterminated\n', "exports:1:"),
    ("/srv bad/host(rw)\n", "is not a network"),
])
def test_errors_name_file_and_line(text, message):
    with pytest.raises(ExportsError) as e:
        parse(text)
    assert message in str(e.value)


def test_describe():
    assert ExportOptions(read_only=False, secure=False, anonuid=5).describe() == "rw,sync,root_squash,insecure,anonuid=5"


# -- exportfs's checks --------------------------------------------------------------


def test_options_after_a_space_go_to_everyone_with_a_warning():
    """``/data 127.0.0.1 (rw)``: as in exportfs, 127.0.0.1 gets the defaults and ``(rw)`` goes to everyone, and
    that is said, with the file and line."""
    e = parse("\n/data 127.0.0.1 (rw)\n")
    assert options(e, "/data", "127.0.0.1").read_only
    assert not options(e, "/data", "198.51.100.7").read_only
    assert len(e.warnings) == 1 and e.warnings[0].startswith("exports:2: (rw) has no client before it"), e.warnings
    assert "everyone" in e.warnings[0]
    assert parse("/data 127.0.0.1(rw) *(ro)\n").warnings == []


def test_every_error_of_a_file_is_reported():
    with pytest.raises(ExportsError) as e:
        parse("/a *(rw,bogus)\nrelative *\n/b *(rw)\n/c host.invalid(rw) *(fsid=x)\n/b *(ro)\n")
    assert [line.split(":")[1] for line in e.value.errors] == ["1", "2", "4", "4", "5"], e.value.errors
    assert "bogus" in e.value.errors[0] and "already exported on line 3" in e.value.errors[4]
    assert str(e.value).count("\n") == 4


def test_a_client_named_twice_for_one_path_is_a_warning():
    e = parse("/srv 192.0.2.0/24(rw) 127.0.0.1(ro) 192.0.2.0/24(ro)\n")
    assert e.warnings == ["exports:1: client 192.0.2.0/24 is named twice for /srv: its first entry's options apply"]
    assert not options(e, "/srv", "192.0.2.9").read_only


def test_knfsd_options_subtree_check_mountpoint_crossmnt_and_nohide_are_taken():
    e = parse("/srv *(subtree_check) 192.0.2.1(no_subtree_check,mp) 192.0.2.2(mountpoint=/srv/disk)\n")
    assert options(e, "/srv", "198.51.100.1").subtree_check and not options(e, "/srv", "192.0.2.1").subtree_check
    assert len(e.warnings) == 1 and e.warnings[0].startswith("exports:1: subtree_check makes the file handles every "
                                                             "client of /srv holds stale after the server's reboot")
    assert parse("/srv *(no_subtree_check)\n").warnings == []
    assert options(e, "/srv", "198.51.100.1").mountpoint is None
    assert options(e, "/srv", "192.0.2.1").mountpoint == ""
    assert options(e, "/srv", "192.0.2.2").mountpoint == "/srv/disk"
    e = parse("/srv -crossmnt 192.0.2.1 192.0.2.2(nocrossmnt) 192.0.2.3(nohide) 192.0.2.4(nohide,hide)\n")
    got = {a: (options(e, "/srv", a).crossmnt, options(e, "/srv", a).nohide)
           for a in ("192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4")}
    assert got == {"192.0.2.1": (True, False), "192.0.2.2": (False, False), "192.0.2.3": (True, True),
                   "192.0.2.4": (True, False)}
    assert options(e, "/srv", "192.0.2.3").describe().endswith(",crossmnt,nohide")
    with pytest.raises(ExportsError, match="absolute path"):
        parse("/srv *(mp=disk)\n")


def test_a_crossed_filesystem_is_served_only_to_the_clients_whose_options_say_crossmnt():
    from dataclasses import replace

    e = parse("/srv 192.0.2.1(rw,crossmnt) 192.0.2.0/24(ro) *(ro,crossmnt)\n")
    crossed = replace(e.find("/srv"), path="/srv/disk", export_id=0x80000001, crossed_from="/srv")
    got = {a: crossed.options_for(a, lambda _: None) for a in ("192.0.2.1", "192.0.2.9", "198.51.100.1")}
    assert got["192.0.2.1"].crossmnt and not got["192.0.2.1"].read_only
    assert got["192.0.2.9"] is None  # the network's entry wins over "*", and it has no crossmnt
    assert got["198.51.100.1"].read_only


def test_exports_check_accepts_crossmnt_and_nohide(tmp_path, capsys):
    from nfsstack.cli import exports_check

    (tmp_path / "a" / "b").mkdir(parents=True)
    f = tmp_path / "exports"
    f.write_text(f"{tmp_path / 'a'} 127.0.0.1(rw,crossmnt)\n{tmp_path / 'a' / 'b'} 127.0.0.1(rw,nohide)\n")
    assert exports_check(str(f)) == 0
    out, err = capsys.readouterr()
    assert "error" not in err and "2 export(s), OK" in out, (out, err)
    assert "127.0.0.1(rw,sync,root_squash,secure,crossmnt)" in out and \
        "127.0.0.1(rw,sync,root_squash,secure,nohide)" in out, out


def test_the_shipped_exports_file_passes_the_check(capsys):
    from pathlib import Path

    from nfsstack.cli import exports_check

    shipped = Path(__file__).resolve().parents[2] / "etc" / "exports"
    assert exports_check(str(shipped)) == 0
    out, err = capsys.readouterr()
    assert "error" not in err and "2 export(s), OK" in out, (out, err)
    assert "\t192.168.0.0/16(rw,sync,root_squash,secure)" in out


def test_a_mountpoint_export_is_mounted_only_while_it_is_a_mount_point(tmp_path):
    """exports(5) ``mountpoint``: a disk that failed to mount leaves an empty directory; mountd refuses it."""
    import os

    from nfsstack.exports.handles import HandleCodec, kernel_handles_work
    from nfsstack.exports.table import ExportTable
    from nfsstack.mount.mountlist import MountList
    from nfsstack.mount.program import Mountd
    from nfsstack.rpc.message import decode_reply, encode_call
    from nfsstack.rpc.server import Dispatcher
    from nfsstack.xdr import Packer, Unpacker

    if not kernel_handles_work("/"):
        pytest.skip("needs root (open_by_handle_at)")
    (tmp_path / "disk").mkdir()
    exports = parse_exports(f"{tmp_path / 'disk'} 127.0.0.1(rw,mp) 127.0.0.2(rw)\n/ 127.0.0.1(ro,mountpoint)\n")
    table = ExportTable(exports, HandleCodec(b"k" * 32))
    dispatcher = Dispatcher([Mountd(table, MountList(str(tmp_path / "state")), LocalFilesystem(table, None).mount).program])

    def mnt(path, address):
        p = Packer()
        p.pack_string(path)
        reply = dispatcher.handle(encode_call(1, 100005, 3, 1) + p.getvalue(), "udp", (address, 700),
                                  ("127.0.0.1", 635))
        return Unpacker(reply, decode_reply(reply).offset).unpack_int()

    assert not os.path.ismount(tmp_path / "disk")
    assert mnt(str(tmp_path / "disk"), "127.0.0.1") == 2  # MNT3ERR_NOENT: not a mount point
    assert mnt(str(tmp_path / "disk"), "127.0.0.2") == 0  # that client's entry does not ask for one
    assert mnt("/", "127.0.0.1") == 0  # a mount point
    table.close()


# -- sec= ---------------------------------------------------------------------------


@pytest.mark.parametrize("sec, flavors", [
    ("sys", (1,)),
    ("krb5", (390003,)),
    ("krb5p:krb5i:krb5:sys", (390005, 390004, 390003, 1)),  # the order is the client's preference: kept
    ("sys:krb5p", (1, 390005)),
])
def test_sec_names_the_flavours_in_their_order(sec, flavors):
    """exports(5) ``sec=``: any subset of sys, krb5, krb5i, krb5p, in any order, as RPC flavour numbers (RFC 2623
    section 2.2.1); the default is sys."""
    e = parse(f"/srv 192.0.2.0/24(rw,sec={sec}) *(ro)\n")
    assert options(e, "/srv", "192.0.2.1").security == flavors
    assert options(e, "/srv", "198.51.100.1").security == (1,)  # another client's list: the default
    assert ExportOptions().security == (1,)


def test_sec_in_the_dash_defaults_and_a_clients_own_sec_replaces_it():
    e = parse("/srv -sec=krb5i:krb5,rw 192.0.2.1 192.0.2.2(sec=krb5p)\n")
    assert options(e, "/srv", "192.0.2.1").security == (390004, 390003)
    assert options(e, "/srv", "192.0.2.2").security == (390005,)
    assert not options(e, "/srv", "192.0.2.2").read_only  # the other defaults stay


def test_options_apply_to_every_flavour_whichever_side_of_sec_they_are():
    before = options(parse("/srv *(rw,no_root_squash,sec=krb5:sys)\n"), "/srv", "192.0.2.1")
    after = options(parse("/srv *(sec=krb5:sys,rw,no_root_squash)\n"), "/srv", "192.0.2.1")
    assert before == after and not after.read_only and not after.root_squash


@pytest.mark.parametrize("line, message", [
    ("/srv *(sec=krb5:ntlm)", "exports:1: unknown security flavour 'ntlm' in sec=krb5:ntlm"),
    ("/srv *(sec=)", "exports:1: unknown security flavour ''"),
    ("/srv *(sec=krb5::sys)", "exports:1: unknown security flavour ''"),
    ("/srv *(sec=KRB5)", "exports:1: unknown security flavour 'KRB5'"),
    ("/srv *(sec=krb5:sys:krb5)", "exports:1: security flavour 'krb5' is named twice"),
    ("/srv *(sec=krb5p,rw,sec=sys,ro)", "exports:1: sec= is given twice"),
    ("/srv -sec=unix *", "exports:1: unknown security flavour 'unix'"),
])
def test_bad_sec_names_the_line(line, message):
    with pytest.raises(ExportsError) as e:
        parse(line + "\n")
    assert message in str(e.value)


def test_describe_names_a_sec_other_than_the_default():
    assert "sec=" not in ExportOptions().describe()
    assert ExportOptions(security=(390005, 1)).describe().endswith(",sec=krb5p:sys")


@pytest.mark.parametrize("flavor, admitted", [(0, True), (1, True), (390003, False), (390005, False)])
def test_sys_admits_auth_sys_and_auth_none_only(flavor, admitted):
    assert ExportOptions().admits(flavor) is admitted


def test_each_kerberos_flavour_must_be_listed():
    """knfsd compares the call's pseudoflavour with each listed one: krb5p does not stand in for krb5."""
    krb5 = ExportOptions(security=(390003,))
    assert krb5.admits(390003) and not krb5.admits(390004) and not krb5.admits(390005)
    assert not krb5.admits(1) and not krb5.admits(0)
