"""Record marking (RFC 5531 section 11)."""

import struct

import pytest
from hypothesis import given, strategies as st

from nfsstack.rpc.record import RecordReader, RecordTooLarge, frame


def fragments(record: bytes, sizes) -> bytes:
    out, pos = [], 0
    for i, n in enumerate(sizes):
        last = i == len(sizes) - 1
        chunk = record[pos:] if last else record[pos : pos + n]
        pos += len(chunk)
        out.append(struct.pack(">I", (0x80000000 if last else 0) | len(chunk)) + chunk)
    return b"".join(out)


def test_single_and_multi_fragment_records():
    r = RecordReader(1000)
    stream = frame(b"one") + fragments(b"two-in-three-frags", [3, 5, 100]) + frame(b"")
    assert r.feed(stream) == [b"one", b"two-in-three-frags", b""]
    assert r.buffered == 0


def test_every_split_point():
    stream = frame(b"alpha") + fragments(b"beta-gamma", [4, 6]) + frame(b"delta")
    for cut in range(len(stream) + 1):
        r = RecordReader(100)
        got = r.feed(stream[:cut]) + r.feed(stream[cut:])
        assert got == [b"alpha", b"beta-gamma", b"delta"], cut


def test_byte_at_a_time():
    stream = frame(b"x" * 37) + fragments(b"y" * 50, [10, 10, 30])
    r = RecordReader(100)
    got = []
    for i in range(len(stream)):
        got += r.feed(stream[i : i + 1])
    assert got == [b"x" * 37, b"y" * 50]


def test_huge_length_is_refused_at_the_header():
    r = RecordReader(1 << 20)
    with pytest.raises(RecordTooLarge):
        r.feed(struct.pack(">I", 0xFFFFFFFF))  # last fragment, 2^31-1 bytes
    r = RecordReader(100)
    with pytest.raises(RecordTooLarge):
        r.feed(fragments(b"z" * 150, [60, 60, 30])[:200])


@given(st.lists(st.binary(max_size=300), max_size=8), st.data())
def test_roundtrip_with_random_fragmentation_and_chunking(records, data):
    stream = b""
    for rec in records:
        k = data.draw(st.integers(1, 4))
        stream += fragments(rec, [max(1, len(rec) // k)] * k)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    r = RecordReader(1000)
    got, prev = [], 0
    for c in cuts + [len(stream)]:
        got += r.feed(stream[prev:c])
        prev = c
    assert got == records


@given(st.binary(max_size=400))
def test_fuzz_only_records_or_record_too_large(data):
    r = RecordReader(256)
    try:
        for rec in r.feed(data):
            assert len(rec) <= 256
    except RecordTooLarge:
        pass


@given(st.lists(st.binary(max_size=3000), min_size=1, max_size=5), st.data())
def test_large_fragments_read_into_place_give_the_same_records(records, data):
    """As a server reads a large WRITE: whenever a fragment has DIRECT bytes or more still to come, the next bytes
    go straight into its window (recv_into), the rest through feed; the records are exactly the same."""
    import nfsstack.rpc.record as record

    stream = b""
    for rec in records:
        k = data.draw(st.integers(1, 3))
        stream += fragments(rec, [max(1, len(rec) // k)] * k)
    old, record.DIRECT = record.DIRECT, 100
    try:
        r = RecordReader(10_000)
        got, pos = [], 0
        while pos < len(stream):
            window = r.window()
            n = data.draw(st.integers(1, 700))
            if window is not None and data.draw(st.booleans()):
                n = min(n, len(window), len(stream) - pos)
                window[:n] = stream[pos:pos + n]
                got += r.filled(n)
            else:
                got += r.feed(stream[pos:pos + n])
            pos += n
        assert got == records and r.window() is None and r.missing == 0
    finally:
        record.DIRECT = old


def test_a_buffer_is_reused_only_once_nothing_refers_to_it():
    """A large WRITE's data is still being written (a memoryview of its record in a pool thread) while the next
    record arrives: that record gets a buffer of its own; a buffer nobody holds any more is used again."""
    payload = [bytes([i]) * 200_000 for i in range(3)]
    r = RecordReader(1 << 20)

    def receive(data):
        assert r.feed(frame(data)[:1000]) == []
        window = r.window()
        window[:] = frame(data)[1000:]
        (record,) = r.filled(len(window))
        return record

    first = receive(payload[0])
    view = memoryview(first)[10:20]  # as a WRITE's data
    del first
    second = receive(payload[1])
    assert second == payload[1] and view.obj is not second and bytes(view) == payload[0][10:20]
    del view
    third = receive(payload[2])
    assert third == payload[2] and second == payload[1], "the buffer of a record still held is not reused"
    del second, third
    reused = receive(payload[0])
    assert reused == payload[0] and len(r._spare) == 2
