"""A FUSE filesystem that loses, when "power is cut", everything that was not fsynced: the durability tests' disk.

On a real disk a write first lands in volatile caches (the page cache, the drive's cache) and reaches stable storage
only when something syncs it; a power cut loses the rest.  Killing the server process does not show this: the
host's page cache keeps every byte.  This filesystem keeps all its state in the memory of its own daemon process
(which stays up across a "cut": it is the disk), in two versions:

* the **live** tree, what every system call sees: inodes with their attributes, file data, directory entries;
* the **durable** tree, what survives a cut.  It moves forward only on a sync that reaches the layer as
  FUSE_FSYNC or FUSE_FSYNCDIR (``fsync``, ``fdatasync``, io_uring's ``IORING_OP_FSYNC``, AIO's fsync):

  - a file's data (its bytes and size) becomes durable only by an fsync or fdatasync of that file;
  - metadata (directory entries, i.e. create, mkdir, rename, unlink, link, symlink; and every inode's mode,
    owner and times) is journalled as ext4 and XFS do: any fsync or fdatasync of anything commits the whole
    journal, so every namespace change made before it becomes durable at once (a file created then fsynced is
    there after the cut, so is its directory).  A namespace change with no sync after it is lost.

"Cutting power" (:meth:`PowercutFS.cut`) replaces the live tree by the durable one: unsynced data, files created
since the last commit, renames and removals since then, all revert.  Inode numbers stay what they were (the FUSE
nodeids of the files that survive do not change), so the kernel file handles that nfsstack gives out
(``name_to_handle_at``/``open_by_handle_at``, FUSE's export support) resolve after the cut exactly as they would
after a reboot of a real disk, and a file that did not survive gives ESTALE/ENOENT.

Nothing is cached by the kernel across the cut: every open is ``direct_io`` (no page cache: each read and write
is a FUSE_READ or FUSE_WRITE to this daemon), and the attribute, entry and negative-entry timeouts are 0 (every
lookup and stat asks the daemon).  A real power cut loses the page cache too.

Run as root: ``python3 -m tests.powercut MOUNTPOINT CONTROL_SOCKET [--ignore-fsync]``; or from tests with
:class:`PowercutMount`.  The control socket takes one command per connection and answers one line:

* ``cut``: power cut, as above; answers ``ok``;
* ``checkpoint``: make the whole live tree durable now (a test's setup: "the disk as it was formatted");
* ``stats``: a JSON object: counts of fsync, fdatasync, fsyncdir, writes, cuts, and ``ignore_fsync``.

``--ignore-fsync`` (or the environment variable ``NFSSTACK_POWERCUT_IGNORE_FSYNC=1`` for :class:`PowercutMount`)
makes FUSE_FSYNC and FUSE_FSYNCDIR answer success without making anything durable: a disk whose syncs are
no-ops, to show that the durability tests fail then.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

IGNORE_ENV = "NFSSTACK_POWERCUT_IGNORE_FSYNC"
FUSE_CAP_EXPORT_SUPPORT = 1 << 4  # fuse_common.h: answer LOOKUP of "." and "..", so handles outlive the inode cache
ROOT = 1


@dataclass
class Inode:
    mode: int  # st_mode, type bits included
    uid: int
    gid: int
    atime: int = 0
    mtime: int = 0
    ctime: int = 0
    rdev: int = 0
    data: bytearray = field(default_factory=bytearray)  # regular files
    entries: dict = field(default_factory=dict)  # directories: name -> inode number
    target: str = ""  # symbolic links
    nlink: int = 1

    def meta(self) -> "Inode":
        """A copy of everything but a file's data (what a journal commit records)."""
        return Inode(self.mode, self.uid, self.gid, self.atime, self.mtime, self.ctime, self.rdev, bytearray(),
                     dict(self.entries), self.target, self.nlink)


def _now() -> int:
    return time.time_ns()


class PowercutFS:
    """The filesystem's state and operations, path-based as libfuse's high-level API calls them (mfusepy)."""

    use_ns = True

    def __init__(self, ignore_fsync: bool = False) -> None:
        self._mutex = threading.RLock()
        self.ignore_fsync = ignore_fsync
        t = _now()
        self.inodes: dict[int, Inode] = {ROOT: Inode(stat.S_IFDIR | 0o755, 0, 0, t, t, t, nlink=2)}
        self.next_ino = ROOT + 1
        #: The durable tree: metadata of every inode as of the last journal commit, and file data as of each file's
        #: last fsync.
        self.durable_meta: dict[int, Inode] = {}
        self.durable_data: dict[int, bytes] = {}
        self.counts = {"fsync": 0, "fdatasync": 0, "fsyncdir": 0, "write": 0, "cut": 0, "checkpoint": 0}
        self.checkpoint()

    # -- durability --------------------------------------------------------------------------------

    def _commit_journal(self) -> None:
        self.durable_meta = {ino: node.meta() for ino, node in self.inodes.items()}

    def _sync_file(self, ino: int) -> None:
        node = self.inodes.get(ino)
        if node is not None and stat.S_ISREG(node.mode):
            self.durable_data[ino] = bytes(node.data)

    def checkpoint(self) -> None:
        with self._mutex:
            self._commit_journal()
            for ino in self.inodes:
                self._sync_file(ino)
            self.counts["checkpoint"] += 1

    def cut(self) -> None:
        """Power cut: the live tree becomes the durable one."""
        with self._mutex:
            inodes = {}
            for ino, node in self.durable_meta.items():
                node = node.meta()
                if stat.S_ISREG(node.mode):
                    node.data = bytearray(self.durable_data.get(ino, b""))
                inodes[ino] = node
            # Link counts from the surviving directory entries (a journal keeps them consistent too).
            for node in inodes.values():
                node.nlink = 2 if stat.S_ISDIR(node.mode) else 0
            for node in inodes.values():
                if stat.S_ISDIR(node.mode):
                    for child in node.entries.values():
                        c = inodes.get(child)
                        if c is not None:
                            c.nlink += 1 if not stat.S_ISDIR(c.mode) else 0
                            node.nlink += 1 if stat.S_ISDIR(c.mode) else 0
            self.inodes = inodes
            self.durable_data = {ino: data for ino, data in self.durable_data.items() if ino in inodes}
            self.counts["cut"] += 1

    def stats(self) -> dict:
        with self._mutex:
            return {**self.counts, "ignore_fsync": self.ignore_fsync, "inodes": len(self.inodes)}

    # -- helpers -----------------------------------------------------------------------------------

    def _lookup(self, path: Optional[str]) -> int:
        if path is None:
            raise OSError(errno.ESTALE, "no path")
        ino = ROOT
        for part in path.split("/"):
            if not part:
                continue
            node = self.inodes.get(ino)
            if node is None or not stat.S_ISDIR(node.mode):
                raise OSError(errno.ENOTDIR, path)
            if part not in node.entries:
                raise OSError(errno.ENOENT, path)
            ino = node.entries[part]
        if ino not in self.inodes:
            raise OSError(errno.ENOENT, path)
        return ino

    def _node(self, path: Optional[str], fh: Optional[int] = None) -> tuple[int, Inode]:
        if fh:
            node = self.inodes.get(fh)
            if node is None:
                raise OSError(errno.ESTALE, "gone in a power cut")
            return fh, node
        ino = self._lookup(path)
        return ino, self.inodes[ino]

    def _parent(self, path: str) -> tuple[Inode, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        ino = self._lookup(head or "/")
        node = self.inodes[ino]
        if not stat.S_ISDIR(node.mode):
            raise OSError(errno.ENOTDIR, path)
        return node, name

    def _make(self, path: str, mode: int, **kw) -> int:
        from mfusepy import fuse_get_context

        uid, gid, _ = fuse_get_context()
        parent, name = self._parent(path)
        if name in parent.entries:
            raise OSError(errno.EEXIST, path)
        if parent.mode & stat.S_ISGID:
            gid = parent.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        t = _now()
        ino = self.next_ino
        self.next_ino += 1
        node = Inode(mode, uid, gid, t, t, t, **kw)
        if stat.S_ISDIR(mode):
            node.nlink = 2
            parent.nlink += 1
        self.inodes[ino] = node
        parent.entries[name] = ino
        parent.mtime = parent.ctime = t
        return ino

    def _drop(self, ino: int) -> None:
        node = self.inodes[ino]
        node.nlink -= 1 if not stat.S_ISDIR(node.mode) else 2
        node.ctime = _now()
        if node.nlink <= 0:
            # hard_remove: libfuse forgets the name, the inode lives on while open (fh) until a later cut or
            # forever (a test filesystem: no space is ever reclaimed)
            pass

    # -- operations --------------------------------------------------------------------------------

    def init_with_config(self, conn, config) -> None:
        if conn is not None:
            conn.want |= FUSE_CAP_EXPORT_SUPPORT & conn.capable
        if config is not None:
            config.direct_io = 1
            config.use_ino = 1
            config.hard_remove = 1
            config.entry_timeout = 0.0
            config.attr_timeout = 0.0
            config.negative_timeout = 0.0
            config.kernel_cache = 0
            config.auto_cache = 0

    def getattr(self, path, fh=None):
        with self._mutex:
            ino, node = self._node(path, fh)
            size = len(node.data) if stat.S_ISREG(node.mode) else (len(node.target) if stat.S_ISLNK(node.mode)
                                                                    else 4096)
            return {"st_ino": ino, "st_mode": node.mode, "st_nlink": max(node.nlink, 0), "st_uid": node.uid,
                    "st_gid": node.gid, "st_size": size, "st_blocks": (size + 511) // 512, "st_blksize": 4096,
                    "st_rdev": node.rdev, "st_atime": node.atime, "st_mtime": node.mtime, "st_ctime": node.ctime}

    def readdir(self, path, fh):
        with self._mutex:
            ino, node = self._node(path)
            # with use_ino, an entry needs its inode number: glibc's readdir skips entries whose d_ino is 0
            out = [(".", {"st_ino": ino, "st_mode": node.mode}, 0), ("..", {"st_ino": ROOT, "st_mode": node.mode}, 0)]
            for name, child in node.entries.items():
                c = self.inodes.get(child)
                if c is not None:
                    out.append((name, {"st_ino": child, "st_mode": c.mode}, 0))
            return out

    def opendir(self, path):
        with self._mutex:
            ino, node = self._node(path)
            if not stat.S_ISDIR(node.mode):
                raise OSError(errno.ENOTDIR, path)
            return 0

    def releasedir(self, path, fh):
        return 0

    def mkdir(self, path, mode):
        with self._mutex:
            self._make(path, stat.S_IFDIR | (mode & 0o7777))
            return 0

    def mknod(self, path, mode, dev):
        with self._mutex:
            self._make(path, mode, rdev=dev)
            return 0

    def create(self, path, mode, fi=None):
        with self._mutex:
            return self._make(path, stat.S_IFREG | (mode & 0o7777))

    def open(self, path, flags):
        with self._mutex:
            ino, node = self._node(path)
            if flags & os.O_TRUNC and stat.S_ISREG(node.mode):
                node.data = bytearray()
                node.mtime = node.ctime = _now()
            return ino

    def release(self, path, fh):
        return 0

    def flush(self, path, fh):
        return 0

    def read(self, path, size, offset, fh):
        with self._mutex:
            _, node = self._node(path, fh)
            return bytes(node.data[offset:offset + size])

    def write(self, path, data, offset, fh):
        with self._mutex:
            _, node = self._node(path, fh)
            end = offset + len(data)
            if end > len(node.data):
                node.data.extend(bytes(end - len(node.data)))
            node.data[offset:end] = data
            node.mtime = node.ctime = _now()
            node.mode &= ~(stat.S_ISUID | (stat.S_ISGID if node.mode & stat.S_IXGRP else 0))
            self.counts["write"] += 1
            return len(data)

    def truncate(self, path, length, fh=None):
        with self._mutex:
            _, node = self._node(path, fh)
            if not stat.S_ISREG(node.mode):
                raise OSError(errno.EISDIR if stat.S_ISDIR(node.mode) else errno.EINVAL, path)
            if length < len(node.data):
                del node.data[length:]
            else:
                node.data.extend(bytes(length - len(node.data)))
            node.mtime = node.ctime = _now()
            return 0

    def fsync(self, path, datasync, fh):
        with self._mutex:
            self.counts["fdatasync" if datasync else "fsync"] += 1
            if self.ignore_fsync:
                return 0
            ino, _ = self._node(path, fh)
            self._commit_journal()
            self._sync_file(ino)
            return 0

    def fsyncdir(self, path, datasync, fh):
        with self._mutex:
            self.counts["fsyncdir"] += 1
            if not self.ignore_fsync:
                self._commit_journal()
            return 0

    def unlink(self, path):
        with self._mutex:
            parent, name = self._parent(path)
            ino = parent.entries.get(name)
            if ino is None:
                raise OSError(errno.ENOENT, path)
            if stat.S_ISDIR(self.inodes[ino].mode):
                raise OSError(errno.EISDIR, path)
            del parent.entries[name]
            parent.mtime = parent.ctime = _now()
            self._drop(ino)
            return 0

    def rmdir(self, path):
        with self._mutex:
            parent, name = self._parent(path)
            ino = parent.entries.get(name)
            if ino is None:
                raise OSError(errno.ENOENT, path)
            node = self.inodes[ino]
            if not stat.S_ISDIR(node.mode):
                raise OSError(errno.ENOTDIR, path)
            if node.entries:
                raise OSError(errno.ENOTEMPTY, path)
            del parent.entries[name]
            parent.nlink -= 1
            parent.mtime = parent.ctime = _now()
            self._drop(ino)
            return 0

    def rename(self, old, new):
        with self._mutex:
            op, oname = self._parent(old)
            np_, nname = self._parent(new)
            ino = op.entries.get(oname)
            if ino is None:
                raise OSError(errno.ENOENT, old)
            moving = self.inodes[ino]
            existing = np_.entries.get(nname)
            if existing == ino:
                return 0
            if existing is not None:
                target = self.inodes[existing]
                if stat.S_ISDIR(target.mode):
                    if not stat.S_ISDIR(moving.mode):
                        raise OSError(errno.EISDIR, new)
                    if target.entries:
                        raise OSError(errno.ENOTEMPTY, new)
                    np_.nlink -= 1
                elif stat.S_ISDIR(moving.mode):
                    raise OSError(errno.ENOTDIR, new)
                self._drop(existing)
            del op.entries[oname]
            np_.entries[nname] = ino
            if stat.S_ISDIR(moving.mode) and op is not np_:
                op.nlink -= 1
                np_.nlink += 1
            t = _now()
            op.mtime = op.ctime = np_.mtime = np_.ctime = moving.ctime = t
            return 0

    def link(self, target, source):
        with self._mutex:
            ino = self._lookup(source)
            node = self.inodes[ino]
            if stat.S_ISDIR(node.mode):
                raise OSError(errno.EPERM, source)
            parent, name = self._parent(target)
            if name in parent.entries:
                raise OSError(errno.EEXIST, target)
            parent.entries[name] = ino
            node.nlink += 1
            t = _now()
            node.ctime = parent.mtime = parent.ctime = t
            return 0

    def symlink(self, target, source):
        with self._mutex:
            self._make(target, stat.S_IFLNK | 0o777, target=source)
            return 0

    def readlink(self, path):
        with self._mutex:
            _, node = self._node(path)
            if not stat.S_ISLNK(node.mode):
                raise OSError(errno.EINVAL, path)
            return node.target

    def chmod(self, path, mode):
        with self._mutex:
            _, node = self._node(path)
            node.mode = (node.mode & ~0o7777) | (mode & 0o7777)
            node.ctime = _now()
            return 0

    def chown(self, path, uid, gid):
        with self._mutex:
            _, node = self._node(path)
            if uid != -1:
                node.uid = uid
            if gid != -1:
                node.gid = gid
            node.ctime = _now()
            return 0

    def utimens(self, path, times=None):
        with self._mutex:
            _, node = self._node(path)
            t = _now()
            node.atime, node.mtime = times if times else (t, t)
            node.ctime = t
            return 0

    def statfs(self, path):
        with self._mutex:
            return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 1 << 20, "f_bfree": 1 << 19,
                    "f_bavail": 1 << 19, "f_files": 1 << 20, "f_ffree": (1 << 20) - len(self.inodes),
                    "f_favail": (1 << 20) - len(self.inodes), "f_namemax": 255}


# -- the daemon ---------------------------------------------------------------------------------------


def _serve_control(fs: PowercutFS, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    os.chmod(path, 0o600)
    srv.listen(8)

    def loop() -> None:
        while True:
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(10)
                try:
                    command = conn.recv(256).decode().strip()
                except OSError:
                    continue
                if command == "cut":
                    fs.cut()
                    answer = "ok"
                elif command == "checkpoint":
                    fs.checkpoint()
                    answer = "ok"
                elif command == "stats":
                    answer = json.dumps(fs.stats())
                else:
                    answer = f"error: unknown command {command!r}"
                with contextlib.suppress(OSError):
                    conn.sendall(answer.encode() + b"\n")

    threading.Thread(target=loop, name="powercut-control", daemon=True).start()


def main(argv: Optional[list[str]] = None) -> int:
    import warnings

    from mfusepy import FUSE

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mountpoint")
    parser.add_argument("control")
    parser.add_argument("--ignore-fsync", action="store_true", help="syncs answer success and make nothing durable")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.simplefilter("ignore", DeprecationWarning)
    fs = PowercutFS(ignore_fsync=args.ignore_fsync)
    _serve_control(fs, args.control)
    FUSE(fs, args.mountpoint, foreground=True, allow_other=True, default_permissions=True, fsname="powercut",
         subtype="powercut", remember=-1)
    return 0


# -- for tests -----------------------------------------------------------------------------------------


def fuse_available() -> str | None:
    """None if a powercut mount can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    import ctypes.util

    if ctypes.util.find_library("fuse3") is None:
        return "no libfuse3"
    try:
        import importlib.util

        if importlib.util.find_spec("mfusepy") is None:
            return "mfusepy unavailable"
    except (ImportError, ValueError) as e:
        return f"mfusepy unavailable: {e}"
    return None


def _mounted(path: str) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == real for line in f)


class PowercutMount:
    """The daemon in a subprocess, mounted at ``mountpoint``; :meth:`close` unmounts it (always: use ``with``)."""

    def __init__(self, mountpoint: str | os.PathLike, ignore_fsync: Optional[bool] = None, timeout: float = 15.0):
        self.mountpoint = str(mountpoint)
        self.control = str(Path(self.mountpoint).parent / (Path(self.mountpoint).name + ".control"))
        if ignore_fsync is None:
            ignore_fsync = os.environ.get(IGNORE_ENV, "") not in ("", "0")
        self.ignore_fsync = ignore_fsync
        self.log = Path(self.mountpoint).parent / (Path(self.mountpoint).name + ".log")
        os.makedirs(self.mountpoint, exist_ok=True)
        repo = str(Path(__file__).resolve().parent.parent)
        # libfuse3, whose API the daemon is written for: mfusepy takes libfuse2 first where both are installed
        # (a machine with sshfs 2 or AppImages), under which a SETATTR's times never became durable here.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]),
                   FUSE_LIBRARY_NAME="fuse3")
        cmd = [sys.executable, "-m", "tests.powercut", self.mountpoint, self.control]
        if ignore_fsync:
            cmd.append("--ignore-fsync")
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen(cmd, env=env, cwd=repo, stdout=self._logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not (_mounted(self.mountpoint) and os.path.exists(self.control)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"powercut filesystem did not mount:\n{self.log.read_text(errors='replace')}")
            time.sleep(0.05)

    def command(self, text: str, timeout: float = 10.0) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(self.control)
            s.sendall(text.encode() + b"\n")
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                answer += chunk
        out = answer.decode().strip()
        if out.startswith("error"):
            raise RuntimeError(out)
        return out

    def cut(self) -> None:
        """Cut the power: every change not made durable by a sync is gone."""
        self.command("cut")

    def checkpoint(self) -> None:
        self.command("checkpoint")

    def stats(self) -> dict:
        return json.loads(self.command("stats"))

    def close(self) -> None:
        if _mounted(self.mountpoint):
            if subprocess.run(["umount", self.mountpoint], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", self.mountpoint], capture_output=True)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()

    def __enter__(self) -> "PowercutMount":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(main())
