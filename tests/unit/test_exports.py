"""exports(5) parsing and client matching."""

import pytest

from nfsstack.exports import ANON_ID, ExportOptions, ExportsError, parse_exports

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
    ("/srv *(sec=krb5)\n", "only sec=sys"),
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
