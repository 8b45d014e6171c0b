"""nlockmgr and status in process: NLM v1/v3/v4 through the dispatcher on real files, OFD mirroring, the grace
period, GRANTED callbacks, NSM state and notices; hypothesis fuzzing of every NLM and NSM decoder."""

import collections
import fcntl
import os
import shutil
import struct
import tempfile

import pytest
from hypothesis import given, note, settings, strategies as st
from twisted.internet import defer, task
from twisted.python.failure import Failure

from nfsstack.exports import parse_exports
from nfsstack.exports.handles import HandleCodec, kernel_handles_work
from nfsstack.exports.table import ExportTable
from nfsstack.nfs3.local.filesystem import LocalFilesystem
from nfsstack.nlm import types as t
from nfsstack.nlm.program import Nlm
from nfsstack.nlm.types import NlmStat, Proc
from nfsstack.nsm.program import Nsm
from nfsstack.nsm.state import NsmState
from nfsstack.nsm.types import Mon, MyId, StatChge, pack_mon, pack_my_id, pack_stat_chge
from nfsstack.rpc.message import decode_reply, encode_call
from nfsstack.rpc.server import Dispatcher
from nfsstack.xdr import Packer, Unpacker, XDRError
from tests.support import FuzzInput

PEER = ("10.0.2.15", 800)
LOCAL = ("10.0.2.2", 4045)
F_OFD_SETLK = 37

needs_root = pytest.mark.skipif(not kernel_handles_work("/"), reason="needs root (open_by_handle_at)")


class FakeRemote:
    """Records the calls the server makes to clients and answers them."""

    def __init__(self, answer=None):
        self.calls = []
        self.answer = answer

    def call(self, host, prog, vers, proc, args, proto="udp", timeout=10.0):
        self.calls.append((host, prog, vers, proc, args, proto))
        if self.answer is None:
            return defer.fail(OSError("unreachable"))
        return defer.succeed(self.answer)

    def close(self):
        pass


def granted_reply(cookie=b"c"):
    p = Packer()
    t.pack_res(p, t.Res(cookie, NlmStat.GRANTED), True)
    return p.getvalue()


@pytest.fixture
def env(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_bytes(b"x" * 1000)
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "r").write_text("r")
    exports = parse_exports(f"{data} *(rw,insecure)\n{tmp_path / 'ro'} *(ro,insecure)\n")
    table = ExportTable(exports, HandleCodec(b"k" * 32))
    clock = task.Clock()
    remote = FakeRemote(granted_reply())
    nsm = Nsm(NsmState(str(tmp_path / "state")), clock, remote)
    nsm.start()
    nlm = Nlm(table, clock, remote, nsm, LocalFilesystem(table, None), grace=0)
    nsm.listeners.append(nlm.host_rebooted)
    handles = {}
    for export in exports:
        fd = os.open(export.path, os.O_RDONLY)
        for name in os.listdir(export.path):
            handles[name] = table.handle(export, fd, name)
        os.close(fd)
    yield tmp_path, nlm, nsm, remote, clock, Dispatcher([nlm.program, nsm.program]), handles
    nlm.stop()
    table.close()


_xid = iter(range(1, 1 << 30))


def call(d, prog, vers, proc, args=b"", peer=PEER):
    reply = d.handle(encode_call(next(_xid), prog, vers, proc) + args, "tcp", peer, LOCAL)
    if reply is None:
        return None
    h = decode_reply(reply)
    assert h.error is None, h.error
    return Unpacker(reply, h.offset)


def nlm_lock(fh, svid=1, offset=0, length=0, name="guest"):
    return t.NlmLock(name, fh, f"{svid}@{name}".encode(), svid, offset, length)


def do(d, proc, args, vers=4, peer=PEER):
    p = Packer()
    wide = vers == 4
    {t.LockArgs: t.pack_lockargs, t.TestArgs: t.pack_testargs, t.CancArgs: t.pack_cancargs,
     t.UnlockArgs: t.pack_unlockargs, t.ShareArgs: t.pack_shareargs}[type(args)](p, args, wide)
    u = call(d, t.NLM_PROG, vers, proc, p.getvalue(), peer)
    if u is None:
        return None
    if proc == Proc.TEST:
        return t.unpack_testres(u, wide)
    if proc in (Proc.SHARE, Proc.UNSHARE):
        return t.unpack_shareres(u)
    return t.unpack_res(u, wide)


def lock(d, fh, svid=1, offset=0, length=0, exclusive=True, block=False, reclaim=False, vers=4):
    return do(d, Proc.LOCK, t.LockArgs(b"c", block, exclusive, nlm_lock(fh, svid, offset, length), reclaim, 3),
              vers).stat


def ofd(path, kind=fcntl.F_WRLCK, start=0, length=0):
    """Try an OFD lock as a local process would; the fd, or None when refused."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.fcntl(fd, F_OFD_SETLK, struct.pack("@hhqqi4x", kind, 0, start, length, 0))
    except OSError:
        os.close(fd)
        return None
    return fd


@needs_root
def test_lock_test_unlock_v4(env):
    tmp, nlm, nsm, remote, clock, d, fh = env
    assert lock(d, fh["f"], svid=1, offset=0, length=100) == NlmStat.GRANTED
    r = do(d, Proc.TEST, t.TestArgs(b"t", True, nlm_lock(fh["f"], 2, 50, 10)))
    assert r.stat == NlmStat.DENIED and r.holder == t.Holder(True, 1, b"1@guest", 0, 100)
    assert do(d, Proc.TEST, t.TestArgs(b"t", True, nlm_lock(fh["f"], 2, 100, 10))).stat == NlmStat.GRANTED
    assert lock(d, fh["f"], svid=2, offset=50, length=10) == NlmStat.DENIED
    assert do(d, Proc.UNLOCK, t.UnlockArgs(b"u", nlm_lock(fh["f"], 1, 0, 0))).stat == NlmStat.GRANTED
    assert lock(d, fh["f"], svid=2, offset=50, length=10) == NlmStat.GRANTED
    assert [m.mon_name for m in nsm.state.monitors] == ["guest"], "a locking host is monitored"


@needs_root
def test_v1_and_v3_use_32_bit_ranges_and_their_own_statuses(env):
    tmp, nlm, nsm, remote, clock, d, fh = env
    assert lock(d, fh["f"], svid=1, offset=10, length=5, vers=1) == NlmStat.GRANTED
    r = do(d, Proc.TEST, t.TestArgs(b"t", False, nlm_lock(fh["f"], 2, 0, 0)), vers=3)
    assert r.stat == NlmStat.DENIED and (r.holder.offset, r.holder.length) == (10, 5)
    assert lock(d, b"\0" * 40, vers=3) == NlmStat.DENIED_NOLOCKS, "v3 has no STALE_FH"
    assert lock(d, b"\0" * 40, vers=4) == NlmStat.STALE_FH
    reply = d.handle(encode_call(2, t.NLM_PROG, 1, Proc.SHARE), "tcp", PEER, LOCAL)
    assert str(decode_reply(reply).error) == "PROC_UNAVAIL", "v1 has no SHARE"


@needs_root
def test_granted_locks_are_ofd_locks_on_the_file(env):
    tmp, nlm, nsm, remote, clock, d, fh = env
    path = tmp / "data" / "f"
    assert lock(d, fh["f"], offset=0, length=10) == NlmStat.GRANTED
    assert ofd(path, start=0, length=10) is None, "a local process sees the client's lock"
    local = ofd(path, start=100, length=10)
    assert local is not None, "other bytes are free"
    assert lock(d, fh["f"], svid=9, offset=105, length=1) == NlmStat.DENIED, "the client sees the local lock"
    r = do(d, Proc.TEST, t.TestArgs(b"t", True, nlm_lock(fh["f"], 9, 105, 1)))
    assert r.stat == NlmStat.DENIED and (r.holder.offset, r.holder.length, r.holder.svid) == (100, 10, 0)
    os.close(local)
    do(d, Proc.UNLOCK, t.UnlockArgs(b"u", nlm_lock(fh["f"], 1, 0, 0)))
    again = ofd(path, start=0, length=10)
    assert again is not None, "unlocking releases the OFD lock"
    os.close(again)
    assert len(nlm.mirror) == 0


@needs_root
def test_blocked_lock_is_granted_with_a_callback(env):
    tmp, nlm, nsm, remote, clock, d, fh = env
    assert lock(d, fh["f"], svid=1) == NlmStat.GRANTED
    assert lock(d, fh["f"], svid=2, block=True) == NlmStat.BLOCKED
    assert remote.calls == []
    do(d, Proc.UNLOCK, t.UnlockArgs(b"u", nlm_lock(fh["f"], 1)))
    host, prog, vers, proc, args, proto = remote.calls[-1]
    assert (host, prog, vers, proc, proto) == (PEER[0], t.NLM_PROG, 4, Proc.GRANTED, "tcp")
    granted = t.unpack_testargs(Unpacker(args), True)
    assert granted.alock.svid == 2 and granted.exclusive
    assert lock(d, fh["f"], svid=1) == NlmStat.DENIED, "the waiter holds it now"


@needs_root
def test_a_blocked_lock_behind_a_local_lock_is_polled(env):
    tmp, nlm, nsm, remote, clock, d, fh = env
    local = ofd(tmp / "data" / "f")
    assert lock(d, fh["f"], block=True) == NlmStat.BLOCKED
    clock.advance(1.0)
    assert remote.calls == []
    os.close(local)
    clock.advance(1.0)
    assert remote.calls and remote.calls[-1][3] == Proc.GRANTED
    assert ofd(tmp / "data" / "f") is None


@needs_root
def test_a_refused_grant_frees_the_lock(env):
    tmp, nlm, nsm, remote, clock, d, fh = env
    p = Packer()
    t.pack_res(p, t.Res(b"c", NlmStat.DENIED), True)
    remote.answer = p.getvalue()
    lock(d, fh["f"], svid=1)
    lock(d, fh["f"], svid=2, block=True)
    do(d, Proc.UNLOCK, t.UnlockArgs(b"u", nlm_lock(fh["f"], 1)))
    assert lock(d, fh["f"], svid=3) == NlmStat.GRANTED, "the client did not want it any more"


@needs_root
def test_cancel_of_a_blocked_lock(env):
    tmp, nlm, nsm, remote, clock, d, fh = env
    lock(d, fh["f"], svid=1)
    lock(d, fh["f"], svid=2, block=True)
    assert do(d, Proc.CANCEL, t.CancArgs(b"x", True, True, nlm_lock(fh["f"], 2))).stat == NlmStat.GRANTED
    do(d, Proc.UNLOCK, t.UnlockArgs(b"u", nlm_lock(fh["f"], 1)))
    assert remote.calls == []


@needs_root
def test_grace_period(env):
    tmp, nlm, nsm, remote, clock, d, fh = env
    nlm.grace.seconds = 30
    nlm.grace.begin()
    assert lock(d, fh["f"], svid=1) == NlmStat.DENIED_GRACE_PERIOD
    assert lock(d, fh["f"], svid=1, reclaim=True) == NlmStat.GRANTED
    assert do(d, Proc.TEST, t.TestArgs(b"t", True, nlm_lock(fh["f"], 2))).stat == NlmStat.DENIED_GRACE_PERIOD
    clock.advance(31)
    assert lock(d, fh["f"], svid=2, reclaim=True) == NlmStat.DENIED_GRACE_PERIOD, "too late to reclaim"
    assert lock(d, fh["f"], svid=2) == NlmStat.DENIED, "the reclaimed lock holds"


@needs_root
def test_ro_export_refuses_exclusive_locks(env):
    tmp, nlm, nsm, remote, clock, d, fh = env
    assert lock(d, fh["r"], exclusive=True) == NlmStat.ROFS
    assert lock(d, fh["r"], exclusive=False) == NlmStat.GRANTED


@needs_root
def test_a_lock_is_admitted_as_mountd_and_nfsd_admit(tmp_path, monkeypatch):
    """nlockmgr asks the admission policy (nfsstack.exports.policy): a client the export does not name, or a
    call from an unprivileged port to a secure export, fails; a wildcard client is looked up first."""
    from types import SimpleNamespace

    from nfsstack.exports import names as names_module
    from nfsstack.exports.names import HostNames

    # The reverse lookup at once, not in a thread: no reactor runs here.
    monkeypatch.setattr(names_module, "threads",
                        SimpleNamespace(deferToThread=lambda f, *a: defer.maybeDeferred(f, *a)))
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("x")
    exports = parse_exports(f"{data} 10.0.2.0/24(rw) *.lab.example(rw,insecure)\n")
    table = ExportTable(exports, HandleCodec(b"k" * 32), HostNames(lookup={"192.0.2.5": "ws1.lab.example"}.get))
    clock = task.Clock()
    nlm = Nlm(table, clock, FakeRemote(granted_reply()), None, LocalFilesystem(table, None), grace=0)
    d = Dispatcher([nlm.program])
    fd = os.open(data, os.O_RDONLY)
    fh = table.handle(exports.find(str(data)), fd, "f")
    os.close(fd)

    def stat(peer, svid):
        p = Packer()
        t.pack_lockargs(p, t.LockArgs(b"c", False, True, nlm_lock(fh, svid), False, 3), True)
        reply = d.handle(encode_call(next(_xid), t.NLM_PROG, 4, Proc.LOCK) + p.getvalue(), "tcp", peer, LOCAL)
        if isinstance(reply, defer.Deferred):  # the name was looked up first
            reply = reply.result
        h = decode_reply(reply)
        return t.unpack_res(Unpacker(reply, h.offset), True).stat

    try:
        assert stat(("10.0.2.15", 40000), 1) == NlmStat.FAILED, "secure export, unprivileged port"
        assert stat(("198.51.100.1", 800), 2) == NlmStat.FAILED, "no client specification matches"
        assert stat(("192.0.2.6", 40000), 3) == NlmStat.FAILED, "a name the wildcard does not match (none)"
        assert stat(("10.0.2.15", 800), 4) == NlmStat.GRANTED
        assert stat(("192.0.2.5", 40000), 5) == NlmStat.DENIED, "admitted by name (insecure): the lock is held"
    finally:
        nlm.stop()
        table.close()


@needs_root
def test_share_unshare_nm_lock_free_all(env):
    tmp, nlm, nsm, remote, clock, d, fh = env
    share = t.NlmShare("guest", fh["f"], b"o1", 2, 1)  # read, deny writers
    assert do(d, Proc.SHARE, t.ShareArgs(b"s", share)).stat == NlmStat.GRANTED
    other = t.NlmShare("other", fh["f"], b"o2", 0, 3)  # wants to write
    assert do(d, Proc.SHARE, t.ShareArgs(b"s", other)).stat == NlmStat.DENIED
    assert do(d, Proc.UNSHARE, t.ShareArgs(b"s", share)).stat == NlmStat.GRANTED
    assert do(d, Proc.SHARE, t.ShareArgs(b"s", other)).stat == NlmStat.GRANTED
    args = t.LockArgs(b"c", True, True, nlm_lock(fh["f"], 5, name="nomon"), False, 0)
    assert do(d, Proc.NM_LOCK, args).stat == NlmStat.GRANTED
    assert "nomon" not in [m.mon_name for m in nsm.state.monitors], "NM_LOCK is not monitored"
    p = Packer()
    t.pack_notify(p, t.Notify("nomon", 5))
    call(d, t.NLM_PROG, 4, Proc.FREE_ALL, p.getvalue())
    assert nlm.table.held_by("nomon") == []


@needs_root
def test_msg_procedures_answer_with_a_res_call(env):
    tmp, nlm, nsm, remote, clock, d, fh = env
    p = Packer()
    t.pack_lockargs(p, t.LockArgs(b"m", False, True, nlm_lock(fh["f"]), False, 0), True)
    assert call(d, t.NLM_PROG, 4, Proc.LOCK_MSG, p.getvalue()) is not None  # a void reply
    host, prog, vers, proc, args, proto = remote.calls[-1]
    assert (host, proc) == (PEER[0], Proc.LOCK_RES)
    assert t.unpack_res(Unpacker(args), True) == t.Res(b"m", NlmStat.GRANTED)


@needs_root
def test_sm_notify_frees_the_rebooted_hosts_locks(env):
    tmp, nlm, nsm, remote, clock, d, fh = env
    lock(d, fh["f"], svid=1)
    p = Packer()
    pack_stat_chge(p, StatChge("guest", 7))
    call(d, 100024, 1, 6, p.getvalue())
    assert nlm.table.held_by("guest") == [] and ofd(tmp / "data" / "f") is not None
    lock(d, fh["f"], svid=1)
    p = Packer()
    pack_stat_chge(p, StatChge("some-other-name", 9))
    call(d, 100024, 1, 6, p.getvalue())  # from the same address: also that host
    assert nlm.table.held_by("guest") == []


def test_nsm_state_is_odd_and_advances(tmp_path):
    clock = task.Clock()
    first = Nsm(NsmState(str(tmp_path)), clock, FakeRemote())
    a = first.start()
    first.monitor_internal("client", "10.0.0.9", "10.0.0.1")
    b = Nsm(NsmState(str(tmp_path)), clock, FakeRemote(b"")).start()
    assert a % 2 == 1 and b % 2 == 1 and b > a


def test_nsm_notifies_the_hosts_monitored_before_a_restart(tmp_path):
    clock = task.Clock()
    first = Nsm(NsmState(str(tmp_path)), clock, FakeRemote())
    first.start()
    first.monitor_internal("client", "10.0.0.9", "10.0.0.1")
    remote = FakeRemote(None)  # unreachable at first
    second = Nsm(NsmState(str(tmp_path)), clock, remote, backoff=(0, 1, 1))
    state = second.start()
    assert [m.address for m in second.state.to_notify] == ["10.0.0.9"]
    clock.advance(0)
    remote.answer = b""
    clock.advance(1)
    host, prog, vers, proc, args, proto = remote.calls[-1]
    assert (host, prog, vers, proc) == ("10.0.0.9", 100024, 1, 6)
    u = Unpacker(args)
    assert (u.unpack_string(1024), u.unpack_int()) == ("10.0.0.1", state), "we go by the address it knew us by"
    assert second.state.to_notify == []
    assert NsmState(str(tmp_path)).start() and NsmState(str(tmp_path))._read_json("notify.json") == []


def test_nsm_rebuilds_corrupt_files(tmp_path):
    (tmp_path / "nsm").mkdir()
    (tmp_path / "nsm" / "state").write_text("garbage")
    (tmp_path / "nsm" / "monitors.json").write_text("{not json")
    state = NsmState(str(tmp_path))
    assert state.start() == 1 and state.to_notify == []


def test_sm_mon_only_from_this_host(tmp_path):
    clock = task.Clock()
    nsm = Nsm(NsmState(str(tmp_path)), clock, FakeRemote(b""))
    nsm.start()
    d = Dispatcher([nsm.program])
    p = Packer()
    pack_mon(p, Mon("client", MyId("localhost", 100021, 4, 16)))
    assert call(d, 100024, 1, 2, p.getvalue(), peer=("10.1.1.1", 700)).unpack_int() == 1  # stat_fail
    u = call(d, 100024, 1, 2, p.getvalue(), peer=("127.0.0.1", 700))
    assert (u.unpack_int(), u.unpack_int()) == (0, nsm.state.state)
    assert [m.mon_name for m in nsm.state.monitors] == ["client"]
    p2 = Packer()
    pack_stat_chge(p2, StatChge("client", 11))
    call(d, 100024, 1, 6, p2.getvalue(), peer=("10.1.1.1", 700))
    assert nsm.remote.calls[-1][:4] == ("127.0.0.1", 100021, 4, 16), "the SM callback to the monitor's owner"


DECODERS = [
    lambda u: t.unpack_lockargs(u, True), lambda u: t.unpack_lockargs(u, False),
    lambda u: t.unpack_testargs(u, True), lambda u: t.unpack_cancargs(u, False),
    lambda u: t.unpack_unlockargs(u, True), t.unpack_shareargs, t.unpack_notify,
    lambda u: t.unpack_testres(u, True), lambda u: t.unpack_res(u, False),
]


@given(st.binary(max_size=300), st.integers(0, len(DECODERS) - 1))
def test_fuzz_nlm_decoders(data, which):
    try:
        DECODERS[which](Unpacker(data))
    except (XDRError, ValueError):
        pass


# -- the dispatcher fuzzed on real files --------------------------------------------------------------------------
#
# An example is a byte string that tests.support.FuzzInput turns into a list of actions: NLM and NSM calls whose
# arguments are well-formed most of the time (real handles, owners and ranges from small sets so that locks meet)
# and mutated otherwise, retransmissions, clock ticks, local OFD locks and changes of how the client answers
# GRANTED.  The falsifying example's notes list the actions decoded.

FUZZ_PEERS = [("10.0.2.15", 800), ("10.0.2.15", 40000), ("10.0.2.16", 700), ("127.0.0.1", 900)]
FUZZ_NAMES = ["guest", "other", "", "g" * 1024, "g" * 1025, "\udcff\n"]  # the last ones: at and past the limit
FUZZ_OWNERS = [b"", b"o1", b"o2", b"o" * 1025]
#: Ranges at the edges of 32 and 64 bits (v1/v3 clamp, Lock.of's end, _span's 2^63 limit).
FUZZ_EDGES = [1, 2**31 - 1, 2**32 - 1, 2**32, 2**63 - 2, 2**63 - 1, 2**63, 2**64 - 1]
FUZZ_SVIDS = [0, 1, 2, 3, 0, 1, 2, 3, -1, -2**31, 2**31 - 1]


def _answer(stat, garbage=False):
    p = Packer()
    t.pack_res(p, t.Res(b"c", stat), True)
    return b"\0\0\0\7junk" if garbage else p.getvalue()


FUZZ_ANSWERS = [_answer(NlmStat.GRANTED), None, _answer(NlmStat.DENIED), _answer(0, garbage=True), b""]
#: What an action's first byte picks: mostly NLM calls, then NSM calls, and the rest.
FUZZ_ACTIONS = ["nlm"] * 40 + ["nsm"] * 6 + ["undo"] * 6 + ["tick"] * 3 + ["local"] * 2 + ["again", "answer"]
#: NLM procedures, LOCK most often so that locks meet; every procedure, and some that do not exist, now and then.
FUZZ_PROCS = ([Proc.LOCK] * 40 + [Proc.UNLOCK] * 6 + [Proc.TEST] * 6 + [Proc.CANCEL] * 2 + [Proc.SHARE] * 2
              + list(Proc) + [16, 19, 24, 99])


class RecordingRemote(FakeRemote):
    """A FakeRemote that keeps every Deferred it hands out: whatever the server hung on one must not end in an
    unhandled failure (an exception in a GRANTED or _RES callback)."""

    def __init__(self, answer=None):
        super().__init__(answer)
        self.deferreds = []

    def call(self, *args, **kw):
        d = super().call(*args, **kw)
        self.deferreds.append((args, d))
        return d

    def failures(self):
        return [(args, d.result) for args, d in self.deferreds if isinstance(getattr(d, "result", None), Failure)]


def _fuzz_fh(f: FuzzInput, handles: dict, names: list) -> bytes:
    b = f.byte()
    if b < 232:
        return handles[names[b % len(names)]]
    if b < 248:  # a real handle with one byte changed (its MAC no longer matches)
        fh = handles[names[f.byte() % len(names)]]
        i = f.byte() % len(fh)
        return fh[:i] + bytes([fh[i] ^ 0x20]) + fh[i + 1:]
    return f.bytes(80)


def _fuzz_alock(f: FuzzInput, handles: dict, names: list) -> t.NlmLock:
    who = f.byte()
    return t.NlmLock(FUZZ_NAMES[who % 3] if who < 240 else f.pick(FUZZ_NAMES), _fuzz_fh(f, handles, names),
                     FUZZ_OWNERS[(who >> 2) % 3] if who < 240 else f.pick(FUZZ_OWNERS), f.pick(FUZZ_SVIDS),
                     f.number(100, FUZZ_EDGES), 0 if f.byte() < 64 else f.number(100, FUZZ_EDGES))


def _fuzz_nlm_args(f: FuzzInput, proc: int, handles: dict, names: list):
    """Well-formed arguments of ``proc``, None for a procedure without any (or one that does not exist)."""
    flags = f.byte()
    exclusive, block, reclaim = bool(flags & 1), bool(flags & 2), (flags >> 2) % 8 == 7
    cookie = bytes([flags >> 5] * (flags >> 5))
    if proc in (Proc.TEST, Proc.TEST_MSG, Proc.GRANTED, Proc.GRANTED_MSG):
        return t.TestArgs(cookie, exclusive, _fuzz_alock(f, handles, names))
    if proc in (Proc.LOCK, Proc.LOCK_MSG, Proc.NM_LOCK):
        return t.LockArgs(cookie, block, exclusive, _fuzz_alock(f, handles, names), reclaim, f.pick(FUZZ_SVIDS))
    if proc in (Proc.CANCEL, Proc.CANCEL_MSG):
        return t.CancArgs(cookie, block, exclusive, _fuzz_alock(f, handles, names))
    if proc in (Proc.UNLOCK, Proc.UNLOCK_MSG):
        return t.UnlockArgs(cookie, _fuzz_alock(f, handles, names))
    if proc in (Proc.SHARE, Proc.UNSHARE):
        who = f.byte()
        share = t.NlmShare(FUZZ_NAMES[who % 3], _fuzz_fh(f, handles, names), FUZZ_OWNERS[(who >> 2) % 3],
                           (who >> 4) % 5, (who >> 6) + (flags & 1))  # mode and access, 4 (invalid) sometimes
        return t.ShareArgs(cookie, share, reclaim)
    if proc == Proc.FREE_ALL:
        return t.Notify(f.pick(FUZZ_NAMES), f.pick(FUZZ_SVIDS))
    if proc == Proc.TEST_RES:
        return t.TestRes(cookie, f.pick(list(NlmStat)), t.Holder(exclusive, f.pick(FUZZ_SVIDS), b"o1", f.number(100, FUZZ_EDGES),
                                                                 f.number(100, FUZZ_EDGES)))
    if proc in (Proc.LOCK_RES, Proc.CANCEL_RES, Proc.UNLOCK_RES, Proc.GRANTED_RES):
        return t.Res(cookie, f.pick(list(NlmStat)))
    return None


NLM_PACKERS = {t.TestArgs: t.pack_testargs, t.LockArgs: t.pack_lockargs, t.CancArgs: t.pack_cancargs,
               t.UnlockArgs: t.pack_unlockargs, t.ShareArgs: t.pack_shareargs, t.Notify: t.pack_notify,
               t.TestRes: t.pack_testres, t.Res: t.pack_res}


def _pack_nlm(args, vers: int) -> bytes:
    p = Packer()
    NLM_PACKERS[type(args)](p, args, vers == 4)
    return p.getvalue()


def _fuzz_nsm_body(f: FuzzInput, proc: int) -> bytes:
    p = Packer()
    name = f.pick(FUZZ_NAMES)
    my_id = MyId(f.pick(FUZZ_NAMES), f.pick([100021, 300000, -1]), f.byte() % 5, f.byte() % 20)
    if proc == 1:
        p.pack_string(name)
    elif proc == 2:
        pack_mon(p, Mon(name, my_id, bytes([f.byte()]) * 16))
    elif proc == 3:
        p.pack_string(name)
        pack_my_id(p, my_id)
    elif proc == 4:
        pack_my_id(p, my_id)
    elif proc == 6:
        pack_stat_chge(p, StatChge(name, f.pick(FUZZ_SVIDS)))
    return p.getvalue()


@pytest.fixture(scope="module")
def fuzz_world(tmp_path_factory):
    """Three exports of real files (read-write with `insecure`, read-only, `secure` for one client only) and the
    handles the fuzzer picks from: files, a directory, a FIFO, a symlink, export roots, and a file deleted since
    its handle was made (stale)."""
    if not kernel_handles_work("/"):
        pytest.skip("needs root (open_by_handle_at)")
    top = tmp_path_factory.mktemp("nlmfuzz")
    data, ro, sec = top / "data", top / "ro", top / "sec"
    for d in (data, ro, sec):
        d.mkdir()
    for name in ("a", "b", "gone"):
        (data / name).write_bytes(b"x" * 4096)
    (data / "dir").mkdir()
    os.mkfifo(data / "fifo")
    os.symlink("a", data / "link")
    (ro / "r").write_text("r")
    (sec / "s").write_text("s")
    exports = parse_exports(f"{data} *(rw,insecure)\n{ro} *(ro,insecure)\n{sec} 10.0.2.15(rw)\n")
    table = ExportTable(exports, HandleCodec(b"k" * 32))
    handles = {}
    for export in exports:
        fd = os.open(export.path, os.O_RDONLY)
        handles[os.path.basename(export.path) + "/"] = table.handle(export, fd)
        for name in os.listdir(export.path):
            handles[name] = table.handle(export, fd, name)
        os.close(fd)
    os.unlink(data / "gone")
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    state = tempfile.mkdtemp(prefix="nlmfuzz-", dir=shm)  # NSM fsyncs its files: on tmpfs that costs nothing
    # The plain read-write files most often: locks meet there.
    names = sorted(handles) + ["a"] * 12 + ["b"] * 4
    yield {"table": table, "handles": handles, "names": names, "data": data, "state": state}
    table.close()
    shutil.rmtree(state, ignore_errors=True)


RESULT_DECODERS = {Proc.TEST: t.unpack_testres, Proc.LOCK: t.unpack_res, Proc.CANCEL: t.unpack_res,
                   Proc.UNLOCK: t.unpack_res, Proc.GRANTED: t.unpack_res, Proc.NM_LOCK: t.unpack_res,
                   Proc.SHARE: t.unpack_shareres, Proc.UNSHARE: t.unpack_shareres}


def test_fuzz_nlm_and_nsm_dispatch_on_real_files(fuzz_world):
    """Sequences of NLM (v1, v3, v4) and NSM calls, mostly well-formed and on real handles, some mutated, between
    local OFD locks, clock ticks and clients answering GRANTED in every way: no call ends in SYSTEM_ERR (a handler
    that raised), every reply decodes as its procedure's result, no callback leaves an unhandled failure."""
    _fuzz_nlm_and_nsm(fuzz_world, derandomize=False)


def test_the_nlm_fuzzer_reaches_the_lock_table_and_the_ofd_mirror(fuzz_world):
    """The same calls from hypothesis's fixed sequence of examples (so the outcome does not depend on chance):
    the lock table and the OFD mirror were really reached (locks granted, denied, blocked and granted later by a
    callback, several OFD descriptors open at once), so the fuzzer above is not fuzzing only the decoders."""
    reached = _fuzz_nlm_and_nsm(fuzz_world, derandomize=True)
    assert reached[("LOCK", "GRANTED")] and reached[("LOCK", "DENIED")] and reached[("LOCK", "BLOCKED")], reached
    assert reached[("TEST", "DENIED")] and reached[("SHARE", "GRANTED")], reached
    assert reached["max OFD descriptors"] > 1 and reached["GRANTED callbacks"], reached


def _fuzz_nlm_and_nsm(fuzz_world, derandomize: bool) -> collections.Counter:
    table, handles, names, data = (fuzz_world[k] for k in ("table", "handles", "names", "data"))
    reached = collections.Counter()

    @settings(derandomize=derandomize)
    @given(st.binary(min_size=60, max_size=400))
    def run(blob):
        f = FuzzInput(blob)
        clock = task.Clock()
        remote = RecordingRemote(FUZZ_ANSWERS[0])
        state_dir = tempfile.mkdtemp(dir=fuzz_world["state"])
        nsm = Nsm(NsmState(state_dir), clock, remote, backoff=())  # gives up notifying at once: no DNS
        nsm.start()
        nlm = Nlm(table, clock, remote, nsm, LocalFilesystem(table, None), grace=30 if f.byte() >= 224 else 0)
        nsm.listeners.append(nlm.host_rebooted)
        d = Dispatcher([nlm.program, nsm.program])
        local, locks, last, xid = [], [], None, 0
        try:
            for step in range(200):
                if not f.more():
                    break
                kind = f.pick(FUZZ_ACTIONS)
                if kind == "tick":
                    seconds = f.pick([0.5, 1.0, 31.0])
                    note(f"{step}: tick {seconds}")
                    clock.advance(seconds)
                    continue
                if kind == "answer":
                    remote.answer = f.pick(FUZZ_ANSWERS)
                    note(f"{step}: the client answers {remote.answer!r}")
                    continue
                if kind == "local":
                    name, start, length, exclusive = f.pick("ab"), f.byte() % 101, f.byte() % 101, f.byte() & 1
                    note(f"{step}: local OFD lock on {name} {start}+{length} exclusive={exclusive}")
                    fd = ofd(data / name, fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK, start, length)
                    if fd is None:
                        reached["local lock in conflict"] += 1
                    else:
                        local.append(fd)
                    continue
                if kind == "again":
                    if last is None:
                        continue
                    prog, vers, proc, peer, netid, message = last
                    note(f"{step}: the same message again")
                else:
                    bits = f.byte()
                    vers, peer, netid = (4, 4, 3, 1)[bits & 3], FUZZ_PEERS[(bits >> 2) & 3], "tu"[bits >> 7]
                    netid += "cp" if netid == "t" else "dp"
                    if kind == "nsm":
                        prog, vers, proc = 100024, 1, f.byte() % 8
                        body = _fuzz_nsm_body(f, proc)
                        args = None
                    elif kind == "undo" and locks:  # an UNLOCK or CANCEL of a lock asked for before
                        vers, peer, netid, alock = locks[f.byte() % len(locks)]
                        prog, proc = t.NLM_PROG, (Proc.UNLOCK, Proc.CANCEL)[bits >> 7]
                        args = (t.UnlockArgs(b"u", alock) if proc == Proc.UNLOCK
                                else t.CancArgs(b"u", True, bool(bits & 8), alock))
                        body = _pack_nlm(args, vers)
                    else:
                        prog, proc = t.NLM_PROG, f.pick(FUZZ_PROCS)
                        args = _fuzz_nlm_args(f, proc, handles, names)
                        body = b"" if args is None else _pack_nlm(args, vers)
                        if isinstance(args, t.LockArgs):
                            locks.append((vers, peer, netid, args.alock))
                    body = f.mutate(body)
                    note(f"{step}: {netid} {peer} {prog} v{vers} proc {proc} {args} as {body!r}")
                    xid += 1
                    message = encode_call(xid, prog, vers, proc) + body
                    last = (prog, vers, proc, peer, netid, message)
                reply = d.handle(message, netid, peer, LOCAL)
                assert not isinstance(reply, defer.Deferred), "NLM and NSM answer at once"
                assert d.errors["SYSTEM_ERR"] == 0, f"step {step}: a handler raised (see the log)"
                reached["max OFD descriptors"] = max(reached["max OFD descriptors"], len(nlm.mirror))
                assert remote.failures() == [], f"step {step}: a callback left an unhandled failure"
                if reply is None:
                    continue
                h = decode_reply(reply)
                if h.error is None and prog == t.NLM_PROG and proc in RESULT_DECODERS:
                    u = Unpacker(reply, h.offset)
                    res = RESULT_DECODERS[proc](u, vers == 4)
                    u.done()
                    reached[(Proc(proc).name, res.stat.name)] += 1
            reached["GRANTED callbacks"] += nlm.callbacks["sent"]
        finally:
            nlm.stop()
            for fd in local:
                os.close(fd)
            shutil.rmtree(state_dir, ignore_errors=True)

    run()
    return reached
