"""exports(5) ``sec=`` over real sockets: what MNT answers, and what nfsd and NFS_ACL do with a call whose
flavour the export does not list, beside an export that keeps working.

RPCSEC_GSS calls themselves need a KDC and the GSS engine; here the calls are AUTH_SYS, as a client without
Kerberos makes them (tests/unit/test_principals.py has Kerberos calls as the engine hands them over)."""

import os

import pytest

from nfsstack.exports.handles import kernel_handles_work
from nfsstack.nfs3.codec import Stat
from nfsstack.xdr import Packer, Unpacker
from tests.support import NfsClient, Stack, free_port

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not kernel_handles_work("/"), reason="needs root")

KRB5, KRB5I, KRB5P, AUTH_SYS = 390003, 390004, 390005, 1


class Client(NfsClient):
    def mnt(self, path) -> tuple[int, list[int]]:
        """MNT v3 of ``path``: its status and auth_flavors (RFC 1813 section 5.2.1)."""
        p = Packer()
        p.pack_string(str(path))
        import socket

        with socket.create_connection((self.host, self._getport(100005, 3)), timeout=self.timeout) as s:
            data, off = self._rpc(s, 100005, 3, 1, p.getvalue(), False)
        u = Unpacker(data, off)
        status = u.unpack_uint()
        if status:
            return status, []
        u.unpack_opaque(64)
        return status, u.unpack_array(Unpacker.unpack_int, 16)

    def getacl_status(self, handle: bytes) -> int:
        """NFS_ACL v3 GETACL (program 100227, on nfsd's connection) of ``handle``: its status."""
        p = Packer()
        p.pack_opaque(handle)
        p.pack_uint(0x1)  # NFS_ACL
        data, off = self._rpc(self.sock, 100227, 3, 1, p.getvalue(), False)
        return Unpacker(data, off).unpack_uint()


@pytest.fixture
def server(tmp_path):
    for name in ("krb", "sys", "mixed"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "file").write_text(name)
    (tmp_path / "krb" / "below").mkdir()
    (tmp_path / "exports").write_text(f"{tmp_path / 'krb'} 127.0.0.1(rw,insecure,no_root_squash,sec=krb5p:krb5i:krb5)\n"
                                      f"{tmp_path / 'sys'} 127.0.0.1(rw,insecure,no_root_squash)\n"
                                      f"{tmp_path / 'mixed'} 127.0.0.1(rw,insecure,no_root_squash,sec=krb5:sys)\n")
    port = free_port()
    stack = Stack("--bind", "127.0.0.1", "--portmap-port", str(port), "--nfs-port", "0", "--status-port", "0",
                  "--exports", str(tmp_path / "exports"), "--state-dir", str(tmp_path / "state"),
                  "--grace-time", "0", workdir=str(tmp_path)).start(port)
    yield tmp_path, port, stack
    stack.stop()
    assert "Traceback" not in stack.log_text(), stack.log_text()


def test_mnt_answers_each_exports_flavours_in_the_order_of_sec(server):
    tmp, port, _ = server
    client = Client(str(tmp / "sys"), port)
    try:
        assert client.mnt(tmp / "krb") == (0, [KRB5P, KRB5I, KRB5])  # an AUTH_SYS MNT is answered: rpc.mountd
        assert client.mnt(tmp / "mixed") == (0, [KRB5, AUTH_SYS])
        assert client.mnt(tmp / "sys") == (0, [AUTH_SYS])
    finally:
        client.close()


def test_an_auth_sys_call_to_a_kerberos_export_is_refused_and_one_beside_it_works(server):
    """knfsd's check_nfsd_access at every handle: nfserr_wrongsec, NFS3ERR_ACCES to an NFSv3 client; the same
    client's calls to a sec=sys export, and to one listing sys beside krb5, go on."""
    tmp, port, stack = server
    krb = Client(str(tmp / "krb"), port)  # mounting works: MNT does not check the flavour
    plain = Client(str(tmp / "sys"), port)
    mixed = Client(str(tmp / "mixed"), port)
    try:
        for _ in range(3):
            assert krb("LOOKUP", krb.root, b"file").status == Stat.ACCES
            assert krb("READDIR", krb.root, 0, b"\0" * 8, 4096).status == Stat.ACCES
            assert krb("FSSTAT", krb.root).status == Stat.ACCES
            assert krb.getacl_status(krb.root) == Stat.ACCES  # NFS_ACL beside nfsd: the same check
            found = plain("LOOKUP", plain.root, b"file")
            assert found.ok and plain("GETATTR", found.object).ok
            assert plain.getacl_status(plain.root) == Stat.OK
            assert mixed("LOOKUP", mixed.root, b"file").ok
    finally:
        for client in (krb, plain, mixed):
            client.close()
    # Refused calls are logged with the client and the export, once a minute per client and export.
    log = stack.log_text()
    refusal = f"refused 127.0.0.1: a call with AUTH_SYS, which the export's sec= does not list ({tmp / 'krb'})"
    assert log.count(refusal) == 1, log


def test_auth_sys_may_ask_getattr_and_fsinfo_of_a_kerberos_exports_root_only(server):
    """RFC 2623 section 2.3.2, knfsd's NFSD_MAY_BYPASS_GSS_ON_ROOT: a client may use AUTH_SYS while it mounts
    (the Linux client asks FSINFO and GETATTR of the root with AUTH_SYS when the mount's flavour fails, as when
    root has no keytab), so those two are answered on the export's root; any other call, and the same two on a
    directory below the root (mounted by MNT), are refused as before; nothing is logged for the two."""
    tmp, port, stack = server
    krb = Client(str(tmp / "krb"), port)
    below = Client(str(tmp / "krb" / "below"), port)
    try:
        r = krb("GETATTR", krb.root)
        assert r.ok, r.status
        assert r.obj_attributes.fileid == os.stat(tmp / "krb").st_ino
        assert krb("FSINFO", krb.root).ok
        assert krb("PATHCONF", krb.root).status == Stat.ACCES
        assert krb("ACCESS", krb.root, 0x1f).status == Stat.ACCES
        assert below("GETATTR", below.root).status == Stat.ACCES
        assert below("FSINFO", below.root).status == Stat.ACCES
    finally:
        krb.close()
        below.close()
    log = stack.log_text()
    refusal = f"refused 127.0.0.1: a call with AUTH_SYS, which the export's sec= does not list ({tmp / 'krb'})"
    assert log.count(refusal) == 1, log  # PATHCONF's (the first refused), once a minute
