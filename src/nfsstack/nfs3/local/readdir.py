"""READDIR and READDIRPLUS of a local directory (RFC 1813 sections 3.3.16-17): from the directory's own
offsets (getdents), encoded as they are read, and kept in :mod:`~nfsstack.nfs3.local.listings` while nothing
they show changed (docs/architecture.md, "The listing cache")."""

from __future__ import annotations

import os
import stat
import struct
from typing import Optional

from nfsstack.nfs3.codec import NFSError, Stat, fattr3
from nfsstack.nfs3.interface import Listing
from nfsstack.nfs3.local import dirents, rawstat
from nfsstack.nfs3.local.listings import Chunk, Listings

_NO_ATTR = b"\0\0\0\0"
_TRUE = b"\0\0\0\1"
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")
_ENTRY_HEAD = struct.Struct(">IQI")  # value follows, fileid, name length
_COOKIE = struct.Struct(">Q")
_U32 = struct.Struct(">I")
#: Encoded READDIRPLUS attributes and handles kept per export, keyed by the raw struct stat (rawstat.py).
ENTRY_CACHE = 32768


class Lister:
    """Lists local directories for :class:`~nfsstack.nfs3.local.filesystem.LocalFilesystem`."""

    def __init__(self, table, as_caller) -> None:
        self.table = table
        self.as_caller = as_caller
        #: Encoded listings, kept while nothing they show changed.
        self.listings = Listings()
        #: export id -> {raw struct stat: the entry's name_attributes and name_handle, encoded}
        self.entry_parts: dict[int, dict[bytes, tuple[bytes, bool]]] = {}

    def readdir(self, call, fd: int, dir_st: os.stat_result, cookie: int, dircount: int, room: int,
                plus: bool) -> Listing:
        rfd = self.as_caller.reopen(call.who, fd, os.O_RDONLY | os.O_DIRECTORY, dir_st, call.options.read_only,
                                    call.held)
        dirkey = (dir_st.st_dev, dir_st.st_ino)
        key = (dirkey, call.fsid, call.who, cookie, dircount, room, plus)
        stamp = (dir_st.st_mtime_ns, dir_st.st_ctime_ns, dir_st.st_size, dir_st.st_nlink)
        chunk = self.listings.get(key, stamp)
        body = self._served(call, fd, chunk, room) if chunk is not None else None
        if body is None:
            fill = self.listings.begin(dirkey, fd)
            try:
                chunk = self._read(call, fd, rfd, dir_st, cookie, dircount, room, plus, fill)
            except BaseException:
                if fill is not None:
                    self.listings.abandon(fill)
                raise
            if fill is not None:
                self.listings.put(fill, key, stamp, chunk)
            body = self._served(call, fd, chunk, room)
        return Listing(body, chunk.eof)

    def _read(self, call, fd: int, rfd: int, dir_st: os.stat_result, cookie: int, dircount: int, room: int,
              plus: bool, fill) -> Chunk:
        """The entries of one reply from getdents (and, for READDIRPLUS, an lstat of each), as a
        :class:`Chunk`: runs of encoded entries, and the entries whose attributes every reply takes afresh."""
        at_root = self.table.is_root(call.export, dir_st)
        size = names = kept = 0
        segments: list = []
        run: list[bytes] = []
        members = fill.members if fill is not None else []
        eof = True
        pack_head, pack_cookie = _ENTRY_HEAD.pack, _COOKIE.pack
        lstat = rawstat.Buffer().lstat if plus and rawstat.SUPPORTED else None
        parts = self.entry_parts.setdefault(call.fsid, {}) if plus else None
        with self.as_caller.run_as(call.who):
            for fileid, name, next_cookie in dirents.entries(rfd, cookie):
                n = len(name)
                if name == b".." and at_root:
                    fileid = dir_st.st_ino
                entry = pack_head(1, fileid, n) + name + _PAD[n & 3] + pack_cookie(next_cookie)
                names += 20 + n + (-n & 3)
                steady = True
                if plus:
                    # Attributes and handle, when they can be had; "." and the root's ".." are the directory.
                    if name == b"." or name == b"..":
                        steady = False
                        if at_root:
                            name = b"."
                    raw = lstat(fd, name) if lstat is not None else None
                    got = parts.get(raw) if raw is not None else None
                    if got is None:
                        got = self._entry_part(call, fd, name, raw, parts)
                    part, steady = got[0], steady and got[1]
                    if size + len(entry) + len(part) > room or names > dircount:
                        eof = False
                        break
                    size += len(entry) + len(part)
                    if not steady:
                        if run:
                            segments.append(b"".join(run))
                            run = []
                        segments.append((entry, name))
                        continue
                    entry += part
                elif size + len(entry) > room or names > dircount:
                    eof = False
                    break
                else:
                    size += len(entry)
                run.append(entry)
                kept += len(entry)
                members.append(fileid)
        if run:
            segments.append(b"".join(run))
        if not segments and not eof:
            raise NFSError(Stat.TOOSMALL)
        return Chunk(segments, kept, eof)

    def _served(self, call, fd: int, chunk: Chunk, room: int) -> Optional[list[bytes]]:
        """The entries of ``chunk``, with fresh attributes for those it does not keep; None if these
        have grown past ``room`` (an entry whose lstat failed before now has attributes)."""
        if len(chunk.segments) == 1 and chunk.segments[0].__class__ is bytes:
            return chunk.segments
        body = []
        size = chunk.kept
        lstat = rawstat.Buffer().lstat if rawstat.SUPPORTED else None
        parts = self.entry_parts.setdefault(call.fsid, {})
        with self.as_caller.run_as(call.who):
            for segment in chunk.segments:
                if segment.__class__ is bytes:
                    body.append(segment)
                    continue
                entry, name = segment
                raw = lstat(fd, name) if lstat is not None else None
                got = parts.get(raw) if raw is not None else None
                if got is None:
                    got = self._entry_part(call, fd, name, raw, parts)
                body.append(entry + got[0])
                size += len(body[-1])
        return body if size <= room else None

    def _entry_part(self, call, dirfd: int, name: bytes, raw: Optional[bytes],
                    parts: dict[bytes, tuple[bytes, bool]]) -> tuple[bytes, bool]:
        """A READDIRPLUS entry's name_attributes and name_handle (RFC 1813 section 3.3.17), not yet cached:
        from the raw stat ``raw`` (None: the stat failed, or rawstat does not know this machine); and whether
        they change only with an event in this directory (a file or device with one link: listings.py)."""
        try:
            if raw is None:
                if rawstat.SUPPORTED:
                    return _NO_ATTR + _NO_ATTR, False
                st, fh = self.table.stat_and_handle(call.export, dirfd, name)
                return _TRUE + fattr3(st, call.fsid) + _TRUE + _U32.pack(len(fh)) + fh + _PAD[len(fh) & 3], False
            st = rawstat.Stat(raw)
            fh = self.table.known_handle(call.export, dirfd, name, st.dev, st.ino, st.ctime_total_ns)
        except OSError:
            return _NO_ATTR + _NO_ATTR, False
        part = _TRUE + st.fattr3(call.fsid) + _TRUE + _U32.pack(len(fh)) + fh + _PAD[len(fh) & 3]
        kind = st.mode & 0o170000
        steady = st.nlink == 1 and kind != stat.S_IFDIR and kind != stat.S_IFLNK
        if len(parts) >= ENTRY_CACHE:
            parts.clear()
        parts[raw] = (part, steady)
        return part, steady

    def forget(self, fsid: int) -> None:
        """An object of export ``fsid`` was removed: its inode number may come back with another object, so
        no encoded entry of that export may be served again."""
        self.entry_parts.pop(fsid, None)

    def touched(self, call) -> None:
        """Tell the listing cache that the call changed (or read) the objects it watched."""
        if not self.listings.idle():
            self.listings.touched([(st.st_dev, st.st_ino) for _, st in call.watched])

    def close(self) -> None:
        self.listings.close()
