#!/usr/bin/env python3
"""A pipelining NFSv3 load generator: many calls in flight per TCP connection, figures as one JSON line.

The same client drives every server the benchmark compares (bench/nfs_bench.py).  It finds mountd through
the portmapper on HOST, mounts EXPORT with MNT v3 (AUTH_SYS, root), and runs one workload:

    write       WRITEs (UNSTABLE) of --block bytes, sequential or (--random) at random block-aligned offsets
                of a file of --size, then one COMMIT: MB/s, the COMMIT's time included
    read        READs of --block bytes the same way, of a file written (and committed) beforehand: MB/s
    getattr, access
                GETATTR / ACCESS round-robin over the handles of a working set of --files files: calls/s
    lookup      LOOKUP round-robin over the names of the working set: calls/s
    remove      REMOVE of each file of the working set once: calls/s
    meta        --ops (getattr,lookup,access,remove) one after the other on one working set
    smallfiles  CREATE + WRITE 4 KiB + COMMIT, --inflight files at a time, for --seconds: files/s
    readdirplus READDIRPLUS through a directory of --entries names, over and over, for --seconds: entries/s

The working set is made first and is not measured: CREATE pipelined (64 in flight) into the client's own
directory, in subdirectories of 10,000 files; how long it took is reported.  With --clients K, K processes
each open their own TCP connection (one Python process cannot keep 8 connections busy), from an address of
their own on loopback (127.0.0.1, .2, ...: K client machines, as a server that steers clients by address sees
them; --one-address for one machine's K connections), and have their own working set of --files/K files (at
least one) or their own file; they start each workload at the same moment and their figures are summed.
GETATTR, LOOKUP and ACCESS run --warmup then --seconds; REMOVE, READ and WRITE stop when their calls run out
or at --seconds.  With --watch-pid, the CPU seconds and peak RSS of the server's process tree over each
measured part are reported too (bench/proctree.py).

Every reply is checked (RPC accepted, NFS3_OK); a failed call is counted and reported.  It connects only
to HOST (the benchmark runs it inside the server's own network namespace, on 127.0.0.1).

    python3 bench/nfs_load.py 127.0.0.1 /srv/export meta --files 10000 --clients 4 --seconds 5
    python3 bench/nfs_load.py 127.0.0.1 /srv/export read --random --block 4096 --size 268435456
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
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
from proctree import Window, wait_until  # noqa: E402  (bench/, this script's directory)

LAST = 0x80000000
HDR = struct.Struct(">I")
RECV_BUFFER = 16 << 20
ROOT = Credential(0, 0, (0,), "bench").to_auth()
NFS, MOUNT, PMAP = 100003, 100005, 100000
#: Files per subdirectory of a working set: 100,000 files make ten directories, as a real tree would have.
SUBDIR_FILES = 10000
#: CREATEs in flight while a working set is made.
CREATE_INFLIGHT = 64
METADATA = ("getattr", "lookup", "access", "remove")
#: Time the coordinator leaves the clients between handing out a schedule and its start.
LEAD = 0.3


class Pipe:
    """One TCP connection; calls carry a callback run with (reply bytes, offset of the result)."""

    def __init__(self, host: str, port: int, source: str = "") -> None:
        self.sock = socket.create_connection((host, port), timeout=10, source_address=(source, 0))
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


def source_address(host: str, index: int, one_address: bool) -> str:
    """The address client ``index`` calls from: on loopback, 127.0.0.1 + index, as K client machines would
    (a server that steers clients by address, as nfsstack's workers are, sees K clients, not one machine's K
    connections); elsewhere, or with --one-address, what the kernel picks."""
    if one_address or not host.startswith("127.") or index == 0:
        return ""
    return f"127.0.{(1 + index) >> 8 & 0xFF}.{(1 + index) & 0xFF}"


def getport(host: str, prog: int, vers: int, source: str = "") -> int:
    pipe = Pipe(host, 111, source)
    got = []
    p = Packer()
    for v in (prog, vers, 6, 0):
        p.pack_uint(v)
    pipe.call(PMAP, 2, 3, p.getvalue(), lambda r, o: got.append(Unpacker(r, o).unpack_uint()))
    pipe.wait(time.perf_counter() + 10)
    pipe.sock.close()
    return got[0]


def mount(host: str, path: str, source: str = "") -> bytes:
    pipe = Pipe(host, getport(host, MOUNT, 3, source), source)
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

    def __init__(self, args, index: int = 0) -> None:
        self.args = args
        #: Which of the --clients this is: its directory, its file and its random offsets are its own.
        self.index = index
        source = source_address(args.host, index, args.one_address)
        self.root = mount(args.host, args.export, source)
        self.pipe = Pipe(args.host, getport(args.host, NFS, 3, source), source)
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

    def drive(self, next_call, inflight: int, t0: float, t1: float) -> tuple[int, float]:
        """Keep ``inflight`` calls going; count the replies (NFS3_OK) from ``t0`` to ``t1`` or until ``next_call``
        has no more: (replies counted, seconds counted).

        ``next_call()`` gives (procedure, encoded arguments, callback or None), or None when there is no more.
        After ``t1`` no call is issued and those in flight are waited for, uncounted.
        """
        done = [0]
        more = [True]

        def issue() -> None:
            call = next_call() if more[0] else None
            if call is None:
                more[0] = False
                return
            proc, args, cb = call

            def ok(record, offset):
                done[0] += 1
                if cb is not None:
                    cb(record, offset)

            self.nfs(proc, args, ok)

        for _ in range(inflight):
            issue()
        c0 = c1 = measured = ended = None
        pending = self.pipe.pending
        while pending:
            now = time.perf_counter()
            if measured is None and now >= t0:
                c0, measured = done[0], now
            if ended is None and now >= t1:
                c1, ended = done[0], now
            before = len(pending)
            self.pipe.poll()
            if ended is None:
                for _ in range(before - len(pending)):
                    issue()
        now = time.perf_counter()
        if measured is None:  # all done before t0: nothing measured
            c0, measured = done[0], now
        if ended is None:  # the calls ran out before t1
            c1, ended = done[0], now
        return c1 - c0, max(ended - measured, 1e-9)

    # -- a working set of files (GETATTR, LOOKUP, ACCESS, REMOVE) --------------------------------------------

    def make_files(self, count: int) -> dict:
        """CREATE ``count`` files of this client's own directory, pipelined, in subdirectories of at most
        SUBDIR_FILES; their handles and names are kept for the workloads. Returns what it took."""
        a = self.args
        top = self.sync("MKDIR", self.root, f"ws-{a.tag}-{self.index}".encode(), Sattr3(mode=0o755))
        if not top.ok:
            raise SystemExit(f"MKDIR ws-{a.tag}-{self.index}: {top.status.name}")
        dirs = []
        for j in range((count + SUBDIR_FILES - 1) // SUBDIR_FILES):
            r = self.sync("MKDIR", top.obj, f"d{j}".encode(), Sattr3(mode=0o755))
            if not r.ok:
                raise SystemExit(f"MKDIR d{j}: {r.status.name}")
            dirs.append(r.obj)
        self.files: list[tuple[bytes, bytes, bytes]] = []  # (directory handle, name, handle)
        attrs = Sattr3(mode=0o644)
        serial = iter(range(count))

        def next_call():
            i = next(serial, None)
            if i is None:
                return None
            d, name = dirs[i // SUBDIR_FILES], f"f{i}".encode()

            def made(record, offset):
                self.files.append((d, name, decode("CREATE", record, offset).obj))

            return "CREATE", encode("CREATE", d, name, 0, attrs), made

        start = time.perf_counter()
        made, seconds = self.drive(next_call, CREATE_INFLIGHT, start, float("inf"))
        if made != count:
            raise SystemExit(f"CREATE: {made} of {count} files made ({self.statuses})")
        return {"files": made, "seconds": round(time.perf_counter() - start, 3)}

    def metadata(self, op: str, start: float, t0: float, t1: float) -> dict:
        """One of GETATTR, ACCESS (round-robin over the handles), LOOKUP (over the names), REMOVE (each file
        once) on the working set."""
        if op == "getattr":
            calls = [("GETATTR", encode("GETATTR", fh), None) for _, _, fh in self.files]
        elif op == "access":
            calls = [("ACCESS", encode("ACCESS", fh, 0x1F), None) for _, _, fh in self.files]
        elif op == "lookup":
            calls = [("LOOKUP", encode("LOOKUP", d, name), None) for d, name, _ in self.files]
        else:
            calls = [("REMOVE", encode("REMOVE", d, name), None) for d, name, _ in self.files]
        if op == "remove":
            it = iter(calls)
            next_call = lambda: next(it, None)  # noqa: E731
        else:
            ring = [0]

            def next_call():
                ring[0] += 1
                return calls[ring[0] % len(calls)]

        wait_until(start)
        n, seconds = self.drive(next_call, self.args.inflight, t0, t1)
        return {"calls": n, "seconds": seconds, "per_s": round(n / seconds, 1)}  # seconds unrounded: summed

    # -- I/O -------------------------------------------------------------------------------------------------

    def io_file(self, write: bool) -> bytes:
        """This client's file (``io-INDEX-SIZE.bin``); for reading, written first if it is not there whole."""
        a = self.args
        name = f"io-{self.index}-{a.size}.bin".encode()
        fh = self.file(name, create=True)
        if not write and self.sync("GETATTR", fh).obj_attributes.size < a.size:
            chunk = 1 << 20
            data = os.urandom(chunk)
            offsets = iter(range(0, a.size, chunk))

            def next_call():
                off = next(offsets, None)
                return None if off is None else ("WRITE", encode("WRITE", fh, off, data[: min(chunk, a.size - off)], 0),
                                                 None)

            self.drive(next_call, 8, 0.0, float("inf"))
            self.sync("COMMIT", fh, 0, 0)
        return fh

    def io(self, write: bool, fh: bytes, start: float, t1: float) -> dict:
        """WRITEs (UNSTABLE, then one COMMIT) or READs of --block bytes, sequential or (--random) at random
        block-aligned offsets of a file of --size, from ``start`` until --size bytes were moved or ``t1``."""
        a = self.args
        block = a.block
        prefix = Packer()
        prefix.pack_opaque(fh)
        fh_part = prefix.getvalue()
        blocks = max(1, a.size // block)
        if a.random:
            rng = random.Random(self.index)
            order = iter([rng.randrange(blocks) * block for _ in range(blocks)])
        else:
            order = iter(range(0, blocks * block, block))
        moved = [0]
        if write:
            payload = struct.pack(">I", block) + os.urandom(block)

            def wrote(record, offset):
                moved[0] += block

            def next_call():
                off = next(order, None)
                return None if off is None else ("WRITE", fh_part + struct.pack(">QII", off, block, 0) + payload, wrote)
        else:
            def got(record, offset):
                # post_op_attr, count, eof, data: only the count matters here
                u = Unpacker(record, offset + 4)
                if u.unpack_bool():
                    u.unpack_struct(struct.Struct(">84x"))
                moved[0] += u.unpack_uint()

            def next_call():
                off = next(order, None)
                return None if off is None else ("READ", fh_part + struct.pack(">QI", off, block), got)

        wait_until(start)
        self.drive(next_call, a.inflight, start, t1)
        if write:
            self.sync("COMMIT", fh, 0, 0)
        end = time.perf_counter()
        return {"bytes": moved[0], "seconds": round(end - start, 3), "end": end,
                "MB_per_s": round(moved[0] / (end - start) / 1e6, 1)}

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


def share(total: int, clients: int, index: int) -> int:
    """This client's part of a working set of ``total`` files: the parts add up to ``total``, each at least 1."""
    return max(1, total // clients + (1 if index < total % clients else 0))


def client(index: int, args, conn) -> None:
    """One of the --clients, in a process of its own with its own connection: makes its working set (or finds
    its file), says "ready", then runs each (workload, start, t0, t1) it is sent and answers with its figures."""
    try:
        run = Run(args, index)
        if args.workload in ("write", "read"):
            fh, info = run.io_file(args.workload == "write"), {}
        else:
            info = run.make_files(share(args.files, args.clients, index))
        conn.send(("ready", info))
        while (message := conn.recv()) is not None:
            op, start, t0, t1 = message
            failed = run.failed + run.pipe.errors
            result = run.metadata(op, start, t0, t1) if op in METADATA else run.io(op == "write", fh, start, t1)
            result["failed"] = run.failed + run.pipe.errors - failed
            conn.send(("done", result))
        conn.send(("bye", {"statuses": run.statuses, "rpc_error": run.pipe.last_error or None}))
    except BaseException as e:  # SystemExit too: the coordinator must hear of it, not wait
        conn.send(("error", f"client {index}: {type(e).__name__}: {e}"))


def coordinate(a) -> dict:
    """Run --clients client processes, each on its own TCP connection, through the same workloads at the same
    moments; the figures are summed over them, and the server's CPU and peak RSS (--watch-pid) are read over
    the measured part of each workload only (not while the working set is made)."""
    ctx = multiprocessing.get_context("fork")
    conns, procs = [], []
    for index in range(a.clients):
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=client, args=(index, a, theirs), daemon=True)
        proc.start()
        conns.append(ours)
        procs.append(proc)

    def gather(timeout: float) -> list[dict]:
        replies = []
        deadline = time.perf_counter() + timeout
        for conn in conns:
            if not conn.poll(max(0.0, deadline - time.perf_counter())):
                raise SystemExit("a client did not answer in time")
            kind, body = conn.recv()
            if kind == "error":
                raise SystemExit(body)
            replies.append(body)
        return replies

    setup = gather(3600)
    result: dict = {"clients": a.clients}
    if a.workload not in ("write", "read"):
        made = sum(r["files"] for r in setup)
        seconds = max(r["seconds"] for r in setup)
        result["files"] = made
        result["create"] = {"files": made, "seconds": seconds, "per_s": round(made / max(seconds, 1e-3), 1)}
    ops = a.ops if a.workload == "meta" else [a.workload]
    window = Window(a.watch_pid)
    result["ops"] = {}
    for op in ops:
        closed = op in ("getattr", "lookup", "access")  # the others stop when their calls run out
        start = time.perf_counter() + LEAD
        t0 = start + (a.warmup if closed else 0.0)
        t1 = t0 + a.seconds
        for conn in conns:
            conn.send((op, start, t0, t1))
        wait_until(t0)
        window.start()
        if closed:
            wait_until(t1)
            server = window.stop()
            replies = gather(120)
        else:
            replies = gather(a.seconds + 600)
            server = window.stop()
        failed = sum(r["failed"] for r in replies)
        if op in ("write", "read"):
            moved = sum(r["bytes"] for r in replies)
            seconds = max(r["end"] for r in replies) - t0
            figure = {"bytes": moved, "seconds": round(seconds, 3), "MB_per_s": round(moved / seconds / 1e6, 1)}
        elif closed:
            figure = {"calls": sum(r["calls"] for r in replies), "seconds": round(max(r["seconds"] for r in replies), 3),
                      "per_s": round(sum(r["per_s"] for r in replies), 1)}
        else:
            calls, seconds = sum(r["calls"] for r in replies), max(r["seconds"] for r in replies)
            figure = {"calls": calls, "seconds": round(seconds, 6), "per_s": round(calls / seconds, 1)}
        result["ops"][op] = {**figure, **server, "failed": failed}
    for conn in conns:
        conn.send(None)
    byes = gather(60)
    for proc in procs:
        proc.join(10)
    statuses: dict[str, int] = {}
    for bye in byes:
        for name, n in bye["statuses"].items():
            statuses[name] = statuses.get(name, 0) + n
    result.update(failed=sum(r["failed"] for r in result["ops"].values()), statuses=statuses,
                  rpc_error=next((b["rpc_error"] for b in byes if b["rpc_error"]), None))
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("host")
    p.add_argument("export")
    p.add_argument("workload", choices=["write", "read", *METADATA, "meta", "smallfiles", "readdirplus"])
    p.add_argument("--inflight", type=int, default=32, help="calls in flight on each connection")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0, help="before GETATTR, LOOKUP, ACCESS are counted")
    p.add_argument("--size", type=int, default=1 << 30, help="bytes of each client's file (write, read)")
    p.add_argument("--block", type=int, default=1 << 20, help="bytes per WRITE or READ")
    p.add_argument("--random", action="store_true", help="WRITEs or READs at random block-aligned offsets")
    p.add_argument("--files", type=int, default=1, help="the working set: files made, then asked about or removed")
    p.add_argument("--ops", type=lambda s: s.split(","), default=list(METADATA),
                   help="the metadata workloads of `meta`, in this order, on one working set (remove last)")
    p.add_argument("--clients", type=int, default=1, help="client processes, each with its own TCP connection")
    p.add_argument("--one-address", action="store_true",
                   help="every client calls from the same address (one machine's connections), not 127.0.0.1+i")
    p.add_argument("--watch-pid", type=int, help="the server: CPU and peak RSS of its process tree are reported")
    p.add_argument("--tag", default=str(os.getpid()), help="names this run's directories")
    p.add_argument("--entries", type=int, default=10000)
    a = p.parse_args(argv)
    t = a.workload
    if t in ("smallfiles", "readdirplus"):  # one connection, in this process
        run = Run(a)
        window = Window(a.watch_pid)
        window.start()
        result = run.smallfiles() if t == "smallfiles" else run.readdirplus()
        result.update(window.stop())
        result.update(failed=run.failed + run.pipe.errors, statuses=run.statuses,
                      rpc_error=run.pipe.last_error or None)
    else:
        result = coordinate(a)
        if t != "meta":
            result.update({k: v for k, v in result["ops"][t].items() if k != "failed"})
    result.update(workload=t, inflight=a.inflight)
    print(json.dumps(result))
    return 0 if result["failed"] == 0 else 2


if __name__ == "__main__":
    sys.exit(main())
