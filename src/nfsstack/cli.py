"""The ``nfsstack`` command: tools beside the server.

    nfsstack exports check FILE     validate an exports file; print what it exports
"""

from __future__ import annotations

import argparse
import os
import sys

from nfsstack.exports import ExportsError, load_exports


def exports_check(path: str) -> int:
    try:
        exports = load_exports(path)
    except ExportsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    status = 0
    for export in exports:
        if not os.path.isdir(export.path):
            print(f"error: {exports.source}:{export.line}: {export.path} is not a directory", file=sys.stderr)
            status = 1
        clients = " ".join(f"{spec.text}({options.describe()})" for spec, options in export.clients)
        print(f"{export.path}\t{clients}")
    if status == 0:
        print(f"{path}: {len(exports)} export(s), OK")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nfsstack", description="Tools for the nfsstack NFS server.")
    sub = parser.add_subparsers(dest="command", required=True)
    exports = sub.add_parser("exports", help="exports file tools")
    exports_sub = exports.add_subparsers(dest="action", required=True)
    check = exports_sub.add_parser("check", help="validate an exports file")
    check.add_argument("file")
    args = parser.parse_args(argv)
    if args.command == "exports" and args.action == "check":
        return exports_check(args.file)
    return 2


if __name__ == "__main__":
    sys.exit(main())
