"""RPCSEC_GSS with Kerberos 5 against the real server over real sockets (RFC 2203, RFC 4121).

A throwaway KDC (tests/kdc.py) gives the server its keytab (nfs/nfsserver) and the test its ticket (alice);
``twistd -n nfsstack --keytab KEYTAB`` serves nfsd in its worker processes (the default ``--workers``), so the
keytab reaching the workers is tested too.  The server is given no krb5.conf at all (KRB5_CONFIG points
nowhere): accepting needs only the keytab.  The client is tests/support.py's NfsClient with the project's
RPCSEC_GSS client (rpc/gss_client.py), which checks every reply's verifier.
"""

from __future__ import annotations

import os
import socket

import pytest

from nfsstack.nfs3.client import Sattr3, encode
from nfsstack.rpc.gss import GSS_S_COMPLETE, GssCredential, GssInitResult, GssProc, GssService, encode_init_arg
from nfsstack.rpc.gss_client import GssSession
from nfsstack.rpc.message import (
    AcceptedError, AcceptStat, AuthFlavor, AuthStat, DeniedError, OpaqueAuth, decode_reply, encode_call,
)
from nfsstack.xdr import Unpacker
from tests import kdc as kdc_module
from tests.support import NfsClient, Stack, free_port

pytestmark = pytest.mark.skipif(kdc_module.available() is not None, reason=kdc_module.available() or "")
gssapi = pytest.importorskip("gssapi")

SERVICES = [GssService.NONE, GssService.INTEGRITY, GssService.PRIVACY]
NFS, V3 = 100003, 3


def exports_line(path: str) -> str:
    """The export for these tests: to 127.0.0.1 with every Kerberos flavour and AUTH_SYS."""
    return f'"{path}" 127.0.0.1(rw,insecure,sec=krb5:krb5i:krb5p:sys)\n'


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    top = tmp_path_factory.mktemp("kerberos")
    with kdc_module.KDC(top / "realm", port=free_port()) as kdc:
        keytab = kdc.keytab("server.keytab", "nfs/nfsserver")
        env = kdc.kinit("alice", top / "alice.cc")
        export = top / "export"
        export.mkdir()
        export.chmod(0o1777)  # written by the anonymous user the principal maps to here
        (top / "exports").write_text(exports_line(str(export)))
        port, status_port = free_port(), free_port()
        stack = Stack("--bind", "127.0.0.1", "--nfs-port", "0", "--status-port", str(status_port),
                      "--portmap-port", str(port),
                      "--exports", str(top / "exports"), "--keytab", str(keytab), "--workers", "2",
                      env={"KRB5_CONFIG": str(top / "no-such-krb5.conf"), "KRB5CCNAME": "FILE:/nonexistent"})
        stack.start(port)
        stack.status_port = status_port
        try:
            with kdc_module.client_env(env):
                yield port, str(export), stack
        finally:
            stack.stop()
            log = stack.log_text()
            assert "Traceback" not in log, log
            assert "Kerberos (RPCSEC_GSS krb5, krb5i, krb5p) on" in log, log


def client(server, service=GssService.NONE, proto="tcp") -> NfsClient:
    port, export, _ = server
    return NfsClient(export, port, proto=proto, gss_service=service)


def new_file(c: NfsClient, name: str) -> bytes:
    r = c("CREATE", c.root, name.encode(), 0, Sattr3(mode=0o666))
    assert r.ok, r.status
    return r.obj


@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("service", SERVICES, ids=["krb5", "krb5i", "krb5p"])
def test_getattr_write_read_with_each_service(server, service, proto):
    c = client(server, service, proto)
    assert c("GETATTR", c.root).ok
    fh = new_file(c, f"file-{service.name}-{proto}")
    data = os.urandom(40000 if proto == "tcp" else 20000)
    r = c("WRITE", fh, 0, data, 2)
    assert r.ok and r.count == len(data)
    r = c("READ", fh, 0, len(data))
    assert r.ok and r.data == data
    c.close()


def test_the_reply_verifier_is_the_mic_of_the_sequence_number(server):
    c = client(server)
    c.xid += 1
    message, seq = c.gss.call_message(c.xid, NFS, V3, 1, encode("GETATTR", c.root))
    reply = c.exchange(message)
    header = decode_reply(reply)
    assert header.verf.flavor == AuthFlavor.RPCSEC_GSS
    c.gss.gss.verify_signature(seq.to_bytes(4, "big"), header.verf.body)  # raises if it is not
    with pytest.raises(gssapi.exceptions.GSSError):
        c.gss.gss.verify_signature((seq + 1).to_bytes(4, "big"), header.verf.body)


def test_a_replayed_call_gets_no_reply_and_the_next_seq_works(server):
    c = client(server, GssService.INTEGRITY)
    c.xid += 1
    message, seq = c.gss.call_message(c.xid, NFS, V3, 1, encode("GETATTR", c.root))
    c.gss.reply_results(c.exchange(message), seq)
    with pytest.raises(socket.timeout):
        c.exchange(message, timeout=1.5)  # the same bytes, the same seq: dropped (RFC 2203 5.3.3.1)
    assert c("GETATTR", c.root).ok


def test_krb5i_refuses_a_changed_body_and_the_file_is_unchanged(server):
    c = client(server, GssService.INTEGRITY)
    fh = new_file(c, "guarded")
    assert c("WRITE", fh, 0, b"A" * 1000, 2).ok
    c.xid += 1
    message, seq = c.gss.call_message(c.xid, NFS, V3, 7, encode("WRITE", fh, 0, b"B" * 1000, 2))
    changed = bytearray(message)
    changed[-600] ^= 0x20  # one byte of the data, in flight
    with pytest.raises(AcceptedError) as refused:
        c.gss.reply_results(c.exchange(bytes(changed)), seq)
    assert refused.value.stat == AcceptStat.GARBAGE_ARGS
    assert c("READ", fh, 0, 2000).data == b"A" * 1000


def test_an_unknown_handle_is_credproblem_and_a_new_context_works(server):
    c = client(server)
    c.gss.handle = os.urandom(16)
    with pytest.raises(DeniedError) as refused:
        c("GETATTR", c.root)
    assert refused.value.auth_stat == AuthStat.RPCSEC_GSS_CREDPROBLEM
    c.gss = c.gss_session(GssService.INTEGRITY)
    assert c("GETATTR", c.root).ok


def test_destroy_then_a_data_call_is_refused(server):
    c = client(server, GssService.PRIVACY)
    c.xid += 1
    message, seq = c.gss.destroy_message(c.xid, NFS, V3)
    c.gss.reply_results(c.exchange(message), seq, wrapped=False)
    with pytest.raises(DeniedError) as refused:
        c("GETATTR", c.root)
    assert refused.value.auth_stat == AuthStat.RPCSEC_GSS_CREDPROBLEM


@pytest.mark.parametrize("token", [b"", b"garbage", b"\x60\x82\xff\xff" + bytes(200)])
def test_a_garbage_init_token_gets_an_error_and_the_server_keeps_serving(server, token):
    c = client(server)
    cred = OpaqueAuth(AuthFlavor.RPCSEC_GSS, GssCredential(GssProc.INIT, 0, GssService.NONE).encode())
    c.xid += 1
    reply = c.exchange(encode_call(c.xid, NFS, V3, 0, cred) + encode_init_arg(token))
    header = decode_reply(reply)
    assert header.error is None
    result = GssInitResult.decode(Unpacker(reply, header.offset))
    assert result.major != GSS_S_COMPLETE and result.handle == b""
    assert c("GETATTR", c.root).ok


def test_krb5p_hides_the_written_bytes(server):
    c = client(server, GssService.PRIVACY)
    fh = new_file(c, "private")
    secret = b"nobody on the wire reads this " * 30
    c.xid += 1
    message, seq = c.gss.call_message(c.xid, NFS, V3, 7, encode("WRITE", fh, 0, secret, 2))
    assert b"nobody on the wire" not in message
    reply = c.exchange(message)
    assert b"nobody on the wire" not in reply
    c.gss.reply_results(reply, seq)
    data = c("READ", fh, 0, len(secret)).data
    assert data == secret


def test_mountd_and_the_portmapper_take_rpcsec_gss_too(server):
    """Every RPC service of the stack has the engine: a context made with the portmapper's NULL works there."""
    port, _, _ = server
    session = GssSession("nfs@nfsserver", GssService.INTEGRITY)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        from tests.support import frame, recv_record

        s.sendall(frame(session.init_message(1, 100000, 2)))
        assert session.init_reply(recv_record(s))
        message, seq = session.call_message(2, 100000, 2, 0)
        s.sendall(frame(message))
        assert session.reply_results(recv_record(s), seq) == b""


def test_status_and_metrics_count_the_kerberos_contexts_of_the_workers(server):
    """/status and /metrics sum the RPCSEC_GSS engines of the stack and its nfsd workers: the contexts
    established, and what happened (contexts made, replays dropped)."""
    import json
    import urllib.request

    _, _, stack = server
    c = client(server, GssService.INTEGRITY)
    assert c("GETATTR", c.root).ok
    c.xid += 1
    message, seq = c.gss.call_message(c.xid, NFS, V3, 1, encode("GETATTR", c.root))
    c.gss.reply_results(c.exchange(message), seq)
    with pytest.raises(socket.timeout):
        c.exchange(message, timeout=1.5)

    def get(path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{stack.status_port}{path}", timeout=10) as r:
            return r.read().decode()

    kerberos = json.loads(get("/status"))["kerberos"]
    assert kerberos["contexts"] >= 1, kerberos
    assert kerberos["events"]["contexts made"] >= 1 and kerberos["events"]["replays dropped"] >= 1, kerberos
    metrics = get("/metrics")
    gauge = [line for line in metrics.splitlines() if line.startswith("nfsstack_gss_contexts ")]
    assert gauge and float(gauge[0].split()[1]) >= 1, metrics
    assert 'nfsstack_gss_events_total{event="replays dropped"}' in metrics, metrics
    c.close()


@pytest.mark.parametrize("listed", [True, False], ids=["listed", "not-listed"])
def test_local_realms_make_a_realms_users_local_users_in_the_workers(tmp_path, listed):
    """The server is given no krb5.conf (no default realm): ``daemon@REALM`` is the anonymous user, unless
    ``--local-realms REALM`` lists the realm, when it is the local user daemon (uid 1), in nfsd's workers too;
    the start log names the realms, or warns that no realm's users are local users."""
    with kdc_module.KDC(tmp_path / "realm", port=free_port()) as kdc:
        keytab = kdc.keytab("server.keytab", "nfs/nfsserver")
        env = kdc.kinit("daemon", tmp_path / "daemon.cc")
        export = tmp_path / "export"
        export.mkdir()
        export.chmod(0o1777)
        (tmp_path / "exports").write_text(exports_line(str(export)))
        port = free_port()
        stack = Stack("--bind", "127.0.0.1", "--nfs-port", "0", "--status-port", "0", "--portmap-port", str(port),
                      "--exports", str(tmp_path / "exports"), "--keytab", str(keytab), "--workers", "2",
                      *(["--local-realms", kdc.realm] if listed else []),
                      env={"KRB5_CONFIG": str(tmp_path / "no-such-krb5.conf"), "KRB5CCNAME": "FILE:/nonexistent"})
        stack.start(port)
        try:
            with kdc_module.client_env(env):
                c = NfsClient(str(export), port, gss_service=GssService.NONE)
                try:
                    assert c("CREATE", c.root, b"made", 0, Sattr3(mode=0o644)).ok
                finally:
                    c.close()
        finally:
            stack.stop()
        log = stack.log_text()
    assert "Traceback" not in log, log
    owner = (export / "made").stat().st_uid
    if listed:
        assert owner == 1, owner
        assert f"Kerberos: the users of {kdc.realm} are local users" in log, log
    else:
        assert owner == 65534, owner
        from nfsstack.exports.identity import idmapd_local_realms

        if idmapd_local_realms() is None:  # a host whose idmapd.conf lists realms has those
            assert "Kerberos: no realm's users are local users" in log, log
