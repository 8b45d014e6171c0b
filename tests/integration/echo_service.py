"""A stand-in RPC service (program 300123 v1/v2, NULL only) that registers through a portmapper.

Run as ``python -m tests.integration.echo_service [--socket PATH]``: it listens on
a dynamic TCP+UDP port, registers with the portmapper on 127.0.0.1:111 (or the
rpcbind local socket), prints ``registered PORT``, and unregisters on SIGTERM.
"""

import argparse
import sys

from twisted.internet import reactor

from nfsstack.portmap.registrar import RpcbindRegistrar
from nfsstack.rpc.program import Program, null_procedure
from nfsstack.rpc.service import RPCService

PROG = 300123


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", default=None, help="rpcbind local socket (default: TCP to 127.0.0.1:111)")
    args = parser.parse_args()
    program = Program(PROG, "echo", {1: {0: null_procedure()}, 2: {0: null_procedure()}})
    registrar = RpcbindRegistrar(reactor, socket_path=args.socket)
    service = RPCService("echo", [program], 0, registrar=registrar, reactor=reactor)

    def announce(_):
        print(f"registered {service.port} {len(service._registered)}", flush=True)

    service.registered.addCallback(announce)
    reactor.callWhenRunning(service.startService)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


if __name__ == "__main__":
    sys.exit(main())
