"""Run one scenario script in the guest against one server, in a network namespace of its own.

By hand (as root)::

    python3 -m tests.integration.kernel basic --server ganesha --console

prints every PASS/FAIL line, and with ``--console`` the guest's whole console.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from tests.integration.kernel import vm
from tests.integration.kernel.servers import SERVERS
from tests.support import netns

SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def scenario_names() -> list[str]:
    return sorted(p.stem for p in SCENARIOS.glob("*.sh") if p.stem != "lib")


def run_scenario(server_name: str, scenario: str, timeout: float = 300.0) -> tuple[vm.Result, str]:
    """Boot the guest against a fresh ``server_name`` and run ``scenario``; return the result and the server log."""
    script = (SCENARIOS / "lib.sh").read_text() + "\n" + (SCENARIOS / f"{scenario}.sh").read_text()
    with netns() as ns:
        export = Path(tempfile.mkdtemp(prefix=f"{server_name}-export-"))
        export.chmod(0o777)
        for sibling in ("-ro", "-squash"):
            Path(f"{export}{sibling}").mkdir()
            Path(f"{export}{sibling}").chmod(0o777)
        (Path(f"{export}-ro") / "readme.txt").write_text("read only\n")
        server = SERVERS[server_name](ns, export)
        server.start()

        def on_request(request: str) -> str | None:
            """restart | kill (SIGKILL, then start) | sha256 NAME (of the server's copy) | stat NAME"""
            verb, _, arg = request.partition(" ")
            if verb == "restart":
                server.restart()
            elif verb == "kill":
                server.kill()
                server.start()
            elif verb == "sha256":
                try:
                    return hashlib.sha256((export / arg).read_bytes()).hexdigest()
                except OSError as e:
                    return f"error {e.strerror}"
            elif verb == "stat":
                try:
                    st = os.lstat(export / arg)
                    return f"{st.st_uid}:{st.st_gid}:{oct(st.st_mode & 0o7777)}:{st.st_size}:{st.st_nlink}"
                except OSError as e:
                    return f"error {e.strerror}"
            return None

        try:
            env = {"NFS_SERVER": "10.0.2.2", "NFS_EXPORT": server.mount_path, "SERVER": server_name,
                   "NFS_EXPORT_RO": f"{server.mount_path}-ro", "NFS_EXPORT_SQUASH": f"{server.mount_path}-squash"}
            result = vm.run_guest(ns, script, env, on_request=on_request, timeout=timeout)
        finally:
            server.stop()
        return result, server.log_text()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Run a kernel-client scenario against a server.")
    parser.add_argument("scenario", choices=scenario_names())
    parser.add_argument("--server", choices=sorted(SERVERS), default="nfsstack")
    parser.add_argument("--console", action="store_true", help="print the guest's whole console")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    result, log = run_scenario(args.server, args.scenario, args.timeout)
    print(result.console if args.console else result.summary())
    print(f"exit status {result.status}, {len(result.failures)} failed checks, {result.seconds:.1f} s")
    return 0 if result.status == 0 and not result.failures else 1
