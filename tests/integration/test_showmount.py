"""Real clients against mountd: showmount (nfs-common) and rpcinfo, with the stack on port 111 in a namespace."""

import re
import shutil
import subprocess
import sys

import pytest

from tests.support import REPO, Stack, can_make_netns, in_netns, netns, server_env, twistd

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not can_make_netns(), reason="needs root and ip netns"),
    pytest.mark.skipif(shutil.which("showmount") is None or shutil.which("rpcinfo") is None,
                       reason="needs showmount (nfs-common) and rpcinfo (rpcbind)"),
]

MNT_CLIENT = r"""
import socket, struct, sys
sys.path[:0] = [sys.argv[3], sys.argv[4]]
from nfsstack.rpc.message import encode_call, decode_reply
from nfsstack.rpc.record import frame
from nfsstack.xdr import Packer, Unpacker
p = Packer(); p.pack_string(sys.argv[2])
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.connect(("127.0.0.1", int(sys.argv[1])))
s.sendall(frame(encode_call(7, 100005, 3, 1) + p.getvalue()))
data = b""
while len(data) < 4 or len(data) < 4 + (struct.unpack(">I", data[:4])[0] & 0x7fffffff):
    data += s.recv(65536)
h = decode_reply(data[4:])
print(Unpacker(data[4:], h.offset).unpack_int())
"""


@pytest.fixture
def exported(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "ro").mkdir()
    exports = tmp_path / "exports"
    exports.write_text(f"{data} 127.0.0.1(rw,insecure) 192.0.2.0/24(ro)\n{tmp_path / 'ro'} *(ro)\n")
    return tmp_path, exports


def mountd_port(ns):
    listing = in_netns(ns, "rpcinfo", "-p", "127.0.0.1").stdout
    m = re.search(r"100005\s+3\s+tcp\s+(\d+)\s+mountd", listing)
    assert m, listing
    return int(m.group(1)), listing


def mount_call(ns, port, path):
    r = in_netns(ns, sys.executable, "-c", MNT_CLIENT, str(port), str(path), str(REPO / "src"), str(REPO))
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip())


def test_showmount_e_a_and_a_restart(exported):
    tmp, exports = exported
    with netns() as ns:
        stack = Stack("--exports", str(exports), "--state-dir", str(tmp / "state"), netns=ns).start()
        try:
            port, listing = mountd_port(ns)
            for vers in ("1", "2", "3"):
                for proto in ("tcp", "udp"):
                    assert re.search(rf"100005\s+{vers}\s+{proto}\s+{port}\s+mountd", listing), listing
            out = in_netns(ns, "showmount", "-e", "127.0.0.1").stdout
            assert "Export list for 127.0.0.1:" in out
            assert re.search(rf"^{re.escape(str(tmp / 'data'))}\s+127\.0\.0\.1,192\.0\.2\.0/24$", out, re.M), out
            assert re.search(rf"^{re.escape(str(tmp / 'ro'))}\s+\*$", out, re.M), out
            assert mount_call(ns, port, tmp / "data") == 0
            assert mount_call(ns, port, tmp / "ro") == 13  # secure export, unprivileged port: MNT3ERR_ACCES
            assert mount_call(ns, port, tmp / "nothing") == 2  # MNT3ERR_NOENT
            out = in_netns(ns, "showmount", "-a", "127.0.0.1").stdout
            assert f"127.0.0.1:{tmp / 'data'}" in out and "/ro" not in out, out
            stack.stop()
            stack = Stack("--exports", str(exports), "--state-dir", str(tmp / "state"), netns=ns).start()
            out = in_netns(ns, "showmount", "-a", "127.0.0.1").stdout
            assert f"127.0.0.1:{tmp / 'data'}" in out, "the mount list must survive a restart:\n" + out
        finally:
            stack.stop()
        assert "Traceback" not in stack.log_text(), stack.log_text()


def test_bad_exports_file_is_a_usage_error(tmp_path):
    bad = tmp_path / "exports"
    bad.write_text("/srv *(rw)\n/srv2 *(rw,frobnicate)\n")
    r = subprocess.run([twistd(), "-n", "nfsstack", "--exports", str(bad)], capture_output=True, text=True,
                       env=server_env(), cwd=tmp_path, timeout=60)
    assert r.returncode != 0 and f"{bad}:2: unknown export option 'frobnicate'" in r.stdout + r.stderr


def test_exports_check_command(tmp_path):
    good = tmp_path / "good"
    good.write_text(f"{tmp_path} *(rw,insecure)\n")
    r = subprocess.run([sys.executable, "-m", "nfsstack.cli", "exports", "check", str(good)], capture_output=True,
                       text=True, env=server_env())
    assert r.returncode == 0 and "1 export(s), OK" in r.stdout and "insecure" in r.stdout
    missing = tmp_path / "missing"
    missing.write_text(f"{tmp_path} *(rw)\n/does/not/exist *(ro)\n")
    r = subprocess.run([sys.executable, "-m", "nfsstack.cli", "exports", "check", str(missing)], capture_output=True,
                       text=True, env=server_env())
    # A file may be checked on another machine than its server's: a missing directory is a warning there.
    assert r.returncode == 0 and f"warning: {missing}:2: /does/not/exist is not a directory here" in r.stderr
    bad = tmp_path / "bad"
    bad.write_text(f"{tmp_path} *(rw,bogus)\n/does/not/exist (ro)\nrelative *\n")
    r = subprocess.run([sys.executable, "-m", "nfsstack.cli", "exports", "check", str(bad)], capture_output=True,
                       text=True, env=server_env())
    assert r.returncode == 1 and f"error: {bad}:1: unknown export option 'bogus'" in r.stderr, r.stderr
    assert f"error: {bad}:3: export path 'relative' is not absolute" in r.stderr, r.stderr
