"""Userspace NFS clients against a real ``twistd -n nfsstack`` on port 111 in a network namespace.

libnfs's tools (Debian package libnfs-utils: nfs-ls, nfs-cp, nfs-cat) find mountd and nfsd through the
portmapper as any client does; the project's own codec speaks NFSv3 over UDP and sends hostile input
while another client keeps working.  Debian's libnfs-utils has no nfs-stat: ``nfs-ls -s`` (FSSTAT) and
``nfs-ls -D`` (the EXPORT call) stand for it.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.support import REPO, Stack, can_make_netns, in_netns, netns

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not can_make_netns(), reason="needs root and ip netns"),
    pytest.mark.skipif(any(shutil.which(t) is None for t in ("nfs-ls", "nfs-cp", "nfs-cat", "showmount", "rpcinfo")),
                       reason="needs libnfs-utils, nfs-common and rpcbind (tests/install-deps.sh)"),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nfs")
    for name in ("data", "ro", "later"):
        (tmp / name).mkdir()
        (tmp / name).chmod(0o777)
    (tmp / "ro" / "hello.txt").write_text("hello, world\n")
    exports = tmp / "exports"
    exports.write_text(f"{tmp / 'data'} 127.0.0.1(rw,insecure,no_root_squash)\n{tmp / 'ro'} *(ro,insecure)\n")
    with netns() as ns:
        stack = Stack("--exports", str(exports), "--state-dir", str(tmp / "state"), netns=ns).start()
        try:
            yield tmp, ns, stack
        finally:
            stack.stop()
        assert "Traceback" not in stack.log_text(), stack.log_text()


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def test_rpcinfo_lists_nfs_3_on_2049(served):
    _, ns, _ = served
    out = in_netns(ns, "rpcinfo", "-p", "127.0.0.1").stdout
    for proto in ("tcp", "udp"):
        assert re.search(rf"100003\s+3\s+{proto}\s+2049\s+nfs", out), out
    r = in_netns(ns, "rpcinfo", "-T", "udp", "127.0.0.1", "nfs", "3")
    assert r.returncode == 0 and "ready and waiting" in r.stdout, r.stdout + r.stderr


def test_nfs_ls_and_nfs_cat(served):
    tmp, ns, _ = served
    r = in_netns(ns, "nfs-ls", f"nfs://127.0.0.1{tmp / 'ro'}")
    assert r.returncode == 0 and re.search(r"^-rw-r--r--\s+1\s+0\s+0\s+13 hello\.txt$", r.stdout, re.M), r.stdout
    r = in_netns(ns, "nfs-cat", f"nfs://127.0.0.1{tmp / 'ro'}/hello.txt")
    assert r.returncode == 0 and r.stdout == "hello, world\n", r.stdout + r.stderr
    r = in_netns(ns, "nfs-ls", "-D", "nfs://127.0.0.1")
    assert r.returncode == 0 and {f"nfs://127.0.0.1{tmp / 'data'}", f"nfs://127.0.0.1{tmp / 'ro'}"} <= set(
        r.stdout.split()), r.stdout
    r = in_netns(ns, "nfs-ls", "-s", f"nfs://127.0.0.1{tmp / 'ro'}")
    vfs = os.statvfs(tmp)
    m = re.search(r"(\d+) of (\d+) bytes free", r.stdout)
    assert m and int(m.group(2)) == vfs.f_blocks * vfs.f_frsize, r.stdout


def test_nfs_cp_64_mib_there_and_back(served):
    tmp, ns, _ = served
    src, back = tmp / "src.bin", tmp / "back.bin"
    with open(src, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))
    want = sha256(src)
    r = in_netns(ns, "nfs-cp", str(src), f"nfs://127.0.0.1{tmp / 'data'}/big.bin", timeout=300)
    assert r.returncode == 0 and "copied 67108864 bytes" in r.stdout, r.stdout + r.stderr
    assert sha256(tmp / "data" / "big.bin") == want
    r = in_netns(ns, "nfs-cp", f"nfs://127.0.0.1{tmp / 'data'}/big.bin", str(back), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sha256(back) == want
    r = in_netns(ns, "nfs-ls", f"nfs://127.0.0.1{tmp / 'data'}")
    assert re.search(r"\s67108864 big\.bin$", r.stdout, re.M), r.stdout


def test_ro_export_refuses_nfs_cp(served):
    tmp, ns, _ = served
    (tmp / "small").write_text("x")
    r = in_netns(ns, "nfs-cp", str(tmp / "small"), f"nfs://127.0.0.1{tmp / 'ro'}/new")
    assert r.returncode != 0 and "CREATE of /new failed with NFS3ERR_ROFS" in r.stderr, r.stdout + r.stderr
    assert not (tmp / "ro" / "new").exists()
    r = in_netns(ns, "nfs-cp", str(tmp / "small"), f"nfs://127.0.0.1{tmp / 'ro'}/hello.txt")  # over a file
    assert r.returncode != 0 and "NFS3ERR_ROFS" in r.stderr, r.stdout + r.stderr
    assert (tmp / "ro" / "hello.txt").read_text() == "hello, world\n"


# The project's own codec over a raw socket (UDP or TCP), in the namespace: a script run there.
RAW_CLIENT = r"""
import json, os, socket, struct, sys
sys.path[:0] = sys.argv[1:3]
from nfsstack.nfs3.client import PROC, Sattr3, decode, encode
from nfsstack.rpc.message import Credential, decode_reply, encode_call
from nfsstack.rpc.record import frame
from nfsstack.xdr import Packer, Unpacker

cmd, path = sys.argv[3], sys.argv[4]
ROOT = Credential(0, 0, (), "raw").to_auth()


def rpc(sock, prog, vers, proc, args, udp, xid=[0]):
    xid[0] += 1
    msg = encode_call(xid[0], prog, vers, proc, ROOT) + args
    if udp:
        sock.send(msg)
        data = sock.recv(70000)
    else:
        sock.sendall(frame(msg))
        data = b""
        while True:
            head = struct.unpack(">I", sock.recv(4, socket.MSG_WAITALL))[0]
            data += sock.recv(head & 0x7FFFFFFF, socket.MSG_WAITALL)
            if head & 0x80000000:
                break
    h = decode_reply(data)
    assert h.error is None, h.error
    return data, h.offset


def getport(prog, proto):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("127.0.0.1", 111))
    p = Packer()
    for v in (prog, 3, proto, 0):
        p.pack_uint(v)
    data, off = rpc(s, 100000, 2, 3, p.getvalue(), True)
    return Unpacker(data, off).unpack_uint()


def connect(port, udp):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    return s


def mount(udp):
    s = connect(getport(100005, 17 if udp else 6), udp)
    p = Packer()
    p.pack_string(path)
    data, off = rpc(s, 100005, 3, 1, p.getvalue(), udp)
    u = Unpacker(data, off)
    assert u.unpack_uint() == 0
    return u.unpack_opaque(64)


def nfs(sock, proc, *args, udp):
    data, off = rpc(sock, 100003, 3, PROC[proc], encode(proc, *args), udp)
    return decode(proc, data, off)


out = {}
if cmd == "udp":
    root = mount(True)
    s = connect(getport(100003, 17), True)
    out["fsinfo_rtmax"] = nfs(s, "FSINFO", root, udp=True).rtmax
    f = nfs(s, "CREATE", root, b"via-udp", 0, Sattr3(mode=0o644), udp=True).obj
    data = os.urandom(32768)
    w = nfs(s, "WRITE", f, 0, data, 2, udp=True)
    out["write"] = [w.status.name, w.count, w.committed]
    r = nfs(s, "READ", f, 0, 1 << 30, udp=True)
    out["read_ok"] = r.data == data
    out["read_count"] = r.count
    names = []
    cookie = 0
    while True:
        r = nfs(s, "READDIRPLUS", root, cookie, b"\0" * 8, 1 << 20, 1 << 20, udp=True)
        names += [e.name.decode() for e in r.entries]
        if r.eof:
            break
        cookie = r.entries[-1].cookie
    out["names"] = sorted(names)
elif cmd == "handle":
    print(mount(False).hex())
    sys.exit(0)
elif cmd == "getattr":
    s = connect(2049, False)
    r = nfs(s, "GETATTR", bytes.fromhex(sys.argv[5]), udp=False)
    out["status"] = r.status.name
print(json.dumps(out))
"""


def raw(ns, *args, timeout=60):
    r = in_netns(ns, sys.executable, "-c", RAW_CLIENT, str(REPO / "src"), str(REPO), *args, timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_nfs_over_udp(served):
    tmp, ns, _ = served
    for i in range(300):
        (tmp / "data" / f"udp-entry-{i:03}").touch()
    out = json.loads(raw(ns, "udp", str(tmp / "data")))
    assert out["fsinfo_rtmax"] == 32768
    assert out["write"] == ["OK", 32768, 2]
    assert out["read_ok"] and out["read_count"] == 32768
    listed = [n for n in out["names"] if n.startswith("udp-entry-")]
    assert listed == [f"udp-entry-{i:03}" for i in range(300)]
    assert (tmp / "data" / "via-udp").stat().st_size == 32768


def test_sighup_reloads_exports_and_keeps_handles(served):
    tmp, ns, stack = served
    handle = raw(ns, "handle", str(tmp / "data")).strip()
    exports = tmp / "exports"
    old = exports.read_text()
    try:
        exports.write_text(old + f"{tmp / 'later'} *(ro,insecure)\n")
        stack.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            out = in_netns(ns, "showmount", "-e", "127.0.0.1").stdout
            if str(tmp / "later") in out:
                break
            time.sleep(0.2)
        assert str(tmp / "later") in out, out
        assert '"status": "OK"' in raw(ns, "getattr", str(tmp / "data"), handle), "handles outlive a reload"
        exports.write_text(old + "/x *(frobnicate)\n")  # a bad file: the old exports stay
        stack.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while "not reloaded" not in stack.log_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "unknown export option 'frobnicate'" in stack.log_text()
        assert str(tmp / "later") in in_netns(ns, "showmount", "-e", "127.0.0.1").stdout
    finally:
        exports.write_text(old)
        stack.proc.send_signal(signal.SIGHUP)


# A hostile client: first 20 connections that each send part of a record and then nothing (they hold the
# server's attention, if it lets them); then COUNT calls, one connection each, of five hostile kinds. Every call
# must get its answer, and the right one; what it got is printed as JSON.
HOSTILE = r"""
import collections, json, os, random, socket, struct, sys
sys.path[:0] = sys.argv[1:3]
from nfsstack.nfs3.client import PROC, decode, encode
from nfsstack.nfs3.codec import RTMAX
from nfsstack.nfs3.codec import Stat
from nfsstack.rpc.message import Credential, decode_reply, encode_call
from nfsstack.rpc.record import frame
from tests.support import recv_record as record
root = bytes.fromhex(sys.argv[3])
count = int(sys.argv[4])
rnd = random.Random(1)
auth = Credential(0, 0, (), "evil").to_auth()


def call(xid, proc, args):
    with socket.create_connection(("127.0.0.1", 2049), timeout=10) as s:
        s.sendall(frame(encode_call(xid, 100003, 3, PROC[proc] if isinstance(proc, str) else proc, auth) + args))
        data = record(s)
    h = decode_reply(data)
    assert h.xid == xid, (h.xid, xid)
    return data, h


def nfs(xid, proc, *args):
    data, h = call(xid, proc, encode(proc, *args))
    assert h.error is None, h.error
    return decode(proc, data, h.offset)


big = nfs(0, "LOOKUP", root, b"big").object
# names that are not one path component, or too long; ".." of the export's root is the root itself
BAD_NAMES = [(b"../../etc", Stat.INVAL), (b"a/b", Stat.INVAL), (b"x\0y", Stat.INVAL), (b"n" * 300, Stat.NAMETOOLONG),
             (b"..", None)]
held = []
for _ in range(20):
    s = socket.create_connection(("127.0.0.1", 2049), timeout=10)
    s.sendall(struct.pack(">I", 0x80000000 | 1000) + b"x" * 10)  # 10 bytes of a 1000-byte record, then silence
    held.append(s)
print("holding", flush=True)
sys.stdin.readline()

answers, wrong = collections.Counter(), []
for xid in range(1, count + 1):
    kind = ("forged", "truncated", "huge read", "bad name", "garbage")[rnd.randrange(5)]
    if kind == "forged":  # one bit flipped anywhere: the MAC no longer matches
        fh = bytearray(root); fh[rnd.randrange(len(fh))] ^= 1 << rnd.randrange(8)
        r = nfs(xid, "GETATTR", bytes(fh))
        ok = r.status == Stat.BADHANDLE
    elif kind == "truncated":
        r = nfs(xid, "READ", big[: rnd.randrange(len(big))], 0, 10)
        ok = r.status == Stat.BADHANDLE
    elif kind == "huge read":  # 1 GiB asked: RTMAX answered
        r = nfs(xid, "READ", big, 0, 1 << 30)
        ok = r.ok and r.count == RTMAX == len(r.data) and not r.eof
    elif kind == "bad name":
        name, want = rnd.choice(BAD_NAMES)
        r = nfs(xid, "LOOKUP", root, name)
        ok = r.ok and r.object == root if want is None else r.status == want
    else:  # random procedure, random arguments: a reply, never a fault
        data, h = call(xid, rnd.randrange(23), os.urandom(rnd.randrange(200)))
        if h.error is not None:
            ok = str(h.error) in ("GARBAGE_ARGS", "PROC_UNAVAIL")
        else:
            ok = len(data) == h.offset or int.from_bytes(data[h.offset:h.offset + 4], "big") != Stat.SERVERFAULT
        r = h.error
    answers[kind] += 1
    if not ok and len(wrong) < 20:
        wrong.append(f"{kind}: {r}"[:300])
for s in held:
    s.close()
print(json.dumps({"answers": answers, "wrong": wrong}))
"""


def test_hostile_client_does_not_stop_the_others(served):
    tmp, ns, stack = served
    (tmp / "data" / "big").write_bytes(os.urandom(2 << 20))
    handle = raw(ns, "handle", str(tmp / "data")).strip()
    count = 1000
    hostile = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", HOSTILE, str(REPO / "src"),
                                str(REPO), handle, str(count)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)

    def good_client():
        r = in_netns(ns, "nfs-cat", f"nfs://127.0.0.1{tmp / 'ro'}/hello.txt")
        assert r.returncode == 0 and r.stdout == "hello, world\n", r.stdout + r.stderr

    try:
        assert hostile.stdout.readline() == "holding\n"
        good_client()  # while 20 connections hold half a record each
        hostile.stdin.write("go\n")
        hostile.stdin.flush()
        for _ in range(200):  # and while the hostile calls come
            if hostile.poll() is not None:
                break
            good_client()
    finally:
        out, _ = hostile.communicate(timeout=120)
    assert hostile.returncode == 0, out
    report = json.loads(out)
    assert report["wrong"] == [], report
    assert sum(report["answers"].values()) == count and len(report["answers"]) == 5, report
    assert "Traceback" not in stack.log_text()
    assert sorted(os.listdir(tmp / "ro")) == ["hello.txt"]
