"""Scenarios run by a real Linux NFS client (Debian's kernel in qemu) against nfsstack and nfs-ganesha.

Each scenario in ``scenarios/`` is a shell script run in the guest; every
PASS/FAIL line it prints is a check.  A differential test runs the scenarios
on both servers and reports the checks whose verdicts differ.
"""

import os
import shutil

import pytest

from tests.integration.kernel.harness import run_scenario, scenario_names
from tests.support import can_make_netns

NEEDS = ["qemu-system-x86_64", "rpcinfo", "ganesha.nfsd", "dpkg-deb", "apt-get"]

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.netns,
    pytest.mark.skipif(not can_make_netns(), reason="needs root and ip netns"),
    pytest.mark.skipif(any(shutil.which(n) is None for n in NEEDS) or not os.path.exists("/usr/sbin/rpcbind"),
                       reason=f"needs {', '.join(NEEDS)} and rpcbind (see .ci/run)"),
]

def describe(result, log):
    return f"{result.summary()}\n--- guest exit {result.status}, {result.seconds:.1f} s\n--- server log tail:\n{log[-3000:]}"


@pytest.mark.parametrize("scenario", scenario_names())
def test_ganesha(scenario):
    result, log = run_scenario("ganesha", scenario)
    assert result.status == 0 and not result.failures and result.checks, describe(result, log)


@pytest.mark.parametrize("scenario", scenario_names())
def test_nfsstack(scenario):
    result, log = run_scenario("nfsstack", scenario)
    assert result.status == 0 and not result.failures and result.checks, describe(result, log)
    assert "Traceback" not in log, log


def test_differential_basic():
    """The same scenario on both servers: every check has the same verdict."""
    ours, _ = run_scenario("nfsstack", "basic")
    theirs, _ = run_scenario("ganesha", "basic")
    verdicts = lambda r: {text.split(":")[0]: verdict for verdict, text in r.checks}  # noqa: E731
    a, b = verdicts(ours), verdicts(theirs)
    differ = {name: (a.get(name), b.get(name)) for name in sorted(set(a) | set(b)) if a.get(name) != b.get(name)}
    assert not differ, "checks that differ (nfsstack, ganesha):\n" + "\n".join(f"{k}: {v}" for k, v in differ.items())
