"""The admission policy (nfsstack.exports.policy): client match, secure port, squashing, wildcard names.

mountd, nfsd and nlockmgr all ask :class:`Admission`; these tests ask it directly, with no program, no
kernel handle and no reactor (the reverse lookup runs synchronously here).
"""

from types import SimpleNamespace

import pytest
from twisted.internet import defer

from nfsstack.exports import ANON_ID, parse_exports
from nfsstack.exports import names as names_module
from nfsstack.exports.handles import HandleCodec
from nfsstack.exports.identity import ROOT, Identity
from nfsstack.exports.names import HostNames
from nfsstack.exports.policy import INSECURE_PORT, NOT_ADMITTED, Admission, Admitted, Refused
from nfsstack.exports.table import ExportTable
from nfsstack.rpc.message import AUTH_NULL, CallHeader, Credential


def sys_call(cred: Credential | None) -> CallHeader:
    """The header of an NFS call with this AUTH_SYS credential (None: AUTH_NONE), as the dispatcher decodes it."""
    return CallHeader(1, 100003, 3, 1, cred.to_auth() if cred is not None else AUTH_NULL, credential=cred)


USER = sys_call(Credential(1000, 100, (100, 0, 27)))
ROOT_CRED = sys_call(Credential(0, 0, (0, 4)))


def admission(text: str, names: dict | None = None, ttl: float = 300.0) -> tuple[Admission, ExportTable, list]:
    """An Admission over ``text`` (an exports file); ``names``: what reverse lookups answer; the list: the
    addresses looked up."""
    asked: list[str] = []

    def lookup(address):
        asked.append(address)
        return (names or {}).get(address)

    table = ExportTable(parse_exports(text, "exports", resolve=lambda h: []), HandleCodec(b"k" * 32),
                        HostNames(ttl, lookup=lookup))
    return Admission(table), table, asked


@pytest.fixture(autouse=True)
def lookups_without_threads(monkeypatch):
    """HostNames looks names up in a thread; here at once, so a test needs no reactor."""
    monkeypatch.setattr(names_module, "threads",
                        SimpleNamespace(deferToThread=lambda f, *a: defer.maybeDeferred(f, *a)))


# -- which client, from which port ------------------------------------------------------


def test_the_most_specific_matching_client_specification_gives_the_options():
    policy, table, _ = admission("/srv 192.0.2.0/24(rw,insecure) 192.0.2.7(ro,insecure) 2001:db8::/32(rw)\n")
    srv = table.exports.find("/srv")
    net = policy.admit(srv, "192.0.2.9", False, USER)
    host = policy.admit(srv, "192.0.2.7", False, USER)
    mapped = policy.admit(srv, "::ffff:192.0.2.9", False, USER)  # an IPv4 client on an IPv6 socket
    v6 = policy.admit(srv, "2001:db8::1", True, USER)
    assert isinstance(net, Admitted) and not net.options.read_only
    assert isinstance(host, Admitted) and host.options.read_only  # a host beats a network
    assert isinstance(mapped, Admitted) and not mapped.options.read_only
    assert isinstance(v6, Admitted)


@pytest.mark.parametrize("address", ["198.51.100.1", "192.0.3.1", "2001:db9::1", "not an address"])
def test_a_client_no_specification_matches_is_not_admitted(address):
    policy, table, _ = admission("/srv 192.0.2.0/24(rw) 2001:db8::/32(rw)\n")
    verdict = policy.admit(table.exports.find("/srv"), address, True, USER)
    assert verdict is NOT_ADMITTED
    assert isinstance(verdict, Refused) and verdict.status == "ACCES"


@pytest.mark.parametrize("line, privileged, admitted", [
    ("/srv *(rw)", True, True),
    ("/srv *(rw)", False, False),  # secure is the default
    ("/srv *(rw,secure)", False, False),
    ("/srv *(rw,insecure)", False, True),
    ("/srv 192.0.2.0/24(rw,insecure) *(rw)", False, True),  # the options of the matching specification
    ("/srv 198.51.100.0/24(rw,insecure) *(rw)", False, False),
])
def test_a_secure_export_admits_privileged_ports_only(line, privileged, admitted):
    policy, table, _ = admission(line + "\n")
    verdict = policy.admit(table.exports.find("/srv"), "192.0.2.9", privileged, USER)
    if admitted:
        assert isinstance(verdict, Admitted)
    else:
        assert verdict is INSECURE_PORT and verdict.status == "PERM"
        assert verdict.reason == "call from an unprivileged port to a secure export"


# -- as whom ----------------------------------------------------------------------------


@pytest.mark.parametrize("options, cred, identity", [
    ("rw", USER.credential, Identity(1000, 100, (100, 27))),  # root_squash drops group 0 from anyone's groups
    ("rw", ROOT_CRED.credential, Identity(ANON_ID, ANON_ID, (4,))),
    ("rw,anonuid=70,anongid=71", ROOT_CRED.credential, Identity(70, 71, (4,))),
    ("rw,no_root_squash", ROOT_CRED.credential, ROOT),
    ("rw,no_root_squash", USER.credential, Identity(1000, 100, (100, 0, 27))),
    ("rw,all_squash", USER.credential, Identity(ANON_ID, ANON_ID, ())),
    ("rw,all_squash,anonuid=5,anongid=6", ROOT_CRED.credential, Identity(5, 6, ())),
    ("rw,no_root_squash", None, Identity(ANON_ID, ANON_ID, ())),  # AUTH_NONE: the anonymous ids
])
def test_the_identity_is_the_credential_squashed_by_the_clients_options(options, cred, identity):
    policy, table, _ = admission(f"/srv *({options})\n")
    verdict = policy.admit(table.exports.find("/srv"), "192.0.2.9", True, sys_call(cred))
    assert isinstance(verdict, Admitted)
    assert verdict.identity == identity


def test_squashing_follows_the_matching_specification():
    policy, table, _ = admission("/srv 192.0.2.0/24(rw,no_root_squash) *(rw,all_squash)\n")
    srv = table.exports.find("/srv")
    assert policy.admit(srv, "192.0.2.9", True, ROOT_CRED).identity is ROOT
    assert policy.admit(srv, "198.51.100.1", True, ROOT_CRED).identity == Identity(ANON_ID, ANON_ID, ())


# -- the fast path: no Deferred, the same verdict -----------------------------------------


def test_without_wildcards_no_name_is_looked_up_and_the_verdict_is_kept():
    policy, table, asked = admission("/srv 192.0.2.0/24(rw) 198.51.100.0/24(ro)\n")
    srv = table.exports.find("/srv")
    assert policy.lookup("192.0.2.9") is None
    first = policy.admit(srv, "192.0.2.9", True, USER)
    assert policy.admit(srv, "192.0.2.9", True, USER) is first  # nfsd asks on every call: nothing new is made
    assert policy.admit(srv, "192.0.2.9", True, ROOT_CRED) is not first
    # The same client and credential from an unprivileged port: that verdict is not the one kept.
    assert policy.admit(srv, "192.0.2.9", False, USER) is INSECURE_PORT
    assert policy.admit(srv, "192.0.2.9", True, USER) is first
    assert asked == []


# -- wildcards: the name first ----------------------------------------------------------


def test_a_wildcard_specification_needs_the_clients_name_looked_up_first():
    policy, table, asked = admission("/srv *.lab.example(rw) 192.0.2.0/24(ro)\n",
                                     {"198.51.100.5": "ws1.LAB.example", "198.51.100.6": "ws2.other.example"})
    srv = table.exports.find("/srv")
    # Not yet looked up: refused, as no specification is known to match; lookup says there is a name to get.
    assert policy.admit(srv, "198.51.100.5", True, USER) is NOT_ADMITTED
    named = policy.lookup("198.51.100.5")
    assert isinstance(named, defer.Deferred)
    assert asked == ["198.51.100.5"]
    assert named.result == "ws1.LAB.example"
    # Looked up: no more lookups, and the wildcard (matched case-insensitively) admits it.
    assert policy.lookup("198.51.100.5") is None
    verdict = policy.admit(srv, "198.51.100.5", True, USER)
    assert isinstance(verdict, Admitted) and not verdict.options.read_only
    # A name the wildcard does not match is still refused once known.
    policy.lookup("198.51.100.6")
    assert policy.admit(srv, "198.51.100.6", True, USER) is NOT_ADMITTED
    # An address a more specific kind matches wins over the wildcard, name or not.
    policy.lookup("192.0.2.9")
    assert policy.admit(srv, "192.0.2.9", True, USER).options.read_only
    assert asked == ["198.51.100.5", "198.51.100.6", "192.0.2.9"]


def test_a_client_without_a_name_is_not_admitted_by_a_wildcard():
    policy, table, _ = admission("/srv *.lab.example(rw,insecure)\n", {})
    policy.lookup("198.51.100.5")
    assert policy.lookup("198.51.100.5") is None  # a failed lookup is kept too: not asked on every call
    assert policy.admit(table.exports.find("/srv"), "198.51.100.5", False, USER) is NOT_ADMITTED


def test_a_reloaded_exports_file_is_decided_again():
    policy, table, _ = admission("/srv 192.0.2.0/24(rw,no_root_squash)\n")
    before = policy.admit(table.exports.find("/srv"), "192.0.2.9", False, ROOT_CRED)
    assert before is INSECURE_PORT
    table.reload(parse_exports("/srv 192.0.2.0/24(ro,insecure)\n", "exports", resolve=lambda h: []))
    after = policy.admit(table.exports.find("/srv"), "192.0.2.9", False, ROOT_CRED)
    assert isinstance(after, Admitted) and after.options.read_only and after.identity.uid == ANON_ID


def test_a_verdict_by_name_follows_the_name():
    """A wildcard client's verdict is kept while its name is the same, and decided again when a new lookup (after
    the cache's time to live) gives another name."""
    names = {"198.51.100.5": "ws1.lab.example"}
    policy, table, asked = admission("/srv *.lab.example(rw)\n", names, ttl=0.0)
    srv = table.exports.find("/srv")
    policy.lookup("198.51.100.5")
    first = policy.admit(srv, "198.51.100.5", True, USER)
    assert isinstance(first, Admitted) and policy.admit(srv, "198.51.100.5", True, USER) is first
    names["198.51.100.5"] = "ws1.elsewhere.example"
    assert isinstance(policy.lookup("198.51.100.5"), defer.Deferred)  # stale at once: looked up again
    assert policy.admit(srv, "198.51.100.5", True, USER) is NOT_ADMITTED
    names["198.51.100.5"] = "ws2.lab.example"
    policy.lookup("198.51.100.5")
    assert isinstance(policy.admit(srv, "198.51.100.5", True, USER), Admitted)
    assert asked == ["198.51.100.5"] * 3
