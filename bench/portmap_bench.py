#!/usr/bin/env python3
"""Benchmark nfsstack's portmapper against Debian's rpcbind, in the same run.

Run as root:  sudo python3 bench/portmap_bench.py [--rounds 3 --seconds 5]

Each server runs in a network namespace of its own, on 127.0.0.1:111; the
load generator (rpc_load.py) runs inside the same namespace.  Rounds alternate
which server goes first; the table shows medians over rounds, and every run
is written to bench/results/portmap.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
LOAD = BENCH / "rpc_load.py"
RESULTS = BENCH / "results"
SERVERS = ("nfsstack", "rpcbind")
# rpcbind needs a private /run (its lock file, socket and warm-start files);
# it drops privileges to _rpc where that user exists.
RPCBIND_SH = (
    "mount -t tmpfs tmpfs /run && mkdir -p /run/rpcbind && "
    "{ chown _rpc /run/rpcbind 2>/dev/null || true; } && exec rpcbind -f -w"
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sh(*cmd: str, timeout: float = 10, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check)


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="portmap-bench-"))
        self.ns = {name: f"pmbench-{name}-{os.getpid()}" for name in SERVERS}
        self.procs: dict[str, subprocess.Popen] = {}
        self.made_ns: list[str] = []

    # -- setup and teardown ------------------------------------------------------

    def netns(self, name: str, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[name], *cmd]

    def start(self) -> None:
        for name in SERVERS:
            sh("ip", "netns", "add", self.ns[name])
            self.made_ns.append(self.ns[name])
            sh(*self.netns(name, "ip", "link", "set", "lo", "up"))
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        env = dict(os.environ, PYTHONPATH=f"{REPO / 'src'}{os.pathsep}{REPO}")
        # `ip netns exec`, `unshare` and `sh -c 'exec ...'` all exec, so each
        # Popen pid is the server's own pid (used for its CPU figures).
        commands = {
            "nfsstack": (self.netns("nfsstack", twistd, "-n", "--pidfile=", f"--logfile={self.tmp / 'nfsstack.log'}",
                                    "nfsstack"), env),
            "rpcbind": (self.netns("rpcbind", "unshare", "--mount", "sh", "-c", RPCBIND_SH), None),
        }
        for name, (cmd, cmd_env) in commands.items():
            out = open(self.tmp / f"{name}.out", "wb")
            self.procs[name] = subprocess.Popen(cmd, cwd=self.tmp, env=cmd_env, stdout=out, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True)
        for name in SERVERS:
            self.wait_ready(name)

    def wait_ready(self, name: str, timeout: float = 30) -> None:
        """Wait until `rpcinfo -p 127.0.0.1` answers inside the server's namespace."""
        deadline = time.monotonic() + timeout
        while True:
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited with {self.procs[name].returncode}:\n{self.server_log(name)}")
            try:
                r = sh(*self.netns(name, "rpcinfo", "-p", "127.0.0.1"), timeout=5, check=False)
                if r.returncode == 0 and "portmapper" in r.stdout:
                    log(f"{name} ready (pid {self.procs[name].pid})")
                    return
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not answer within {timeout:.0f} s:\n{self.server_log(name)}")
            time.sleep(0.3)

    def server_log(self, name: str) -> str:
        text = ""
        for f in (self.tmp / f"{name}.log", self.tmp / f"{name}.out"):
            if f.exists():
                text += f.read_text(errors="replace")
        return text

    def stop(self) -> None:
        """Stop the servers, delete the namespaces, keep the server logs in bench/results/."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for ns in self.made_ns:
            # Anything still running in our namespace was started by this run.
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", ns, check=False)
        RESULTS.mkdir(exist_ok=True)
        for name in SERVERS:
            (RESULTS / f"{name}.log").write_text(self.server_log(name))
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- measuring ---------------------------------------------------------------

    def load(self, name: str, call: str, inflight: int) -> dict:
        a = self.args
        cmd = self.netns(name, sys.executable, str(LOAD), "127.0.0.1", "111", "--call", call,
                         "--inflight", str(inflight), "--connections", str(a.connections),
                         "--seconds", str(a.seconds), "--warmup", str(a.warmup),
                         "--watch-pid", str(self.procs[name].pid))
        try:
            r = sh(*cmd, timeout=a.warmup + a.seconds + 30, check=False)
            result = json.loads(r.stdout.strip().splitlines()[-1])
        except (subprocess.TimeoutExpired, json.JSONDecodeError, IndexError) as e:
            result = {"call": call, "inflight": inflight, "calls_per_s": 0.0, "errors": 1, "error": repr(e)}
        result["server"] = name
        if self.procs[name].poll() is not None:
            raise RuntimeError(f"{name} died during the run:\n{self.server_log(name)}")
        return result

    def run(self) -> list[dict]:
        a = self.args
        runs = []
        for rnd in range(a.rounds):
            order = SERVERS if rnd % 2 == 0 else SERVERS[::-1]
            for call in a.calls:
                for inflight in a.inflight:
                    for name in order:
                        r = self.load(name, call, inflight)
                        r["round"] = rnd + 1
                        runs.append(r)
                        log(f"round {rnd + 1} {name:8} {call:7} N={inflight:<3} {r['calls_per_s']:>10.0f} calls/s"
                            f"  errors {r['errors']}  client cpu {r.get('client_cpu')}  server cpu {r.get('server_cpu')}")
        return runs


def median(runs: list[dict], key: str):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(runs: list[dict], calls: list[str], inflights: list[int]) -> list[dict]:
    rows = []
    for call in calls:
        for n in inflights:
            row = {"call": call, "inflight": n}
            for name in SERVERS:
                sel = [r for r in runs if r["server"] == name and r["call"] == call and r["inflight"] == n]
                row[name] = median(sel, "calls_per_s")
                row[f"{name}_errors"] = sum(r["errors"] for r in sel)
                row[f"{name}_server_cpu"] = median(sel, "server_cpu")
                row[f"{name}_client_cpu"] = median(sel, "client_cpu")
            row["ratio"] = round(row["nfsstack"] / row["rpcbind"], 3) if row["rpcbind"] else None
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    pct = lambda v: "-" if v is None else f"{100 * v:.0f}%"  # noqa: E731
    head = (f"{'call':8} {'N':>3} {'nfsstack/s':>11} {'rpcbind/s':>11} {'ratio':>6} {'errors':>7}"
            f"   cpu nfsstack srv/cli   cpu rpcbind srv/cli")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['call']:8} {r['inflight']:>3} {r['nfsstack'] or 0:>11.0f} {r['rpcbind'] or 0:>11.0f}"
            f" {r['ratio'] if r['ratio'] is not None else '-':>6} {r['nfsstack_errors'] + r['rpcbind_errors']:>7}"
            f"   {pct(r['nfsstack_server_cpu']):>12} / {pct(r['nfsstack_client_cpu']):<4}"
            f"   {pct(r['rpcbind_server_cpu']):>11} / {pct(r['rpcbind_client_cpu']):<4}"
        )
    return "\n".join(lines)


def environment() -> dict:
    def out(*cmd):
        try:
            return sh(*cmd, check=False).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return None

    return {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "rpcbind": out("dpkg-query", "-W", "-f=${Version}", "rpcbind"),
        "nfsstack_commit": out("git", "-C", str(REPO), "describe", "--always", "--dirty"),
    }


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each run")
    p.add_argument("--inflight", type=int_list, default=[1, 32], help="comma-separated N, calls in flight")
    p.add_argument("--calls", type=lambda s: s.split(","), default=["null", "getport"], help="null,getport")
    p.add_argument("--connections", type=int, default=1, help="TCP connections per run (N in flight on each)")
    p.add_argument("--output", type=Path, default=RESULTS / "portmap.json")
    args = p.parse_args()
    if os.geteuid() != 0:
        p.error("needs root (network namespaces, mounts): sudo python3 bench/portmap_bench.py")
    for tool in ("ip", "unshare", "rpcbind", "rpcinfo"):
        if shutil.which(tool) is None:
            p.error(f"{tool} not found (Debian: apt-get install iproute2 util-linux rpcbind)")

    # Ctrl-C, SIGTERM and SIGHUP unwind to the finally clause, which cleans up
    # (SIGINT explicitly too: a background job may have inherited it ignored).
    def interrupted(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)

    env = environment()  # before the servers start: the code they load
    bench = Bench(args)
    try:
        bench.start()
        runs = bench.run()
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except (RuntimeError, subprocess.SubprocessError, OSError) as e:
        log(f"error: {e}")
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # do not interrupt the cleanup
        bench.stop()

    rows = summarize(runs, args.calls, args.inflight)
    report = {
        "config": {k: v for k, v in vars(args).items() if k != "output"},
        "environment": env,
        "summary": rows,
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(f"medians over {args.rounds} rounds of {args.seconds:g} s, {args.connections} connection(s);"
          f" ratio = nfsstack / rpcbind; cpu = share of one core during the measurement")
    print(table(rows))
    print(f"\nwritten: {args.output.relative_to(Path.cwd()) if args.output.is_relative_to(Path.cwd()) else args.output}")
    return 0 if all(r["nfsstack_errors"] + r["rpcbind_errors"] == 0 for r in rows) else 2


if __name__ == "__main__":
    sys.exit(main())
