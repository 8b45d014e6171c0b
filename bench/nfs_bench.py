#!/usr/bin/env python3
"""Benchmark nfsstack against nfs-ganesha (VFS backend) in the same run, on the same disk.

Run as root:  python3 bench/nfs_bench.py [--rounds 3 --seconds 5 --size-mib 1024]

Each server runs in a network namespace of its own with its portmapper on 127.0.0.1:111 (nfs-ganesha with
Debian's rpcbind), exporting a directory of one scratch directory on the same filesystem.  The load generator
(bench/nfs_load.py, the same client for both) runs inside each namespace.  Every workload runs on both servers
back to back, the server that goes first alternating between rounds; the table gives medians over the rounds
and nfsstack / ganesha.  Then, with --kernel (the default), the Linux kernel client in qemu (the test suite's
guest) runs dd and a tar extract against each.  Everything is written to bench/results/nfs.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from tests.integration.kernel.servers import SERVERS as SERVER_CLASSES  # noqa: E402
from tests.support import netns  # noqa: E402

LOAD = BENCH / "nfs_load.py"
RESULTS = BENCH / "results"
#: The servers compared: the first two are the table's (nfsstack against nfs-ganesha); any other nfsstack variant
#: (``--servers nfsstack nfsstack-container ganesha``: without open_by_handle_at) gets a table against nfsstack.
SERVERS = ("nfsstack", "ganesha")
# (workload, in flight, what the figure is)
WORKLOADS = [
    ("write", 8, "MB/s"),
    ("read", 8, "MB/s"),
    ("getattr", 32, "calls/s"),
    ("lookup", 32, "calls/s"),
    ("access", 32, "calls/s"),
    ("smallfiles", 32, "files/s"),
    ("readdirplus", 4, "entries/s"),
]

KERNEL_SCRIPT = r"""
# network: tap
now() { awk '{print $1}' /proc/uptime; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
check "mount vers=3" mount_export || exit 1
t=$(now); dd if=/dev/zero of=/mnt/dd.bin bs=1M count=__MIB__ conv=fsync 2>/dev/null; echo "RESULT dd_write_s $(took $t)"
echo 3 > /proc/sys/vm/drop_caches
t=$(now); dd if=/mnt/dd.bin of=/dev/null bs=1M 2>/dev/null; echo "RESULT dd_read_s $(took $t)"
rm /mnt/dd.bin
mkdir /mnt/x
t=$(now); tar xf /mnt/tree.tar -C /mnt/x && sync; echo "RESULT tar_extract_s $(took $t)"
echo "RESULT tar_files $(find /mnt/x -type f | wc -l)"
check "umount" umount /mnt
exit $FAILED
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def make_tree(where: Path) -> Path:
    """A source tree to extract: the installed Twisted package (about 1,500 files), as a tar file."""
    import twisted

    tar = where / "tree.tar"
    with tarfile.open(tar, "w") as t:
        t.add(os.path.dirname(twisted.__file__), arcname="twisted",
              filter=lambda info: None if "__pycache__" in info.name else info)
    return tar


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.scratch = Path(tempfile.mkdtemp(prefix="nfs-bench-", dir=args.scratch))
        self.results: dict = {"runs": [], "kernel": []}

    def prepare_export(self, export: Path) -> None:
        for sibling in ("-ro", "-squash"):  # the servers' configurations name these too
            Path(f"{export}{sibling}").mkdir(exist_ok=True)
        export.mkdir(exist_ok=True)
        export.chmod(0o777)
        d = export / f"dir-{self.args.entries}"
        d.mkdir(exist_ok=True)
        for i in range(self.args.entries):
            (d / f"entry-{i:05}").touch()

    def run(self) -> None:
        a = self.args
        with contextlib.ExitStack() as namespaces:
            servers = {}
            for name in a.servers:
                ns = namespaces.enter_context(netns())
                export = self.scratch / name
                self.prepare_export(export)
                servers[name] = (SERVER_CLASSES[name](ns, export, []), ns, export)
            try:
                for server, _, _ in servers.values():
                    server.start()
                pids = {name: self.pid(name, server) for name, (server, _, _) in servers.items()}
                for rnd in range(a.rounds):
                    order = a.servers if rnd % 2 == 0 else a.servers[::-1]
                    for workload, inflight, unit in WORKLOADS:
                        if a.only and workload not in a.only:
                            continue
                        for name in order:
                            server, ns, export = servers[name]
                            self.one(rnd, name, ns, export, workload, inflight, unit, pids[name])
                self.results["peak_rss_mib"] = {name: round(peak_rss_mib(pid), 1) for name, pid in pids.items()}
            finally:
                for name, (server, _, _) in servers.items():
                    self.keep_log(name, server)
                    server.discard()
        if a.kernel:
            self.kernel()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def keep_log(self, name: str, server) -> None:
        """The server's log, next to the results (``nfs-nfsstack.log`` beside ``nfs.json``): its working
        directory goes when it is discarded, and a failed run is read there."""
        out = Path(self.args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_name(f"{out.stem}-{name}.log").write_text(server.log_text())

    @staticmethod
    def pid(name: str, server) -> int:
        proc = server.stack.proc if hasattr(server, "stack") else server.proc
        return proc.pid  # `ip netns exec`, `unshare` and `sh -c exec` all exec: this is the server itself

    def one(self, rnd, name, ns, export, workload, inflight, unit, pid) -> None:
        a = self.args
        cmd = ["ip", "netns", "exec", ns, sys.executable, str(LOAD), "127.0.0.1", str(export), workload,
               "--inflight", str(inflight), "--seconds", str(a.seconds), "--size", str(a.size_mib << 20),
               "--entries", str(a.entries), *(["--block", str(a.block)] if a.block else []),
               *(["--random"] if a.random else [])]
        os.sync()  # the other server's dirty pages go to disk now, not during this run
        cpu0 = cpu_seconds(pid)
        own0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        cpu = cpu_seconds(pid) - cpu0
        own1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        client_cpu = (own1.ru_utime - own0.ru_utime) + (own1.ru_stime - own0.ru_stime)
        try:
            result = json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            result = {"error": (r.stdout + r.stderr)[-500:]}
        figure = result.get("MB_per_s", result.get("per_s"))
        entry = {"round": rnd, "server": name, "workload": workload, "inflight": inflight, "unit": unit,
                 "figure": figure, "server_cpu_s": round(cpu, 3), "client_cpu_s": round(client_cpu, 3), **result}
        if workload in ("write", "read") and result.get("bytes"):
            entry["cpu_s_per_gib"] = round(cpu / (result["bytes"] / (1 << 30)), 2)
        self.results["runs"].append(entry)
        log(f"round {rnd + 1} {name:9} {workload:12} {figure} {unit}  server cpu {cpu:.2f} s, client {client_cpu:.2f} s"
            + (f"  FAILED {result.get('failed')} {result.get('statuses')}" if result.get("failed") else "")
            + (f"  ERROR {result['error']}" if "error" in result else ""))

    def kernel(self) -> None:
        from tests.integration.kernel.harness import run_script

        tree_dir = Path(tempfile.mkdtemp(prefix="nfs-bench-tree-"))
        tar = make_tree(tree_dir)
        script = KERNEL_SCRIPT.replace("__MIB__", str(self.args.kernel_mib))
        for rnd in range(self.args.rounds):
            for name in self.args.servers if rnd % 2 == 0 else self.args.servers[::-1]:
                result, _ = run_script(name, script, timeout=900,
                                       prepare=lambda export: shutil.copy(tar, export / "tree.tar"))
                figures = {}
                for line in result.console.splitlines():
                    if line.startswith("RESULT "):
                        _, key, value = line.split()
                        figures[key] = float(value)
                entry = {"round": rnd, "server": name, "failures": result.failures, **figures}
                self.results["kernel"].append(entry)
                log(f"round {rnd + 1} {name:9} kernel client: {figures}")
        shutil.rmtree(tree_dir, ignore_errors=True)

    def table(self) -> str:
        rows = ["| workload | in flight | nfsstack | ganesha | nfsstack / ganesha | server CPU s (nfsstack / ganesha) |",
                "|---|---|---|---|---|---|"]
        for workload, inflight, unit in WORKLOADS:
            med = {}
            cpu = {}
            for name in SERVERS:
                runs = [r for r in self.results["runs"] if r["server"] == name and r["workload"] == workload
                        and r.get("figure") is not None]
                if runs:
                    med[name] = statistics.median(r["figure"] for r in runs)
                    key = "cpu_s_per_gib" if workload in ("write", "read") else "server_cpu_s"
                    cpu[name] = statistics.median(r.get(key, 0) for r in runs)
            if len(med) < 2:
                continue
            ratio = med["nfsstack"] / med["ganesha"] if med["ganesha"] else float("inf")
            cpu_text = f"{cpu['nfsstack']:.2f} / {cpu['ganesha']:.2f}" + (
                " per GiB" if workload in ("write", "read") else "")
            rows.append(f"| {workload} ({unit}) | {inflight} | {med['nfsstack']:,.0f} | {med['ganesha']:,.0f} | "
                        f"{ratio:.2f} | {cpu_text} |")
        k = self.results["kernel"]
        for key, label in (("dd_write_s", "kernel client: dd write (s)"), ("dd_read_s", "kernel client: dd read (s)"),
                           ("tar_extract_s", "kernel client: tar extract (s)")):
            med = {}
            for name in SERVERS:
                values = [r[key] for r in k if r["server"] == name and key in r]
                if values:
                    med[name] = statistics.median(values)
            if len(med) == 2:
                rows.append(f"| {label} | - | {med['nfsstack']:.2f} | {med['ganesha']:.2f} | "
                            f"{med['ganesha'] / med['nfsstack']:.2f} (time, inverted) | - |")
        rss = self.results.get("peak_rss_mib", {})
        if rss:
            rows.append("\npeak RSS: " + ", ".join(f"{name} {mib} MiB" for name, mib in rss.items()))
        for variant in (n for n in self.args.servers if n not in SERVERS):
            rows += [f"\n| workload | nfsstack | {variant} | {variant} / nfsstack | server CPU s (nfsstack / {variant}) |",
                     "|---|---|---|---|---|"]
            for workload, _, unit in WORKLOADS:
                med, cpu = {}, {}
                for name in ("nfsstack", variant):
                    runs = [r for r in self.results["runs"] if r["server"] == name and r["workload"] == workload
                            and r.get("figure") is not None]
                    if runs:
                        med[name] = statistics.median(r["figure"] for r in runs)
                        cpu[name] = statistics.median(r.get("server_cpu_s", 0) for r in runs)
                if len(med) == 2 and med["nfsstack"]:
                    rows.append(f"| {workload} ({unit}) | {med['nfsstack']:,.0f} | {med[variant]:,.0f} | "
                                f"{med[variant] / med['nfsstack']:.2f} | {cpu['nfsstack']:.2f} / {cpu[variant]:.2f} |")
        return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=5.0, help="length of each timed workload")
    p.add_argument("--size-mib", type=int, default=1024, help="size of the sequential write and read")
    p.add_argument("--entries", type=int, default=10000, help="names in the READDIRPLUS directory")
    p.add_argument("--block", type=int, default=None, help="bytes per WRITE and READ (the load's default: 1 MiB)")
    p.add_argument("--random", action="store_true", help="write and read the blocks in a random order")
    p.add_argument("--kernel", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the kernel client in qemu (dd and a tar extract)")
    p.add_argument("--kernel-mib", type=int, default=256, help="size of the kernel client's dd")
    p.add_argument("--only", nargs="*", help="run only these workloads")
    p.add_argument("--servers", nargs="+", default=list(SERVERS), choices=sorted(SERVER_CLASSES),
                   help="servers to run (nfsstack and ganesha make the main table; another nfsstack variant, e.g. "
                        "nfsstack-container, gets a table against nfsstack)")
    p.add_argument("--scratch", default=None, help="directory for the exports (default: the system's temp dir)")
    p.add_argument("--output", default=str(RESULTS / "nfs.json"))
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("run as root (network namespaces, open_by_handle_at)")
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
    )
    Path(a.output).parent.mkdir(parents=True, exist_ok=True)
    Path(a.output).write_text(json.dumps(bench.results, indent=1))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
