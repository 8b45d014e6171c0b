#!/usr/bin/env python3
"""A pipelining NFSv3 load generator: many calls in flight on one TCP connection, figures as one JSON line.

The same client drives every server the benchmark compares (bench/nfs_bench.py).  It finds mountd through
the portmapper on HOST, mounts EXPORT with MNT v3 (AUTH_SYS, root), and runs one workload:

    write       sequential WRITEs (UNSTABLE) of --size bytes in --block requests, then COMMIT: MB/s
    read        sequential READs of the file the write workload made: MB/s
                (with --random, both move every block once in a random order, the same on every run)
    getattr, lookup, access
                the same call again and again with --inflight in flight: calls/s
    smallfiles  CREATE + WRITE 4 KiB + COMMIT, --inflight files at a time, for --seconds: files/s
    readdirplus READDIRPLUS through a directory of --entries names, over and over, for --seconds: entries/s

Every reply is checked (RPC accepted, NFS3_OK); a failed call is counted and reported.  It connects only
to HOST (the benchmark runs it inside the server's own network namespace, on 127.0.0.1).

    python3 bench/nfs_load.py 127.0.0.1 /srv/export getattr --inflight 32 --seconds 5
"""

from __future__ import annotations

import argparse
import json
import os
import random
import selectors
import socket
import struct
import sys
import time
from collections import deque
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / "src")]

from nfsstack.nfs3.client import PROC, Sattr3, decode, encode  # noqa: E402
from nfsstack.rpc.message import Credential, decode_reply, encode_call  # noqa: E402
from nfsstack.xdr import Packer, Unpacker  # noqa: E402

LAST = 0x80000000
HDR = struct.Struct(">I")
RECV_BUFFER = 16 << 20
ROOT = Credential(0, 0, (0,), "bench").to_auth()
NFS, MOUNT, PMAP = 100003, 100005, 100000


class Pipe:
    """One TCP connection; calls carry a callback run with (reply bytes, offset of the result)."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.sock, selectors.EVENT_READ)
        self.xid = int.from_bytes(os.urandom(4), "big") & 0x0FFFFFFF
        self.pending: dict[int, object] = {}
        self.out: deque = deque()
        self.writing = False
        # Replies arrive in one buffer made (and its pages touched) once: no allocation per recv, whose cost
        # swung with the allocator's state from run to run and with how the server's bytes happen to arrive.
        self.buf = bytearray(RECV_BUFFER)
        self.view = memoryview(self.buf)
        self.start = self.end = 0  # the bytes not yet taken as records: buf[start:end]
        self.frags: list[bytes] = []
        self.errors = 0
        self.last_error = ""

    def call(self, prog: int, vers: int, proc: int, args: bytes, cb) -> None:
        self.xid = (self.xid + 1) & 0xFFFFFFFF
        head = encode_call(self.xid, prog, vers, proc, ROOT)
        self.out.append(HDR.pack(LAST | (len(head) + len(args))) + head)
        self.out.append(args)
        self.pending[self.xid] = cb

    def _send(self) -> None:
        while self.out:
            try:
                n = self.sock.sendmsg(list(self.out)[:64])
            except BlockingIOError:
                return
            while n:
                first = self.out[0]
                if n >= len(first):
                    n -= len(first)
                    self.out.popleft()
                else:
                    self.out[0] = memoryview(first)[n:]
                    n = 0

    def poll(self, timeout: float = 0.05) -> None:
        self._send()
        if bool(self.out) != self.writing:
            self.writing = bool(self.out)
            self.sel.modify(self.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if self.writing else 0))
        if not self.sel.select(timeout):
            return
        if self.end == len(self.buf):  # full: the unfinished record moves to the front
            rest = bytes(self.view[self.start : self.end])
            self.buf[: len(rest)] = rest
            self.start, self.end = 0, len(rest)
        try:
            n = self.sock.recv_into(self.view[self.end :])
        except BlockingIOError:
            return
        if not n:
            raise ConnectionError("the server closed the connection")
        self.end += n
        view, off, end = self.view, self.start, self.end
        while end - off >= 4:
            header = HDR.unpack_from(view, off)[0]
            size = header & 0x7FFFFFFF
            if 4 + size > len(self.buf):
                raise ConnectionError(f"a record fragment of {size} bytes")
            if off + 4 + size > end:
                break
            # A large record (READ data) is handed over in place and must not be kept by its callback.
            fragment = view[off + 4 : off + 4 + size] if size > 65536 else bytes(view[off + 4 : off + 4 + size])
            off += 4 + size
            if not header & LAST:
                self.frags.append(bytes(fragment))
                continue
            if self.frags:
                record = b"".join([*self.frags, bytes(fragment)])
                self.frags = []
            else:
                record = fragment
            h = decode_reply(record)
            cb = self.pending.pop(h.xid, None)
            if h.error is not None:
                self.errors += 1
                self.last_error = str(h.error)
            elif cb is not None:
                cb(record, h.offset)
        self.start, self.end = (0, 0) if off == end else (off, end)

    def wait(self, deadline: float) -> None:
        while self.pending and time.perf_counter() < deadline:
            self.poll()


def getport(host: str, prog: int, vers: int) -> int:
    pipe = Pipe(host, 111)
    got = []
    p = Packer()
    for v in (prog, vers, 6, 0):
        p.pack_uint(v)
    pipe.call(PMAP, 2, 3, p.getvalue(), lambda r, o: got.append(Unpacker(r, o).unpack_uint()))
    pipe.wait(time.perf_counter() + 10)
    pipe.sock.close()
    return got[0]


def mount(host: str, path: str) -> bytes:
    pipe = Pipe(host, getport(host, MOUNT, 3))
    got = []
    p = Packer()
    p.pack_string(path)
    pipe.call(MOUNT, 3, 1, p.getvalue(), lambda r, o: got.append(Unpacker(r, o)))
    pipe.wait(time.perf_counter() + 10)
    u = got[0]
    status = u.unpack_uint()
    if status != 0:
        raise SystemExit(f"MNT {path}: status {status}")
    return u.unpack_opaque(64)


class Run:
    """One workload on one connection, with its counters."""

    def __init__(self, args) -> None:
        self.args = args
        self.root = mount(args.host, args.export)
        self.pipe = Pipe(args.host, getport(args.host, NFS, 3))
        self.failed = 0
        self.statuses: dict[str, int] = {}

    def nfs(self, proc: str, args: bytes, cb=None) -> None:
        def done(record, offset):
            status = struct.unpack_from(">I", record, offset)[0]
            if status != 0:
                self.failed += 1
                name = decode(proc, record, offset).status.name
                self.statuses[name] = self.statuses.get(name, 0) + 1
            elif cb is not None:
                cb(record, offset)

        self.pipe.call(NFS, 3, PROC[proc], args, done)

    def sync(self, proc: str, *args):
        got = []
        self.pipe.call(NFS, 3, PROC[proc], encode(proc, *args), lambda r, o: got.append(decode(proc, r, o)))
        self.pipe.wait(time.perf_counter() + 60)
        if not got:
            raise SystemExit(f"{proc}: no reply ({self.pipe.last_error})")
        return got[0]

    def file(self, name: bytes, create: bool) -> bytes:
        r = self.sync("LOOKUP", self.root, name)
        if r.ok:
            return r.object
        if not create:
            raise SystemExit(f"LOOKUP {name!r}: {r.status.name}")
        r = self.sync("CREATE", self.root, name, 0, Sattr3(mode=0o644))
        return r.obj

    # -- workloads -----------------------------------------------------------------------

    def sequential(self, write: bool) -> dict:
        a = self.args
        fh = self.file(b"bench.bin", create=write)
        block, total = a.block, a.size
        payload = os.urandom(block)
        prefix = Packer()
        prefix.pack_opaque(fh)
        fh_part = prefix.getvalue()
        offsets = range(0, total, block)
        # --random: every block once, in an order fixed by the seed (the same for both servers)
        offsets = deque(random.Random(0).sample(offsets, len(offsets)) if a.random else offsets)
        moved = [0]

        def one_more():
            if not offsets:
                return
            off = offsets.popleft()
            if write:
                p = struct.pack(">QII", off, block, 0) + struct.pack(">I", block)
                args = fh_part + p + payload
                self.nfs("WRITE", args, lambda r, o: moved.__setitem__(0, moved[0] + block))
            else:
                def got(record, offset):
                    # post_op_attr, count, eof, data: only the count matters here
                    u = Unpacker(record, offset + 4)
                    if u.unpack_bool():
                        u.unpack_struct(struct.Struct(">84x"))
                    moved[0] += u.unpack_uint()

                self.nfs("READ", fh_part + struct.pack(">QI", off, block), got)

        start = time.perf_counter()
        for _ in range(a.inflight):
            one_more()
        while self.pipe.pending:
            before = len(self.pipe.pending)
            self.pipe.poll()
            for _ in range(before - len(self.pipe.pending)):
                one_more()
        committing = time.perf_counter()
        if write:
            self.sync("COMMIT", fh, 0, 0)
        seconds = time.perf_counter() - start
        return {"bytes": moved[0], "seconds": round(seconds, 3), "MB_per_s": round(moved[0] / seconds / 1e6, 1),
                **({"commit_seconds": round(seconds - (committing - start), 3)} if write else {})}

    def repeat(self, proc: str) -> dict:
        a = self.args
        names = [f"meta-{i}".encode() for i in range(16)]
        for name in names:
            self.file(name, create=True)
        if proc == "getattr":
            ring = [("GETATTR", encode("GETATTR", self.root))]
        elif proc == "access":
            ring = [("ACCESS", encode("ACCESS", self.root, 0x1F))]
        else:
            ring = [("LOOKUP", encode("LOOKUP", self.root, n)) for n in names]
        return self.closed_loop(lambda i: ring[i % len(ring)], a.inflight)

    def closed_loop(self, make, inflight: int) -> dict:
        """Keep ``inflight`` calls going for warm-up + --seconds; calls/s over the measured part."""
        a = self.args
        count = [0]
        issued = [0]

        def one_more():
            name, args = make(issued[0])
            issued[0] += 1
            self.nfs(name, args, lambda r, o: count.__setitem__(0, count[0] + 1))

        for _ in range(inflight):
            one_more()
        start = time.perf_counter()
        t0, t1 = start + a.warmup, start + a.warmup + a.seconds
        measured = None
        while True:
            now = time.perf_counter()
            if measured is None and now >= t0:
                measured, c0 = now, count[0]
            if now >= t1:
                break
            before = len(self.pipe.pending)
            self.pipe.poll()
            for _ in range(before - len(self.pipe.pending)):
                one_more()
        n = count[0] - c0
        seconds = time.perf_counter() - measured
        self.pipe.wait(time.perf_counter() + 30)
        return {"calls": n, "seconds": round(seconds, 3), "per_s": round(n / seconds, 1)}

    def smallfiles(self) -> dict:
        """Chains of CREATE, WRITE 4 KiB, COMMIT; each finished chain starts the next file."""
        a = self.args
        d = self.sync("MKDIR", self.root, f"small-{os.getpid()}-{time.time_ns()}".encode(), Sattr3(mode=0o755)).obj
        data = os.urandom(4096)
        done = [0]
        serial = [0]

        def chain():
            serial[0] += 1
            name = f"f{serial[0]}".encode()

            def created(record, offset):
                fh = decode("CREATE", record, offset).obj

                def written(record, offset):
                    self.nfs("COMMIT", encode("COMMIT", fh, 0, 0), committed)

                self.nfs("WRITE", encode("WRITE", fh, 0, data, 0), written)

            def committed(record, offset):
                done[0] += 1
                if time.perf_counter() < deadline[0]:
                    chain()

            self.nfs("CREATE", encode("CREATE", d, name, 0, Sattr3(mode=0o644)), created)

        deadline = [time.perf_counter() + a.warmup + a.seconds]
        for _ in range(a.inflight):
            chain()
        start = time.perf_counter()
        t0 = start + a.warmup
        c0 = None
        while self.pipe.pending:
            if c0 is None and time.perf_counter() >= t0:
                c0, measured = done[0], time.perf_counter()
            self.pipe.poll()
        end = time.perf_counter()
        if c0 is None:
            c0, measured = 0, start
        n = done[0] - c0
        return {"files": n, "seconds": round(end - measured, 3), "per_s": round(n / (end - measured), 1)}

    def readdirplus(self) -> dict:
        """Listings of a directory of --entries names, one READDIRPLUS chain at a time per slot."""
        a = self.args
        name = f"dir-{a.entries}".encode()
        r = self.sync("LOOKUP", self.root, name)
        if not r.ok:
            raise SystemExit(f"{name!r} is missing: the benchmark makes it before starting the servers")
        d = r.object
        count = [0]
        deadline = [time.perf_counter() + a.warmup + a.seconds]

        def listing(cookie=0, verf=b"\0" * 8):
            def got(record, offset):
                n, last, eof, verf = walk_readdirplus(record, offset)
                count[0] += n
                if not eof:
                    listing(last, verf)
                elif time.perf_counter() < deadline[0]:
                    listing()

            self.nfs("READDIRPLUS", encode("READDIRPLUS", d, cookie, verf, 32768, 131072), got)

        for _ in range(a.inflight):
            listing()
        start = time.perf_counter()
        t0 = start + a.warmup
        c0 = None
        while self.pipe.pending:
            if c0 is None and time.perf_counter() >= t0:
                c0, measured = count[0], time.perf_counter()
            self.pipe.poll()
        end = time.perf_counter()
        if c0 is None:
            c0, measured = 0, start
        n = count[0] - c0
        return {"entries": n, "seconds": round(end - measured, 3), "per_s": round(n / (end - measured), 1)}


_U32, _U64 = struct.Struct(">I"), struct.Struct(">Q")


def walk_readdirplus(record: bytes, offset: int) -> tuple[int, int, bool, bytes]:
    """(entries, last cookie, eof, cookie verifier) of a READDIRPLUS3resok, read as fast as Python can: the
    attributes and handles are stepped over, not decoded (the client must not be the bottleneck)."""
    u32, u64 = _U32.unpack_from, _U64.unpack_from
    pos = offset + 4  # status, known to be NFS3_OK
    pos += 4 + (84 if u32(record, pos)[0] else 0)  # dir_attributes
    verf = bytes(record[pos : pos + 8])  # the record may be a view of the receive buffer
    pos += 8
    n, cookie = 0, 0
    while u32(record, pos)[0]:
        name_len = u32(record, pos + 12)[0]
        pos += 16 + name_len + (-name_len & 3)
        cookie = u64(record, pos)[0]
        pos += 8
        pos += 4 + (84 if u32(record, pos)[0] else 0)  # name_attributes
        if u32(record, pos)[0]:  # name_handle
            fh_len = u32(record, pos + 4)[0]
            pos += 8 + fh_len + (-fh_len & 3)
        else:
            pos += 4
        n += 1
    eof = bool(u32(record, pos + 4)[0])
    return n, cookie, eof, verf


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("host")
    p.add_argument("export")
    p.add_argument("workload", choices=["write", "read", "getattr", "lookup", "access", "smallfiles", "readdirplus"])
    p.add_argument("--inflight", type=int, default=32)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--size", type=int, default=1 << 30, help="bytes written or read")
    p.add_argument("--block", type=int, default=1 << 20, help="bytes per WRITE or READ")
    p.add_argument("--random", action="store_true", help="write and read the blocks in a random order")
    p.add_argument("--entries", type=int, default=10000)
    a = p.parse_args(argv)
    run = Run(a)
    t = a.workload
    if t in ("write", "read"):
        result = run.sequential(t == "write")
    elif t in ("getattr", "lookup", "access"):
        result = run.repeat(t)
    elif t == "smallfiles":
        result = run.smallfiles()
    else:
        result = run.readdirplus()
    result.update(workload=t, inflight=a.inflight, failed=run.failed + run.pipe.errors, statuses=run.statuses,
                  rpc_error=run.pipe.last_error or None)
    print(json.dumps(result))
    return 0 if result["failed"] == 0 else 2


if __name__ == "__main__":
    sys.exit(main())
