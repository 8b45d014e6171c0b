"""Kerberos for the kernel-client scenarios (header ``# kerberos: yes``): a realm in the test's namespace, the
guest's Kerberos client, and a packet capture the guest starts and stops.

:class:`Realm` runs an MIT KDC (tests/kdc.py) in the namespace before the server starts, and makes:

* the server's keytab (``nfs/nfsserver``), given to nfsstack with ``--keytab`` and ``KRB5_CONFIG``;
* the guest's machine keytab (``host/guest``, its ``/etc/krb5.keytab``: rpc.gssd's credentials for root);
* a user principal for a host user made for the test (:data:`USER`, uid :data:`UID`, removed afterwards unless
  it existed), whose keytab the guest's user kinits from: the server maps ``nfskrb@REALM`` to that uid through
  the host's passwd.

:meth:`Realm.guest_files` is what the guest gets for this boot only, beside the scenario (the cached base image
stays as it is): the modules ``cts``, ``auth_rpcgss`` and ``rpcsec_gss_krb5`` (from the cached kernel package),
``/etc/krb5.conf`` naming the KDC at 10.0.2.2, ``/etc/hosts`` where 10.0.2.2 is ``nfsserver``, the keytabs, and
the guest's passwd with the user.  rpc.gssd, kinit, klist and kdestroy (Debian nfs-common and krb5-user) are
copied in with their libraries (:data:`GUEST_PROGRAMS`); lib.sh's ``kerberos_client`` loads the modules, mounts
rpc_pipefs and starts rpc.gssd.

:class:`Capture` is tshark on the namespace's loopback, port 2049 only: qemu's user networking carries the
guest's NFS connection to the server there, so it sees every byte the server gets.
"""

from __future__ import annotations

import fcntl
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

from tests import kdc as kdcmod

#: The names the guest knows: its own (its init's ``hostname guest``) and the server's, 10.0.2.2 in its
#: /etc/hosts (rpc.gssd asks for a ticket to nfs/<that name>).
GUEST_NAME = "guest"
SERVER_NAME = "nfsserver"
#: The user with a ticket (a host user made for the test, the same uid in the guest) and one without.
USER, UID = "nfskrb", 4711
OTHER, OTHER_UID = "nfsnokrb", 4712
#: Loaded in this order after the base image's modules (sunrpc first): the Kerberos enctypes need cts(cbc(aes)).
MODULES = ["cts", "auth_rpcgss", "rpcsec_gss_krb5"]
GUEST_PROGRAMS = ("/usr/sbin/rpc.gssd", "/usr/bin/kinit", "/usr/bin/klist", "/usr/bin/kdestroy")
#: The host tools the Kerberos scenarios need besides the KDC's.
HOST_TOOLS = ("tshark",)
#: Held while a run has the host user: runs in other processes wait (bounded) rather than share or remove it.
USER_LOCK = Path(tempfile.gettempdir()) / "nfsstack-krb5-user.lock"


def available() -> Optional[str]:
    """None when a Kerberos scenario can run here, else what is missing (for ``pytest.skip``)."""
    missing = kdcmod.available()
    if missing:
        return missing
    lacking = [p for p in GUEST_PROGRAMS if not os.path.exists(p)] + [t for t in HOST_TOOLS if shutil.which(t) is None]
    return f"missing for the Kerberos scenarios: {' '.join(lacking)}" if lacking else None


class Realm:
    """The test's realm in ``netns``: KDC, principals, keytabs, the host's test user."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.top = Path(tempfile.mkdtemp(prefix="nfsstack-krb5-"))
        self.top.chmod(0o755)
        self.kdc = kdcmod.KDC(self.top / "realm", netns=netns, kdc_host="10.0.2.2")
        self.made_user = False
        self.lock = None

    def __enter__(self) -> "Realm":
        try:
            self._lock_user()
            self._host_user()
            self.kdc.start()
            self.server_keytab = self.kdc.keytab("server.keytab", f"nfs/{SERVER_NAME}")
            self.client_keytab = self.kdc.keytab("client.keytab", f"host/{GUEST_NAME}")
            self.user_keytab = self.kdc.add_user(USER)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.kdc.stop()
        if self.made_user:
            subprocess.run(["userdel", USER], capture_output=True, timeout=30)
            self.made_user = False
        if self.lock is not None:
            self.lock.close()  # and the lock with it
            self.lock = None
        shutil.rmtree(self.top, ignore_errors=True)

    def _lock_user(self, timeout: float = 600.0) -> None:
        self.lock = open(USER_LOCK, "a")
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"another Kerberos run held {USER_LOCK} for {timeout:.0f} s")
                time.sleep(0.5)

    def _host_user(self) -> None:
        """The server maps nfskrb@REALM to the host's nfskrb: made here with uid UID unless it exists."""
        try:
            if pwd.getpwnam(USER).pw_uid != UID:
                raise RuntimeError(f"host user {USER} exists with a uid other than {UID}")
            return
        except KeyError:
            pass
        done = subprocess.run(["useradd", "-u", str(UID), "-U", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin",
                               USER], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"useradd {USER} failed: {done.stderr.strip()}")
        self.made_user = True

    # -- the server ------------------------------------------------------------------------------------------

    @property
    def server_args(self) -> list[str]:
        return ["--keytab", str(self.server_keytab)]

    @property
    def server_env(self) -> dict:
        return {"KRB5_CONFIG": str(self.kdc.krb5_conf)}

    # -- the guest -------------------------------------------------------------------------------------------

    @property
    def guest_env(self) -> dict:
        return {"KRB5_REALM": self.kdc.realm, "KRB5_USER": USER, "KRB5_UID": str(UID), "KRB5_OTHER": OTHER,
                "KRB5_OTHER_UID": str(OTHER_UID), "KRB5_SERVER_NAME": SERVER_NAME,
                "KRB5_MODULES": " ".join(MODULES)}

    def guest_files(self, kernel_root: Path) -> list[tuple[str, int, bytes]]:
        """The files this boot adds to the guest (path without the leading slash, mode, data)."""
        files = [("modules/krb5", 0o040755, b"")]
        moddir = kernel_root / "lib" / "modules"
        for name in MODULES:
            hits = glob.glob(str(moddir / "*" / "kernel" / "**" / f"{name}.ko"), recursive=True)
            if not hits:
                raise RuntimeError(f"module {name}.ko is not in the cached kernel ({moddir})")
            files.append((f"modules/krb5/{name}.ko", 0o100644, Path(hits[0]).read_bytes()))
        passwd = ("root:x:0:0::/:/bin/sh\n_rpc:x:102:65534::/run/rpcbind:/bin/false\nuser:x:1000:1000::/tmp:/bin/sh\n"
                  f"{USER}:x:{UID}:{UID}::/tmp:/bin/sh\n{OTHER}:x:{OTHER_UID}:{OTHER_UID}::/tmp:/bin/sh\n")
        group = f"root:x:0:\nnogroup:x:65534:\nuser:x:1000:\n{USER}:x:{UID}:\n{OTHER}:x:{OTHER_UID}:\n"
        files += [
            ("etc/krb5.conf", 0o100644, self.kdc.client_config().encode()),
            ("etc/krb5.keytab", 0o100600, self.client_keytab.read_bytes()),
            ("etc/krb5-user.keytab", 0o100644, self.user_keytab.read_bytes()),
            ("etc/hosts", 0o100644,
             f"127.0.0.1 localhost\n10.0.2.15 {GUEST_NAME}\n10.0.2.2 {SERVER_NAME}\n".encode()),
            ("etc/passwd", 0o100644, passwd.encode()),
            ("etc/group", 0o100644, group.encode()),
        ]
        return files


class Capture:
    """tshark on the namespace's loopback, TCP port 2049: started and stopped by the guest (harness requests
    ``capture-start`` and ``capture-stop``), then searched for a marker."""

    def __init__(self, netns: str, marker: bytes) -> None:
        self.netns = netns
        self.marker = marker
        self.top = Path(tempfile.mkdtemp(prefix="nfsstack-capture-"))
        self.proc: Optional[subprocess.Popen] = None
        self.file: Optional[Path] = None
        self.count = 0

    def start(self, timeout: float = 30.0) -> str:
        self.stop()
        self.count += 1
        self.file = self.top / f"capture-{self.count}.pcapng"
        stderr = self.top / f"tshark-{self.count}.stderr"
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "tshark", "-n", "-q", "-i", "lo", "-f", "tcp port 2049",
             "-w", str(self.file)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(stderr, "wb"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # bounded: tshark says "Capturing on" once dumpcap runs
            if self.proc.poll() is not None:
                return f"error tshark exited: {stderr.read_text(errors='replace').strip()[-300:]}"
            if "Capturing on" in stderr.read_text(errors="replace"):
                time.sleep(0.3)
                return "ok"
            time.sleep(0.1)
        self.stop()
        return "error tshark did not start capturing"

    def stop(self) -> str:
        """Stop capturing; "BYTES HITS": the capture file's size and how often the marker is in it."""
        if self.proc is None:
            return "error no capture"
        time.sleep(0.5)  # the last segments reach dumpcap
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
        try:
            data = self.file.read_bytes()
        except OSError as e:
            return f"error {e.strerror}"
        return f"{len(data)} {data.count(self.marker)}"

    def discard(self) -> None:
        if self.proc is not None:
            self.stop()
        shutil.rmtree(self.top, ignore_errors=True)


def new_marker() -> str:
    """A line no capture holds by chance: written over and over by the guest, searched for in the capture."""
    return "nfsstack-krb5p-marker-" + secrets.token_hex(12)
