"""Bytes of a file as a part of a reply, sent by the kernel (sendfile(2)) without passing through Python.

A large READ reply (RFC 1813 section 3.3.6) is mostly file data.  Read into a
buffer and then written to the socket, it is copied twice in the reactor
thread; as a :class:`FileSlice` among the reply's parts, the TCP transport
(:class:`nfsstack.rpc.server.RPCStreamProtocol`) hands the range to
``sendfile``, which gives the socket the page cache's own pages.  Whatever
cannot go that way (a full socket buffer, a transport with queued data, UDP)
is read at that moment with :meth:`FileSlice.read`.
"""

from __future__ import annotations

import os


class ShortFile(OSError):
    """The file ended before the slice did: it was truncated after the reply promised that many bytes."""


class FileSlice:
    """``length`` bytes of the open file ``fd`` from ``offset``; the slice owns ``fd`` and closes it."""

    __slots__ = ("fd", "offset", "length")

    def __init__(self, fd: int, offset: int, length: int) -> None:
        self.fd, self.offset, self.length = fd, offset, length

    def __len__(self) -> int:
        return self.length

    def send(self, sock_fd: int) -> bool:
        """Send what the socket takes now; True once all of it has gone.  :class:`ShortFile` if the file ends
        first; BlockingIOError and other OSErrors pass."""
        for _ in range(64):
            if not self.length:
                return True
            n = os.sendfile(sock_fd, self.fd, self.offset, self.length)
            if n == 0:
                raise ShortFile(0, "file truncated while being sent")
            self.offset += n
            self.length -= n
        return not self.length

    def read(self) -> bytes:
        """The rest of the slice as bytes (and the descriptor closed); :class:`ShortFile` if the file ends first."""
        try:
            data = os.pread(self.fd, self.length, self.offset) if self.length else b""
        finally:
            self.close()
        if len(data) < self.length:
            raise ShortFile(0, "file truncated while being sent")
        return data

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()
