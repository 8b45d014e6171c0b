"""nlockmgr and status in process: NLM v1/v3/v4 through the dispatcher on real files, OFD mirroring, the grace
period, GRANTED callbacks, NSM state and notices; hypothesis fuzzing of every NLM and NSM decoder."""

import fcntl
import os
import struct

import pytest
from hypothesis import given, strategies as st
from twisted.internet import defer, task

from nfsstack.export_table import ExportTable
from nfsstack.exports import parse_exports
from nfsstack.nfs3.handles import HandleCodec, kernel_handles_work
from nfsstack.nlm import types as t
from nfsstack.nlm.program import Nlm
from nfsstack.nlm.types import NlmStat, Proc
from nfsstack.nsm.program import Nsm
from nfsstack.nsm.state import NsmState
from nfsstack.nsm.types import Mon, MyId, StatChge, pack_mon, pack_stat_chge
from nfsstack.rpc.message import decode_reply, encode_call
from nfsstack.rpc.server import Dispatcher
from nfsstack.xdr import Packer, Unpacker, XDRError

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
    nlm = Nlm(table, clock, remote, nsm, grace=0)
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


@given(st.binary(max_size=200), st.integers(0, 23), st.sampled_from([1, 3, 4]))
def test_fuzz_nlm_and_nsm_dispatch_never_crash(data, proc, vers):
    clock = task.Clock()
    table = ExportTable(parse_exports("/nonexistent *(rw)\n"), HandleCodec(b"k" * 32))
    nlm = Nlm(table, clock, FakeRemote(b""), None, grace=0)
    nsm = Nsm(NsmState("/nonexistent-state"), clock, None)
    d = Dispatcher([nlm.program, nsm.program])
    for prog, v in ((t.NLM_PROG, vers), (100024, 1)):
        reply = d.handle(encode_call(1, prog, v, proc) + data, "udp", PEER, LOCAL)
        if reply is not None:
            decode_reply(reply)
