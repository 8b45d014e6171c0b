"""Record marking for RPC over byte streams (RFC 5531 section 11).

A record is one or more fragments; each fragment starts with a 4-byte header
whose top bit marks the last fragment and whose low 31 bits give its length.
:class:`RecordReader` reassembles records from arbitrary chunks and refuses a
record larger than its limit as soon as a header announces it, before any of
the data is buffered.
"""

from __future__ import annotations

import sys
from collections import deque

from nfsstack.xdr import U32

LAST_FRAGMENT = 0x80000000
MAX_FRAGMENT = 0x7FFFFFFF
#: A fragment with at least this much still to come is read straight into a buffer of its size (:meth:`window`).
DIRECT = 1 << 16
#: Buffers of such fragments a reader keeps for the next ones (a fresh 1 MiB buffer costs its page faults).
SPARE = 8


class RecordTooLarge(ValueError):
    """A fragment header announced more data than the record limit allows."""


def record_header(length: int) -> bytes:
    """The header of a single-fragment record of ``length`` bytes."""
    return U32.pack(LAST_FRAGMENT | length)


def frame(message: bytes) -> bytes:
    """``message`` as a single-fragment record."""
    return U32.pack(LAST_FRAGMENT | len(message)) + message


class RecordReader:
    """Reassembles records from stream chunks; bounded by ``max_record`` bytes."""

    __slots__ = ("max_record", "_chunks", "_off", "_avail", "_need", "_last", "_frags", "_total", "_direct", "_dpos",
                 "_spare")

    def __init__(self, max_record: int) -> None:
        self.max_record = max_record
        self._chunks: deque[bytes] = deque()
        self._off = 0  # read offset into self._chunks[0]
        self._avail = 0  # bytes buffered and unread
        self._need = -1  # length of the fragment being read, -1 while reading a header
        self._last = False
        self._frags: list[bytes] = []
        self._total = 0  # bytes of the record so far (earlier fragments)
        self._direct: bytearray | None = None  # the fragment being read straight into place (window/filled)
        self._dpos = 0  # bytes of it so far
        self._spare: list[bytearray] = []  # buffers of earlier large fragments, reused once nothing holds them

    @property
    def buffered(self) -> int:
        return self._avail + self._total + self._dpos

    @property
    def missing(self) -> int:
        """Bytes still to come of the fragment being read (0 between fragments)."""
        if self._direct is not None:
            return len(self._direct) - self._dpos
        return self._need - self._avail if self._need > 0 else 0

    def window(self) -> memoryview | None:
        """Where the next bytes of the stream go, for ``recv_into``, while a large fragment arrives (at least
        :data:`DIRECT` bytes of it still to come); None otherwise.  The fragment is then read into a buffer of its
        own size instead of being joined from chunks: one copy of a 1 MiB WRITE instead of two."""
        if self._direct is None:
            if self._need < 0 or self._need - self._avail < DIRECT:
                return None
            buf = self._buffer(self._need)  # every buffered byte belongs to this fragment: _avail < _need
            pos = 0
            for chunk in self._chunks:
                piece = memoryview(chunk)[self._off :] if pos == 0 and self._off else chunk
                buf[pos : pos + len(piece)] = piece
                pos += len(piece)
            self._chunks.clear()
            self._off = self._avail = 0
            self._direct, self._dpos = buf, pos
        return memoryview(self._direct)[self._dpos :]

    def _buffer(self, n: int) -> bytearray:
        """A buffer of ``n`` bytes: a spare one that nothing refers to any more (no record, no memoryview of a
        WRITE's data still being written), else a new one, kept as a spare."""
        spare = self._spare
        for buf in spare:
            # The list, the loop variable and the call's argument: no reference outside this reader.
            if len(buf) == n and sys.getrefcount(buf) == 3:
                return buf
        buf = bytearray(n)
        if len(spare) >= SPARE:
            spare.pop(0)
        spare.append(buf)
        return buf

    def filled(self, n: int) -> list:
        """``n`` bytes were received into :meth:`window`; the records that completes (as :meth:`feed`)."""
        self._dpos += n
        if self._dpos < len(self._direct):
            return []
        records: list = []
        self._end_fragment(self._direct, records)
        return records

    def _end_fragment(self, fragment, records: list) -> None:
        self._direct, self._dpos = None, 0
        self._need = -1
        if self._last:
            if self._frags:
                self._frags.append(fragment)
                fragment = b"".join(self._frags)
                self._frags = []
                self._total = 0
            records.append(fragment)
        else:
            self._frags.append(fragment)
            self._total += len(fragment)

    def _read(self, n: int) -> bytes:
        chunks = self._chunks
        chunk = chunks[0]
        off = self._off
        if len(chunk) - off >= n:
            end = off + n
            out = chunk[off:end] if (off or end != len(chunk)) else chunk
            if end == len(chunk):
                chunks.popleft()
                end = 0
            self._off = end
            self._avail -= n
            return out
        parts = []
        need = n
        while need:
            chunk = chunks[0]
            here = len(chunk) - self._off
            if here <= need:
                parts.append(chunk[self._off :] if self._off else chunk)
                chunks.popleft()
                self._off = 0
                need -= here
            else:
                parts.append(chunk[self._off : self._off + need])
                self._off += need
                need = 0
        self._avail -= n
        return b"".join(parts)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the records it completes, in order.

        Raises :class:`RecordTooLarge` when a fragment would take the record
        past ``max_record``; the stream is unusable after that.
        """
        records: list[bytes] = []
        direct = self._direct
        if direct is not None and data:  # the rest of a fragment being read into place
            k = min(len(data), len(direct) - self._dpos)
            direct[self._dpos : self._dpos + k] = data[:k] if k < len(data) else data
            self._dpos += k
            if self._dpos < len(direct):
                return records
            self._end_fragment(direct, records)
            data = data[k:]
        if data:
            self._chunks.append(data)
            self._avail += len(data)
        while True:
            if self._need < 0:
                if self._avail < 4:
                    return records
                chunk = self._chunks[0]
                if len(chunk) - self._off >= 4:
                    header = U32.unpack_from(chunk, self._off)[0]
                    self._off += 4
                    self._avail -= 4
                    if self._off == len(chunk):
                        self._chunks.popleft()
                        self._off = 0
                else:
                    header = U32.unpack(self._read(4))[0]
                length = header & MAX_FRAGMENT
                if self._total + length > self.max_record:
                    raise RecordTooLarge(
                        f"record of at least {self._total + length} bytes exceeds the limit of {self.max_record}"
                    )
                self._need = length
                self._last = bool(header & LAST_FRAGMENT)
            if self._avail < self._need:
                return records
            self._end_fragment(self._read(self._need) if self._need else b"", records)
