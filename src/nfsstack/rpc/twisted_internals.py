"""Every use of Twisted's undocumented transport state, and the raw-socket fast paths built on it, in one place.

The RPC server (:mod:`nfsstack.rpc.server`) answers most calls with one
``sendmsg`` straight to the socket instead of Twisted's ``write``, which only
queues and sends on the next reactor turn.  It reads the rest of a large record
with ``recv_into`` into a buffer of the record's size instead of joining
Twisted's 64 KiB chunks.  Both go around the transport, so both depend on how
Twisted's TCP transport is built.  That knowledge lives here, and only here.

Written against Twisted 26.10.0.  From :class:`twisted.internet.tcp.Connection`
(mostly :class:`twisted.internet.abstract.FileDescriptor`) it relies on:

``socket``
    the connected socket (set by ``Connection.__init__``).
``dataBuffer``, ``_tempDataBuffer``
    Twisted's write buffers.  ``write`` appends to ``_tempDataBuffer``, and
    ``doWrite`` moves that into ``dataBuffer`` and resets it to ``b""`` once
    all of it has gone.  When both are empty, nothing is waiting to be sent,
    so bytes written straight to the socket cannot overtake any.
``connected``, ``disconnecting``
    the transport's state: a closing transport must get no more bytes.
``bufferSize``
    how much ``doRead`` asks the socket for on each read.

From :class:`twisted.internet.udp.Port` it relies on ``maxPacketSize``, how
much ``doRead`` takes of one datagram (8 KiB by default).

:data:`RELIES_ON` lists these names, and ``tests/unit/test_twisted_internals.py``
checks them on a real loopback connection.  If a Twisted upgrade removes one
or stops using it, that test fails and names the attribute and the version.
The adapter assumes plain TCP (or AF_UNIX) with no TLS started on it, as the
RPC server's transports are.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet import tcp

#: The Twisted release this module was written against (and its test checked).
WRITTEN_AGAINST = "26.10.0"

#: The undocumented names this module uses, by the Twisted class they belong to, and what each is for.
RELIES_ON = {
    "twisted.internet.tcp.Connection": {
        "socket": "the connected socket: sendmsg, send and recv_into go straight to it",
        "dataBuffer": "Twisted's write buffer: bytes waiting to be sent (b'' once all have gone)",
        "_tempDataBuffer": "Twisted's list of writes not yet moved into dataBuffer",
        "connected": "false once the connection is lost",
        "disconnecting": "true once loseConnection was asked",
        "bufferSize": "how many bytes each of Twisted's reads asks the socket for",
    },
    "twisted.internet.udp.Port": {
        "maxPacketSize": "how many bytes of a datagram Twisted's read takes (the rest is lost)",
    },
}

#: At most this many parts go in one ``sendmsg`` (Linux takes up to IOV_MAX = 1024 buffers); more are joined.
MAX_PARTS = 512


class FastTCP:
    """The fast paths of one TCP (or AF_UNIX stream) connection, straight to its socket.

    Made once per connection by :func:`adapt`.  :attr:`recv_into` is the
    socket's own bound method, and :meth:`send_now` binds ``sendmsg`` and
    ``send`` once, so a call costs one Python frame.
    """

    __slots__ = ("transport", "fileno", "recv_into", "_sendmsg", "_send")

    def __init__(self, transport: tcp.Connection) -> None:
        self.transport = transport
        sock = transport.socket
        #: The socket's descriptor (for ``sendfile``).
        self.fileno: int = sock.fileno()
        #: ``socket.recv_into``: reads into a buffer.  Raises BlockingIOError when nothing is waiting, and
        #: returns 0 at the end of the stream; Twisted's next read then sees the end or the error too.
        self.recv_into = sock.recv_into
        self._sendmsg = sock.sendmsg
        self._send = sock.send

    def idle(self) -> bool:
        """True when Twisted has nothing queued to send and the connection is open, not closing."""
        t = self.transport
        return not (t.dataBuffer or t._tempDataBuffer or not t.connected or t.disconnecting)

    def send_now(self, parts: list) -> Optional[int]:
        """Send as much of ``parts`` (bytes or buffers) as the socket takes now.  Returns how many bytes it
        took.  That is 0 if it took none or the send failed; the caller queues the rest on the transport,
        whose own write then meets any error.  Returns None, having sent nothing, when the connection is not
        :meth:`idle` (the caller queues it all)."""
        t = self.transport
        if t.dataBuffer or t._tempDataBuffer or not t.connected or t.disconnecting:
            return None
        try:
            return self._sendmsg(parts) if len(parts) <= MAX_PARTS else self._send(b"".join(parts))
        except OSError:
            return 0


def adapt(transport, read_size: Optional[int] = None) -> Optional[FastTCP]:
    """The fast paths of ``transport``, or None when it is not a plain Twisted stream connection
    (a :class:`twisted.internet.tcp.Connection`: TCP, or AF_UNIX, whose transport derives from it).

    ``read_size``, if given, becomes the size of each of Twisted's own reads on the connection.
    """
    if not isinstance(transport, tcp.Connection):
        return None
    if read_size is not None:
        transport.bufferSize = read_size
    return FastTCP(transport)


def is_open(transport) -> bool:
    """True while a Twisted transport (any FileDescriptor: TCP, AF_UNIX) is connected and not closing."""
    return bool(transport.connected and not transport.disconnecting)


def set_datagram_size(port, size: int) -> None:
    """Make a Twisted UDP port (:class:`twisted.internet.udp.Port`) take datagrams of up to ``size`` bytes
    whole (it takes 8 KiB by default, and the rest of a larger one is lost)."""
    port.maxPacketSize = size
