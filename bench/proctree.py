"""CPU seconds and peak RSS of a server's whole process tree, read from /proc (proc(5)).

A server may be more than one process: nfs-ganesha runs beside its rpcbind (a child of the server's pid, since
the start script forks rpcbind and then execs ganesha), and nfsstack may fork worker processes. Neither cgroup
v2 nor a cgroup per server can be counted on (the benchmark machine has only cgroup v1 controllers, and its
memory controller counts the page cache, which a file server fills with its clients' data), so the tree is
walked instead:

- CPU: the sum over the live processes of the tree of utime + stime (all threads, also those that ended) +
  cutime + cstime (children that exited and were waited for). A child that exited is counted once, in its
  parent's cutime/cstime, since it is no longer among the live processes.
- Peak RSS: each process's VmHWM is reset at the start of a window (writing 5 to /proc/PID/clear_refs, Linux
  4.0), then sampled while the window lasts; the peak is the sum of every process's last VmHWM, those that
  exited during the window included. This is at least the real peak of the sum (the processes' peaks need not
  coincide), so it errs on the side of the server.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def tree(root: int) -> list[int]:
    """``root`` and all its descendants alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def cpu_seconds(root: int) -> float:
    """User + system CPU seconds of the tree so far, waited-for children that exited included."""
    ticks = 0
    for pid in tree(root):
        fields = _stat(pid)
        if fields is not None:  # fields 14-17 of proc(5), counted from after the command name
            ticks += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return ticks / TICK


def hwm_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return 0


class Window:
    """CPU seconds and peak RSS of the tree of ``root`` from :meth:`start` to :meth:`stop`.

    ``root`` None: nothing is measured (the load generator run without a server to watch).
    """

    def __init__(self, root: int | None, every: float = 0.25) -> None:
        self.root = root
        self.every = every
        self.peaks: dict[int, int] = {}
        self.cpu0 = 0.0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.root is None:
            return
        for pid in tree(self.root):
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            except OSError:
                pass  # not ours to reset: its VmHWM is then the peak since it started
        self.peaks = {}
        self.cpu0 = cpu_seconds(self.root)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while True:
            for pid in tree(self.root):
                kib = hwm_kib(pid)
                if kib:
                    self.peaks[pid] = max(kib, self.peaks.get(pid, 0))
            if self._stopping.wait(self.every):
                return

    def stop(self) -> dict:
        """{"server_cpu_s": ..., "server_peak_rss_mib": ..., "server_processes": ...}, or {} without a root."""
        if self.root is None:
            return {}
        cpu = cpu_seconds(self.root) - self.cpu0
        self._stopping.set()
        self._thread.join()
        return {"server_cpu_s": round(cpu, 3), "server_peak_rss_mib": round(sum(self.peaks.values()) / 1024, 1),
                "server_processes": len(self.peaks)}


def wait_until(moment: float) -> None:
    """Sleep until ``time.perf_counter()`` reaches ``moment``."""
    delay = moment - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
