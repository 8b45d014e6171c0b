"""The whole stack as root with Docker's default capabilities (no CAP_DAC_READ_SEARCH): the local backend without
open_by_handle_at (exports/paths.py) is chosen by itself, clients act as themselves, and handles outlive a
SIGKILL, a restart and a rename done on the server's disk while it was down."""

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from nfsstack.nfs3.client import Sattr3
from nfsstack.nfs3.codec import Stat
from tests.support import NfsClient, Stack, free_port

#: Docker's default capability set (moby's oci/caps/defaults.go).
DOCKER_CAPS = ("chown", "dac_override", "fowner", "fsetid", "kill", "setgid", "setuid", "setpcap",
               "net_bind_service", "net_raw", "sys_chroot", "mknod", "audit_write", "setfcap")
USER = 1000

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                                reason="needs root and setpriv to start a server with fewer capabilities")


def docker_root(state: Path, exports: Path, work: Path, port: int) -> Stack:
    caps = ",".join(f"+{cap}" for cap in DOCKER_CAPS)
    return Stack("--bind", "127.0.0.1", "--portmap-port", str(port), "--nfs-port", "0", "--status-port", "0",
                 "--exports", str(exports), "--state-dir", str(state), "--grace-time", "0", workdir=str(work),
                 prefix=("setpriv", "--inh-caps=-all", f"--bounding-set=-all,{caps}"))


def test_root_without_dac_read_search_serves_with_lasting_handles():
    top = Path(tempfile.mkdtemp(prefix="nfsstack-unprivileged-"))
    export, work, state = top / "export", top / "work", top / "work" / "state"
    export.mkdir()
    export.chmod(0o777)
    work.mkdir()
    (top / "exports").write_text(f"{export} 127.0.0.1(rw,insecure)\n")
    port = free_port()
    stack = docker_root(state, top / "exports", work, port)
    stack.start(port, timeout=30)
    try:
        status = Path(f"/proc/{stack.proc.pid}/status").read_text()
        effective = int([line.split()[1] for line in status.splitlines() if line.startswith("CapEff:")][0], 16)
        assert not effective & (1 << 2), "the server still has CAP_DAC_READ_SEARCH"
        log = stack.log_text()
        assert "without open_by_handle_at" in log and "CAP_DAC_READ_SEARCH" in log, log
        c = NfsClient(str(export), port, uid=USER)
        try:
            made = c("CREATE", c.root, b"file", 0, Sattr3(mode=0o644))
            assert made.ok, made.status
            f = made.obj
            assert c("WRITE", f, 0, b"before", 2).ok
            assert c("READ", f, 0, 100).data == b"before"
            d = c("MKDIR", c.root, b"dir", Sattr3(mode=0o755)).obj
            assert c("RENAME", c.root, b"file", d, b"renamed").ok
            assert c("LOOKUP", d, b"renamed").object == f
            assert c("READ", f, 0, 100).data == b"before"
            gone = c("CREATE", c.root, b"gone", 0, Sattr3(mode=0o644)).obj
            assert c("REMOVE", c.root, b"gone").ok
        finally:
            c.close()
        # The kernel decided as the client: the files are the client's.
        assert (export / "dir" / "renamed").stat().st_uid == USER
    finally:
        assert stack.stop(signal.SIGKILL) == -signal.SIGKILL
    # While the server is down, its directory is reorganised on its own disk.
    (export / "elsewhere").mkdir()
    os.rename(export / "dir", export / "elsewhere" / "moved")
    os.rename(export / "elsewhere" / "moved" / "renamed", export / "elsewhere" / "moved" / "again")
    stack = docker_root(state, top / "exports", work, port)
    stack.start(port, timeout=30)
    try:
        c = NfsClient(str(export), port, uid=USER)
        try:
            r = c("READ", f, 0, 100)
            assert r.ok and r.data == b"before", r.status
            assert c("WRITE", f, 0, b"after!", 2).ok
            assert c("GETATTR", d).ok
            assert c("GETATTR", gone).status == Stat.STALE
            forged = bytearray(f)
            forged[-1] ^= 1
            assert c("GETATTR", bytes(forged)).status == Stat.BADHANDLE
        finally:
            c.close()
        assert (export / "elsewhere" / "moved" / "again").read_bytes() == b"after!"
    finally:
        stack.stop()
        shutil.rmtree(top, ignore_errors=True)
    log = stack.log_text()
    assert "Traceback" not in log, log
    assert "not started" not in log, log


def plain_user(exports: Path, work: Path, port: int) -> Stack:
    """User 1000 with no capability but CAP_DAC_OVERRIDE, ambient: this machine's Python lives under /root, which
    the user could not read otherwise (it is no CAP_DAC_READ_SEARCH for open_by_handle_at, nor CAP_SETUID)."""
    return Stack("--bind", "127.0.0.1", "--portmap-port", str(port), "--nfs-port", "0", "--status-port", "0",
                 "--exports", str(exports), "--state-dir", str(work / "state"), "--grace-time", "0",
                 workdir=str(work), prefix=("setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups",
                                            "--inh-caps=-all,+dac_override", "--ambient-caps=+dac_override"))


def test_a_plain_user_serves_every_client_as_itself_and_refuses_what_it_cannot_honour():
    top = Path(tempfile.mkdtemp(prefix="nfsstack-plain-user-"))
    top.chmod(0o755)
    export, work = top / "export", top / "work"
    for d in (export, work):
        d.mkdir()
        os.chown(d, USER, USER)
    port = free_port()
    try:
        (top / "exports").write_text(f"{export} 127.0.0.1(rw,insecure)\n{top} 127.0.0.1(rw,insecure,no_root_squash)\n")
        stack = plain_user(top / "exports", work, port)
        try:
            stack.start(port, timeout=30)  # the portmapper alone, or an exit: an error either way
        except RuntimeError:
            pass
        stack.stop()
        log = stack.log_text()
        assert f"{top / 'exports'}:2: {top} 127.0.0.1: no_root_squash cannot be honoured" in log, log
        assert "nfs 100003" not in log, log  # nfsd was not started

        (top / "exports").write_text(f"{export} 127.0.0.1(rw,insecure)\n")
        stack = plain_user(top / "exports", work, port)
        stack.start(port, timeout=30)
        try:
            log = stack.log_text()
            assert f"every client acts as uid {USER}" in log, log
            for uid in (0, 4242):
                c = NfsClient(str(export), port, uid=uid)
                try:
                    name = f"by{uid}".encode()
                    r = c("CREATE", c.root, name, 0, Sattr3(mode=0o644))
                    assert r.ok, r.status
                    assert (export / name.decode()).stat().st_uid == USER
                finally:
                    c.close()
            # Forged and replayed-after-delete handles, and a symlink out of the export, as the plain user serves.
            os.symlink("/etc/passwd", export / "out")
            c = NfsClient(str(export), port, uid=0)
            try:
                out = c("LOOKUP", c.root, b"out").object
                assert c("READ", out, 0, 100).status == Stat.INVAL  # the link itself, never what it names
                assert c("READLINK", out).data == b"/etc/passwd"
                gone = c("CREATE", c.root, b"gone", 0, Sattr3(mode=0o644)).obj
                assert c("REMOVE", c.root, b"gone").ok
                assert c("GETATTR", gone).status == Stat.STALE
                assert c("CREATE", c.root, b"gone", 0, Sattr3(mode=0o644)).ok  # the name again, a new object
                assert c("GETATTR", gone).status == Stat.STALE
                forged = bytearray(c.root)
                forged[-1] ^= 1
                assert c("GETATTR", bytes(forged)).status == Stat.BADHANDLE
            finally:
                c.close()
        finally:
            stack.stop()
        assert "Traceback" not in stack.log_text(), stack.log_text()
    finally:
        shutil.rmtree(top, ignore_errors=True)


def overlay_mounted(prefix: str, image: dict) -> tuple[Path, dict]:
    """(a new directory, its layers): ``merged`` an overlayfs mount of ``lower`` (holding ``image``'s files),
    ``upper`` and ``work``; skipped where overlayfs cannot be mounted."""
    top = Path(tempfile.mkdtemp(prefix=prefix))
    layers = {name: top / name for name in ("lower", "upper", "work", "merged")}
    for path in layers.values():
        path.mkdir()
    for name, text in image.items():
        (layers["lower"] / name).write_text(text)
    mounted = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir={layers['lower']},upperdir={layers['upper']},workdir={layers['work']}", str(layers["merged"])],
        capture_output=True, text=True)
    if mounted.returncode != 0:
        shutil.rmtree(top, ignore_errors=True)
        pytest.skip(f"no overlayfs here: {mounted.stderr.strip()}")
    return top, layers


def test_root_serves_a_containers_own_overlay_files_by_paths():
    """A directory of a container's own files lies on overlayfs, which gives no file handles (without
    ``nfs_export=on``): root's server, which could open kernel handles elsewhere, serves that export through the
    map of places, saying why, and its handles last across a restart and a rename done while it was down."""
    top, layers = overlay_mounted("nfsstack-overlay-", {"image.txt": "from the image\n"})
    export, work = layers["merged"], top / "serving"
    work.mkdir()
    (top / "exports").write_text(f"{export} 127.0.0.1(rw,insecure,no_root_squash)\n")
    port = free_port()
    args = ("--bind", "127.0.0.1", "--portmap-port", str(port), "--nfs-port", "0", "--status-port", "0",
            "--exports", str(top / "exports"), "--state-dir", str(work / "state"), "--grace-time", "0")
    try:
        stack = Stack(*args, workdir=str(work)).start(port, timeout=30)
        try:
            log = stack.log_text()
            assert f"the filesystem of {export} gives no file handles (overlay)" in log, log
            c = NfsClient(str(export), port)
            try:
                image = c("LOOKUP", c.root, b"image.txt").object
                assert c("READ", image, 0, 100).data == b"from the image\n"
                made = c("CREATE", c.root, b"new", 0, Sattr3(mode=0o644))
                assert made.ok, made.status
                f = made.obj
                assert c("WRITE", f, 0, b"written", 2).ok
                d = c("MKDIR", c.root, b"dir", Sattr3(mode=0o755)).obj
                assert c("RENAME", c.root, b"new", d, b"renamed").ok
                assert c("READ", f, 0, 100).data == b"written"
            finally:
                c.close()
        finally:
            stack.stop()
        os.rename(export / "dir" / "renamed", export / "dir" / "again")
        stack = Stack(*args, workdir=str(work)).start(port, timeout=30)
        try:
            c = NfsClient(str(export), port)
            try:
                r = c("READ", f, 0, 100)
                assert r.ok and r.data == b"written", r.status
                r = c("READ", image, 0, 100)
                assert r.ok and r.data == b"from the image\n", r.status
            finally:
                c.close()
        finally:
            stack.stop()
        log = stack.log_text()
        assert "Traceback" not in log, log
        assert (layers["upper"] / "dir" / "again").read_bytes() == b"written"
    finally:
        subprocess.run(["umount", str(layers["merged"])], check=False)
        shutil.rmtree(top, ignore_errors=True)


def test_an_overlay_export_beside_others_is_refused_saying_why():
    """Root's server with an export on overlayfs beside one on a filesystem with handles keeps kernel handles
    for the other (its clients' handles and crossmnt go on working) and refuses to mount the overlay one, saying
    why in its log and at MNT."""
    top, layers = overlay_mounted("nfsstack-overlay-beside-", {})
    layers["plain"] = top / "plain"
    layers["plain"].mkdir()
    (layers["plain"] / "file").write_text("plain\n")
    work = top / "serving"
    work.mkdir()
    (top / "exports").write_text(f"{layers['merged']} 127.0.0.1(rw,insecure,no_root_squash)\n"
                                 f"{layers['plain']} 127.0.0.1(rw,insecure,no_root_squash,crossmnt)\n")
    port = free_port()
    try:
        stack = Stack("--bind", "127.0.0.1", "--portmap-port", str(port), "--nfs-port", "0", "--status-port", "0",
                      "--exports", str(top / "exports"), "--state-dir", str(work / "state"), "--grace-time", "0",
                      workdir=str(work)).start(port, timeout=30)
        try:
            c = NfsClient(str(layers["plain"]), port)
            try:
                f = c("LOOKUP", c.root, b"file").object
                assert c("READ", f, 0, 100).data == b"plain\n"
            finally:
                c.close()
            with pytest.raises(Exception):
                NfsClient(str(layers["merged"]), port)
            log = stack.log_text()
            assert "without open_by_handle_at" not in log, log
            assert (f"not serving {layers['merged']}: the filesystem of {layers['merged']} gives no file handles "
                    "(overlay)") in log, log
            assert f"the filesystem of {layers['merged']} gives no file handles (overlay): mount it with " \
                   "nfs_export=on" in log, log
        finally:
            stack.stop()
        assert "Traceback" not in stack.log_text()
    finally:
        subprocess.run(["umount", str(layers["merged"])], check=False)
        shutil.rmtree(top, ignore_errors=True)


def _ramfs(top: Path, name: str) -> Path:
    """A ramfs (no export operations: neither file handles nor lasting identities, as 9p and CIFS) at top/name."""
    (top / name).mkdir()
    mounted = subprocess.run(["mount", "-t", "ramfs", "ramfs", str(top / name)], capture_output=True, text=True)
    if mounted.returncode != 0:
        shutil.rmtree(top, ignore_errors=True)
        pytest.skip(f"no ramfs here: {mounted.stderr.strip()}")
    return top / name


def _disk_mounted_then_read(disk: Path, port: int) -> None:
    """A tmpfs mounted at the ``mountpoint`` export ``disk`` of the running stack: a file on it is read through NFS."""
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(disk)], check=True)
    (disk / "file").write_text("on the disk\n")
    c = NfsClient(str(disk), port)
    try:
        f = c("LOOKUP", c.root, b"file").object
        assert c("READ", f, 0, 100).data == b"on the disk\n"
    finally:
        c.close()


def test_exports_that_nothing_can_serve_stop_the_start_saying_why():
    """Every export on a filesystem that gives neither file handles nor identities to know its files by: no
    backend can serve them, so the start stops with the one line naming the services and why (before, the
    backend by paths started and only MNT said it), as any other start where nfsd cannot run does."""
    from tests.integration.test_health import run_to_exit, the_one_line

    top = Path(tempfile.mkdtemp(prefix="nfsstack-nothing-served-"))
    ram = _ramfs(top, "ram")
    try:
        (top / "work").mkdir()
        (top / "exports").write_text(f"{ram} 127.0.0.1(rw,insecure,no_root_squash)\n")
        stack = Stack("--bind", "127.0.0.1", "--portmap-port", str(free_port()), "--nfs-port", "0",
                      "--status-port", "0", "--exports", str(top / "exports"), "--state-dir",
                      str(top / "work" / "state"), workdir=str(top / "work"))
        line = the_one_line(*run_to_exit(stack.prefix, stack.args, top / "work"))
        assert "mountd, nfsd, nlockmgr and status cannot run" in line, line
        assert f"the filesystem of {ram} gives no file handles (ramfs), nor identities" in line, line
    finally:
        subprocess.run(["umount", "-l", str(ram)], check=False)
        shutil.rmtree(top, ignore_errors=True)


def test_a_mountpoint_export_is_not_judged_by_the_directory_below_its_disk():
    """An export with ``mountpoint`` whose disk is not mounted yet, over a directory of a filesystem without
    handles or identities: the start judges the disk to come, not the directory below (which would stop the
    start, or choose the backend by paths for everything); once the disk is mounted, it is served."""
    top = Path(tempfile.mkdtemp(prefix="nfsstack-mountpoint-"))
    ram = _ramfs(top, "ram")
    disk = ram / "disk"
    try:
        disk.mkdir()
        (top / "work").mkdir()
        (top / "exports").write_text(f"{disk} 127.0.0.1(rw,insecure,no_root_squash,mountpoint)\n")
        port = free_port()
        stack = Stack("--bind", "127.0.0.1", "--portmap-port", str(port), "--nfs-port", "0", "--status-port", "0",
                      "--exports", str(top / "exports"), "--state-dir", str(top / "work" / "state"),
                      "--grace-time", "0", workdir=str(top / "work")).start(port, timeout=30)
        try:
            _disk_mounted_then_read(disk, port)
        finally:
            stack.stop()
        log = stack.log_text()
        assert "without open_by_handle_at" not in log, log
        assert "Traceback" not in log, log
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
        subprocess.run(["umount", "-l", str(ram)], check=False)
        shutil.rmtree(top, ignore_errors=True)


def test_a_container_whose_only_export_waits_for_its_disk_still_finds_it_lacks_the_capability():
    """Root with Docker's capabilities (no CAP_DAC_READ_SEARCH) and one export whose disk is not mounted yet:
    the filesystem below is not probed, but the process's own privilege is, so the backend by paths is chosen
    (kernel handles would fail every call), and once the disk is mounted its files are served."""
    top = Path(tempfile.mkdtemp(prefix="nfsstack-waiting-"))
    disk = top / "disk"
    disk.mkdir()
    (top / "work").mkdir()
    (top / "exports").write_text(f"{disk} 127.0.0.1(rw,insecure,no_root_squash,mountpoint)\n")
    port = free_port()
    stack = docker_root(top / "work" / "state", top / "exports", top / "work", port)
    try:
        stack.start(port, timeout=30)
        try:
            _disk_mounted_then_read(disk, port)
        finally:
            stack.stop()
        log = stack.log_text()
        assert "without open_by_handle_at" in log and "CAP_DAC_READ_SEARCH" in log, log
        assert "Traceback" not in log, log
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
        shutil.rmtree(top, ignore_errors=True)


def test_an_empty_exports_file_is_not_judged_by_the_working_directorys_filesystem():
    """No export at all (an exports file still to be written), the server started in a directory of a filesystem
    without handles or identities: nothing is unservable, so the stack starts, as it would anywhere else."""
    top = Path(tempfile.mkdtemp(prefix="nfsstack-no-exports-"))
    ram = _ramfs(top, "ram")
    try:
        (top / "exports").write_text("# nothing yet\n")
        port = free_port()
        stack = Stack("--bind", "127.0.0.1", "--portmap-port", str(port), "--nfs-port", "0", "--status-port", "0",
                      "--exports", str(top / "exports"), "--state-dir", str(top / "state"), workdir=str(ram))
        stack.start(port, timeout=30)  # its portmapper answers: it started
        stack.stop()
        log = stack.log_text()
        assert "cannot run" not in log and "Traceback" not in log, log
        assert "without open_by_handle_at" not in log, log  # kernel handles, the default: not the directory's
    finally:
        subprocess.run(["umount", "-l", str(ram)], check=False)
        shutil.rmtree(top, ignore_errors=True)
