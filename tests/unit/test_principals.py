"""Kerberos principals as local users (nfsstack.exports.identity.Principals, caller_identity) and the sec= check
of the admission policy (nfsstack.exports.policy): RPCSEC_GSS calls built here with their principal and
pseudoflavour set, as the RPCSEC_GSS engine hands them to the programs."""

import errno
import os
import pwd

import pytest

from nfsstack.exports import ANON_ID, parse_exports
from nfsstack.exports.handles import HandleCodec
from twisted.internet import task

from nfsstack.exports.identity import ROOT, Identity, Principals, caller_identity, krb5_default_realm
from nfsstack.exports.names import HostNames
from nfsstack.exports.policy import INSECURE_PORT, Admission, Admitted, Refused, wrong_security
from nfsstack.exports.file import ExportOptions
from nfsstack.exports.table import ExportTable
from nfsstack.rpc.message import AUTH_NULL, AuthFlavor, CallHeader, Credential, OpaqueAuth, Pseudoflavor

ANON = Identity(ANON_ID, ANON_ID, ())


def local_user() -> pwd.struct_passwd:
    """A user of this machine's name service other than root, preferring one with supplementary groups."""
    users = [u for u in pwd.getpwall() if u.pw_uid != 0 and u.pw_gid != 0 and "@" not in u.pw_name
             and "/" not in u.pw_name]
    users.sort(key=lambda u: -len(os.getgrouplist(u.pw_name, u.pw_gid)))
    assert users, "no local user besides root"
    return users[0]


def gss_call(principal, flavor=Pseudoflavor.KRB5) -> CallHeader:
    """An RPCSEC_GSS call whose context is established: what the engine gives nfsd (no AUTH_SYS credential)."""
    return CallHeader(1, 100003, 3, 1, OpaqueAuth(AuthFlavor.RPCSEC_GSS, b"ctx"), principal=principal,
                      pseudoflavor=int(flavor))


def sys_call(cred) -> CallHeader:
    return CallHeader(1, 100003, 3, 1, cred.to_auth() if cred is not None else AUTH_NULL, credential=cred)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- principal -> local user --------------------------------------------------------------


def test_a_users_principal_is_the_local_user_with_all_its_groups():
    user = local_user()
    who = caller_identity(gss_call(f"{user.pw_name}@EXAMPLE.TEST"), ExportOptions(), Principals())
    groups = tuple(os.getgrouplist(user.pw_name, user.pw_gid))
    assert who == Identity(user.pw_uid, user.pw_gid, groups)


@pytest.mark.parametrize("principal", [
    "no-such-user-k2@EXAMPLE.TEST",
    "alice/admin@EXAMPLE.TEST",   # an instance other than a machine's: not a user
    "nfs/@EXAMPLE.TEST",          # no host
    "@EXAMPLE.TEST",
    None,                         # a GSS call without a principal: nobody
])
def test_what_is_no_local_user_is_the_anonymous_user(principal):
    options = ExportOptions(anonuid=70, anongid=71, root_squash=False)
    assert caller_identity(gss_call(principal), options, Principals()) == Identity(70, 71, ())


@pytest.mark.parametrize("service", ["nfs", "host", "root"])
def test_a_machine_principal_is_root_squashed_unless_no_root_squash(service):
    principals = Principals()
    call = gss_call(f"{service}/client.example.test@EXAMPLE.TEST")
    assert caller_identity(call, ExportOptions(), principals) == ANON  # root_squash, the default
    assert caller_identity(call, ExportOptions(anonuid=5, anongid=6), principals) == Identity(5, 6, ())
    assert caller_identity(call, ExportOptions(root_squash=False), principals) is ROOT
    assert caller_identity(call, ExportOptions(root_squash=False, all_squash=True), principals) == ANON


def test_all_squash_squashes_every_principal_and_root_at_realm_is_root():
    user = local_user()
    principals = Principals()
    assert caller_identity(gss_call(f"{user.pw_name}@R"), ExportOptions(all_squash=True), principals) == ANON
    # root@REALM is the local root (a user principal), squashed by root_squash as AUTH_SYS root is.
    assert caller_identity(gss_call("root@R"), ExportOptions(), principals) == ANON
    assert caller_identity(gss_call("root@R"), ExportOptions(root_squash=False), principals) is ROOT


def test_only_the_accepted_realms_map_to_local_users():
    user = local_user()
    principals = Principals(realms={"EXAMPLE.TEST"})
    options = ExportOptions(root_squash=False)
    assert caller_identity(gss_call(f"{user.pw_name}@EXAMPLE.TEST"), options, principals).uid == user.pw_uid
    assert caller_identity(gss_call(f"{user.pw_name}@OTHER.TEST"), options, principals) == ANON
    assert caller_identity(gss_call("nfs/client@OTHER.TEST"), options, principals) == ANON
    assert caller_identity(gss_call("nfs/client@EXAMPLE.TEST"), options, principals) is ROOT


def test_a_lookup_is_kept_for_its_lifetime_then_done_again():
    asked = []
    entry = pwd.struct_passwd(("alice", "x", 1500, 1500, "", "/", "/bin/sh"))

    def getpwnam(name):
        asked.append(name)
        if name != "alice":
            raise KeyError(name)
        return entry

    clock = Clock()
    principals = Principals(clock=clock, lifetime=60.0, getpwnam=getpwnam, getgrouplist=lambda n, g: [g, 27])
    options = ExportOptions()
    for _ in range(100):
        assert caller_identity(gss_call("alice@R"), options, principals) == Identity(1500, 1500, (1500, 27))
        assert caller_identity(gss_call("bob@R"), options, principals) == ANON  # a miss is kept too
    assert asked == ["alice", "bob"]
    clock.now += 59.9
    caller_identity(gss_call("alice@R"), options, principals)
    assert asked == ["alice", "bob"]
    clock.now += 0.2
    caller_identity(gss_call("alice@R"), options, principals)
    assert asked == ["alice", "bob", "alice"]


class Threads:
    """``in_thread`` for Principals: records each function given to "a thread" and runs it when told."""

    def __init__(self) -> None:
        self.queued = []

    def __call__(self, f, *args):
        from twisted.internet import defer

        d = defer.Deferred()
        self.queued.append((f, args, d))
        return d

    def run(self) -> None:
        queued, self.queued = self.queued, []
        for f, args, d in queued:
            d.callback(f(*args))


def test_with_threads_a_principal_is_looked_up_when_its_context_is_made_and_again_without_holding_calls():
    """A slow directory server never holds up the reactor's thread: the lookup runs in a thread when the
    context is made (prefetch), the calls find it known, and once it is old, calls get the old answer while a
    thread looks it up again (once, however many calls ask meanwhile)."""
    asked = []
    groups = {"alice": [1500]}

    def getpwnam(name):
        asked.append(name)
        return pwd.struct_passwd((name, "x", 1500, 1500, "", "/", "/bin/sh"))

    clock = Clock()
    threads = Threads()
    principals = Principals(clock=clock, lifetime=60.0, getpwnam=getpwnam,
                            getgrouplist=lambda n, g: list(groups[n]))
    principals.look_up_in_threads(threads, task.Clock().callLater)
    options = ExportOptions()
    made = principals.prefetch("alice@R")
    fired = []
    made.addCallback(fired.append)
    assert asked == [] and not fired  # not inline: queued for a thread
    assert principals.prefetch("alice@R") is not None and len(threads.queued) == 1  # one lookup at a time
    threads.run()
    assert asked == ["alice"] and fired == [None]
    assert principals.prefetch("alice@R") is None  # known: nothing to wait for
    for _ in range(10):
        assert caller_identity(gss_call("alice@R"), options, principals) == Identity(1500, 1500, (1500,))
    assert asked == ["alice"]
    groups["alice"] = [1500, 27]  # added to a group
    clock.now += 61
    for _ in range(10):  # the old answer, at once; one lookup queued
        assert caller_identity(gss_call("alice@R"), options, principals) == Identity(1500, 1500, (1500,))
    assert asked == ["alice"] and len(threads.queued) == 1
    threads.run()
    assert caller_identity(gss_call("alice@R"), options, principals) == Identity(1500, 1500, (1500, 27))
    assert asked == ["alice", "alice"] and not threads.queued


def test_lookups_in_threads_start_only_from_the_reactors_thread_and_never_hang():
    """A call in one of nfsd's pool threads (a large READ) looks up inline; an ``in_thread`` that answers at once
    leaves nothing to wait for; one that raises leaves the lookup inline; creations waiting are bounded."""
    import threading

    from twisted.internet import defer

    from nfsstack.exports.identity import MAX_WAITING

    asked = []

    def getpwnam(name):
        asked.append((name, threading.current_thread().name))
        return pwd.struct_passwd((name, "x", 1600, 1600, "", "/", "/bin/sh"))

    clock = Clock()
    threads = Threads()
    principals = Principals(clock=clock, getpwnam=getpwnam, getgrouplist=lambda n, g: [g])
    principals.look_up_in_threads(threads, task.Clock().callLater)
    principals.prefetch("dave@R")
    threads.run()
    assert asked == [("dave", "MainThread")]
    clock.now += 61  # old: a pool thread asking now looks up inline, starting nothing on the reactor's behalf
    seen = []
    pool = threading.Thread(target=lambda: seen.append(principals.user("dave@R")), name="nfsd-pool-0")
    pool.start()
    pool.join()
    assert seen == [(Identity(1600, 1600, (1600,)), clock.now + 60.0)]
    assert asked[1:] == [("dave", "nfsd-pool-0")] and not threads.queued and not principals._looking

    at_once = Principals(clock=clock, getpwnam=getpwnam, getgrouplist=lambda n, g: [g])
    at_once.look_up_in_threads(lambda f, *a: defer.succeed(f(*a)), task.Clock().callLater)
    assert at_once.prefetch("erin@R") is None and at_once.user("erin@R")[0].uid == 1600
    assert not at_once._looking

    broken = Principals(clock=clock, getpwnam=getpwnam, getgrouplist=lambda n, g: [g])
    broken.look_up_in_threads(lambda f, *a: 1 / 0, task.Clock().callLater)
    assert broken.prefetch("fay@R") is None and broken.user("fay@R")[0].uid == 1600

    waiting = [principals.prefetch("gus@R") for _ in range(MAX_WAITING + 5)]
    assert sum(w is not None for w in waiting) == MAX_WAITING and len(threads.queued) == 1
    fired = []
    for w in waiting[:MAX_WAITING]:
        w.addCallback(fired.append)
    threads.run()
    assert len(fired) == MAX_WAITING and not principals._looking


def test_without_threads_prefetch_waits_for_nothing_and_calls_look_up_inline():
    principals = Principals(getpwnam=lambda n: pwd.struct_passwd((n, "x", 7, 7, "", "/", "/bin/sh")),
                            getgrouplist=lambda n, g: [g])
    assert principals.prefetch("carol@R") is None
    assert principals.user("carol@R")[0] == Identity(7, 7, (7,))


def test_the_cache_is_bounded_and_a_full_one_keeps_the_principals_of_the_last_minutes():
    """A full cache drops the expired answers first, then the older half; never all of them, which would make
    every Kerberos client at work wait for a new lookup at once."""
    asked = []

    def getpwnam(name):
        asked.append(name)
        raise KeyError(name)

    clock = Clock()
    principals = Principals(size=8, clock=clock, lifetime=60.0, getpwnam=getpwnam)
    for i in range(100):
        principals.user(f"u{i}@R")
        assert min(i + 1, 5) <= len(principals._users) <= 8  # never emptied: the newer half stays
    assert {f"u{i}@R" for i in range(96, 100)} <= set(principals._users)
    asked.clear()
    principals.user("u99@R")
    assert asked == []
    old = sorted(principals._users)
    clock.now += 30
    for name in ("a@R", "b@R", "c@R", "d@R"):  # fill it again, nothing expired yet
        principals.user(name)
    clock.now += 45  # the first ones' answers (75 s old) expired; the four new ones (45 s) have not
    principals.user("e@R")
    principals.user("f@R")
    kept = set(principals._users)
    assert {"a@R", "b@R", "c@R", "d@R", "e@R", "f@R"} <= kept and not kept & set(old)

    # Expired answers go first: two expired and six fresh, one more kept: the six fresh stay (the older half
    # alone would drop two of them).
    principals = Principals(size=8, clock=clock, lifetime=60.0, getpwnam=getpwnam)
    principals.user("old1@R")
    principals.user("old2@R")
    clock.now += 61
    fresh = [f"new{i}@R" for i in range(6)]
    for name in fresh:
        principals.user(name)
    principals.user("one-more@R")
    assert set(principals._users) == {*fresh, "one-more@R"}


def test_an_auth_sys_call_keeps_its_credential():
    options = ExportOptions()
    assert caller_identity(sys_call(Credential(1000, 100, (100, 0))), options) == Identity(1000, 100, (100,))
    assert caller_identity(sys_call(None), options) == ANON


def test_krb5_default_realm_is_read_from_krb5_conf(tmp_path):
    conf = tmp_path / "krb5.conf"
    conf.write_text("# comment\n[realms]\n default_realm = NOT.THIS\n[libdefaults]\n\tdns_lookup_kdc = false\n"
                    "\tdefault_realm = EXAMPLE.TEST   # the local one\n")
    assert krb5_default_realm(str(conf)) == "EXAMPLE.TEST"
    assert krb5_default_realm(str(tmp_path / "missing")) is None


def test_idmapd_confs_local_realms_are_read_as_libnfsidmap_reads_them(tmp_path):
    from nfsstack.exports.identity import idmapd_local_realms

    conf = tmp_path / "idmapd.conf"
    conf.write_text("[Mapping]\nLocal-Realms = NOT.THIS\n[general]\nVerbosity = 0\n"
                    "local-realms = OUR.REALM, PARTNER.REALM ,  # both\n")
    assert idmapd_local_realms(str(conf)) == {"OUR.REALM", "PARTNER.REALM"}
    conf.write_text("[General]\n# Local-Realms = COMMENTED.OUT\nDomain = example.org\n")
    assert idmapd_local_realms(str(conf)) is None
    assert idmapd_local_realms(str(tmp_path / "missing")) is None


def test_the_local_realms_are_the_options_else_idmapd_confs_else_krb5_confs_default(tmp_path, monkeypatch):
    """--local-realms names them; without it idmapd.conf's Local-Realms (which replaces the default realm, as in
    libnfsidmap); without that krb5.conf's default_realm.  A realm listed maps its users to local users, a
    realm not listed (the default realm too, once others are named) to the anonymous user."""
    from nfsstack.exports.identity import local_realms

    (tmp_path / "krb5.conf").write_text("[libdefaults]\n  default_realm = OUR.REALM\n")
    monkeypatch.setenv("KRB5_CONFIG", str(tmp_path / "krb5.conf"))
    idmapd = tmp_path / "idmapd.conf"
    monkeypatch.setattr("nfsstack.exports.identity.IDMAPD_CONF", str(idmapd))
    assert local_realms() == {"OUR.REALM"}
    idmapd.write_text("[General]\nLocal-Realms = PARTNER.REALM,OUR.REALM\n")
    assert local_realms() == {"OUR.REALM", "PARTNER.REALM"}
    assert local_realms("PARTNER.REALM") == {"PARTNER.REALM"}
    assert local_realms("") == frozenset()  # named, and none: every principal the anonymous user
    here = Principals(realms=local_realms("PARTNER.REALM"), getpwnam=lambda name: pwd.struct_passwd(
        (name, "x", 1000, 1000, "", "/", "/bin/sh")), getgrouplist=lambda name, gid: [gid])
    assert here.user("alice@PARTNER.REALM")[0].uid == 1000
    assert here.user("alice@OUR.REALM")[0] is None


# -- sec= at admission --------------------------------------------------------------------


def admission(text: str, **kwargs) -> tuple[Admission, ExportTable]:
    table = ExportTable(parse_exports(text, "exports", resolve=lambda h: []), HandleCodec(b"k" * 32),
                        HostNames(300.0, lookup=lambda a: None))
    return Admission(table, **kwargs), table


USER = sys_call(Credential(1000, 100, (100,)))


def test_a_call_in_a_flavour_sec_does_not_list_is_refused_with_acces():
    """knfsd: nfserr_wrongsec, which NFSv3 answers as NFS3ERR_ACCES (nfsd3_map_status)."""
    policy, table = admission("/krb *(rw,sec=krb5) \n/sys *(rw)\n/both *(rw,sec=krb5p:sys)\n")
    krb, sys_, both = (table.exports.find(p) for p in ("/krb", "/sys", "/both"))
    refused = policy.admit(krb, "192.0.2.9", True, USER)
    assert refused is wrong_security(1) and isinstance(refused, Refused) and refused.status == "ACCES"
    assert refused.reason == "a call with AUTH_SYS, which the export's sec= does not list"
    assert wrong_security(390004).reason == "a call with krb5i, which the export's sec= does not list"
    assert policy.admit(krb, "192.0.2.9", True, sys_call(None)).status == "ACCES"  # AUTH_NONE too
    assert isinstance(policy.admit(sys_, "192.0.2.9", True, USER), Admitted)
    assert isinstance(policy.admit(sys_, "192.0.2.9", True, sys_call(None)), Admitted)
    assert isinstance(policy.admit(krb, "192.0.2.9", True, gss_call("nfs/c@R")), Admitted)
    assert policy.admit(krb, "192.0.2.9", True, gss_call("nfs/c@R", Pseudoflavor.KRB5I)).status == "ACCES"
    assert policy.admit(sys_, "192.0.2.9", True, gss_call("nfs/c@R")).status == "ACCES"
    assert isinstance(policy.admit(both, "192.0.2.9", True, USER), Admitted)
    assert isinstance(policy.admit(both, "192.0.2.9", True, gss_call("nfs/c@R", Pseudoflavor.KRB5P)), Admitted)
    assert policy.admit(both, "192.0.2.9", True, gss_call("nfs/c@R", Pseudoflavor.KRB5)).status == "ACCES"


def test_mountd_and_nlockmgr_do_not_check_the_flavour():
    policy, table = admission("/krb *(rw,sec=krb5)\n", check_security=False)
    verdict = policy.admit(table.exports.find("/krb"), "192.0.2.9", True, USER)
    assert isinstance(verdict, Admitted) and verdict.options.security == (390003,)


def test_a_kerberos_call_needs_no_privileged_port():
    """knfsd's nfsd_originating_port_ok: the secure option concerns AUTH_SYS, whose ids only a port vouches for."""
    policy, table = admission("/krb *(rw,sec=krb5:sys)\n")
    krb = table.exports.find("/krb")
    assert isinstance(policy.admit(krb, "192.0.2.9", False, gss_call("nfs/c@R")), Admitted)
    assert policy.admit(krb, "192.0.2.9", False, USER) is INSECURE_PORT


def test_a_kerberos_verdict_is_kept_while_its_lookup_holds():
    asked = []
    entry = pwd.struct_passwd(("alice", "x", 1500, 1500, "", "/", "/bin/sh"))
    clock = Clock()
    principals = Principals(clock=clock, getpwnam=lambda n: asked.append(n) or entry,
                            getgrouplist=lambda n, g: [g])
    policy, table = admission("/krb *(rw,sec=krb5)\n", principals=principals)
    krb = table.exports.find("/krb")
    first = policy.admit(krb, "192.0.2.9", True, gss_call("alice@R"))
    assert isinstance(first, Admitted) and first.identity == Identity(1500, 1500, (1500,))
    # A new header each call, as decoded: the same verdict, no lookup, no new object.
    assert all(policy.admit(krb, "192.0.2.9", True, gss_call("alice@R")) is first for _ in range(10))
    other = policy.admit(krb, "192.0.2.9", True, gss_call("bob@R"))
    assert other is not first and other.identity == first.identity  # bob's lookup answered alice's entry
    assert asked == ["alice", "bob"]
    clock.now += 61
    again = policy.admit(krb, "192.0.2.9", True, gss_call("alice@R"))
    assert again is not first and again == first and asked == ["alice", "bob", "alice"]


def test_the_servers_principals_are_those_of_krb5_confs_default_realm_only(tmp_path, monkeypatch):
    """krb5's default auth_to_local: alice@OUR.REALM is alice; alice@TRUSTING.REALM (cross-realm) is not; with
    no default realm in krb5.conf nobody is a local user (fail closed, not every realm)."""
    from nfsstack.exports.identity import local_realms

    conf = tmp_path / "krb5.conf"
    conf.write_text("[libdefaults]\n  default_realm = OUR.REALM\n")
    monkeypatch.setenv("KRB5_CONFIG", str(conf))
    monkeypatch.setattr("nfsstack.exports.identity.IDMAPD_CONF", str(tmp_path / "no-idmapd.conf"))
    assert local_realms() == {"OUR.REALM"}
    here = Principals(realms=local_realms(), getpwnam=lambda name: pwd.struct_passwd(
        (name, "x", 1000, 1000, "", "/", "/bin/sh")), getgrouplist=lambda name, gid: [gid])
    assert here.user("alice@OUR.REALM")[0].uid == 1000
    assert here.user("alice@TRUSTING.REALM")[0] is None
    monkeypatch.setenv("KRB5_CONFIG", str(tmp_path / "none.conf"))
    assert local_realms() == frozenset()
    assert Principals(realms=local_realms()).user("root@OUR.REALM")[0] is None


def test_a_principal_not_known_is_never_looked_up_on_the_reactors_thread_and_waits_are_bounded():
    """A name service that does not answer: the creation of a context and the calls of a principal not known
    wait for its lookup in a thread at most WAIT_LIMIT seconds, then go on; the reactor's thread never asks
    the name service itself (a call whose principal is still not known gets LookupPending, EAGAIN)."""
    from twisted.internet import task

    from nfsstack.exports.identity import MAX_WAITING, WAIT_LIMIT, LookupPending

    asked = []

    def getpwnam(name):
        asked.append(name)
        return pwd.struct_passwd((name, "x", 1700, 1700, "", "/", "/bin/sh"))

    timers = task.Clock()
    threads = Threads()  # never run until told: a name service that hangs
    principals = Principals(clock=Clock(), getpwnam=getpwnam, getgrouplist=lambda n, g: [g])
    principals.look_up_in_threads(threads, call_later=timers.callLater)
    made = principals.prefetch("hank@R")  # the context's creation waits
    call = principals.pending("hank@R")  # and so does a call
    fired = []
    made.addCallback(lambda _: fired.append("made"))
    call.addCallback(lambda _: fired.append("call"))
    assert len(threads.queued) == 1 and not fired
    with pytest.raises(LookupPending) as raised:
        caller_identity(gss_call("hank@R"), ExportOptions(), principals)
    assert raised.value.errno == errno.EAGAIN
    timers.advance(WAIT_LIMIT - 0.1)
    assert not fired
    timers.advance(0.1)
    assert fired == ["made", "call"] and asked == []  # they went on; nobody asked on this thread
    with pytest.raises(LookupPending):
        principals.user("hank@R")
    waiting = [principals.pending("hank@R") for _ in range(MAX_WAITING + 3)]
    assert sum(w is not None for w in waiting) == MAX_WAITING and len(threads.queued) == 1
    threads.run()  # the name service answers at last
    assert asked == ["hank"] and all(w.called for w in waiting if w is not None)
    assert principals.pending("hank@R") is None
    assert caller_identity(gss_call("hank@R"), ExportOptions(), principals) == Identity(1700, 1700, (1700,))
    assert not timers.getDelayedCalls()  # the waits' timers went with them


def test_nfsd_answers_jukebox_while_a_principal_is_looked_up_and_waits_for_it_first(tmp_path):
    """nfsd's frame waits for the principal's lookup before admitting a Kerberos call, and answers
    NFS3ERR_JUKEBOX (the client tries again) if the name service has not answered within WAIT_LIMIT."""
    from twisted.internet import task

    from nfsstack.exports.identity import WAIT_LIMIT
    from nfsstack.nfs3.codec import Stat
    from nfsstack.nfs3.local.filesystem import LocalFilesystem
    from nfsstack.nfs3.program import Nfsd
    from nfsstack.rpc.program import CallContext
    from nfsstack.rpc.server import joined
    from nfsstack.xdr import Packer, Unpacker
    from twisted.internet import defer

    (tmp_path / "krb").mkdir()
    table = ExportTable(parse_exports(f"{tmp_path / 'krb'} *(rw,sec=krb5)\n", "exports", resolve=lambda h: []),
                        HandleCodec(b"k" * 32), HostNames(300.0, lookup=lambda a: None))
    in_thread = lambda f, *a: defer.maybeDeferred(f, *a)  # noqa: E731
    nfsd = Nfsd(table, LocalFilesystem(table, in_thread), in_thread=in_thread)
    timers, threads = task.Clock(), Threads()
    principals = Principals(clock=Clock(), getpwnam=lambda n: pwd.struct_passwd((n, "x", 0, 0, "", "/", "/")),
                            getgrouplist=lambda n, g: [g])
    principals.look_up_in_threads(threads, call_later=timers.callLater)
    nfsd.admission.principals = principals
    export = next(iter(table.exports))
    fd = os.open(export.path, os.O_RDONLY)
    root = table.handle(export, fd)
    os.close(fd)
    getattr3 = nfsd.program.versions[3][1]
    p = Packer()
    p.pack_opaque(root)
    args = getattr3.decode(Unpacker(b"".join(p.parts())))
    ctx = CallContext(gss_call("ivy@R"), "tcp", ("127.0.0.1", 900), ("127.0.0.1", 2049))

    def status(reply) -> int:
        return int.from_bytes(joined(reply)[:4], "big")

    try:
        replies = []
        waited = getattr3.handler(ctx, args)
        assert isinstance(waited, defer.Deferred) and len(threads.queued) == 1
        waited.addCallback(replies.append)
        timers.advance(WAIT_LIMIT)
        assert [status(r) for r in replies] == [Stat.JUKEBOX]
        again = getattr3.handler(ctx, args)  # still looked up: waits again
        threads.run()
        assert status(again.result) == Stat.OK  # looked up: admitted as its user
        assert status(getattr3.handler(ctx, args)) == Stat.OK  # known: nothing to wait for
    finally:
        nfsd.fs.files.close()
        nfsd.fs.lister.listings.close()
        table.close()


def test_a_lookup_that_fails_in_its_thread_gives_the_anonymous_user_for_its_lifetime_not_jukebox_for_ever():
    """A lookup's thread that raises (a bug: the name service's errors are caught) is logged, and the principal
    is the anonymous user until the answer's lifetime ends, as a name service's error makes it: its calls are
    not answered JUKEBOX (LookupPending) again and again while each starts a new lookup."""
    from twisted.internet import defer

    from nfsstack.exports.identity import UNKNOWN

    clock = Clock()
    started = []

    def failing(f, *args):
        started.append(args)
        return defer.fail(RuntimeError("bug"))

    principals = Principals(clock=clock, lifetime=60.0, getpwnam=lambda n: 1 / 0)
    principals.look_up_in_threads(failing, task.Clock().callLater)
    for _ in range(5):
        assert principals.user("hal@R")[0] is UNKNOWN
    assert len(started) == 1
    assert caller_identity(gss_call("hal@R"), ExportOptions(), principals) == ANON
    clock.now += 61
    principals.user("hal@R")  # the old answer while a new lookup starts
    assert len(started) == 2


def test_mountd_does_not_answer_while_a_principal_is_looked_up_so_that_the_client_asks_again(tmp_path):
    """A Kerberos MNT whose principal the name service has not named within WAIT_LIMIT gets no reply (the
    dispatcher's NoReply): mount.nfs sends MNT again, and that one is answered once the principal is known.
    An error (MNT3ERR_SERVERFAULT) would end the mount at once."""
    from twisted.internet import task

    from nfsstack.exports.identity import WAIT_LIMIT
    from nfsstack.mount.mountlist import MountList
    from nfsstack.mount.program import MountStat, Mountd
    from nfsstack.nfs3.local.filesystem import LocalFilesystem
    from nfsstack.rpc.program import CallContext, NoReply

    (tmp_path / "krb").mkdir()
    table = ExportTable(parse_exports(f"{tmp_path / 'krb'} *(rw,sec=krb5)\n", "exports", resolve=lambda h: []),
                        HandleCodec(b"k" * 32), HostNames(300.0, lookup=lambda a: None))
    mountd = Mountd(table, MountList(str(tmp_path / "state")), LocalFilesystem(table, None).mount)
    timers, threads = task.Clock(), Threads()
    principals = Principals(clock=Clock(), getpwnam=lambda n: pwd.struct_passwd((n, "x", 0, 0, "", "/", "/")),
                            getgrouplist=lambda n, g: [g])
    principals.look_up_in_threads(threads, call_later=timers.callLater)
    mountd.admission.principals = principals
    mnt = mountd.program.versions[3][1]
    ctx = CallContext(gss_call("ivy@R"), "tcp", ("127.0.0.1", 900), ("127.0.0.1", 635))
    try:
        outcomes = []
        waited = mnt.handler(ctx, str(tmp_path / "krb"))
        assert len(threads.queued) == 1
        waited.addCallbacks(outcomes.append, lambda f: outcomes.append(f.type))
        timers.advance(WAIT_LIMIT)
        assert outcomes == [NoReply]
        again = mnt.handler(ctx, str(tmp_path / "krb"))  # the client's next MNT, while the lookup still runs
        threads.run()
        assert again.result[0] == MountStat.MNT3_OK
    finally:
        table.close()
