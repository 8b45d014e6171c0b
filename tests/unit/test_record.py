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
