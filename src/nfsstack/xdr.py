"""XDR: External Data Representation (RFC 4506).

Encoding and decoding on precompiled :class:`struct.Struct` objects.  Every
variable-length item (opaque, string, array, linked list) is decoded against a
limit the caller gives, so a hostile length field can never make us allocate
more than the caller allows (the lesson of CVE-2017-8779).  Running past the
end of the input raises :class:`XDRError`, never ``IndexError`` or
``struct.error``.

Strings are decoded as ``str`` with ``surrogateescape`` so that arbitrary bytes
survive a round trip; protocols that deal in raw names (NFS file names) use
opaque data instead.
"""

from __future__ import annotations

import struct
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, TypeVar

T = TypeVar("T")

__all__ = [
    "XDRError",
    "Packer",
    "Unpacker",
    "U32",
    "I32",
    "U64",
    "I64",
    "encode_string",
]

U32 = struct.Struct(">I")
I32 = struct.Struct(">i")
U64 = struct.Struct(">Q")
I64 = struct.Struct(">q")
_U32x2 = struct.Struct(">II")

_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")
_UINT_MAX = 0xFFFFFFFF


class XDRError(ValueError):
    """Malformed, truncated or oversized XDR data (RFC 4506)."""


def encode_string(value: str | bytes) -> bytes:
    """The bytes of an XDR string: ``str`` as UTF-8 with surrogateescape."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return bytes(value)


class Packer:
    """Builds an XDR byte string from a sequence of ``pack_*`` calls."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def getvalue(self) -> bytes:
        return b"".join(self._parts)

    def parts(self) -> list[bytes]:
        """The encoded pieces, for ``transport.writeSequence`` without a join."""
        return self._parts

    def __len__(self) -> int:
        return sum(len(p) for p in self._parts)

    # -- RFC 4506 section 4.1-4.5: integers, enums, booleans, hypers
    def pack_uint(self, value: int) -> None:
        try:
            self._parts.append(U32.pack(value))
        except struct.error as e:
            raise XDRError(f"unsigned int out of range: {value!r}") from e

    def pack_int(self, value: int) -> None:
        try:
            self._parts.append(I32.pack(value))
        except struct.error as e:
            raise XDRError(f"int out of range: {value!r}") from e

    pack_enum = pack_int

    def pack_bool(self, value: bool) -> None:
        self._parts.append(U32.pack(1 if value else 0))

    def pack_uhyper(self, value: int) -> None:
        try:
            self._parts.append(U64.pack(value))
        except struct.error as e:
            raise XDRError(f"unsigned hyper out of range: {value!r}") from e

    def pack_hyper(self, value: int) -> None:
        try:
            self._parts.append(I64.pack(value))
        except struct.error as e:
            raise XDRError(f"hyper out of range: {value!r}") from e

    def pack_struct(self, st: struct.Struct, *values: Any) -> None:
        """Several fixed-size fields at once, with one precompiled struct."""
        self._parts.append(st.pack(*values))

    def pack_raw(self, data: bytes) -> None:
        """Already-encoded XDR (for example a cached reply body)."""
        self._parts.append(data)

    # -- RFC 4506 section 4.9-4.11: opaque data and strings
    def pack_fopaque(self, size: int, data: bytes) -> None:
        if len(data) != size:
            raise XDRError(f"fixed opaque needs {size} bytes, got {len(data)}")
        self._parts.append(bytes(data))
        self._parts.append(_PAD[size & 3])

    def pack_opaque(self, data: bytes) -> None:
        n = len(data)
        if n > _UINT_MAX:
            raise XDRError("opaque too long")
        self._parts.append(U32.pack(n))
        self._parts.append(bytes(data))
        self._parts.append(_PAD[n & 3])

    def pack_opaque_buffer(self, data) -> None:
        """Variable-length opaque from a buffer the caller hands over (not copied: never change it after)."""
        n = len(data)
        if n > _UINT_MAX:
            raise XDRError("opaque too long")
        self._parts.append(U32.pack(n))
        self._parts.append(data)
        self._parts.append(_PAD[n & 3])

    def pack_string(self, value: str | bytes) -> None:
        self.pack_opaque(encode_string(value))

    # -- RFC 4506 section 4.12-4.19: arrays, optional data, unions
    def pack_farray(self, items: Sequence[T], pack_item: Callable[["Packer", T], None]) -> None:
        for item in items:
            pack_item(self, item)

    def pack_array(self, items: Sequence[T], pack_item: Callable[["Packer", T], None]) -> None:
        self._parts.append(U32.pack(len(items)))
        for item in items:
            pack_item(self, item)

    def pack_optional(self, value: Optional[T], pack_item: Callable[["Packer", T], None]) -> None:
        if value is None:
            self._parts.append(b"\0\0\0\0")
        else:
            self._parts.append(b"\0\0\0\1")
            pack_item(self, value)

    def pack_list(self, items: Iterable[T], pack_item: Callable[["Packer", T], None]) -> None:
        """A linked list written as chained optional data (``struct x *next``)."""
        for item in items:
            self._parts.append(b"\0\0\0\1")
            pack_item(self, item)
        self._parts.append(b"\0\0\0\0")

    def pack_union(
        self,
        discriminant: int,
        value: Any,
        arms: Mapping[int, Optional[Callable[["Packer", Any], None]]],
        default: Optional[Callable[["Packer", Any], None]] = None,
    ) -> None:
        """A discriminated union: the discriminant, then its arm (``None`` = void)."""
        self.pack_int(discriminant)
        if discriminant in arms:
            arm = arms[discriminant]
        elif default is not None:
            arm = default
        else:
            raise XDRError(f"no union arm for discriminant {discriminant}")
        if arm is not None:
            arm(self, value)


class Unpacker:
    """Reads XDR items from a buffer (bytes, bytearray or memoryview)."""

    __slots__ = ("_buf", "_pos", "_end")

    def __init__(self, data: bytes | bytearray | memoryview, offset: int = 0) -> None:
        self._buf = data
        self._pos = offset
        self._end = len(data)

    @property
    def position(self) -> int:
        return self._pos

    def remaining(self) -> int:
        return self._end - self._pos

    def rest(self) -> bytes:
        """Everything not yet read (for example the opaque arguments of a call)."""
        data = bytes(self._buf[self._pos : self._end])
        self._pos = self._end
        return data

    def done(self) -> None:
        """Raise unless every byte was consumed."""
        if self._pos != self._end:
            raise XDRError(f"{self._end - self._pos} unread bytes at end of data")

    def _take(self, n: int) -> int:
        pos = self._pos
        end = pos + n
        if n < 0 or end > self._end:
            raise XDRError(f"data ends after {self._end - pos} of {n} needed bytes")
        self._pos = end
        return pos

    def unpack_uint(self) -> int:
        pos = self._pos
        if pos + 4 > self._end:
            raise XDRError("data ends inside an unsigned int")
        self._pos = pos + 4
        return U32.unpack_from(self._buf, pos)[0]

    def unpack_int(self) -> int:
        pos = self._pos
        if pos + 4 > self._end:
            raise XDRError("data ends inside an int")
        self._pos = pos + 4
        return I32.unpack_from(self._buf, pos)[0]

    unpack_enum = unpack_int

    def unpack_bool(self) -> bool:
        v = self.unpack_uint()
        if v > 1:
            raise XDRError(f"boolean is {v}, not 0 or 1")
        return v == 1

    def unpack_uhyper(self) -> int:
        return U64.unpack_from(self._buf, self._take(8))[0]

    def unpack_hyper(self) -> int:
        return I64.unpack_from(self._buf, self._take(8))[0]

    def unpack_struct(self, st: struct.Struct) -> tuple:
        """Several fixed-size fields at once, with one precompiled struct."""
        return st.unpack_from(self._buf, self._take(st.size))

    def unpack_fopaque(self, size: int) -> bytes:
        pos = self._take(size + ((-size) & 3))
        return bytes(self._buf[pos : pos + size])

    def unpack_opaque(self, limit: int) -> bytes:
        # The length and the bytes in one method (no unpack_uint, no _take): a handle or a name in every NFS call.
        pos = self._pos
        start = pos + 4
        if start > self._end:
            raise XDRError("data ends inside an unsigned int")
        n = U32.unpack_from(self._buf, pos)[0]
        if n > limit:
            self._pos = start
            raise XDRError(f"opaque of {n} bytes exceeds the limit of {limit}")
        stop = start + n
        end = stop + ((-n) & 3)
        if end > self._end:
            self._pos = start
            raise XDRError(f"data ends after {self._end - start} of {end - start} needed bytes")
        self._pos = end
        return bytes(self._buf[start:stop])

    def unpack_opaque_view(self, limit: int) -> memoryview:
        """Like :meth:`unpack_opaque` but without a copy (large WRITE payloads)."""
        n = self.unpack_uint()
        if n > limit:
            raise XDRError(f"opaque of {n} bytes exceeds the limit of {limit}")
        pos = self._take(n + ((-n) & 3))
        return memoryview(self._buf)[pos : pos + n]

    def unpack_string(self, limit: int) -> str:
        return self.unpack_opaque(limit).decode("utf-8", "surrogateescape")

    def unpack_farray(self, count: int, unpack_item: Callable[["Unpacker"], T]) -> list[T]:
        return [unpack_item(self) for _ in range(count)]

    def unpack_array(self, unpack_item: Callable[["Unpacker"], T], limit: int) -> list[T]:
        n = self.unpack_uint()
        if n > limit:
            raise XDRError(f"array of {n} items exceeds the limit of {limit}")
        # Each item takes at least 4 bytes: refuse counts the data cannot hold
        # before looping, so a huge count with no data fails at once.
        if n * 4 > self._end - self._pos:
            raise XDRError(f"array of {n} items does not fit in the data")
        return [unpack_item(self) for _ in range(n)]

    def unpack_optional(self, unpack_item: Callable[["Unpacker"], T]) -> Optional[T]:
        if self.unpack_bool():
            return unpack_item(self)
        return None

    def unpack_list(self, unpack_item: Callable[["Unpacker"], T], limit: int) -> list[T]:
        """A linked list written as chained optional data, at most ``limit`` items."""
        items: list[T] = []
        while self.unpack_bool():
            if len(items) >= limit:
                raise XDRError(f"list longer than the limit of {limit}")
            items.append(unpack_item(self))
        return items

    def unpack_union(
        self,
        arms: Mapping[int, Optional[Callable[["Unpacker"], Any]]],
        default: Optional[Callable[["Unpacker"], Any]] = None,
    ) -> tuple[int, Any]:
        """A discriminated union: returns ``(discriminant, value)``; void arms give ``None``."""
        disc = self.unpack_int()
        if disc in arms:
            arm = arms[disc]
        elif default is not None:
            arm = default
        else:
            raise XDRError(f"no union arm for discriminant {disc}")
        return disc, (arm(self) if arm is not None else None)
