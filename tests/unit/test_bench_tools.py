"""What the NFS benchmark counts (bench/proctree.py, bench/nfs_load.py): a server's CPU seconds over its whole
process tree, children that exited included, and how a working set is shared among K clients."""

import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import nfs_load  # noqa: E402
import proctree  # noqa: E402

# A parent that forks a child burning about 0.3 s of CPU, waits for it (its CPU moves to the parent's cutime),
# then sleeps: the child is gone from /proc when the parent is measured.
BURN_IN_A_CHILD = """
import os, time
pid = os.fork()
if pid == 0:
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    os._exit(0)
os.waitpid(pid, 0)
print("reaped", flush=True)
time.sleep(30)
"""


def test_cpu_of_a_child_that_exited_is_counted():
    parent = subprocess.Popen([sys.executable, "-c", BURN_IN_A_CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "reaped"
        assert proctree.tree(parent.pid) == [parent.pid]
        assert proctree.cpu_seconds(parent.pid) >= 0.25
    finally:
        parent.kill()
        parent.wait()


def test_window_reports_the_tree():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        window = proctree.Window(sleeper.pid, every=0.05)
        window.start()
        time.sleep(0.15)
        got = window.stop()
        assert got["server_processes"] == 1
        assert got["server_peak_rss_mib"] > 1
        assert 0 <= got["server_cpu_s"] < 0.5
    finally:
        sleeper.kill()
        sleeper.wait()


def test_no_root_measures_nothing():
    window = proctree.Window(None)
    window.start()
    assert window.stop() == {}


def test_working_set_shares_add_up():
    for total, clients in ((1, 1), (1000, 4), (10, 4), (100000, 8), (1, 8)):
        shares = [nfs_load.share(total, clients, i) for i in range(clients)]
        assert min(shares) >= 1
        assert sum(shares) == max(total, clients)
