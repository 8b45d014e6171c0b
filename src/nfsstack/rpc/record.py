"""Record marking for RPC over byte streams (RFC 5531 section 11).

A record is one or more fragments; each fragment starts with a 4-byte header
whose top bit marks the last fragment and whose low 31 bits give its length.
:class:`RecordReader` reassembles records from arbitrary chunks and refuses a
record larger than its limit as soon as a header announces it, before any of
the data is buffered.
"""

from __future__ import annotations

from collections import deque

from nfsstack.xdr import U32

LAST_FRAGMENT = 0x80000000
MAX_FRAGMENT = 0x7FFFFFFF


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

    __slots__ = ("max_record", "_chunks", "_off", "_avail", "_need", "_last", "_frags", "_total")

    def __init__(self, max_record: int) -> None:
        self.max_record = max_record
        self._chunks: deque[bytes] = deque()
        self._off = 0  # read offset into self._chunks[0]
        self._avail = 0  # bytes buffered and unread
        self._need = -1  # length of the fragment being read, -1 while reading a header
        self._last = False
        self._frags: list[bytes] = []
        self._total = 0  # bytes of the record so far (earlier fragments)

    @property
    def buffered(self) -> int:
        return self._avail + self._total

    @property
    def missing(self) -> int:
        """Bytes still to come of the fragment being read (0 between fragments)."""
        return self._need - self._avail if self._need > 0 else 0

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
        if data:
            self._chunks.append(data)
            self._avail += len(data)
        records: list[bytes] = []
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
            fragment = self._read(self._need) if self._need else b""
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
