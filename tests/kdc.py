"""A throwaway MIT Kerberos realm for tests: a KDC (Debian ``krb5-kdc``), principals and keytabs.

Everything lives in one temporary folder: the configuration (``krb5.conf`` for clients and the server,
``kdc.conf`` for the KDC), the database and the keytabs.  Nothing under /etc is touched: processes that
should use this realm get :meth:`KDC.env` (``KRB5_CONFIG``, ``KRB5_KDC_PROFILE``).  The KDC listens on
``host:port`` over UDP and TCP, in the network namespace ``netns`` when one is given (the kernel-client
guest then reaches it at the namespace's address, e.g. 10.0.2.2 over qemu's user networking).

Usage::

    with KDC(Path(tmp), netns=ns) as kdc:
        server_keytab = kdc.keytab("server.keytab", "nfs/nfsserver")
        kdc.add_user("alice")
        env = kdc.kinit("alice", ccache)      # a ticket cache for alice
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

REALM = "NFSSTACK.TEST"
#: The MIT tools, from Debian's krb5-kdc, krb5-admin-server (kadmin.local) and krb5-user (kinit).
TOOLS = ("krb5kdc", "kdb5_util", "kadmin.local", "kinit")


def available() -> Optional[str]:
    """None when the MIT tools are installed, else what is missing (for ``pytest.skip``)."""
    missing = [t for t in TOOLS if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]
    return f"MIT Kerberos tools missing: {' '.join(missing)}" if missing else None


def _tool(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class KDC:
    """An MIT KDC for realm ``realm`` on ``host:port``, with its database and keytabs under ``top``."""

    def __init__(self, top: Path, realm: str = REALM, host: str = "127.0.0.1", port: int = 88,
                 netns: Optional[str] = None, kdc_host: Optional[str] = None) -> None:
        """``kdc_host`` is the address clients are told to reach the KDC at (default ``host``): a guest
        behind qemu's user networking reaches the namespace's 127.0.0.1 as 10.0.2.2."""
        self.top = Path(top)
        self.realm = realm
        self.host = host
        self.port = port
        self.netns = netns
        self.kdc_host = kdc_host or host
        self.process: Optional[subprocess.Popen] = None
        self.password = "master-" + os.urandom(8).hex()

    # -- configuration ---------------------------------------------------------------------------------------

    @property
    def krb5_conf(self) -> Path:
        return self.top / "krb5.conf"

    def client_config(self, kdc_host: Optional[str] = None) -> str:
        """The text of a krb5.conf that finds this realm's KDC at ``kdc_host`` (default: the clients' address)."""
        where = f"{kdc_host or self.kdc_host}:{self.port}"
        return (
            "[libdefaults]\n"
            f"  default_realm = {self.realm}\n"
            "  dns_lookup_kdc = false\n"
            "  dns_lookup_realm = false\n"
            "  rdns = false\n"
            "  ignore_acceptor_hostname = true\n"
            "[realms]\n"
            f"  {self.realm} = {{\n    kdc = {where}\n    admin_server = {where}\n  }}\n"
            "[domain_realm]\n"
            f"  .{self.realm.lower()} = {self.realm}\n"
        )

    def env(self, **more: str) -> dict:
        """The environment of a process that uses this realm (server, kinit, a test's GSS client)."""
        env = dict(os.environ)
        env["KRB5_CONFIG"] = str(self.krb5_conf)
        env["KRB5_KDC_PROFILE"] = str(self.top / "kdc.conf")
        env.update(more)
        return env

    def _run(self, *cmd: str, timeout: float = 30.0) -> str:
        done = subprocess.run(list(cmd), env=self.env(), capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def kadmin(self, query: str) -> str:
        """Run one ``kadmin.local`` query on this realm's database."""
        return self._run(_tool("kadmin.local"), "-r", self.realm, "-q", query)

    # -- life ------------------------------------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> "KDC":
        self.top.mkdir(parents=True, exist_ok=True)
        self.krb5_conf.write_text(self.client_config())
        (self.top / "kdc.conf").write_text(
            "[kdcdefaults]\n"
            f"  kdc_ports = {self.port}\n"
            f"  kdc_tcp_ports = {self.port}\n"
            "[realms]\n"
            f"  {self.realm} = {{\n"
            f"    database_name = {self.top / 'principal'}\n"
            f"    key_stash_file = {self.top / 'stash'}\n"
            f"    acl_file = {self.top / 'kadm5.acl'}\n"
            "    max_life = 10h 0m 0s\n"
            "    max_renewable_life = 1d 0h 0m 0s\n"
            "    supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal\n"
            "  }\n"
            "[logging]\n"
            f"  kdc = FILE:{self.top / 'kdc.log'}\n"
        )
        (self.top / "kadm5.acl").write_text("")
        self._run(_tool("kdb5_util"), "create", "-s", "-r", self.realm, "-P", self.password)
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        self.process = subprocess.Popen(
            [*prefix, _tool("krb5kdc"), "-n", "-r", self.realm], env=self.env(),
            stdout=subprocess.DEVNULL, stderr=open(self.top / "krb5kdc.stderr", "wb"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # bounded: the KDC answers TCP once it listens
            if self.process.poll() is not None:
                raise RuntimeError(f"krb5kdc exited: {(self.top / 'krb5kdc.stderr').read_text()}")
            if self._listening():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("krb5kdc did not start listening")

    def _listening(self) -> bool:
        if self.netns:
            probe = subprocess.run(["ip", "netns", "exec", self.netns, "ss", "-Htln", f"sport = :{self.port}"],
                                   capture_output=True, text=True)
            return bool(probe.stdout.strip())
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex((self.host, self.port)) == 0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def __enter__(self) -> "KDC":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- principals ------------------------------------------------------------------------------------------

    def principal(self, name: str) -> str:
        return name if "@" in name else f"{name}@{self.realm}"

    def add_principal(self, name: str) -> str:
        """Add ``name`` (``nfs/host``, ``alice``) with a random key; return the full principal."""
        full = self.principal(name)
        self.kadmin(f"addprinc -randkey {full}")
        return full

    def keytab(self, filename: str, *names: str) -> Path:
        """A keytab under ``top`` holding the keys of ``names`` (each is added first if new)."""
        path = self.top / filename
        for name in names:
            full = self.principal(name)
            if not self._exists(full):
                self.add_principal(full)
            self.kadmin(f"ktadd -k {path} {full}")
        path.chmod(0o600)
        return path

    def _exists(self, full: str) -> bool:
        return full in self.kadmin("listprincs").split()

    def add_user(self, name: str) -> Path:
        """A user principal with its own keytab (``NAME.keytab``), so tests get tickets without a password."""
        return self.keytab(f"{name}.keytab", name)

    def kinit(self, name: str, ccache: Path) -> dict:
        """Get ``name``'s ticket into ``ccache`` (from its keytab); return the environment that uses it."""
        keytab = self.top / f"{name}.keytab"
        if not keytab.exists():
            self.add_user(name)
        env = self.env(KRB5CCNAME=f"FILE:{ccache}")
        done = subprocess.run([_tool("kinit"), "-k", "-t", str(keytab), self.principal(name)], env=env,
                              capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"kinit {name} failed: {done.stderr.strip()}")
        return env


@contextlib.contextmanager
def client_env(env: dict):
    """This process as the client of :meth:`KDC.kinit`'s ``env``: its KRB5_CONFIG and KRB5CCNAME in
    ``os.environ`` (MIT krb5 reads them when a GSS context is made), the old values back afterwards."""
    saved = {k: os.environ.get(k) for k in ("KRB5_CONFIG", "KRB5CCNAME")}
    os.environ.update({k: env[k] for k in saved})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
