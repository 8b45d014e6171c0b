"""Per-call cost of nfsd's hot procedures, in process: encoded calls in, reply bytes out, through the real Dispatcher.

    PYTHONPATH=src python3 bench/percall.py                       # us per call, best of --repeat runs
    PYTHONPATH=src python3 bench/percall.py --callgrind -n 200    # + instructions per call (valgrind)
    PYTHONPATH=src python3 bench/percall.py --cache-size 1        # handles opened again (open_by_handle_at)

Needs root (open_by_handle_at).  One local export in a temporary directory (``--dir``, default the system's temp
dir), ``rw,no_root_squash``, called from a privileged port over "tcp", as AUTH_SYS uid 0 and uid 1000 (who owns
the files).  The dispatcher has the stack's call observer (``CallStats``, as ``twistd nfsstack`` serves: the
status service's counts), unless ``--no-observer``.  Nothing of Twisted's reactor or of the socket is measured: the
loop is ``Dispatcher.handle`` of N call messages made beforehand, each with its own xid.

The calls (each row: a fresh set of N messages):

- GETATTR, ACCESS (all bits): round-robin over a working set of ``--files`` files (their handles known, as a
  client's would be);
- LOOKUP: round-robin over the same names in their directory;
- READ 4 KiB: sequential over a file of ``--files`` x 4 KiB (in the page cache);
- WRITE 4 KiB UNSTABLE, and FILE_SYNC: sequential over a file of the same size (FILE_SYNC's fsync runs inline:
  the harness hands the backend no io_uring, and its thread pool runs each task at once);
- REMOVE: N files made beforehand, each removed once.

``--callgrind`` runs each (procedure, uid) again under ``valgrind --tool=callgrind`` with ``-n`` calls, counting
only the measured loop (``--zero-before`` and ``--dump-before`` on two system calls the loop is bracketed by), and
prints instructions per call: repeatable to a fraction of a percent, where the microseconds of a busy machine
move by 10-30 %.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer

from nfsstack.cluster.metrics import CallStats
from nfsstack.exports import parse_exports
from nfsstack.exports.handles import HandleCodec
from nfsstack.exports.table import ExportTable
from nfsstack.nfs3.client import PROC, encode
from nfsstack.nfs3.codec import FILE_SYNC, UNSTABLE
from nfsstack.nfs3.local.filesystem import LocalFilesystem
from nfsstack.nfs3.program import Nfsd
from nfsstack.rpc.message import Credential, decode_reply, encode_call
from nfsstack.rpc.server import Dispatcher, joined

PEER = ("127.0.0.1", 700)
LOCAL = ("127.0.0.1", 2049)
CALLS = ("GETATTR", "ACCESS", "LOOKUP", "READ", "WRITE", "WRITE_SYNC", "REMOVE")
BLOCK = 4096
USER = 1000
#: Descriptors the export table keeps (--cache-size); None: its own budget.
CACHE_SIZE = None


class Rig:
    """One export, its files and the dispatcher serving it."""

    def __init__(self, top: str, files: int, uid: int, observer: bool) -> None:
        self.top = top
        self.uid = uid
        self.export_dir = os.path.join(top, "export")
        self.set_dir = os.path.join(self.export_dir, "set")
        os.makedirs(self.set_dir)
        os.chmod(self.export_dir, 0o777)
        os.chmod(self.set_dir, 0o777)
        self.names = [b"f%05d" % i for i in range(files)]
        for name in self.names:
            path = os.path.join(self.set_dir, name.decode())
            with open(path, "wb"):
                pass
            os.chown(path, uid, uid)
        for name in ("read", "write"):
            path = os.path.join(self.export_dir, name)
            with open(path, "wb") as f:
                f.write(b"x" * (files * BLOCK))
            os.chown(path, uid, uid)
        exports = parse_exports(f"{self.export_dir} 127.0.0.1(rw,no_root_squash)\n")
        self.table = ExportTable(exports, HandleCodec(b"k" * 32), cache_size=CACHE_SIZE)
        # A kept descriptor is looked at again (readlink) 2 s after its last look: once per handle per 2 s when
        # served, but whether a run of the loop meets it would depend on how slow the run is (valgrind): never.
        self.table.recheck = float("inf")
        in_thread = lambda f, *a: defer.maybeDeferred(f, *a)  # noqa: E731
        self.nfsd = Nfsd(self.table, LocalFilesystem(self.table, in_thread), in_thread=in_thread)
        self.dispatcher = Dispatcher([self.nfsd.program])
        if observer:
            self.dispatcher.observer = CallStats()
        self.export = next(iter(exports))
        self.cred = Credential(uid, uid, (uid,) if uid else (), "bench").to_auth()
        self.xid = 0
        self.root = self.handle(self.export_dir)
        self.set = self.handle(self.set_dir)
        self.handles = [self.handle(os.path.join(self.set_dir, n.decode())) for n in self.names]

    def handle(self, path: str) -> bytes:
        fd = os.open(path, os.O_PATH)
        try:
            return self.table.handle(self.export, fd)
        finally:
            os.close(fd)

    def message(self, proc: str, *args) -> bytes:
        self.xid += 1
        return encode_call(self.xid, 100003, 3, PROC[proc], self.cred) + encode(proc, *args)

    def messages(self, call: str, n: int) -> list[bytes]:
        count = len(self.names)
        if call == "GETATTR":
            return [self.message("GETATTR", self.handles[i % count]) for i in range(n)]
        if call == "ACCESS":
            return [self.message("ACCESS", self.handles[i % count], 0x3F) for i in range(n)]
        if call == "LOOKUP":
            return [self.message("LOOKUP", self.set, self.names[i % count]) for i in range(n)]
        if call == "READ":
            fh = self.handle(os.path.join(self.export_dir, "read"))
            return [self.message("READ", fh, (i % count) * BLOCK, BLOCK) for i in range(n)]
        if call in ("WRITE", "WRITE_SYNC"):
            fh = self.handle(os.path.join(self.export_dir, "write"))
            stable = FILE_SYNC if call == "WRITE_SYNC" else UNSTABLE
            data = b"w" * BLOCK
            return [self.message("WRITE", fh, (i % count) * BLOCK, data, stable) for i in range(n)]
        if call == "REMOVE":
            gone = os.path.join(self.export_dir, "gone")
            os.makedirs(gone, exist_ok=True)
            os.chmod(gone, 0o777)
            for i in range(n):
                path = os.path.join(gone, "r%06d" % i)
                with open(path, "wb"):
                    pass
                os.chown(path, self.uid, self.uid)
            fh = self.handle(gone)
            return [self.message("REMOVE", fh, b"r%06d" % i) for i in range(n)]
        raise ValueError(call)

    def run(self, msgs: list[bytes]) -> tuple[float, list]:
        """Seconds for the whole list, and its replies."""
        handle = self.dispatcher.handle
        out = []
        append = out.append
        os.getppid()  # the callgrind bracket (--zero-before)
        started = time.perf_counter()
        for msg in msgs:
            append(handle(msg, "tcp", PEER, LOCAL))
        took = time.perf_counter() - started
        os.getpgrp()  # the callgrind bracket (--dump-before)
        return took, out

    def close(self) -> None:
        self.nfsd.fs.close()
        self.table.close()


def check(call: str, replies: list) -> None:
    """Every reply an accepted NFS3_OK (Deferreds have fired: the pool runs at once)."""
    for reply in replies:
        if isinstance(reply, defer.Deferred):
            fired = []
            reply.addBoth(fired.append)
            reply = fired[0]
        data = joined(reply)
        header = decode_reply(data)
        status = int.from_bytes(data[header.offset:header.offset + 4], "big")
        if header.error is not None or status != 0:
            raise SystemExit(f"{call}: reply {header.error or status}")


def measure(call: str, uid: int, n: int, repeat: int, files: int, observer: bool, where: str) -> list[float]:
    """us per call of each of ``repeat`` runs (a fresh rig for each)."""
    out = []
    for _ in range(repeat):
        top = tempfile.mkdtemp(prefix="percall-", dir=where)
        try:
            rig = Rig(top, files, uid, observer)
            try:
                msgs = rig.messages(call, n)
                if call not in ("REMOVE",):
                    rig.run(msgs[: min(n, files)])  # warm: descriptors kept, credentials decoded, caches filled
                    msgs = rig.messages(call, n)
                took, replies = rig.run(msgs)
                check(call, replies)
                out.append(took / n * 1e6)
            finally:
                rig.close()
        finally:
            shutil.rmtree(top, ignore_errors=True)
    return out


def callgrind(call: str, uid: int, n: int, files: int, observer: bool, where: str) -> float:
    """Instructions per call of ``call`` under callgrind (the measured loop only)."""
    outdir = tempfile.mkdtemp(prefix="percall-cg-")
    try:
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={outdir}/cg.%p",
               "--zero-before=getppid", "--dump-before=getpgrp", "--dump-instr=no",
               sys.executable, os.path.abspath(__file__), "--only", call, "--uid", str(uid), "-n", str(n),
               "--repeat", "1", "--files", str(files), "--dir", where, "--quiet"]
        if not observer:
            cmd.append("--no-observer")
        if CACHE_SIZE is not None:
            cmd += ["--cache-size", str(CACHE_SIZE)]
        # One hash seed: dicts keyed by bytes and str then probe alike from run to run (about 1 % otherwise).
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env=dict(os.environ, PYTHONHASHSEED="0"))
        # One dump per run of the loop: the warm-up's first (if any), the measured one last.
        dumps = sorted((f for f in os.listdir(outdir) if f.rpartition(".")[2].isdigit() and f.count(".") == 2),
                       key=lambda f: int(f.rpartition(".")[2]))
        if not dumps:
            raise SystemExit(f"{call}: callgrind wrote no dump of the loop: {os.listdir(outdir)}")
        with open(os.path.join(outdir, dumps[-1])) as f:
            for line in f:
                if line.startswith("summary:") or line.startswith("totals:"):
                    return int(line.split()[1]) / n
        raise SystemExit(f"{call}: no totals in the callgrind dump")
    finally:
        shutil.rmtree(outdir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=2000, help="calls per run (default 2000; 200 is enough for --callgrind)")
    ap.add_argument("--repeat", type=int, default=5, help="runs per procedure; the best and the median are shown")
    ap.add_argument("--files", type=int, default=1000, help="working set of GETATTR, ACCESS and LOOKUP")
    ap.add_argument("--only", nargs="*", choices=CALLS, default=list(CALLS))
    ap.add_argument("--uid", type=int, nargs="*", default=[0, USER])
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the export is made")
    ap.add_argument("--no-observer", action="store_true", help="no call observer on the dispatcher")
    ap.add_argument("--callgrind", action="store_true", help="also instructions per call, under valgrind")
    ap.add_argument("--cache-size", type=int, help="descriptors the export table keeps (1: every handle but the "
                    "export's is opened again, as beyond the cache of a large working set)")
    ap.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    global CACHE_SIZE
    CACHE_SIZE = a.cache_size
    if os.geteuid() != 0:
        raise SystemExit("needs root (open_by_handle_at)")
    if not a.quiet:
        print(f"{'call':<11} {'uid':>5} {'best us':>8} {'median us':>10}" + (f" {'Ir/call':>9}" if a.callgrind else ""))
    for call in a.only:
        for uid in a.uid:
            us = measure(call, uid, a.n, a.repeat, a.files, not a.no_observer, a.dir)
            if a.quiet:
                continue
            line = f"{call:<11} {uid:>5} {min(us):>8.2f} {statistics.median(us):>10.2f}"
            if a.callgrind:
                line += f" {callgrind(call, uid, a.n, a.files, not a.no_observer, a.dir):>9.0f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
