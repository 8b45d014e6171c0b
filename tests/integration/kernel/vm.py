"""Boot a Debian kernel in qemu as an NFS client, inside the test's network namespace.

The guest image is an initramfs built from Debian packages and cached under
``.cache/kernel-vm/`` (git ignores it): ``linux-image-amd64`` (the kernel and
its NFS client modules), ``busybox-static``, and an ``/init`` that loads the
modules, sets up the network and runs a scenario script.  The scenario rides
in a second cpio archive appended to the cached one (the kernel unpacks
concatenated archives), so a run only writes a few hundred bytes.

Networking is qemu's user mode: the guest is 10.0.2.15 and reaches the
namespace's 127.0.0.1 as 10.0.2.2, so a server listening in the namespace is
what the guest mounts.  The guest's console is qemu's stdio: the harness reads
it line by line, and a scenario that prints ``@@HOST restart`` gets the server
restarted and then an ``ok`` line on its standard input.
"""

from __future__ import annotations

import glob
import gzip
import io
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[3]
CACHE = REPO / ".cache" / "kernel-vm"

#: Loaded in this order with busybox insmod (REFERENCE.md).
MODULES = [
    "virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci", "failover",
    "net_failover", "virtio_net", "netfs", "fscache", "sunrpc", "grace", "lockd", "nfs", "nfs_acl", "nfsv3",
]

#: Host programs copied into the guest with their shared libraries: the guest's lockd
#: registers with a local rpcbind, without which a mount with locking (the default) fails, and
#: rpc.statd (nfs-common) monitors the server, so that locks are reclaimed when it restarts.
GUEST_PROGRAMS = ["/usr/sbin/rpcbind", "/usr/sbin/rpc.statd", "/usr/bin/rpcinfo"]
GUEST_FILES = ["/etc/netconfig", "/etc/services", "/etc/protocols", "/etc/rpc", "/etc/nsswitch.conf"]
#: A static helper compiled from guest/locker.c: fcntl byte-range locks from a scenario.
LOCKER_SOURCE = Path(__file__).resolve().parent / "guest" / "locker.c"

INIT = r"""#!/bin/busybox sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /tmp /mnt /run && mount -t tmpfs tmp /tmp && mount -t tmpfs run /run
for m in $(cat /modules.list); do insmod /modules/$m.ko || echo "@@INIT insmod $m failed"; done
hostname guest
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
mkdir -p /run/rpcbind /var/lib/nfs/sm /var/lib/nfs/sm.bak && ln -s /run /var/run
rpcbind -w || echo "@@INIT rpcbind failed"
rpc.statd --no-notify || echo "@@INIT rpc.statd failed"
echo "@@INIT ready $(uname -r)"
cd /tmp
sh /scenario.sh
echo "@@EXIT $?"
sync
poweroff -f
"""


class VMError(RuntimeError):
    pass


def _debs() -> dict[str, Path]:
    """Download the packages the guest is made of (once; apt caches are not used)."""
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = {}
    for name, pattern in (("kernel", "linux-image-*-amd64_*.deb"), ("busybox", "busybox-static_*.deb")):
        have = sorted(debs.glob(pattern))
        if not have:
            package = "busybox-static" if name == "busybox" else _kernel_package()
            subprocess.run(["apt-get", "download", package], cwd=debs, check=True, capture_output=True)
            have = sorted(debs.glob(pattern))
        if not have:
            raise VMError(f"could not download the {name} package")
        found[name] = have[-1]
    return found


def _kernel_package() -> str:
    out = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True, check=True)
    m = re.search(r"Depends: (linux-image-[\w.-]+-amd64)\b", out.stdout)
    if not m:
        raise VMError("apt-cache does not know linux-image-amd64 (run apt-get update)")
    return m.group(1)


@dataclass
class Image:
    kernel: Path
    initrd: Path
    release: str


def _cpio_newc(files: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (path, mode, data); symlinks have S_IFLNK and their target as data."""
    out = io.BytesIO()
    for ino, (name, mode, data) in enumerate(files + [("TRAILER!!!", 0, b"")], start=1):
        encoded = name.encode() + b"\0"
        header = "070701" + "".join(
            f"{v:08x}" for v in (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        )
        out.write(header.encode() + encoded)
        out.write(b"\0" * ((-(110 + len(encoded))) % 4))
        out.write(data)
        out.write(b"\0" * ((-len(data)) % 4))
    return out.getvalue()


def _host_files(programs=GUEST_PROGRAMS, extra_files=GUEST_FILES) -> list[tuple[str, int, bytes]]:
    """``programs`` (GUEST_PROGRAMS), the libraries ldd finds for them, and ``extra_files`` (GUEST_FILES), at their
    own paths."""
    paths: list[str] = []
    for program in programs:
        if not os.path.exists(program):
            raise VMError(f"{program} is missing (tests/install-deps.sh installs it)")
        paths.append(program)
        out = subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout
        paths += re.findall(r"(/\S+\.so[\w.]*)", out)
    paths += [f for f in extra_files if os.path.exists(f)]
    files, dirs = [], set()
    for path in dict.fromkeys(paths):
        real = os.path.realpath(path)
        rel = path.lstrip("/")
        parts = Path(rel).parts[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in dirs and d not in ("bin", "sbin", "etc"):
                dirs.add(d)
                files.append((d, 0o040755, b""))
        files.append((rel, 0o100755, Path(real).read_bytes()))
    return files


def build_image() -> Image:
    """The kernel and the cached base initramfs, built on first use."""
    debs = _debs()
    root = CACHE / "root"
    stamp = CACHE / "image.stamp"
    key = (f"{debs['kernel'].name} {debs['busybox'].name} {INIT} {MODULES} {GUEST_PROGRAMS} {GUEST_FILES} "
           f"{LOCKER_SOURCE.read_text()}")
    base = CACHE / "base.cpio.gz"
    if not (stamp.exists() and stamp.read_text() == key and base.exists()):
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        for deb in debs.values():
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        files: list[tuple[str, int, bytes]] = []
        for d in ("bin", "sbin", "proc", "sys", "dev", "tmp", "mnt", "run", "modules", "etc"):
            files.append((d, 0o040755, b""))
        busybox = (root / "bin" / "busybox").read_bytes()
        files.append(("bin/busybox", 0o100755, busybox))
        applets = subprocess.run([str(root / "bin" / "busybox"), "--list"], capture_output=True, text=True,
                                 check=True).stdout.split()
        for applet in applets:
            if applet != "busybox":  # a link over itself makes init fail with ELOOP
                files.append((f"bin/{applet}", 0o120777, b"busybox"))
        release = next(p.name for p in (root / "lib" / "modules").iterdir())
        moddir = root / "lib" / "modules" / release / "kernel"
        for name in MODULES:
            hits = glob.glob(str(moddir / "**" / f"{name}.ko"), recursive=True)
            if not hits:
                raise VMError(f"module {name}.ko not in {debs['kernel'].name}")
            files.append((f"modules/{name}.ko", 0o100644, Path(hits[0]).read_bytes()))
        files.append(("modules.list", 0o100644, ("\n".join(MODULES) + "\n").encode()))
        files.extend(_host_files())
        files.append(("init", 0o100755, INIT.encode()))
        files.append(("bin/locker", 0o100755, _build_locker()))
        files.append(("etc/hosts", 0o100644, b"127.0.0.1 localhost\n10.0.2.15 guest\n10.0.2.2 server\n"))
        files.append(("etc/passwd", 0o100644, b"root:x:0:0::/:/bin/sh\n_rpc:x:102:65534::/run/rpcbind:/bin/false\nuser:x:1000:1000::/tmp:/bin/sh\n"))
        files.append(("etc/group", 0o100644, b"root:x:0:\nnogroup:x:65534:\nuser:x:1000:\n"))
        base.write_bytes(gzip.compress(_cpio_newc(files), compresslevel=1))
        kernel = next((root / "boot").glob("vmlinuz-*"))
        shutil.copy(kernel, CACHE / "vmlinuz")
        (CACHE / "release").write_text(release)
        stamp.write_text(key)
    return Image(CACHE / "vmlinuz", base, (CACHE / "release").read_text())


def _build_locker() -> bytes:
    out = CACHE / "locker"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(out), str(LOCKER_SOURCE)], check=True, capture_output=True)
    return out.read_bytes()


_KVM_PROBE = CACHE / "kvm.probe"


def kvm_usable() -> bool:
    """Whether to try KVM: /dev/kvm is usable and no earlier boot found it broken.

    Some hosts (PVM) open /dev/kvm but cannot run a stock kernel; the first
    boot with KVM is the probe, and a failure there is remembered.
    """
    if _KVM_PROBE.exists():
        return _KVM_PROBE.read_text() == "yes"
    return os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK)


#: How long a guest may take to reach its init's "ready" line before qemu is killed.  TCG needs about 2 s;
#: a PVM host's /dev/kvm opens but never runs a stock kernel, and without this deadline the KVM probe would
#: hang for the scenario's whole timeout on every fresh machine.
BOOT_DEADLINE = {True: 20.0, False: 90.0}


def _remember_kvm(ok: bool) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    _KVM_PROBE.write_text("yes" if ok else "no")


@dataclass
class Result:
    status: Optional[int]
    console: str
    checks: list[tuple[str, str]] = field(default_factory=list)  # (PASS|FAIL, text)
    seconds: float = 0.0

    @property
    def failures(self) -> list[str]:
        return [text for verdict, text in self.checks if verdict == "FAIL"]

    def summary(self) -> str:
        return "\n".join(line for line in self.console.splitlines() if line.startswith(("PASS", "FAIL", "@@", "INFO")))


def run_guest(
    netns: str,
    scenario: str,
    env: dict[str, str],
    on_request: Optional[Callable[[str], Optional[str]]] = None,
    timeout: float = 300.0,
    memory: int = 512,
    network: str = "user",
    programs: tuple = (),
    files: Callable[[Path], list] | tuple = (),
) -> Result:
    """Boot the guest in ``netns``, run ``scenario`` (a shell script's text) with ``env``, return its result.

    ``network`` is "user" (qemu's user networking: the server sees the guest as 127.0.0.1) or "tap" (a tap
    device in the namespace, 10.0.2.2 on the host side: the server sees 10.0.2.15 and can call it back).
    ``programs``: more host programs for this boot only, copied in with their libraries beside the scenario
    (the cached image stays as it is).  ``files``: more files for this boot only, (path, mode, data) as
    :func:`_cpio_newc` takes them, or a function of the unpacked kernel package's root giving them (modules).
    """
    use_kvm = kvm_usable()
    if network == "tap":
        _make_tap(netns)
    result = _boot(netns, scenario, env, on_request, timeout, memory, use_kvm, network, programs, files)
    if use_kvm and not _KVM_PROBE.exists():
        booted = "@@INIT ready" in result.console
        _remember_kvm(booted)
        if not booted:
            result = _boot(netns, scenario, env, on_request, timeout, memory, False, network, programs, files)
    return result


TAP = "nfstap0"
#: IPv6 on the tap link (a unique local prefix): the host side; a scenario gives the guest GUEST6 itself.
HOST6, GUEST6 = "fd00:2::2", "fd00:2::15"


def _make_tap(netns: str) -> None:
    """The host side of the guest's link, inside the namespace: 10.0.2.2/24 and fd00:2::2/64 on a tap device."""
    for cmd in (["ip", "tuntap", "add", "dev", TAP, "mode", "tap"], ["ip", "addr", "add", "10.0.2.2/24", "dev", TAP],
                ["ip", "-6", "addr", "add", f"{HOST6}/64", "dev", TAP, "nodad"],
                ["ip", "link", "set", TAP, "up"]):
        subprocess.run(["ip", "netns", "exec", netns, *cmd], check=True, capture_output=True)


def _boot(netns, scenario, env, on_request, timeout, memory, use_kvm, network="user", programs=(),
          files=()) -> Result:
    image = build_image()
    if callable(files):
        files = files(CACHE / "root")
    exports = "".join(f"export {k}={shlex_quote(v)}\n" for k, v in env.items())
    # A program the host lacks is left out: the scenario says what it misses.
    added = _host_files([p for p in programs if os.path.exists(p)], []) if programs else []
    extra = gzip.compress(_cpio_newc(added + list(files) + [("scenario.sh", 0o100755,
                                               ("#!/bin/sh\n" + exports + scenario).encode())]))
    workdir = Path(tempfile.mkdtemp(prefix="nfsstack-vm-"))
    initrd = workdir / "initrd"
    initrd.write_bytes(image.initrd.read_bytes() + extra)
    accel = ["-accel", "kvm", "-cpu", "host"] if use_kvm else ["-accel", "tcg", "-cpu", "max"]
    cmd = [
        "ip", "netns", "exec", netns, "qemu-system-x86_64", *accel, "-m", str(memory), "-smp", "1",
        "-nodefaults", "-no-reboot", "-display", "none", "-serial", "stdio",
        "-kernel", str(image.kernel), "-initrd", str(initrd),
        "-append", "console=ttyS0 panic=-1 quiet loglevel=3",
        "-netdev", "user,id=n0" if network == "user" else f"tap,id=n0,ifname={TAP},script=no,downscript=no",
        "-device", "virtio-net-pci,netdev=n0",
    ]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    boot_killer = threading.Timer(BOOT_DEADLINE[use_kvm], proc.kill)
    boot_killer.start()
    try:
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(line)
            if line.startswith("@@INIT ready"):
                boot_killer.cancel()
            if line.startswith("@@HOST ") and on_request is not None:
                answer = on_request(line[len("@@HOST "):].strip())
                proc.stdin.write((answer or "ok").encode() + b"\n")
                proc.stdin.flush()
        proc.wait(30)
    finally:
        killer.cancel()
        boot_killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    console = "\n".join(lines)
    status = None
    for line in lines:
        m = re.match(r"@@EXIT (\d+)", line)
        if m:
            status = int(m.group(1))
    checks = [(m.group(1), m.group(2)) for m in (re.match(r"(PASS|FAIL):? (.*)", l) for l in lines) if m]
    return Result(status, console, checks, time.monotonic() - started)


def shlex_quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"
