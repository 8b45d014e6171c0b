#!/usr/bin/env python3
"""Benchmark nfsstack against nfs-ganesha (VFS backend) in the same run, on the same disk, over a matrix.

Run as root:  python3 bench/nfs_bench.py [--rounds 3 --seconds 3 --sets 1 1000 10000 100000 --clients 1 4 8]

Each server runs in a network namespace of its own with its portmapper on 127.0.0.1:111 (nfs-ganesha with
Debian's rpcbind), exporting a directory of one scratch directory on the same filesystem.  The load generator
(bench/nfs_load.py, the same client for both) runs inside each namespace.  The matrix (issue 23 point 4):

    metadata    GETATTR, LOOKUP, ACCESS, REMOVE  x  working sets of --sets files  x  --clients K
    I/O         WRITE, READ  x  sequential, random  x  --sizes blocks  x  --clients K
    others      smallfiles, readdirplus (one client, as before)

K clients are K processes on K TCP connections, each with its own working set of N/K files or its own file.
Every cell runs on both servers back to back, the server that goes first alternating from cell to cell and
from round to round; the tables give medians over the rounds and nfsstack / ganesha, with the CPU seconds
(user + system, every process of the server's tree) and the peak RSS (the sum over those processes) over the
measured part of each cell (bench/proctree.py).  With --kernel, the Linux kernel client in qemu (the test
suite's guest) mounts each export K times (``nosharecache``, ``nconnect=K``) and runs dd and small-file creates
on every mount at once.  Everything is written to bench/results/nfs.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO / "src"), str(REPO), str(BENCH)]

from tests.integration.kernel.servers import SERVERS as SERVER_CLASSES  # noqa: E402
from tests.support import netns  # noqa: E402

LOAD = BENCH / "nfs_load.py"
RESULTS = BENCH / "results"
#: The servers compared: the first two are the tables' (nfsstack against nfs-ganesha); any other nfsstack variant
#: (``--servers nfsstack nfsstack-container ganesha``: without open_by_handle_at) gets tables against nfsstack.
SERVERS = ("nfsstack", "ganesha")
METADATA = ("getattr", "lookup", "access", "remove")
IO = ("write", "read")
OTHERS = ("smallfiles", "readdirplus")
#: Calls in flight per connection: enough to keep a server busy from one client, the same for both servers.
META_INFLIGHT = 32
IO_INFLIGHT = {4096: 32, 65536: 16}  # larger blocks: 8
OTHER_INFLIGHT = {"smallfiles": 32, "readdirplus": 4}
UNITS = {**{w: "calls/s" for w in METADATA}, "write": "MB/s", "read": "MB/s", "smallfiles": "files/s",
         "readdirplus": "entries/s"}

KERNEL_SCRIPT = r"""
# network: tap
# nfsstack: __NFSSTACK_ARGS__
now() { awk '{print $1}' /proc/uptime; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
K=__K__
# K mounts of the export, each its own superblock and cache (nosharecache); Linux shares one client per server
# address, whose nconnect=K gives the mounts K TCP connections.
for k in $(seq $K); do
    mkdir -p /mnt/c$k
    check "mount $k" mount -t nfs -o "vers=3,nosharecache,nconnect=$K${MOUNT_OPTIONS:+,$MOUNT_OPTIONS}" \
        "$NFS_SERVER:$NFS_EXPORT" /mnt/c$k || exit 1
done
t=$(now)
for k in $(seq $K); do dd if=/dev/zero of=/mnt/c$k/dd$k.bin bs=1M count=__MIB__ conv=fsync 2>/dev/null & done
wait; echo "RESULT dd_write_s $(took $t)"
echo 3 > /proc/sys/vm/drop_caches
t=$(now)
for k in $(seq $K); do dd if=/mnt/c$k/dd$k.bin of=/dev/null bs=1M 2>/dev/null & done
wait; echo "RESULT dd_read_s $(took $t)"
t=$(now)
for k in $(seq $K); do
    (mkdir /mnt/c$k/small$k && cd /mnt/c$k/small$k && i=0 && while [ $i -lt __FILES__ ]; do echo x > f$i; i=$((i+1)); done) &
done
wait; sync; echo "RESULT creates_s $(took $t)"
echo "RESULT created $(ls /mnt/c1/small* 2>/dev/null | grep -c '^f')"
for k in $(seq $K); do rm -rf /mnt/c$k/small$k /mnt/c$k/dd$k.bin; done
for k in $(seq $K); do check "umount $k" umount /mnt/c$k; done
exit $FAILED
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def size_bytes(text: str) -> int:
    """4K, 64K, 1M, 1048576."""
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


def size_label(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.scratch = Path(tempfile.mkdtemp(prefix="nfs-bench-", dir=args.scratch))
        self.results: dict = {"runs": [], "kernel": []}
        self.cell = 0  # cells run so far: who goes first alternates with it

    def prepare_export(self, export: Path) -> None:
        for sibling in ("-ro", "-squash"):  # the servers' configurations name these too
            Path(f"{export}{sibling}").mkdir(exist_ok=True)
        export.mkdir(exist_ok=True)
        export.chmod(0o777)
        if "readdirplus" in self.args.only:
            d = export / f"dir-{self.args.entries}"
            d.mkdir(exist_ok=True)
            for i in range(self.args.entries):
                (d / f"entry-{i:05}").touch()

    def server_args(self, name: str) -> list[str]:
        """What --nfsstack-args adds to the command line of every nfsstack variant (not ganesha)."""
        return shlex.split(self.args.nfsstack_args) if name.startswith("nfsstack") else []

    def run(self) -> None:
        a = self.args
        with contextlib.ExitStack() as namespaces:
            servers = {}
            for name in a.servers:
                ns = namespaces.enter_context(netns())
                export = self.scratch / name
                self.prepare_export(export)
                servers[name] = (SERVER_CLASSES[name](ns, export, self.server_args(name)), ns, export)
            try:
                for server, _, _ in servers.values():
                    server.start()
                self.pids = {name: self.pid(server) for name, (server, _, _) in servers.items()}
                for rnd in range(a.rounds):
                    for cell in self.cells():
                        self.run_cell(rnd, cell, servers)
            finally:
                for name, (server, _, _) in servers.items():
                    self.keep_log(name, server)
                    server.discard()
                shutil.rmtree(self.scratch, ignore_errors=True)
        if a.kernel:
            self.kernel()

    def cells(self):
        """(family, workloads, load options) of every cell of the matrix that --only, --sets, --clients and
        --sizes leave; the workloads of one metadata cell run on one working set, REMOVE last."""
        a = self.args
        meta = [w for w in METADATA if w in a.only]
        if meta:
            for files in a.sets:
                for k in a.clients:
                    yield "metadata", meta, {"files": files, "clients": k}
        io = [w for w in IO if w in a.only]
        for block in a.sizes:
            for pattern in a.patterns:
                for k in a.clients:
                    for workload in io:  # write first: read then finds the file written whole
                        yield "io", [workload], {"block": block, "random": pattern == "random", "clients": k}
        for workload in OTHERS:
            if workload in a.only:
                yield "others", [workload], {"clients": 1}

    def run_cell(self, rnd: int, cell, servers) -> None:
        family, workloads, options = cell
        order = list(servers) if (self.cell + rnd) % 2 == 0 else list(servers)[::-1]
        self.cell += 1
        for name in order:
            _, ns, export = servers[name]
            self.one(rnd, name, ns, export, family, workloads, options)

    def keep_log(self, name: str, server) -> None:
        """The server's log, next to the results (``nfs-nfsstack.log`` beside ``nfs.json``): its working
        directory goes when it is discarded, and a failed run is read there."""
        out = Path(self.args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_name(f"{out.stem}-{name}.log").write_text(server.log_text())

    @staticmethod
    def pid(server) -> int:
        proc = server.stack.proc if hasattr(server, "stack") else server.proc
        return proc.pid  # `ip netns exec`, `unshare` and `sh -c exec` all exec: this is the server itself

    def command(self, ns: str, export: Path, name: str, family: str, workloads: list[str], options: dict) -> list:
        a = self.args
        cmd = ["ip", "netns", "exec", ns, sys.executable, str(LOAD), "127.0.0.1", str(export)]
        if family == "metadata":
            cmd += ["meta", "--ops", ",".join(workloads), "--files", str(options["files"]),
                    "--inflight", str(META_INFLIGHT), "--tag", f"c{self.cell}r{time.time_ns() % 10**9}"]
        elif family == "io":
            block = options["block"]
            cmd += [workloads[0], "--block", str(block), "--size", str(a.io_mib << 20),
                    "--inflight", str(IO_INFLIGHT.get(block, 8))] + (["--random"] if options["random"] else [])
        else:
            cmd += [workloads[0], "--inflight", str(OTHER_INFLIGHT[workloads[0]]), "--entries", str(a.entries)]
        return cmd + ["--clients", str(options["clients"]), "--seconds", str(a.seconds), "--warmup", str(a.warmup),
                      "--watch-pid", str(self.pids[name])]

    def one(self, rnd, name, ns, export, family, workloads, options) -> None:
        cmd = self.command(ns, export, name, family, workloads, options)
        os.sync()  # the other server's dirty pages go to disk now, not during this run
        own0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=7200)
        took = time.perf_counter() - started
        own1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        client_cpu = (own1.ru_utime - own0.ru_utime) + (own1.ru_stime - own0.ru_stime)
        try:
            result = json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            result = {"error": (r.stdout + r.stderr)[-800:]}
        per_op = result.get("ops") or ({workloads[0]: result} if "error" not in result else {})
        key = {k: v for k, v in options.items()}
        for workload in workloads:
            got = per_op.get(workload, {})
            figure = got.get("MB_per_s", got.get("per_s"))
            entry = {"round": rnd, "server": name, "family": family, "workload": workload, **key,
                     "unit": UNITS[workload], "figure": figure, "server_cpu_s": got.get("server_cpu_s"),
                     "server_peak_rss_mib": got.get("server_peak_rss_mib"), "failed": got.get("failed"),
                     "client_cpu_s_whole_run": round(client_cpu, 2), "run_seconds": round(took, 1),
                     "create": result.get("create"), **({"error": result["error"]} if "error" in result else {})}
            self.results["runs"].append(entry)
            log(f"round {rnd + 1} {name:9} {workload:11} {self.describe(options):28} {figure} {UNITS[workload]}"
                f"  server cpu {got.get('server_cpu_s')} s, peak rss {got.get('server_peak_rss_mib')} MiB"
                + (f"  (made {result['create']['files']} files in {result['create']['seconds']} s)"
                   if result.get("create") and workload == workloads[0] else "")
                + (f"  FAILED {got.get('failed')} {result.get('statuses')}" if got.get("failed") else "")
                + (f"  ERROR {result['error']}" if "error" in result else ""))

    @staticmethod
    def describe(options: dict) -> str:
        parts = []
        if "files" in options:
            parts.append(f"files={options['files']}")
        if "block" in options:
            parts.append(f"{size_label(options['block'])} {'random' if options['random'] else 'seq'}")
        parts.append(f"K={options['clients']}")
        return " ".join(parts)

    # -- the kernel client ---------------------------------------------------------------------------------

    def kernel(self) -> None:
        from tests.integration.kernel.harness import run_script

        a = self.args
        for k in a.clients:
            script = (KERNEL_SCRIPT.replace("__K__", str(k)).replace("__MIB__", str(max(1, a.kernel_mib // k)))
                      .replace("__FILES__", str(max(1, a.kernel_files // k)))
                      .replace("__NFSSTACK_ARGS__", a.nfsstack_args))
            for rnd in range(a.rounds):
                for name in a.servers if (rnd + k) % 2 == 0 else a.servers[::-1]:
                    result, _ = run_script(name, script, timeout=1800)
                    figures = {}
                    for line in result.console.splitlines():
                        if line.startswith("RESULT "):
                            _, what, value = line.split()
                            figures[what] = float(value)
                    entry = {"round": rnd, "server": name, "clients": k, "failures": result.failures, **figures}
                    self.results["kernel"].append(entry)
                    log(f"round {rnd + 1} {name:9} kernel client, {k} mounts: {figures}"
                        + (f"  FAILURES {result.failures}" if result.failures else ""))

    # -- tables ----------------------------------------------------------------------------------------------

    def summary(self, base: str, other: str, family: str, workload: str, **options) -> dict | None:
        """Medians over the rounds of one cell: figure, CPU s; the highest peak RSS; None if a server lacks it."""
        out = {}
        for name in (base, other):
            runs = [r for r in self.results["runs"] if r["server"] == name and r["family"] == family
                    and r["workload"] == workload and all(r.get(k) == v for k, v in options.items())]
            figure = median(r["figure"] for r in runs)
            if figure is None:
                return None
            out[name] = {"figure": figure, "cpu": median(r["server_cpu_s"] for r in runs),
                         "rss": max((r["server_peak_rss_mib"] or 0) for r in runs),
                         "rounds": [r["figure"] for r in runs], "failed": sum(r["failed"] or 0 for r in runs)}
        out["ratio"] = out[base]["figure"] / out[other]["figure"] if out[other]["figure"] else float("inf")
        return out

    @staticmethod
    def cell_text(s: dict | None, base: str, other: str) -> str:
        if s is None:
            return "-"
        return f"**{s['ratio']:.2f}** ({s[base]['figure']:,.0f} / {s[other]['figure']:,.0f})"

    @staticmethod
    def detail(s: dict, base: str, other: str) -> str:
        b, o = s[base], s[other]
        fails = b["failed"] + o["failed"]
        return (f"{b['figure']:,.0f} | {o['figure']:,.0f} | **{s['ratio']:.2f}** | {b['cpu']:.2f} / {o['cpu']:.2f} | "
                f"{b['rss']:.0f} / {o['rss']:.0f} |" + (f" {fails} FAILED |" if fails else ""))

    def tables(self, base: str = "nfsstack", other: str = "ganesha") -> str:
        a = self.args
        out = []
        ks = a.clients
        head = " | ".join(f"K = {k}" for k in ks)
        rule = "|".join("---" for _ in ks)
        meta = [w for w in METADATA if w in a.only]
        if meta:
            out += [f"Metadata, calls/s: ratio {base} / {other} ({base} figure / {other} figure)", "",
                    f"| call | files | {head} |", f"|---|---|{rule}|"]
            for w in meta:
                for files in a.sets:
                    cells = [self.cell_text(self.summary(base, other, "metadata", w, files=files, clients=k), base,
                                            other) for k in ks]
                    out.append(f"| {w.upper()} | {files:,} | " + " | ".join(cells) + " |")
            out += ["", f"| call | files | K | {base} | {other} | ratio | CPU s ({base} / {other}) | "
                        f"peak RSS MiB ({base} / {other}) |", "|---|---|---|---|---|---|---|---|"]
            for w in meta:
                for files in a.sets:
                    for k in ks:
                        s = self.summary(base, other, "metadata", w, files=files, clients=k)
                        if s:
                            out.append(f"| {w.upper()} | {files:,} | {k} | " + self.detail(s, base, other))
            out.append("")
        io = [w for w in IO if w in a.only]
        if io:
            out += [f"I/O, MB/s: ratio {base} / {other} ({base} figure / {other} figure)", "",
                    f"| call | block | pattern | {head} |", f"|---|---|---|{rule}|"]
            for w in io:
                for block in a.sizes:
                    for pattern in a.patterns:
                        cells = [self.cell_text(self.summary(base, other, "io", w, block=block,
                                                             random=pattern == "random", clients=k), base, other)
                                 for k in ks]
                        out.append(f"| {w.upper()} | {size_label(block)} | {pattern} | " + " | ".join(cells) + " |")
            out += ["", f"| call | block | pattern | K | {base} | {other} | ratio | CPU s ({base} / {other}) | "
                        f"peak RSS MiB ({base} / {other}) |", "|---|---|---|---|---|---|---|---|---|"]
            for w in io:
                for block in a.sizes:
                    for pattern in a.patterns:
                        for k in ks:
                            s = self.summary(base, other, "io", w, block=block, random=pattern == "random", clients=k)
                            if s:
                                out.append(f"| {w.upper()} | {size_label(block)} | {pattern} | {k} | "
                                           + self.detail(s, base, other))
            out.append("")
        others = [w for w in OTHERS if w in a.only]
        if others:
            out += [f"| workload (1 client) | {base} | {other} | ratio | CPU s ({base} / {other}) | "
                    f"peak RSS MiB ({base} / {other}) |", "|---|---|---|---|---|---|"]
            for w in others:
                s = self.summary(base, other, "others", w)
                if s:
                    out.append(f"| {w} ({UNITS[w]}) | " + self.detail(s, base, other))
            out.append("")
        kernel = self.results["kernel"]
        if kernel:
            out += [f"Kernel client, K mounts at once (MB/s, files/s): {base} / {other}", "",
                    f"| workload | {head} |", f"|---|{rule}|"]
            total_mib, total_files = a.kernel_mib, a.kernel_files
            for key, label, amount in (("dd_write_s", "dd write + fsync (MB/s)", lambda k: (total_mib // k) * k * 1.048576),
                                       ("dd_read_s", "dd read, caches dropped (MB/s)", lambda k: (total_mib // k) * k * 1.048576),
                                       ("creates_s", "small-file creates (files/s)", lambda k: (total_files // k) * k)):
                cells = []
                for k in ks:
                    med = {n: median(r.get(key) for r in kernel if r["server"] == n and r["clients"] == k)
                           for n in (base, other)}
                    if None in med.values() or not all(med.values()):
                        cells.append("-")
                        continue
                    rate = {n: amount(k) / med[n] for n in med}
                    cells.append(f"**{rate[base] / rate[other]:.2f}** ({rate[base]:,.0f} / {rate[other]:,.0f})")
                out.append(f"| {label} | " + " | ".join(cells) + " |")
            out.append("")
        peaks = {}
        for r in self.results["runs"]:
            if r.get("server_peak_rss_mib") is not None:
                peaks[r["server"]] = max(peaks.get(r["server"], 0), r["server_peak_rss_mib"])
        if peaks:
            out.append("Highest peak RSS of a cell (all processes of the server): "
                       + ", ".join(f"{n} {mib:.0f} MiB" for n, mib in peaks.items()))
        return "\n".join(out)

    def table(self) -> str:
        text = self.tables()
        for variant in (n for n in self.args.servers if n not in SERVERS):
            text += f"\n\n### {variant} against nfsstack\n\n" + self.tables(variant, "nfsstack")
        return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0, help="length of each measured cell (at most, for "
                   "REMOVE, READ and WRITE, which end with their working set or file)")
    p.add_argument("--warmup", type=float, default=0.5, help="before GETATTR, LOOKUP, ACCESS are counted")
    p.add_argument("--only", nargs="*", default=[*METADATA, *IO, *OTHERS], choices=[*METADATA, *IO, *OTHERS],
                   help="run only these workloads (none: only the kernel client, with --kernel)")
    p.add_argument("--sets", nargs="+", type=int, default=[1, 1000, 10000, 100000],
                   help="working sets (files, shared among the K clients) of the metadata calls")
    p.add_argument("--clients", nargs="+", type=int, default=[1, 4, 8], help="K: client processes, each on its "
                   "own TCP connection (the kernel client: K mounts)")
    p.add_argument("--sizes", nargs="+", type=size_bytes, default=[4096, 65536, 1 << 20],
                   help="bytes per READ and WRITE (4K, 64K, 1M)")
    p.add_argument("--patterns", nargs="+", default=["seq", "random"], choices=["seq", "random"])
    p.add_argument("--io-mib", type=int, default=256, help="size of each client's file for READ and WRITE")
    p.add_argument("--entries", type=int, default=10000, help="names in the READDIRPLUS directory")
    p.add_argument("--nfsstack-args", default="", help='added to the command line of nfsstack (and its variants), '
                   'e.g. "--workers 2"')
    p.add_argument("--kernel", action=argparse.BooleanOptionalAction, default=False,
                   help="also run the kernel client in qemu: K mounts, dd and small-file creates on each at once")
    p.add_argument("--kernel-mib", type=int, default=256, help="the kernel client's dd, shared among the K mounts")
    p.add_argument("--kernel-files", type=int, default=1000, help="files the kernel client creates, shared "
                   "among the K mounts")
    p.add_argument("--servers", nargs="+", default=list(SERVERS), choices=sorted(SERVER_CLASSES),
                   help="servers to run (nfsstack and ganesha make the main tables; another nfsstack variant, e.g. "
                        "nfsstack-container, gets tables against nfsstack)")
    p.add_argument("--scratch", default=None, help="directory for the exports (default: the system's temp dir)")
    p.add_argument("--output", default=str(RESULTS / "nfs.json"))
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("run as root (network namespaces, open_by_handle_at)")
    # A SIGTERM (or SIGINT, ignored in a background job) unwinds like an error: servers stopped, namespaces gone.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: sys.exit(128 + signum))
    bench = Bench(a)
    started = time.time()
    bench.run()
    table = bench.table()
    bench.results.update(
        table=table, seconds=round(time.time() - started), args=vars(a),
        machine={"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                 "machine": platform.machine()},
        commit=subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip(),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
    )
    Path(a.output).parent.mkdir(parents=True, exist_ok=True)
    Path(a.output).write_text(json.dumps(bench.results, indent=1))
    print(table)
    print(f"\n{round(time.time() - started)} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
