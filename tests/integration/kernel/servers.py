"""NFS servers for the kernel-client tests, each run inside the test's network namespace.

:class:`NfsStack` is ``twistd -n nfsstack``; :class:`Ganesha` is nfs-ganesha
(VFS backend) with Debian's rpcbind, the reference the differential tests
compare against.  Both export one directory to the guest and can be restarted
while the guest keeps its mount.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time
import zipfile
from pathlib import Path

from tests.support import REPO, Stack, in_netns, reachable, server_env, twistd

GANESHA_CONF = """\
NFS_CORE_PARAM {{
    Protocols = 3;
    Enable_NLM = {nlm};
    Enable_RQUOTA = false;
    NFS_Port = 2049;
}}
NFSV4 {{
    Graceless = true;
}}
EXPORT {{
    Export_Id = 1;
    Path = "{path}";
    Pseudo = "/export";
    Access_Type = RW;
    Squash = No_Root_Squash;
    SecType = sys;
    Protocols = 3;
    Transports = TCP, UDP;
    FSAL {{
        Name = VFS;
    }}
}}
EXPORT {{
    Export_Id = 2;
    Path = "{path}-ro";
    Pseudo = "/export-ro";
    Access_Type = RO;
    Squash = No_Root_Squash;
    SecType = sys;
    Protocols = 3;
    FSAL {{
        Name = VFS;
    }}
}}
EXPORT {{
    Export_Id = 3;
    Path = "{path}-squash";
    Pseudo = "/export-squash";
    Access_Type = RW;
    Squash = Root_Squash;
    Anonymous_Uid = 65534;
    Anonymous_Gid = 65534;
    SecType = sys;
    Protocols = 3;
    FSAL {{
        Name = VFS;
    }}
}}
LOG {{
    Default_Log_Level = WARN;
}}
"""

# rpcbind and ganesha share a private /run and /var/lib/nfs, so nothing collides with the machine's.
GANESHA_SH = textwrap.dedent("""\
    set -e
    mount -t tmpfs tmpfs /run
    mount -t tmpfs tmpfs /var/lib/nfs
    mkdir -p /run/rpcbind /run/ganesha /var/lib/nfs/ganesha
    rpcbind -f &
    for i in $(seq 100); do [ -S /run/rpcbind.sock ] && break; sleep 0.05; done
    if [ "$3" = nlm ]; then mkdir -p /var/lib/nfs/sm /var/lib/nfs/sm.bak; rpc.statd --no-notify; fi
    exec ganesha.nfsd -F -L "$1" -f "$2" -p /run/ganesha/ganesha.pid
""")


def wait_registered(netns: str, programs: tuple[str, ...], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    listing = ""
    while time.monotonic() < deadline:
        r = in_netns(netns, "rpcinfo", "-p", "127.0.0.1", timeout=10)
        listing = r.stdout
        if r.returncode == 0 and all(f" {p} " in f" {listing} " for p in programs):
            return
        time.sleep(0.2)
    raise RuntimeError(f"programs {programs} not registered in {timeout} s:\n{listing}")


class Ganesha:
    """nfs-ganesha exporting ``export_dir`` as itself (NFSv3 mounts name the real path)."""

    name = "ganesha"
    on_disk = True
    acts_as_clients = True
    uid = 0
    mount_options = ""

    def __init__(self, netns: str, export_dir: Path, extra_args: list[str] = ()) -> None:
        self.netns = netns
        self.export_dir = export_dir
        #: "nlm": serve locks (NLM, with Debian's rpc.statd beside it).
        self.nlm = "nlm" in extra_args
        self.workdir = Path(tempfile.mkdtemp(prefix="ganesha-test-"))
        self.conf = self.workdir / "ganesha.conf"
        self.conf.write_text(GANESHA_CONF.format(path=export_dir, nlm="true" if self.nlm else "false"))
        self.log = self.workdir / "ganesha.log"
        self.proc: subprocess.Popen | None = None

    @property
    def mount_path(self) -> str:
        return str(self.export_dir)

    def start(self) -> "Ganesha":
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "unshare", "--mount", "sh", "-c", GANESHA_SH, "ganesha",
             str(self.log), str(self.conf), "nlm" if self.nlm else ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        wait_registered(self.netns, ("100003", "100005"))
        return self

    def stop(self) -> None:
        # `ip netns exec`, `unshare` and `sh -c 'exec ...'` all exec: self.proc is ganesha itself.
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Its rpcbind, found among this namespace's processes only (never the machine's).
        pids = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "rpcbind":
                    os.kill(int(pid), signal.SIGKILL)
            except (OSError, ValueError):
                pass

    def restart(self) -> None:
        self.stop()
        self.start()

    def use_kerberos(self, realm) -> None:
        raise NotImplementedError("the Kerberos scenarios are nfsstack's (test_kernel.py runs them there only)")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.stop()

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def discard(self) -> None:
        """Stopped for good: its working directory (configuration, log) goes too."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


class NfsStack:
    """``twistd -n nfsstack`` exporting ``export_dir`` (as /export) with the options the guest needs."""

    name = "nfsstack"
    #: The exported files are the host's (host_request sees them).
    on_disk = True

    def __init__(self, netns: str, export_dir: Path, extra_args: list[str] = ()) -> None:
        self.netns = netns
        self.export_dir = export_dir
        self.extra_args = list(extra_args)
        self.workdir = Path(tempfile.mkdtemp(prefix="nfsstack-kernel-"))
        # qemu's user networking makes every guest connection come from 127.0.0.1 with an
        # unprivileged port: the export needs `insecure` (REFERENCE.md).
        self.exports = self.workdir / "exports"
        self.exports.write_text(
            f"{export_dir} *(rw,insecure,no_root_squash)\n"
            f"{export_dir}-ro *(ro,insecure,no_root_squash)\n"
            f"{export_dir}-squash *(rw,insecure,root_squash)\n"
            f"{export_dir}-noacl *(rw,insecure,no_root_squash,no_acl)\n"
        )
        self.stack: Stack | None = None

    @property
    def mount_path(self) -> str:
        return str(self.export_dir)

    #: Environment of the server besides the test's (a backend of one's own reads its settings there).
    env: dict = {}
    #: A command twistd runs under (setpriv: fewer privileges).
    prefix: tuple = ()
    #: Each call runs as its client; the server's uid; what the guest adds to its mount options; where the
    #: server is ready.
    acts_as_clients = True
    uid = 0
    mount_options = ""
    ready_port = 111

    def use_kerberos(self, realm) -> None:
        """RPCSEC_GSS beside AUTH_SYS: the server's keytab (``--keytab``, ``KRB5_CONFIG``) from ``realm``
        (kerberos.Realm), and two more exports: ``-krb5`` admitting krb5, krb5i and krb5p (mounted three ways),
        ``-krb5p`` admitting krb5p only.  The other exports stay ``sec=sys``."""
        usage = subprocess.run([twistd(), "nfsstack", "--help"], capture_output=True, text=True, timeout=60,
                               env={**server_env(), **self.env}).stdout
        if "--keytab" not in usage:
            raise RuntimeError("this nfsstack has no --keytab option: it cannot serve RPCSEC_GSS (Kerberos), "
                               "which the Kerberos scenarios test")
        export = self.export_dir
        with open(self.exports, "a") as f:
            f.write(f"{export}-krb5 *(rw,insecure,root_squash,sec=krb5:krb5i:krb5p)\n"
                    f"{export}-krb5p *(rw,insecure,root_squash,sec=krb5p)\n")
        self.extra_args = [*self.extra_args, *realm.server_args]
        self.env = {**self.env, **realm.server_env}

    def start(self) -> "NfsStack":
        self.stack = Stack("--exports", str(self.exports), "--state-dir", str(self.workdir / "state"),
                           *self.extra_args, netns=self.netns, workdir=str(self.workdir), env=self.env,
                           prefix=self.prefix).start(self.ready_port)
        return self

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.stop()

    def kill(self) -> None:
        """SIGKILL: no chance to flush or unregister (the data-safety tests)."""
        if self.stack is not None:
            self.stack.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        return self.stack.log_text() if self.stack else ""

    def discard(self) -> None:
        """Stopped for good: its working directory (exports file, state, log) goes too."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


class NfsStackMemory(NfsStack):
    """nfsstack with ``--backend memory``: the same exports, each a tree in memory, empty at start."""

    on_disk = False

    def __init__(self, netns: str, export_dir: Path, extra_args: list[str] = ()) -> None:
        super().__init__(netns, export_dir, ["--backend", "memory", *extra_args])


#: Docker's default capability set (moby's oci/caps/defaults.go): no CAP_DAC_READ_SEARCH.
DOCKER_CAPS = ("chown", "dac_override", "fowner", "fsetid", "kill", "setgid", "setuid", "setpcap",
               "net_bind_service", "net_raw", "sys_chroot", "mknod", "audit_write", "setfcap")


class NfsStackContainer(NfsStack):
    """nfsstack as root in a container with Docker's default capabilities: no open_by_handle_at, so the local
    backend finds its handles through its map of places (exports/paths.py), acting as its clients as ever.  Its
    export lies on overlayfs, as a container's own files do (what the scenario prepared is the lower layer, the
    image's; what clients write goes to the upper one), which gives no file handles to open again: the map keys
    its objects by the identities overlayfs gives instead."""

    prefix = ("setpriv", "--inh-caps=-all", "--bounding-set=-all," + ",".join(f"+{cap}" for cap in DOCKER_CAPS))

    def __init__(self, netns: str, export_dir: Path, extra_args: list[str] = ()) -> None:
        super().__init__(netns, export_dir, extra_args)
        self.layers = Path(tempfile.mkdtemp(prefix="nfsstack-overlay-"))
        for layer in ("upper", "work"):
            (self.layers / layer).mkdir()
        (self.layers / "upper").chmod(0o777)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={export_dir},upperdir="
                        f"{self.layers / 'upper'},workdir={self.layers / 'work'}", str(export_dir)], check=True)

    def discard(self) -> None:
        super().discard()
        subprocess.run(["umount", "-l", str(self.export_dir)], check=False)
        shutil.rmtree(self.layers, ignore_errors=True)


class NfsStackAsync(NfsStack):
    """nfsstack with its exports ``async`` (exports(5)): stable WRITEs, COMMIT and directory changes answered
    without a sync.  For bench/nfs_bench.py, to show what a ``sync`` export's syncs cost."""

    def __init__(self, netns: str, export_dir: Path, extra_args: list[str] = ()) -> None:
        super().__init__(netns, export_dir, extra_args)
        self.exports.write_text(self.exports.read_text().replace("(rw,", "(rw,async,"))


class NfsStackUser(NfsStack):
    """nfsstack as a plain user (uid 65534, no capabilities): high ports, mounted with port= and mountport=,
    the local backend without open_by_handle_at, every client acting as the server's user."""

    acts_as_clients = False
    uid = NOBODY = 65534
    mount_options = "port=12049,mountport=12050,mountproto=tcp,nolock"
    ready_port = 10111

    def __init__(self, netns: str, export_dir: Path, extra_args: list[str] = ()) -> None:
        super().__init__(netns, export_dir, extra_args)
        # root_squash's anonuid is this user: nothing the exports ask for is another identity.
        self.exports.write_text(
            f"{export_dir} *(rw,insecure)\n{export_dir}-ro *(ro,insecure)\n{export_dir}-squash *(rw,insecure)\n")
        for path in (self.workdir, self.exports):
            os.chown(path, self.uid, self.uid)
        self.workdir.chmod(0o755)
        self.prefix = (*reachable(twistd()), "setpriv", f"--reuid={self.uid}", f"--regid={self.uid}",
                       "--clear-groups", "--inh-caps=-all", "--bounding-set=-all")


class NfsStackZip(NfsStack):
    """nfsstack serving the README's example backend (examples/zipexport.py): every export is :data:`ZIP_TREE`,
    read only, from a zip archive made here."""

    on_disk = False

    def __init__(self, netns: str, export_dir: Path, extra_args: list[str] = ()) -> None:
        super().__init__(netns, export_dir, ["--backend", "zipexport:factory", *extra_args])
        archive = self.workdir / "export.zip"
        with zipfile.ZipFile(archive, "w") as z:
            for name, data in ZIP_TREE.items():
                z.writestr(name, data)
        python_path = server_env()["PYTHONPATH"]
        self.env = {"NFSSTACK_ZIP": str(archive), "PYTHONPATH": f"{python_path}{os.pathsep}{REPO / 'examples'}"}


#: The zip archive NfsStackZip serves: a file, a directory only its entries name, 200 KB of data.
ZIP_TREE = {"hello.txt": "hello from a zip\n", "photos/": "", "photos/2026/beach.raw": bytes(range(256)) * 800}


SERVERS = {"nfsstack": NfsStack, "nfsstack-memory": NfsStackMemory, "nfsstack-container": NfsStackContainer,
           "nfsstack-async": NfsStackAsync,
           "nfsstack-user": NfsStackUser, "nfsstack-zip": NfsStackZip, "ganesha": Ganesha}
