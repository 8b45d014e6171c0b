"""Hostile and broken input against a real ``twistd -n nfsstack`` over loopback sockets.

Each case gets the protocol's error reply or a closed connection, and a NULL
call right after still succeeds.
"""

import random
import socket
import struct
import time

import pytest

from nfsstack.portmap.types import Mapping
from nfsstack.rpc.message import AcceptStat, AuthFlavor, AuthStat, OpaqueAuth, RejectStat, decode_reply
from nfsstack.rpc.record import frame
from nfsstack.xdr import Packer
from tests.support import Stack, call_message, free_port, is_closed, null_ok, recv_record, tcp_call


@pytest.fixture(scope="module")
def port():
    port = free_port()
    stack = Stack("--bind", "127.0.0.1", "--nfs-port", "0", "--status-port", "0", "--portmap-port", str(port)).start(port)
    yield port
    stack.stop()
    assert "Traceback" not in stack.log_text(), stack.log_text()


def error_of(reply: bytes):
    header = decode_reply(reply)
    assert header.error is not None, "expected an error reply"
    return header.error


def both(port, message):
    """The reply over TCP and over UDP."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(frame(message))
        tcp = recv_record(s)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.settimeout(5)
        u.sendto(message, ("127.0.0.1", port))
        udp = u.recvfrom(65536)[0]
    return tcp, udp


def test_null_over_tcp_and_udp(port):
    assert null_ok(port)


def test_random_bytes_close_the_connection(port):
    rng = random.Random(1)
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            try:
                s.sendall(rng.randbytes(2 << 20))
            except (BrokenPipeError, ConnectionResetError):
                pass
            assert is_closed(s)
    assert null_ok(port)


def test_random_records_get_errors_or_close(port):
    rng = random.Random(2)
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(frame(rng.randbytes(rng.randrange(1, 300))))
            s.settimeout(5)
            try:
                data = s.recv(4)
            except ConnectionResetError:
                data = b""
            if data:  # an answer: must be a well-formed error reply
                s.settimeout(5)
                body = recv_rest(s, data)
                assert decode_reply(body).error is not None
    assert null_ok(port)


def recv_rest(s, head):
    length = struct.unpack(">I", head)[0] & 0x7FFFFFFF
    body = b""
    while len(body) < length:
        body += s.recv(length - len(body))
    return body


def test_truncated_headers(port):
    full = call_message(100000, 2, 3, Packer().getvalue(), cred=OpaqueAuth(AuthFlavor.AUTH_SYS, b"\0" * 20))
    for n in (1, 4, 8, 12, 24, 31, 40, 52, len(full) - 1):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(frame(full[:n]))
            assert is_closed(s), n
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(0.3)
            u.sendto(full[:n], ("127.0.0.1", port))
            with pytest.raises(socket.timeout):
                u.recvfrom(65536)
    assert null_ok(port)


def test_record_length_2_31_minus_1_closes_at_once(port):
    """Closed for its length, not for waiting: the server's idle timeout (360 s here) is far beyond the 5 s
    that ``is_closed`` waits, so only the record's header can have closed it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(struct.pack(">I", 0xFFFFFFFF))
        assert is_closed(s, timeout=5.0)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(struct.pack(">I", 0x7FFFFFFF) + b"x" * 100)  # a non-last fragment of the same size
        assert is_closed(s)
    assert null_ok(port)


def test_rpc_version_3(port):
    message = bytearray(call_message(100000, 2, 0))
    message[8:12] = struct.pack(">I", 3)
    for reply in both(port, bytes(message)):
        err = error_of(reply)
        assert err.stat == RejectStat.RPC_MISMATCH and (err.low, err.high) == (2, 2)
    assert null_ok(port)


def test_unknown_program(port):
    for reply in both(port, call_message(390999, 1, 0)):
        assert error_of(reply).stat == AcceptStat.PROG_UNAVAIL
    assert null_ok(port)


def test_wrong_version_carries_low_and_high(port):
    for reply in both(port, call_message(100000, 5, 0)):
        err = error_of(reply)
        assert err.stat == AcceptStat.PROG_MISMATCH and (err.low, err.high) == (2, 4)
    assert null_ok(port)


def test_unknown_procedure(port):
    for reply in both(port, call_message(100000, 2, 99)):
        assert error_of(reply).stat == AcceptStat.PROC_UNAVAIL
    assert null_ok(port)


def test_garbage_arguments(port):
    for reply in both(port, call_message(100000, 2, 3, b"\0\0\0")):
        assert error_of(reply).stat == AcceptStat.GARBAGE_ARGS
    for reply in both(port, call_message(100000, 4, 3, b"\0\0\0\1\0\0\0\4\xff\xff\xff\xff")):
        assert error_of(reply).stat == AcceptStat.GARBAGE_ARGS
    assert null_ok(port)


def test_auth_sys_with_10000_gids(port):
    p = Packer()
    p.pack_uint(0)
    p.pack_string("attacker")
    p.pack_uint(0)
    p.pack_uint(0)
    p.pack_array(list(range(10000)), Packer.pack_uint)
    message = call_message(100000, 2, 0, cred=OpaqueAuth(AuthFlavor.AUTH_SYS, p.getvalue()))
    for reply in both(port, message):
        err = error_of(reply)
        assert err.stat == RejectStat.AUTH_ERROR and err.auth_stat == AuthStat.AUTH_BADCRED
    assert null_ok(port)


def test_udp_datagram_of_one_byte(port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.settimeout(0.5)
        u.sendto(b"\x01", ("127.0.0.1", port))
        with pytest.raises(socket.timeout):
            u.recvfrom(65536)
    assert null_ok(port)


def test_pipelined_and_multi_fragment_calls(port):
    """100 calls in one write, one of them split in three fragments: 100 replies, xids matched."""
    stream = b""
    for xid in range(1, 101):
        m = call_message(100000, 2, 3, _mapping(100000, 2, 6), xid=xid)
        if xid == 50:
            stream += struct.pack(">I", 10) + m[:10] + struct.pack(">I", 20) + m[10:30]
            stream += struct.pack(">I", 0x80000000 | (len(m) - 30)) + m[30:]
        else:
            stream += frame(m)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(stream)
        xids = []
        for _ in range(100):
            r = recv_record(s)
            h = decode_reply(r)
            assert h.error is None and struct.unpack_from(">I", r, h.offset)[0] == port
            xids.append(h.xid)
    assert sorted(xids) == list(range(1, 101))


def _mapping(prog, vers, prot):
    p = Packer()
    Mapping(prog, vers, prot, 0).pack(p)
    return p.getvalue()


def test_idle_and_half_sent_connections_are_reaped():
    port = free_port()
    stack = Stack("--bind", "127.0.0.1", "--nfs-port", "0", "--status-port", "0", "--portmap-port", str(port), "--idle-timeout", "1").start(port)
    try:
        idle = socket.create_connection(("127.0.0.1", port))
        half = socket.create_connection(("127.0.0.1", port))
        half.sendall(struct.pack(">I", 0x80000000 | 100) + b"only part of it")
        assert is_closed(idle, timeout=6) and is_closed(half, timeout=6)
        assert null_ok(port)
    finally:
        stack.stop()


def test_connections_beyond_the_limit_are_refused_cleanly():
    port = free_port()
    stack = Stack("--bind", "127.0.0.1", "--nfs-port", "0", "--status-port", "0", "--portmap-port", str(port), "--max-connections", "4").start(port)
    try:
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        for s in held:  # make sure all four are accepted before the fifth arrives
            s.sendall(frame(call_message(100000, 2, 0)))
            recv_record(s)
        extra = socket.create_connection(("127.0.0.1", port))
        assert is_closed(extra)
        held.pop().close()
        time.sleep(0.3)
        assert decode_reply(tcp_call(port, 100000, 2, 0)).error is None
        for s in held:
            s.close()
        assert stack.proc.poll() is None
    finally:
        stack.stop()
