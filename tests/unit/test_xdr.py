"""XDR codec (RFC 4506): round trips, bounds, truncation, fuzzing."""

import pytest
from hypothesis import given, strategies as st

from nfsstack.xdr import Packer, Unpacker, XDRError


def roundtrip(pack, unpack, value):
    p = Packer()
    pack(p, value)
    data = p.getvalue()
    assert len(data) % 4 == 0
    u = Unpacker(data)
    out = unpack(u)
    u.done()
    return out, data


def test_integers_are_big_endian_and_padded():
    p = Packer()
    p.pack_uint(1)
    p.pack_int(-2)
    p.pack_uhyper(3)
    p.pack_hyper(-4)
    p.pack_bool(True)
    assert p.getvalue() == (
        b"\0\0\0\1" + b"\xff\xff\xff\xfe" + b"\0" * 7 + b"\3" + b"\xff" * 7 + b"\xfc" + b"\0\0\0\1"
    )


def test_opaque_and_string_padding():
    _, data = roundtrip(Packer.pack_opaque, lambda u: u.unpack_opaque(10), b"abcde")
    assert data == b"\0\0\0\5abcde\0\0\0"
    out, data = roundtrip(Packer.pack_string, lambda u: u.unpack_string(10), "tcp")
    assert out == "tcp" and data == b"\0\0\0\3tcp\0"
    out, data = roundtrip(lambda p, v: p.pack_fopaque(3, v), lambda u: u.unpack_fopaque(3), b"xyz")
    assert out == b"xyz" and data == b"xyz\0"


def test_limits_refuse_long_items_before_reading_them():
    p = Packer()
    p.pack_opaque(b"x" * 11)
    with pytest.raises(XDRError, match="limit"):
        Unpacker(p.getvalue()).unpack_opaque(10)
    # A huge length with no data behind it: refused by the limit, nothing allocated.
    with pytest.raises(XDRError):
        Unpacker(b"\xff\xff\xff\xff").unpack_opaque(1 << 20)
    with pytest.raises(XDRError):
        Unpacker(b"\x00\x0f\xff\xff").unpack_array(Unpacker.unpack_uint, 1 << 30)


def test_truncation_is_an_xdr_error_never_index_error():
    for data in (b"", b"\0", b"\0\0\0"):
        with pytest.raises(XDRError):
            Unpacker(data).unpack_uint()
        with pytest.raises(XDRError):
            Unpacker(data).unpack_hyper()
    with pytest.raises(XDRError):
        Unpacker(b"\0\0\0\4ab").unpack_opaque(100)
    with pytest.raises(XDRError):
        Unpacker(b"\0\0\0\2").unpack_bool()


def test_arrays_optionals_lists_unions():
    out, _ = roundtrip(lambda p, v: p.pack_array(v, Packer.pack_uint), lambda u: u.unpack_array(Unpacker.unpack_uint, 5), [1, 2, 3])
    assert out == [1, 2, 3]
    out, _ = roundtrip(lambda p, v: p.pack_optional(v, Packer.pack_uint), lambda u: u.unpack_optional(Unpacker.unpack_uint), None)
    assert out is None
    out, _ = roundtrip(lambda p, v: p.pack_list(v, Packer.pack_uint), lambda u: u.unpack_list(Unpacker.unpack_uint, 10), [7, 8])
    assert out == [7, 8]
    p = Packer()
    p.pack_list(range(11), Packer.pack_uint)
    with pytest.raises(XDRError, match="limit"):
        Unpacker(p.getvalue()).unpack_list(Unpacker.unpack_uint, 10)
    arms = {0: Unpacker.unpack_uint, 1: None}
    parms = {0: Packer.pack_uint, 1: None}
    out, _ = roundtrip(lambda p, v: p.pack_union(v[0], v[1], parms), lambda u: u.unpack_union(arms), (0, 42))
    assert out == (0, 42)
    out, _ = roundtrip(lambda p, v: p.pack_union(v[0], v[1], parms), lambda u: u.unpack_union(arms), (1, None))
    assert out == (1, None)
    with pytest.raises(XDRError, match="arm"):
        Unpacker(b"\0\0\0\7").unpack_union(arms)


def test_pack_out_of_range_is_xdr_error():
    with pytest.raises(XDRError):
        Packer().pack_uint(-1)
    with pytest.raises(XDRError):
        Packer().pack_int(1 << 31)
    with pytest.raises(XDRError):
        Packer().pack_fopaque(4, b"abc")


@given(st.integers(0, 2**32 - 1), st.integers(-(2**31), 2**31 - 1), st.integers(0, 2**64 - 1),
       st.binary(max_size=64), st.text(max_size=32), st.lists(st.integers(0, 2**32 - 1), max_size=8))
def test_roundtrip_property(a, b, c, blob, text, items):
    p = Packer()
    p.pack_uint(a)
    p.pack_int(b)
    p.pack_uhyper(c)
    p.pack_opaque(blob)
    p.pack_string(text)
    p.pack_array(items, Packer.pack_uint)
    u = Unpacker(p.getvalue())
    assert u.unpack_uint() == a
    assert u.unpack_int() == b
    assert u.unpack_uhyper() == c
    assert u.unpack_opaque(64) == blob
    assert u.unpack_string(1000) == text
    assert u.unpack_array(Unpacker.unpack_uint, 8) == items
    u.done()


@given(st.binary(max_size=200))
def test_fuzz_decoders_raise_only_xdr_errors(data):
    readers = [
        lambda u: u.unpack_opaque(64),
        lambda u: u.unpack_string(64),
        lambda u: u.unpack_array(lambda v: v.unpack_opaque(16), 16),
        lambda u: u.unpack_list(Unpacker.unpack_hyper, 16),
        lambda u: u.unpack_union({0: Unpacker.unpack_uint, 1: lambda v: v.unpack_opaque(8)}),
        lambda u: u.unpack_optional(lambda v: v.unpack_fopaque(12)),
        Unpacker.unpack_bool,
    ]
    for read in readers:
        u = Unpacker(data)
        try:
            while u.remaining():
                read(u)
        except XDRError:
            pass
