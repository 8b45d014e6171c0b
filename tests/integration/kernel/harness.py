"""Run one scenario script in the guest against one server, in a network namespace of its own.

By hand (as root)::

    python3 -m tests.integration.kernel basic --server ganesha --console

prints every PASS/FAIL line, and with ``--console`` the guest's whole console.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import signal
import struct
import sys
import tempfile
import threading
from pathlib import Path

from tests.integration.kernel import vm
from tests.integration.kernel.servers import SERVERS
from tests.support import netns

SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def scenario_names() -> list[str]:
    return sorted(p.stem for p in SCENARIOS.glob("*.sh") if p.stem != "lib")


def headers(text: str) -> dict[str, str]:
    """A scenario's "# key: value" header lines: ``network: tap``, ``nfsstack: --option value``, ``disk:
    powercut`` (the export lies on tests/powercut.py's filesystem, and ``host_request powercut`` cuts its power),
    ``guest-programs: /usr/bin/setfacl ...`` (host programs copied into the guest for this scenario),
    ``kerberos: yes`` (a KDC in the namespace, the server with its keytab and a Kerberos export, the guest with
    rpc.gssd, keytabs and kinit: kerberos.py; requests ``capture-start`` / ``capture-stop``)."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"#\s*(network|nfsstack|ganesha|disk|guest-programs|kerberos):\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def hold_ofd_lock(path: Path, seconds: float) -> str:
    """A local process's lock on the server: an exclusive OFD lock on all of ``path`` for ``seconds``."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.fcntl(fd, 37, struct.pack("@hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))  # F_OFD_SETLK
    except OSError as e:
        os.close(fd)
        return f"error {e.strerror}"
    threading.Timer(seconds, os.close, (fd,)).start()
    return "held"


def server_acl(path: Path, default: bool = False) -> str:
    """The POSIX ACL of the server's ``path`` as getfacl shows it (numeric, one line, entries joined by commas),
    read from the extended attribute the kernel keeps it in; "none" where it has none."""
    from nfsstack.nfs3.interface import ACL_GROUP, ACL_GROUP_OBJ, ACL_MASK, ACL_USER, ACL_USER_OBJ
    from nfsstack.nfs3.local.acls import ACCESS_XATTR, DEFAULT_XATTR, acl_from_xattr

    try:
        acl = acl_from_xattr(os.getxattr(path, DEFAULT_XATTR if default else ACCESS_XATTR))
    except OSError as e:
        return "none" if e.errno == errno.ENODATA else f"error {e.strerror}"
    names = {ACL_USER_OBJ: "user::", ACL_USER: "user:{}:", ACL_GROUP_OBJ: "group::", ACL_GROUP: "group:{}:",
             ACL_MASK: "mask::"}
    shown = [names.get(e.tag, "other::").format(e.id) + "".join(c if e.perm & b else "-" for c, b in
                                                                  (("r", 4), ("w", 2), ("x", 1)))
             for e in acl or ()]
    return ",".join(shown) or "none"


def grant_on_server(path: Path, uid: int) -> str:
    """``setfacl -m u:UID:rw`` on the server's ``path`` (its ACL made from its mode bits plus the entry)."""
    from nfsstack.nfs3.interface import ACL_GROUP_OBJ, ACL_MASK, ACL_USER, AclEntry, acl_from_mode
    from nfsstack.nfs3.local.acls import ACCESS_XATTR, acl_to_xattr

    try:
        owner, group, other = acl_from_mode(os.stat(path).st_mode)
        acl = (owner, AclEntry(ACL_USER, uid, 6), group, AclEntry(ACL_MASK, 0xFFFFFFFF, 6 | group.perm), other)
        assert group.tag == ACL_GROUP_OBJ
        os.setxattr(path, ACCESS_XATTR, acl_to_xattr(acl))
    except OSError as e:
        return f"error {e.strerror}"
    return "ok"


SYS_GETATTR = """
import sys
from tests.support import NfsClient
try:
    client = NfsClient(sys.argv[1], uid=0, timeout=10)
except Exception as e:  # MNT itself refused
    print(f"mnt-refused {e}")
else:
    try:
        print(client("GETATTR", client.root).status.name,
              client("READDIR", client.root, 0, b"\\0" * 8, 4096).status.name)
    except Exception as e:  # an RPC-level refusal (AUTH_ERROR)
        print(f"rpc-refused {e}")
"""


def sys_getattr(ns: str, export: str) -> str:
    """What an AUTH_SYS client (uid 0, from the namespace) gets for GETATTR and for READDIR of ``export``'s root:
    two status names ("OK ACCES"), "mnt-refused ..." when MNT refuses it, "rpc-refused ..." for an RPC-level
    refusal."""
    import subprocess

    from tests.support import server_env

    try:
        done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", SYS_GETATTR, export],
                              capture_output=True, text=True, timeout=40, env=server_env())
    except subprocess.TimeoutExpired:
        return "error timeout"
    return done.stdout.strip() or f"error {done.stderr.strip()[-300:]}"


def run_scenario(server_name: str, scenario: str, timeout: float = 300.0) -> tuple[vm.Result, str]:
    """Boot the guest against a fresh ``server_name`` and run ``scenario``; return the result and the server log."""
    return run_script(server_name, (SCENARIOS / f"{scenario}.sh").read_text(), timeout)


def run_script(server_name: str, text: str, timeout: float = 300.0, prepare=None) -> tuple[vm.Result, str]:
    """Like :func:`run_scenario` for a script's text; ``prepare(export_dir)`` runs before the server starts."""
    script = (SCENARIOS / "lib.sh").read_text() + "\n" + text
    options = headers(text)
    kerberos = options.get("kerberos") == "yes"
    with netns() as ns, contextlib.ExitStack() as held:
        realm = capture = None
        if kerberos:  # the KDC runs before the server, in the same namespace
            from tests.integration.kernel import kerberos as krb

            realm = held.enter_context(krb.Realm(ns))
            marker = krb.new_marker()
            capture = krb.Capture(ns, marker.encode())
            held.callback(capture.discard)
        disk = None
        if options.get("disk") == "powercut":
            from tests.powercut import PowercutMount

            top = Path(tempfile.mkdtemp(prefix=f"{server_name}-powercut-"))
            held.callback(shutil.rmtree, top, ignore_errors=True)
            disk = held.enter_context(PowercutMount(top / "disk"))
            export = top / "disk" / "export"
            export.mkdir()
        else:
            export = Path(tempfile.mkdtemp(prefix=f"{server_name}-export-"))
        export.chmod(0o777)
        siblings = ("-ro", "-squash", "-noacl") + (("-krb5", "-krb5p") if kerberos else ())
        for sibling in siblings:
            Path(f"{export}{sibling}").mkdir()
            Path(f"{export}{sibling}").chmod(0o777)
        (Path(f"{export}-ro") / "readme.txt").write_text("read only\n")
        if prepare is not None:
            prepare(export)
        if disk is not None:
            disk.command("checkpoint")  # the prepared tree is on the disk, as if made before
        server = SERVERS[server_name](ns, export, options.get(SERVERS[server_name].name, "").split())
        if realm is not None:
            try:
                server.use_kerberos(realm)
            except BaseException:
                server.discard()
                for path in (export, *(Path(f"{export}{sibling}") for sibling in siblings)):
                    shutil.rmtree(path, ignore_errors=True)
                raise
        server.start()

        def on_request(request: str) -> str | None:
            """restart | kill (SIGKILL, then start) | reboot (stop, drop the disk's cached directory entries,
            start) | restart-renaming OLD NEW (stop, rename on the server's disk,
            start) | powercut (SIGKILL, the disk loses what was not synced, then
            start) | sha256 NAME (of the server's copy) | stat NAME | append NAME TEXT | hold-ofd NAME SECONDS (a
            server-side lock) | log PATTERN (how many server log lines match) | getfacl NAME, getfacl-default NAME
            (the server file's access or default ACL, one line) | grant NAME UID (user:UID:rw- on the server's file)"""
            verb, _, arg = request.partition(" ")
            if verb == "restart":
                server.restart()
            elif verb == "powercut" and disk is not None:
                server.kill()
                disk.command("cut")
                server.start()
            elif verb == "kill":
                server.kill()
                server.start()
            elif verb == "reboot":  # as after the server's machine rebooted: no directory entry cached on its disk
                server.stop()
                os.sync()
                with open("/proc/sys/vm/drop_caches", "w") as f:
                    f.write("2\n")
                server.start()
            elif verb == "restart-renaming":  # the server down, a file renamed on its disk meanwhile, then up
                old, _, new = arg.partition(" ")
                server.stop()
                os.rename(export / old, export / new)
                server.start()
            elif verb == "sha256":
                try:
                    return hashlib.sha256((export / arg).read_bytes()).hexdigest()
                except OSError as e:
                    return f"error {e.strerror}"
            elif verb == "hold-ofd":
                name, _, seconds = arg.partition(" ")
                return hold_ofd_lock(export / name, float(seconds or 10))
            elif verb == "log":
                return str(sum(1 for line in server.log_text().splitlines() if re.search(arg, line)))
            elif verb == "append":
                name, _, text = arg.partition(" ")
                try:
                    with open(export / name, "a") as f:
                        f.write(text)
                except OSError as e:
                    return f"error {e.strerror}"
                return "ok"
            elif verb == "grant":  # grant NAME UID: the server's file gets user:UID:rw- (setfacl -m u:UID:rw there)
                name, _, uid = arg.partition(" ")
                return grant_on_server(export / name, int(uid))
            elif verb in ("getfacl", "getfacl-default"):
                return server_acl(export / arg, default=verb == "getfacl-default")
            elif verb == "capture-start" and capture is not None:  # tshark on the namespace's lo, port 2049
                return capture.start()
            elif verb == "capture-stop" and capture is not None:  # "BYTES HITS": the marker's count in it
                return capture.stop()
            elif verb == "sys-getattr":  # AUTH_SYS GETATTR and READDIR (uid 0) of export NAME's root, from the netns
                return sys_getattr(ns, f"{server.mount_path}{arg}")
            elif verb == "stat":
                try:
                    st = os.lstat(export / arg)
                    return f"{st.st_uid}:{st.st_gid}:{oct(st.st_mode & 0o7777)}:{st.st_size}:{st.st_nlink}"
                except OSError as e:
                    return f"error {e.strerror}"
            return None

        try:
            env = {"NFS_SERVER": "10.0.2.2", "NFS_EXPORT": server.mount_path, "SERVER": server.name,
                   "SERVER_DISK": "yes" if server.on_disk else "no",
                   "SERVER_IDENTITIES": "yes" if server.acts_as_clients else "no",
                   "SERVER_UID": str(server.uid), "MOUNT_OPTIONS": server.mount_options,
                   "NFS_SERVER6": vm.HOST6, "GUEST6": vm.GUEST6,
                   "NFS_EXPORT_RO": f"{server.mount_path}-ro", "NFS_EXPORT_SQUASH": f"{server.mount_path}-squash",
                   "NFS_EXPORT_NOACL": f"{server.mount_path}-noacl"}
            programs = tuple(options.get("guest-programs", "").split())
            files = ()
            if realm is not None:
                env.update(realm.guest_env, NFS_EXPORT_KRB5=f"{server.mount_path}-krb5",
                           NFS_EXPORT_KRB5P=f"{server.mount_path}-krb5p", KRB5_MARKER=marker)
                programs += krb.GUEST_PROGRAMS
                files = realm.guest_files
            result = vm.run_guest(ns, script, env, on_request=on_request, timeout=timeout,
                                  network=options.get("network", "user"), programs=programs, files=files)
        finally:
            server.stop()
            log = server.log_text()
            server.discard()
            for path in (export, *(Path(f"{export}{sibling}") for sibling in siblings)):
                shutil.rmtree(path, ignore_errors=True)
        return result, log


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Run a kernel-client scenario against a server.")
    parser.add_argument("scenario", choices=scenario_names())
    parser.add_argument("--server", choices=sorted(SERVERS), default="nfsstack")
    parser.add_argument("--console", action="store_true", help="print the guest's whole console")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    # A SIGTERM (`timeout`, `kill`) unwinds like Ctrl-C, so the server, the guest and the namespace are removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    result, log = run_scenario(args.server, args.scenario, args.timeout)
    print(result.console if args.console else result.summary())
    print(f"exit status {result.status}, {len(result.failures)} failed checks, {result.seconds:.1f} s")
    return 0 if result.status == 0 and not result.failures else 1
