"""The client side of NFSv3's wire format (RFC 1813 section 3.3): argument encoders, result decoders.

Pure codecs with no transport, for the project's own tools, tests and
benchmarks: ``encode(proc, ...)`` builds a procedure's arguments and
``decode(proc, data)`` reads its result into a :class:`Result` whose fields
are named as RFC 1813 names them (``obj_attributes``, ``dir_wcc``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from nfsstack.nfs3.codec import FHSIZE3, MAX_NAME_DECODE, MAX_PATH, Sattr, Stat, pack_sattr
from nfsstack.xdr import Packer, Unpacker

__all__ = ["Fattr", "WccAttr", "Entry", "Result", "Sattr3", "encode", "decode", "PROC"]

PROC = {
    "NULL": 0, "GETATTR": 1, "SETATTR": 2, "LOOKUP": 3, "ACCESS": 4, "READLINK": 5, "READ": 6, "WRITE": 7,
    "CREATE": 8, "MKDIR": 9, "SYMLINK": 10, "MKNOD": 11, "REMOVE": 12, "RMDIR": 13, "RENAME": 14, "LINK": 15,
    "READDIR": 16, "READDIRPLUS": 17, "FSSTAT": 18, "FSINFO": 19, "PATHCONF": 20, "COMMIT": 21,
}
MAX_DATA = 1 << 24
MAX_ENTRIES = 1 << 20


@dataclass(frozen=True, slots=True)
class Fattr:
    """fattr3; times in nanoseconds."""

    type: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    used: int
    rdev: tuple[int, int]
    fsid: int
    fileid: int
    atime: int
    mtime: int
    ctime: int


@dataclass(frozen=True, slots=True)
class WccAttr:
    size: int
    mtime: int
    ctime: int


@dataclass(frozen=True, slots=True)
class Entry:
    """A READDIR(PLUS) entry; ``attributes`` and ``handle`` only from READDIRPLUS."""

    fileid: int
    name: bytes
    cookie: int
    attributes: Optional[Fattr] = None
    handle: Optional[bytes] = None


@dataclass(slots=True)
class Result:
    """A procedure's result: its status and the fields of the arm it took."""

    status: Stat
    fields: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.fields[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def ok(self) -> bool:
        return self.status == Stat.OK


#: sattr3 to send: the server's own dataclass (None leaves a field alone; times in ns, or "now").
Sattr3 = Sattr


# -- pieces -----------------------------------------------------------------------


def _time(u: Unpacker) -> int:
    s, ns = u.unpack_uint(), u.unpack_uint()
    return s * 1_000_000_000 + ns


def unpack_fattr(u: Unpacker) -> Fattr:
    t, mode, nlink, uid, gid = (u.unpack_uint() for _ in range(5))
    size, used = u.unpack_uhyper(), u.unpack_uhyper()
    rdev = (u.unpack_uint(), u.unpack_uint())
    fsid, fileid = u.unpack_uhyper(), u.unpack_uhyper()
    return Fattr(t, mode, nlink, uid, gid, size, used, rdev, fsid, fileid, _time(u), _time(u), _time(u))


def unpack_post_op_attr(u: Unpacker) -> Optional[Fattr]:
    return unpack_fattr(u) if u.unpack_bool() else None


def unpack_wcc(u: Unpacker) -> tuple[Optional[WccAttr], Optional[Fattr]]:
    before = WccAttr(u.unpack_uhyper(), _time(u), _time(u)) if u.unpack_bool() else None
    return before, unpack_post_op_attr(u)


def unpack_post_op_fh(u: Unpacker) -> Optional[bytes]:
    return u.unpack_opaque(FHSIZE3) if u.unpack_bool() else None


# -- arguments --------------------------------------------------------------------


def _diropargs(p: Packer, fh: bytes, name: bytes) -> None:
    p.pack_opaque(fh)
    p.pack_opaque(name)


def _args(p: Packer, proc: str, *a: Any) -> None:
    if proc in ("GETATTR", "READLINK", "FSSTAT", "FSINFO", "PATHCONF"):
        p.pack_opaque(a[0])
    elif proc == "SETATTR":  # fh, Sattr3, guard ctime (ns) or None
        p.pack_opaque(a[0])
        pack_sattr(p, a[1])
        guard = a[2] if len(a) > 2 else None
        p.pack_bool(guard is not None)
        if guard is not None:
            p.pack_uint(guard // 1_000_000_000)
            p.pack_uint(guard % 1_000_000_000)
    elif proc in ("LOOKUP", "REMOVE", "RMDIR"):
        _diropargs(p, a[0], a[1])
    elif proc == "ACCESS":
        p.pack_opaque(a[0])
        p.pack_uint(a[1])
    elif proc in ("READ", "COMMIT"):  # fh, offset, count
        p.pack_opaque(a[0])
        p.pack_uhyper(a[1])
        p.pack_uint(a[2])
    elif proc == "WRITE":  # fh, offset, data, stable[, count]
        p.pack_opaque(a[0])
        p.pack_uhyper(a[1])
        p.pack_uint(a[4] if len(a) > 4 else len(a[2]))
        p.pack_uint(a[3])
        p.pack_opaque(a[2])
    elif proc == "CREATE":  # dir, name, mode (0/1/2), Sattr3 or 8-byte verifier
        _diropargs(p, a[0], a[1])
        p.pack_uint(a[2])
        if a[2] == 2:
            p.pack_fopaque(8, a[3])
        else:
            pack_sattr(p, a[3])
    elif proc == "MKDIR":  # dir, name, Sattr3
        _diropargs(p, a[0], a[1])
        pack_sattr(p, a[2])
    elif proc == "SYMLINK":  # dir, name, Sattr3, target
        _diropargs(p, a[0], a[1])
        pack_sattr(p, a[2])
        p.pack_opaque(a[3])
    elif proc == "MKNOD":  # dir, name, ftype, Sattr3, (major, minor)
        _diropargs(p, a[0], a[1])
        p.pack_uint(a[2])
        if a[2] in (3, 4):
            pack_sattr(p, a[3])
            p.pack_uint(a[4][0])
            p.pack_uint(a[4][1])
        elif a[2] in (6, 7):
            pack_sattr(p, a[3])
    elif proc == "RENAME":  # from dir, from name, to dir, to name
        _diropargs(p, a[0], a[1])
        _diropargs(p, a[2], a[3])
    elif proc == "LINK":  # file, dir, name
        p.pack_opaque(a[0])
        _diropargs(p, a[1], a[2])
    elif proc in ("READDIR", "READDIRPLUS"):  # fh, cookie, verifier, count[, maxcount]
        p.pack_opaque(a[0])
        p.pack_uhyper(a[1])
        p.pack_fopaque(8, a[2])
        p.pack_uint(a[3])
        if proc == "READDIRPLUS":
            p.pack_uint(a[4])
    elif proc != "NULL":
        raise ValueError(f"unknown procedure {proc}")


def encode(proc: str, *args: Any) -> bytes:
    """The XDR arguments of NFSv3 procedure ``proc`` (see :func:`_args` for each one's order)."""
    p = Packer()
    _args(p, proc, *args)
    return p.getvalue()


# -- results ----------------------------------------------------------------------


def _entries(u: Unpacker, plus: bool) -> list[Entry]:
    out: list[Entry] = []
    while u.unpack_bool():
        if len(out) >= MAX_ENTRIES:
            raise ValueError("too many entries")
        fileid = u.unpack_uhyper()
        name = u.unpack_opaque(MAX_NAME_DECODE)
        cookie = u.unpack_uhyper()
        if plus:
            out.append(Entry(fileid, name, cookie, unpack_post_op_attr(u), unpack_post_op_fh(u)))
        else:
            out.append(Entry(fileid, name, cookie))
    return out


_Arm = Callable[[Unpacker], dict]
_OBJ_ATTR: _Arm = lambda u: {"obj_attributes": unpack_post_op_attr(u)}  # noqa: E731
_OBJ_WCC: _Arm = lambda u: {"obj_wcc": unpack_wcc(u)}  # noqa: E731
_DIR_WCC: _Arm = lambda u: {"dir_wcc": unpack_wcc(u)}  # noqa: E731
_MADE: _Arm = lambda u: {"obj": unpack_post_op_fh(u), "obj_attributes": unpack_post_op_attr(u),  # noqa: E731
                         "dir_wcc": unpack_wcc(u)}

#: (resok arm, resfail arm) of each procedure.
_RESULTS: dict[str, tuple[_Arm, _Arm]] = {
    "GETATTR": (lambda u: {"obj_attributes": unpack_fattr(u)}, lambda u: {}),
    "SETATTR": (_OBJ_WCC, _OBJ_WCC),
    "LOOKUP": (lambda u: {"object": u.unpack_opaque(FHSIZE3), "obj_attributes": unpack_post_op_attr(u),
                          "dir_attributes": unpack_post_op_attr(u)},
               lambda u: {"dir_attributes": unpack_post_op_attr(u)}),
    "ACCESS": (lambda u: {"obj_attributes": unpack_post_op_attr(u), "access": u.unpack_uint()}, _OBJ_ATTR),
    "READLINK": (lambda u: {"symlink_attributes": unpack_post_op_attr(u), "data": u.unpack_opaque(MAX_PATH)},
                 lambda u: {"symlink_attributes": unpack_post_op_attr(u)}),
    "READ": (lambda u: {"file_attributes": unpack_post_op_attr(u), "count": u.unpack_uint(),
                        "eof": u.unpack_bool(), "data": u.unpack_opaque(MAX_DATA)},
             lambda u: {"file_attributes": unpack_post_op_attr(u)}),
    "WRITE": (lambda u: {"file_wcc": unpack_wcc(u), "count": u.unpack_uint(), "committed": u.unpack_uint(),
                         "verf": u.unpack_fopaque(8)},
              lambda u: {"file_wcc": unpack_wcc(u)}),
    "CREATE": (_MADE, _DIR_WCC),
    "MKDIR": (_MADE, _DIR_WCC),
    "SYMLINK": (_MADE, _DIR_WCC),
    "MKNOD": (_MADE, _DIR_WCC),
    "REMOVE": (_DIR_WCC, _DIR_WCC),
    "RMDIR": (_DIR_WCC, _DIR_WCC),
    "RENAME": (lambda u: {"fromdir_wcc": unpack_wcc(u), "todir_wcc": unpack_wcc(u)},) * 2,
    "LINK": (lambda u: {"file_attributes": unpack_post_op_attr(u), "linkdir_wcc": unpack_wcc(u)},) * 2,
    "READDIR": (lambda u: {"dir_attributes": unpack_post_op_attr(u), "cookieverf": u.unpack_fopaque(8),
                           "entries": _entries(u, False), "eof": u.unpack_bool()},
                lambda u: {"dir_attributes": unpack_post_op_attr(u)}),
    "READDIRPLUS": (lambda u: {"dir_attributes": unpack_post_op_attr(u), "cookieverf": u.unpack_fopaque(8),
                               "entries": _entries(u, True), "eof": u.unpack_bool()},
                    lambda u: {"dir_attributes": unpack_post_op_attr(u)}),
    "FSSTAT": (lambda u: {"obj_attributes": unpack_post_op_attr(u), "tbytes": u.unpack_uhyper(),
                          "fbytes": u.unpack_uhyper(), "abytes": u.unpack_uhyper(), "tfiles": u.unpack_uhyper(),
                          "ffiles": u.unpack_uhyper(), "afiles": u.unpack_uhyper(), "invarsec": u.unpack_uint()},
               _OBJ_ATTR),
    "FSINFO": (lambda u: {"obj_attributes": unpack_post_op_attr(u),
                          **dict(zip(("rtmax", "rtpref", "rtmult", "wtmax", "wtpref", "wtmult", "dtpref"),
                                     (u.unpack_uint() for _ in range(7)))),
                          "maxfilesize": u.unpack_uhyper(), "time_delta": _time(u), "properties": u.unpack_uint()},
               _OBJ_ATTR),
    "PATHCONF": (lambda u: {"obj_attributes": unpack_post_op_attr(u), "linkmax": u.unpack_uint(),
                            "name_max": u.unpack_uint(), "no_trunc": u.unpack_bool(),
                            "chown_restricted": u.unpack_bool(), "case_insensitive": u.unpack_bool(),
                            "case_preserving": u.unpack_bool()},
                 _OBJ_ATTR),
    "COMMIT": (lambda u: {"file_wcc": unpack_wcc(u), "verf": u.unpack_fopaque(8)},
               lambda u: {"file_wcc": unpack_wcc(u)}),
}


def decode(proc: str, data: bytes | memoryview, offset: int = 0) -> Result:
    """The result of ``proc`` from the reply body at ``offset``; every byte must be used."""
    u = Unpacker(data, offset)
    if proc == "NULL":
        u.done()
        return Result(Stat.OK)
    status = Stat(u.unpack_uint())
    ok, fail = _RESULTS[proc]
    fields = ok(u) if status == Stat.OK else fail(u)
    u.done()
    return Result(status, fields)
