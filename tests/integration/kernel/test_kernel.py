"""Scenarios run by a real Linux NFS client (Debian's kernel in qemu) against nfsstack and nfs-ganesha.

Each scenario in ``scenarios/`` is a shell script run in the guest; every
PASS/FAIL line it prints is a check.  A differential test compares, scenario by
scenario, the verdicts of the checks both servers ran.  Each (server, scenario)
is booted once per session: the differential reuses the runs of test_nfsstack
and test_ganesha (and makes them itself when run alone).  Without nfs-ganesha
only its tests and the differential are skipped, never nfsstack's scenarios.
"""

import os
import shutil

import pytest

from tests.integration.kernel.harness import run_scenario, scenario_names
from tests.support import can_make_netns

NEEDS = ["qemu-system-x86_64", "rpcinfo", "dpkg-deb", "apt-get"]  # the guest image, and a server's readiness
NEEDS_GANESHA = ["ganesha.nfsd"]

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.netns,
    pytest.mark.skipif(not can_make_netns(), reason="needs root and ip netns"),
    pytest.mark.skipif(any(shutil.which(n) is None for n in NEEDS), reason=f"needs {', '.join(NEEDS)} (see .ci/run)"),
]

needs_ganesha = pytest.mark.skipif(
    any(shutil.which(n) is None for n in NEEDS_GANESHA) or not os.path.exists("/usr/sbin/rpcbind"),
    reason="needs nfs-ganesha (ganesha.nfsd, nfs-ganesha-vfs) and rpcbind (see tests/install-deps.sh)")

#: (server, scenario) -> (Result, server log): each boot's outcome, shared by the tests of this session.
_runs: dict[tuple[str, str], tuple] = {}


def run_once(server: str, scenario: str):
    if (server, scenario) not in _runs:
        _runs[server, scenario] = run_scenario(server, scenario)
    return _runs[server, scenario]


def describe(result, log):
    return f"{result.summary()}\n--- guest exit {result.status}, {result.seconds:.1f} s\n--- server log tail:\n{log[-3000:]}"


#: The scenarios with a KDC, rpc.gssd and Kerberos exports (header ``kerberos: yes``): nfsstack's alone
#: (test_nfsstack_kerberos), not every server's.
KERBEROS_SCENARIOS = ["krb5"]

#: Every other scenario; the power cut is also a durability test (``pytest -m durability``).
SCENARIOS = [pytest.param(name, marks=pytest.mark.durability) if name == "powercut" else name
             for name in scenario_names() if name not in KERBEROS_SCENARIOS]


@needs_ganesha
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_ganesha(scenario):
    result, log = run_once("ganesha", scenario)
    assert result.status == 0 and not result.failures and result.checks, describe(result, log)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_nfsstack(scenario):
    result, log = run_once("nfsstack", scenario)
    assert result.status == 0 and not result.failures and result.checks, describe(result, log)
    assert "Traceback" not in log, log


def _kerberos_missing():
    from tests.integration.kernel.kerberos import available

    return available()


@pytest.mark.skipif(_kerberos_missing() is not None, reason=str(_kerberos_missing()))
@pytest.mark.parametrize("scenario", KERBEROS_SCENARIOS)
def test_nfsstack_kerberos(scenario):
    """Issue 22's acceptance with the kernel client, in one boot: an MIT KDC in the namespace, rpc.gssd and
    keytabs in the guest; sec=krb5, krb5i and krb5p each mount, the user with a ticket reads and writes as
    itself (the server's file is its uid), one without a ticket is refused; a krb5p write's bytes are not in a
    capture of the traffic (and a sec=sys write's are); AUTH_SYS is refused on the Kerberos export (but for
    GETATTR of its root, as knfsd) while a sec=sys export keeps working beside it."""
    result, log = run_once("nfsstack", scenario)
    assert result.status == 0 and not result.failures and len(result.checks) >= 40, describe(result, log)
    assert "Traceback" not in log, log


#: The scenarios the memory backend runs (``--backend memory``); restart is not one: a restart there is a new tree.
MEMORY_SCENARIOS = ["basic", "files", "bigdir", "access"]


@pytest.mark.parametrize("scenario", MEMORY_SCENARIOS)
def test_nfsstack_memory(scenario):
    """The same scenarios with nfsd's exports in memory: the kernel client sees a filesystem like the local one
    (the checks of the server's disk are skipped: there is none)."""
    result, log = run_once("nfsstack-memory", scenario)
    assert result.status == 0 and not result.failures and result.checks, describe(result, log)
    assert "Traceback" not in log and "storage: memory" in log, log


#: The scenarios run as root in a container with Docker's default capabilities (no CAP_DAC_READ_SEARCH).
CONTAINER_SCENARIOS = ["basic", "files", "bigdir", "access", "restart"]


@pytest.mark.parametrize("scenario", CONTAINER_SCENARIOS)
def test_nfsstack_in_a_container(scenario):
    """Without open_by_handle_at the local backend finds its handles through its map of places: the kernel client
    sees no difference, a restart included (and a file renamed on the server while it was down), on overlayfs,
    where a container's own files lie."""
    result, log = run_once("nfsstack-container", scenario)
    assert result.status == 0 and not result.failures and result.checks, describe(result, log)
    assert "Traceback" not in log and "without open_by_handle_at" in log, log


@pytest.mark.parametrize("scenario", CONTAINER_SCENARIOS)
def test_nfsstack_as_a_plain_user(scenario):
    """A plain user's nfsstack (no capabilities): high ports, mounted with port= and mountport=, and every client
    acting as the server's user (access checks that instead; the checks of identities are skipped)."""
    result, log = run_once("nfsstack-user", scenario)
    assert result.status == 0 and not result.failures and result.checks, describe(result, log)
    assert "Traceback" not in log and "every client acts as uid 65534" in log, log


#: The README's example backend (a zip archive, read only) under the kernel client: ls -lR and cat.
ZIP_SCENARIO = r"""
check "mount vers=3" mount_export || exit 1
listing=$(ls -lR /mnt)
echo "$listing"
expect_eq "ls -lR shows the file" "$(echo "$listing" | grep -c ' hello.txt$')" 1
expect_eq "and the directory only its entries name" "$(ls -ld /mnt/photos | cut -c1-10)" "dr-xr-xr-x"
expect_eq "and the data file's size" "$(stat -c %s /mnt/photos/2026/beach.raw)" 204800
expect_eq "cat reads the file" "$(cat /mnt/hello.txt)" "hello from a zip"
echo 3 > /proc/sys/vm/drop_caches
expect_eq "the 200 KB file, read whole" "$(od -An -tu1 -j 204799 -N1 /mnt/photos/2026/beach.raw | tr -d ' ')" 255
expect_eq "and its checksum" "$(md5sum < /mnt/photos/2026/beach.raw | cut -d' ' -f1)" "$ZIP_MD5"
expect_fail "a change is refused with EROFS" "read-only" touch /mnt/new
check "umount" umount /mnt
exit $FAILED
"""


def test_the_readme_example_backend():
    import hashlib

    from tests.integration.kernel.harness import run_script
    from tests.integration.kernel.servers import ZIP_TREE

    md5 = hashlib.md5(ZIP_TREE["photos/2026/beach.raw"]).hexdigest()
    result, log = run_script("nfsstack-zip", f"ZIP_MD5={md5}\n" + ZIP_SCENARIO)
    assert result.status == 0 and not result.failures and len(result.checks) >= 8, describe(result, log)
    assert "Traceback" not in log and "storage: zipexport:factory" in log, log


def verdicts(result) -> dict[str, str]:
    return {text.split(":")[0]: verdict for verdict, text in result.checks}


@needs_ganesha
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_differential(scenario):
    """The same scenario on both servers: every check has the same verdict.  A check only one server ran is
    one the script runs for that server alone (``if [ "$SERVER" = nfsstack ]``: a promise the other does not
    make) when the other's run went to its end; if the other's run stopped early, it differs."""
    ours, theirs = run_once("nfsstack", scenario)[0], run_once("ganesha", scenario)[0]
    a, b = verdicts(ours), verdicts(theirs)
    assert set(a) & set(b), f"no check in common: nfsstack ran {sorted(a)}, ganesha ran {sorted(b)}"

    def differs(name):
        if name in a and name in b:
            return a[name] != b[name]
        return (theirs if name in a else ours).status != 0  # missing from a run that did not end normally

    differ = {name: (a.get(name), b.get(name)) for name in sorted(set(a) | set(b)) if differs(name)}
    assert not differ, "checks that differ (nfsstack, ganesha):\n" + "\n".join(f"{k}: {v}" for k, v in differ.items())
