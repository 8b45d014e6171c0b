#!/usr/bin/env python3
"""Closed-loop ONC RPC load over TCP: N calls in flight, calls/s as one JSON line.

Requests are precomputed records (RFC 5531 record marking); every completed
reply is answered by one new request, so exactly N calls stay in flight per
connection.  Replies are counted by walking the record-marking headers and
each reply's header is checked for MSG_ACCEPTED / AUTH_NONE verifier /
SUCCESS.  It connects only to the HOST:PORT given on the command line.

    python3 bench/rpc_load.py 127.0.0.1 111 --call getport --inflight 32
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import struct
import sys
import time

PMAP_PROG, PMAP_VERS = 100000, 2
IPPROTO_TCP = 6
# call name -> (prog, vers, proc, args)
CALLS = {
    "null": (PMAP_PROG, PMAP_VERS, 0, b""),
    "getport": (PMAP_PROG, PMAP_VERS, 3, struct.pack(">4I", PMAP_PROG, PMAP_VERS, IPPROTO_TCP, 0)),
}
LAST = 0x80000000
# Reply message bytes 4..24: REPLY, MSG_ACCEPTED, verf AUTH_NONE (flavor 0, length 0), SUCCESS.
ACCEPTED_OK = struct.pack(">5I", 1, 0, 0, 0, 0)
HDR = struct.Struct(">I")
RING = 16384  # precomputed records per connection (xids cycle through them)


def build_ring(call: str, conn_index: int) -> tuple[bytes, int]:
    """RING records for ``call`` with distinct xids, concatenated; and the size of one record."""
    prog, vers, proc, args = CALLS[call]
    base = (conn_index + 1) << 24
    records = []
    for i in range(RING):
        # xid, CALL, rpcvers 2, prog, vers, proc, cred AUTH_NONE, verf AUTH_NONE, args
        msg = struct.pack(">10I", base + i, 0, 2, prog, vers, proc, 0, 0, 0, 0) + args
        records.append(HDR.pack(LAST | len(msg)) + msg)
    return b"".join(records), len(records[0])


class Conn:
    """One connection: its request ring, unsent bytes and partial reply bytes."""

    def __init__(self, sock: socket.socket, ring: bytes, size: int) -> None:
        self.sock, self.ring, self.size = sock, ring, size
        self.next = 0  # index of the next record in the ring
        self.out = b""  # bytes the kernel did not take yet
        self.buf = b""  # received bytes not yet forming a whole fragment
        self.rec_start = True  # the next fragment starts a new record
        self.first_result = None  # bytes after accept_stat of the first reply

    def queue(self, k: int) -> None:
        """Send k more requests (whatever the socket does not take is kept in self.out)."""
        if self.next + k > RING:
            self.next = 0
        start = self.next * self.size
        self.next += k
        data = self.out + self.ring[start : start + k * self.size]
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        self.out = data[sent:]

    def flush(self) -> None:
        if self.out:
            self.queue(0)

    def feed(self, data: bytes) -> tuple[int, int]:
        """Account received bytes: (replies completed, replies with a bad header)."""
        buf = self.buf + data if self.buf else data
        n, off, done, bad = len(buf), 0, 0, 0
        unpack = HDR.unpack_from
        while n - off >= 4:
            header = unpack(buf, off)[0]
            end = off + 4 + (header & 0x7FFFFFFF)
            if end > n:
                break
            if self.rec_start:
                if buf[off + 8 : off + 28] != ACCEPTED_OK:
                    bad += 1
                elif self.first_result is None:
                    self.first_result = buf[off + 28 : end].hex()
            self.rec_start = bool(header & LAST)
            done += self.rec_start
            off = end
        self.buf = buf[off:]
        return done, bad


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(args) -> dict:
    conns = []
    sel = selectors.DefaultSelector()
    for i in range(args.connections):
        sock = socket.create_connection((args.host, args.port), timeout=5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        conn = Conn(sock, *build_ring(args.call, i))
        conns.append(conn)
        sel.register(sock, selectors.EVENT_READ, conn)

    for conn in conns:
        conn.queue(args.inflight)
    start = time.perf_counter()
    t0 = start + args.warmup  # measurement window [t0, t1)
    t1 = t0 + args.seconds
    measuring = False
    calls = errors = 0
    last_progress = start
    result = {}
    while True:
        now = time.perf_counter()
        if not measuring and now >= t0:
            measuring, t0, calls, errors = True, now, 0, 0
            cpu0 = time.process_time()
            server0 = cpu_seconds(args.watch_pid) if args.watch_pid else 0.0
        if now >= t1:
            break
        if now - last_progress > args.stall:
            result["stalled"] = True
            break
        for key, _ in sel.select(0.1):
            conn = key.data
            try:
                data = conn.sock.recv(262144)
            except BlockingIOError:
                continue
            except OSError as e:
                data, result["socket_error"] = b"", str(e)
            if not data:
                result["closed_by_server"] = True
                sel.unregister(conn.sock)
                continue
            done, bad = conn.feed(data)
            if done:
                calls += done
                errors += bad
                last_progress = now
                conn.queue(done)
        for conn in conns:
            conn.flush()  # requests the kernel refused earlier (rare with small N)
        if not sel.get_map():
            break
    end = time.perf_counter()
    elapsed = end - t0 if measuring else 0.0
    for conn in conns:
        conn.sock.close()
    result.update(
        call=args.call,
        inflight=args.inflight,
        connections=args.connections,
        seconds=round(elapsed, 3),
        calls=calls if measuring else 0,
        calls_per_s=round(calls / elapsed, 1) if measuring and elapsed > 0 else 0.0,
        errors=errors if measuring else 0,
        client_cpu=round((time.process_time() - cpu0) / elapsed, 3) if measuring and elapsed > 0 else None,
        first_result=conns[0].first_result,
    )
    if args.watch_pid and measuring and elapsed > 0:
        try:
            result["server_cpu"] = round((cpu_seconds(args.watch_pid) - server0) / elapsed, 3)
        except OSError:
            result["server_cpu"] = None
    # A run that ended early is incomplete: count it as an error.
    if "stalled" in result or "closed_by_server" in result or "socket_error" in result:
        result["errors"] += 1
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--call", choices=sorted(CALLS), default="null")
    p.add_argument("--inflight", type=int, default=32, help="calls in flight per connection")
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--seconds", type=float, default=5.0, help="length of the measurement")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds run before measuring")
    p.add_argument("--stall", type=float, default=5.0, help="give up after this long without a reply")
    p.add_argument("--watch-pid", type=int, default=0, help="also report this process's CPU share")
    args = p.parse_args(argv)
    if not 1 <= args.inflight <= RING // 2 or args.connections < 1:
        p.error(f"--inflight must be 1..{RING // 2}, --connections at least 1")
    try:
        result = run(args)
    except OSError as e:
        print(json.dumps({"call": args.call, "inflight": args.inflight, "error": str(e)}))
        return 1
    print(json.dumps(result))
    return 0 if result["errors"] == 0 else 2


if __name__ == "__main__":
    sys.exit(main())
