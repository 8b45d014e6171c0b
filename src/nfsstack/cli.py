"""The ``nfsstack`` command: tools beside the server, as nfs-utils has them beside knfsd.

    nfsstack exports check FILE             validate an exports file; print what it exports
    nfsstack exports list [--json]          the exports in force in the running server (exportfs -v)
    nfsstack exports reload [--json]        read the exports file again (exportfs -r)
    nfsstack stat [--json]                  calls per procedure and per client, errors (nfsstat -s)
    nfsstack clients [--json]               mounted clients and keepalive members
    nfsstack status [HOST] [--json]         the status of a running server, from its port 1110 (exits 1 if a
                                            configured service is not serving)
    nfsstack keepalive SERVER [--interval S] send keepalives to a server (run on NFS clients); say when it restarts

The commands that talk to a running server use its port 1110 (``--host``, ``--port``; 127.0.0.1:1110 by
default); ``exports reload`` is taken from this machine only.  Each exits non-zero when the server cannot be
reached or refuses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable

from nfsstack.exports import ExportsError, load_exports


def exports_check(path: str) -> int:
    """Every error and warning of the file, as exportfs would give them; then what each client gets."""
    try:
        exports = load_exports(path)
    except ExportsError as e:
        for error in e.errors:
            print(f"error: {error}", file=sys.stderr)
        return 1
    for warning in exports.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for export in exports:
        if not os.path.isdir(export.path):
            # Not an error of the file: it may be checked on another machine than the server's.
            print(f"warning: {exports.source}:{export.line}: {export.path} is not a directory here: the server "
                  "refuses to mount it until it is", file=sys.stderr)
        clients = " ".join(f"{spec.text}({options.describe()})" for spec, options in export.clients)
        print(f"{export.path}\t{clients}")
    print(f"{path}: {len(exports)} export(s), OK" + (f", {len(exports.warnings)} warning(s)" if exports.warnings else ""))
    return 0


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _ask(host: str, port: int, path: str, post: bool = False, timeout: float = 30.0) -> dict:
    """The JSON a running server answers on port 1110; an answer with an error status is returned too (its
    body says what went wrong).  OSError when the server cannot be reached."""
    import urllib.error
    import urllib.request

    url = f"http://{_host_port(host, port)}{path}"
    request = urllib.request.Request(url, data=b"" if post else None, method="POST" if post else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        try:
            return json.loads(e.read())
        except ValueError:
            raise OSError(f"{url}: HTTP {e.code}") from None
    except (urllib.error.URLError, ValueError) as e:
        raise OSError(f"{url}: {getattr(e, 'reason', e)}") from None


def _asked(host: str, port: int, path: str, post: bool = False) -> dict | None:
    try:
        return _ask(host, port, path, post)
    except OSError as e:
        print(f"error: {e} (is the server running, with its status port {port} on {host}?)", file=sys.stderr)
        return None


def _shown(path: str, json_of: Callable[[dict], object] = lambda report: report):
    """A command that shows what the running server answers on ``path``: as JSON with ``--json`` (the part
    ``json_of`` picks), else as the decorated function prints it.  Exits 1 when the server cannot be reached."""

    def wrap(show: Callable[[dict], None]) -> Callable[[str, int, bool], int]:
        def command(host: str, port: int, as_json: bool) -> int:
            report = _asked(host, port, path)
            if report is None:
                return 1
            if as_json:
                print(json.dumps(json_of(report), indent=1, sort_keys=True))
            else:
                show(report)
            return 0

        command.__doc__ = show.__doc__
        return command

    return wrap


@_shown("/status", lambda report: report["exports"])
def exports_list(report: dict) -> None:
    """``exportfs -v``: every export in force, each client with its options."""
    _table(("path", "client", "options"),
           [(e["path"], c["client"], c["options"]) for e in report["exports"] for c in e["clients"]])


def exports_reload(host: str, port: int, as_json: bool) -> int:
    """``exportfs -r``: the server reads its exports file again; a file with errors leaves the old exports."""
    result = _asked(host, port, "/exports/reload", post=True)
    if result is None:
        return 1
    if as_json:
        print(json.dumps(result, indent=1, sort_keys=True))
    elif result.get("ok"):
        print(f"reloaded {result['file']}: {len(result['exports'])} exports")
        for line in result["changes"] or ["nothing changed"]:
            print(f"  {line}")
        for warning in result.get("warnings", []):
            print(f"warning: {warning}", file=sys.stderr)
    else:
        for error in result.get("errors") or [result.get("error", "refused")]:
            print(f"error: {error}", file=sys.stderr)
        if "errors" in result:
            print("the exports in force are unchanged", file=sys.stderr)
    return 0 if result.get("ok") else 1


@_shown("/stat")
def stat(report: dict) -> None:
    """``nfsstat -s``: the server's calls per program and procedure, per client, and its errors."""
    by_program: dict[str, list] = {}
    for c in report["calls"]:
        by_program.setdefault(c["program"], []).append(c)
    for program, calls in sorted(by_program.items()):
        total = sum(c["calls"] for c in calls) or 1
        print(f"{program.upper()} CALLS")
        _table(("procedure", "calls", "share"),
               [(c["procedure"], str(c["calls"]), f"{100 * c['calls'] / total:.0f}%") for c in calls])
        print()
    programs = sorted({p for c in report["clients"] for p in c["calls"]})
    print("CALLS PER CLIENT")
    _table(("client", *programs), [(c["client"], *(str(c["calls"].get(p, 0)) for p in programs))
                                   for c in report["clients"]])
    print("\nRPC ERRORS")
    _table(("service", "error", "count"), [(e["service"], e["error"], str(e["count"])) for e in report["rpc_errors"]])
    print("\nNFS ERRORS")
    _table(("procedure", "status", "count"),
           [(e["procedure"], e["status"], str(e["count"])) for e in report["nfs_errors"]])


@_shown("/status", lambda report: {"mounts": report["mounts"], "keepalive": report["keepalive"]["members"]})
def clients(report: dict) -> None:
    """The clients that mounted an export (the mount list) and the keepalive members."""
    _mounts(report)
    print("\nKEEPALIVE CLIENTS AND PEERS")
    _members(report)


def not_serving(report: dict) -> list[dict]:
    """The configured services a server reports not serving (a partial stack), each with why: from its
    ``not_serving`` list, or from the services it lists as not listening."""
    if "not_serving" in report:
        return report["not_serving"]
    return [{"service": s["service"], "reason": "not listening"} for s in report["services"] if not s["listening"]]


def status(host: str, port: int, as_json: bool) -> int:
    """Everything the server reports (:func:`show_status`); exits 1 when it cannot be reached, and when a
    configured service is not serving (said on stderr, one line per service)."""
    report = _asked(host, port, "/status")
    if report is None:
        return 1
    if as_json:
        print(json.dumps(report, indent=1, sort_keys=True))
    else:
        show_status(report)
    down = not_serving(report)
    for service in down:
        print(f"not serving: {service['service']}: {service['reason']}", file=sys.stderr)
    return 1 if down else 0


def show_status(report: dict) -> None:
    """Everything the server reports: services and ports, exports, mounts, locks, keepalive members."""
    down = not_serving(report)
    if down:
        print("NOT SERVING: " + ", ".join(s["service"] for s in down) + "\n")
    print(f"node {report['node']}  up since {report['boot_time']}  boot verifier {report['boot_verifier']}  "
          f"NSM state {report['nsm_state']}")
    print("\nSERVICES")
    rows = [(s.get("name") or s["service"], str(s.get("program", "-")),
             "/".join(map(str, s.get("versions", []))) or "-", ",".join(s["protocols"]),
             "-" if s["port"] is None else str(s["port"]),
             "listening" if s["listening"] else "DOWN") for s in report["services"]]
    _table(("service", "program", "versions", "proto", "port", "state"), rows)
    _workers(report)
    print("\nEXPORTS")
    _table(("path", "clients"), [(e["path"], " ".join(f"{c['client']}({c['options']})" for c in e["clients"]))
                                 for e in report["exports"]])
    _mounts(report)
    locks = report.get("locks") or {}
    print(f"\nLOCKS  granted {locks.get('granted', 0)}  waiting {locks.get('waiting', 0)}  "
          f"shares {locks.get('shares', 0)}  grace period {'ON' if locks.get('grace') else 'off'}")
    ka = report["keepalive"]
    print(f"\nCLIENTS AND PEERS (keepalive every {ka['interval']} s, stale after {ka['stale_after']} s)")
    _members(report)


def _workers(report: dict) -> None:
    """nfsd's worker processes (``--workers N``), as ``/status`` lists them; nothing when nfsd runs in the
    stack's process."""
    workers = report.get("workers") or []
    if not workers:
        return
    print(f"\nNFSD WORKERS ({sum(bool(w['answering']) for w in workers)} of {len(workers)} answering)")
    _table(("worker", "pid", "state", "calls", "connections", "restarts"),
           [(str(w["worker"]), "-" if w["pid"] is None else str(w["pid"]),
             "answering" if w["answering"] else "NOT ANSWERING",
             str(w["rpc_calls"]) if w["answering"] else "-",
             str(w["tcp_connections"]) if w["answering"] else "-", str(w["restarts"])) for w in workers])


def _mounts(report: dict) -> None:
    print("\nMOUNTED CLIENTS")
    _table(("client", "path"), [(m["host"], m["path"]) for m in report["mounts"]])


def _members(report: dict) -> None:
    _table(("kind", "id", "address", "state", "last seen", "restarts"),
           [(m["kind"], m["id"], m["address"], m["state"].upper() if m["state"] != "alive" else "alive",
             "never" if m["last_seen_seconds_ago"] is None else f"{m['last_seen_seconds_ago']:.1f} s ago",
             str(m["restarts"])) for m in report["keepalive"]["members"]])


def _table(head: tuple, rows: list) -> None:
    if not rows:
        print("  (none)")
        return
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for row in (head, *rows):
        print("  " + "  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())


def keepalive(server: str, port: int, interval: float, count: int, sender: str, key_file: str | None) -> int:
    """Send keepalives as an NFS client; print each answer and say when the server's boot verifier changes."""
    import secrets
    import socket
    import time

    from nfsstack.cluster import keepalive as ka

    key = open(key_file, "rb").read().strip() if key_file else None
    boot = secrets.token_bytes(8)
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    seen_boot = None
    answered = 0
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(min(interval, 5.0))
        seq = 0
        while count <= 0 or seq < count:
            seq += 1
            sock.sendto(ka.encode(ka.Keepalive(ka.CLIENT, sender, seq, boot), key), (server, port))
            deadline = time.monotonic() + interval
            while True:
                try:
                    data = sock.recv(ka.MAX_DATAGRAM + 1)
                except socket.timeout:
                    print(f"no answer from {server} to keepalive {seq}", flush=True)
                    break
                try:
                    reply = ka.decode(data, key)
                except ka.BadKeepalive as e:
                    print(f"bad answer: {e}", flush=True)
                    continue
                answered += 1
                if seen_boot is not None and reply.boot != seen_boot:
                    print(f"{reply.sender} restarted (boot verifier {reply.boot.hex()})", flush=True)
                elif seen_boot is None:
                    print(f"{reply.sender} is alive (boot verifier {reply.boot.hex()})", flush=True)
                seen_boot = reply.boot
                break
            if count <= 0 or seq < count:
                time.sleep(max(0.0, deadline - time.monotonic()))
    return 0 if answered else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nfsstack", description="Tools for the nfsstack NFS server.")
    sub = parser.add_subparsers(dest="command", required=True)
    exports = sub.add_parser("exports", help="exports file tools")
    exports_sub = exports.add_subparsers(dest="action", required=True)
    check = exports_sub.add_parser("check", help="validate an exports file")
    check.add_argument("file")
    server_commands = [
        exports_sub.add_parser("list", help="the exports in force in the running server (exportfs -v)"),
        exports_sub.add_parser("reload", help="the running server reads its exports file again (exportfs -r)"),
        sub.add_parser("stat", help="the running server's calls per procedure and client, and errors (nfsstat -s)"),
        sub.add_parser("clients", help="the running server's mounted clients and keepalive members"),
    ]
    for command in server_commands:
        command.add_argument("--host", default="127.0.0.1", help="the server (default: this machine)")
        command.add_argument("--port", type=int, default=1110, help="its status port (default 1110)")
        command.add_argument("--json", action="store_true", help="JSON, for scripts")
    st = sub.add_parser("status", help="a running server's status, from its port 1110")
    st.add_argument("host", nargs="?", default="127.0.0.1")
    st.add_argument("--port", type=int, default=1110)
    st.add_argument("--json", action="store_true", help="the report as JSON, for scripts")
    kp = sub.add_parser("keepalive", help="send keepalives to a server (on an NFS client)")
    kp.add_argument("server")
    kp.add_argument("--port", type=int, default=1110)
    kp.add_argument("--interval", type=float, default=5.0)
    kp.add_argument("--count", type=int, default=0, help="stop after this many (0: run until interrupted)")
    kp.add_argument("--id", default=None, help="this client's id (default: the host name)")
    kp.add_argument("--key-file", default=None, help="the shared HMAC key, if the server has one")
    args = parser.parse_args(argv)
    if args.command == "exports":
        if args.action == "check":
            return exports_check(args.file)
        return {"list": exports_list, "reload": exports_reload}[args.action](args.host, args.port, args.json)
    if args.command in ("stat", "clients"):
        return {"stat": stat, "clients": clients}[args.command](args.host, args.port, args.json)
    if args.command == "status":
        return status(args.host, args.port, args.json)
    if args.command == "keepalive":
        import socket

        try:
            return keepalive(args.server, args.port, args.interval, args.count, args.id or socket.gethostname(),
                             args.key_file)
        except KeyboardInterrupt:
            return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
