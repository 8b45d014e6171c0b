#!/usr/bin/env python3
"""Sequential read and write with the Linux kernel client over sec=sys, krb5, krb5i and krb5p, on one server.

Run as root:  python3 bench/krb5_bench.py [--rounds 3 --mib 64]

One boot per round of the kernel-client tests' guest (tests/integration/kernel, header ``kerberos: yes``: a KDC
in the namespace, rpc.gssd and the user's ticket in the guest, nfsstack with ``--keytab``).  In each round the
guest mounts the sec=sys export and the Kerberos export (``sec=krb5:krb5i:krb5p``) once per flavour, the order of
the flavours turning from round to round, and as the user with a ticket runs ``dd`` of ``--mib`` MiB in 1 MiB
blocks with ``conv=fsync`` (WRITE + COMMIT), drops its caches and reads the file back with ``dd``.  The table gives
medians over the rounds in MB/s and each flavour against sec=sys; every run goes to bench/results/krb5.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO / "src"), str(REPO), str(BENCH)]

from tests.integration.kernel.harness import run_script  # noqa: E402

RESULTS = BENCH / "results"
FLAVOURS = ("sys", "krb5", "krb5i", "krb5p")

SCRIPT = r"""
# kerberos: yes
now() { awk '{print $1}' /proc/uptime; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
as_user() { su "$KRB5_USER" -s /bin/sh -c "$*"; }
check "Kerberos client" kerberos_client || exit 1
check "kinit" as_user "kinit -k -t /etc/krb5-user.keytab $KRB5_USER@$KRB5_REALM" || exit 1
mkdir -p /b
for sec in __ORDER__; do
    if [ $sec = sys ]; then export_path=$NFS_EXPORT; else export_path=$NFS_EXPORT_KRB5; fi
    check "mount sec=$sec" mount -t nfs -o "vers=3,sec=$sec" "$NFS_SERVER:$export_path" /b || exit 1
    t=$(now)
    check "$sec: dd write" as_user "dd if=/dev/zero of=/b/seq-$sec.bin bs=1M count=__MIB__ conv=fsync 2>/dev/null"
    echo "RESULT $sec write_s $(took $t)"
    echo 3 > /proc/sys/vm/drop_caches
    t=$(now)
    check "$sec: dd read" as_user "dd if=/b/seq-$sec.bin of=/dev/null bs=1M 2>/dev/null"
    echo "RESULT $sec read_s $(took $t)"
    expect_eq "$sec: size" "$(stat -c %s /b/seq-$sec.bin)" "$((__MIB__ * 1048576))"
    as_user "rm /b/seq-$sec.bin"
    check "umount sec=$sec" umount /b
done
exit $FAILED
"""


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--mib", type=int, default=64, help="the file each flavour writes and reads (MiB)")
    p.add_argument("--output", type=Path, default=RESULTS / "krb5.json")
    a = p.parse_args(argv)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()  # the code this run is of: taken before it starts
    runs = []
    for rnd in range(a.rounds):
        order = FLAVOURS[rnd % 4:] + FLAVOURS[:rnd % 4]
        script = SCRIPT.replace("__ORDER__", " ".join(order)).replace("__MIB__", str(a.mib))
        result, _ = run_script("nfsstack", script, timeout=1800)
        figures: dict = {}
        for line in result.console.splitlines():
            if line.startswith("RESULT "):
                _, sec, what, value = line.split()
                figures.setdefault(sec, {})[what] = float(value)
        runs.append({"round": rnd, "order": order, "failures": result.failures, "seconds": result.seconds,
                     "figures": figures})
        log(f"round {rnd + 1}: {figures}" + (f"  FAILURES {result.failures}" if result.failures else ""))
    mb = a.mib * 1.048576
    table = ["| flavour | write + fsync (MB/s) | read, caches dropped (MB/s) | write / sys | read / sys |",
             "|---|---|---|---|---|"]
    med = {}
    for sec in FLAVOURS:
        med[sec] = {what: statistics.median([mb / r["figures"][sec][what] for r in runs
                                             if r["figures"].get(sec, {}).get(what)] or [0])
                    for what in ("write_s", "read_s")}
    for sec in FLAVOURS:
        w, r = med[sec]["write_s"], med[sec]["read_s"]
        ws, rs = med["sys"]["write_s"] or 1, med["sys"]["read_s"] or 1
        table.append(f"| {sec} | {w:.1f} | {r:.1f} | {w / ws:.2f} | {r / rs:.2f} |")
    text = "\n".join(table)
    print(text)
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.write_text(json.dumps({"commit": commit, "mib": a.mib, "runs": runs, "table": text,
                                    "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                                                "python": platform.python_version()}}, indent=1))
    return 0 if all(not r["failures"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
