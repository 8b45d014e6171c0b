"""File data sent by sendfile(2) (rpc/fileslice.py) through the real TCP transport, in one reactor."""

import os

import pytest
import pytest_twisted
from twisted.internet import defer, error, reactor

from nfsstack.rpc.client import connect_tcp
from nfsstack.rpc.fileslice import FileSlice
from nfsstack.rpc.program import Procedure, Program, null_procedure, raw_parts
from nfsstack.rpc.service import RPCService
from nfsstack.xdr import Packer, Unpacker


def _args(offset, length):
    p = Packer()
    p.pack_uhyper(offset)
    p.pack_uint(length)
    return p.getvalue()


def slice_program(path):
    """Proc 1 (offset, length) answers a header word and ``length`` bytes of ``path`` at ``offset``, by sendfile."""

    def send(ctx, args):
        offset, length = args
        return [b"HEAD", FileSlice(os.open(path, os.O_RDONLY), offset, length)]

    decode = lambda u: (u.unpack_uhyper(), u.unpack_uint())  # noqa: E731
    return Program(310001, "slices", {1: {0: null_procedure(), 1: Procedure("SLICE", send, decode, raw_parts)}})


@pytest.fixture
def served(tmp_path):
    data = os.urandom(12 << 20)
    (tmp_path / "f").write_bytes(data)
    service = RPCService("slices", [slice_program(str(tmp_path / "f"))], 0, interface="127.0.0.1", reactor=reactor)
    service.startService()
    yield service, data
    service.stopService()


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


@pytest_twisted.inlineCallbacks
def test_many_large_slices_in_flight_arrive_whole_and_in_order_of_their_calls(served):
    """More data in flight than the socket buffer holds: sendfile stops part-way, the rest is read and queued,
    and every reply still carries exactly its bytes; no descriptor is left open."""
    service, data = served
    before = _open_fds()
    client = yield connect_tcp(reactor, "127.0.0.1", service.port)
    try:
        ranges = [((i * 777_777) % (len(data) - (1 << 20)), (1 << 20) - i * 1000) for i in range(24)]
        bodies = yield defer.gatherResults([client.call(310001, 1, 1, _args(o, n), timeout=30) for o, n in ranges])
        for (o, n), body in zip(ranges, bodies):
            assert body[:4] == b"HEAD" and body[4:] == data[o:o + n]
    finally:
        yield client.close()
    assert _open_fds() <= before + 1  # the client's socket may linger a moment


@pytest_twisted.inlineCallbacks
def test_a_file_shorter_than_its_slice_closes_the_connection_and_the_server_goes_on(served):
    """The reply promised bytes the file no longer has (truncated meanwhile): the record cannot be finished, so
    the connection is dropped, never padded; the next connection is served."""
    service, data = served
    client = yield connect_tcp(reactor, "127.0.0.1", service.port)
    # the connection lost: not a reply (the record padded), not a timeout (the connection left hanging)
    with pytest.raises(error.ConnectionLost):
        yield client.call(310001, 1, 1, _args(len(data) - 100, 4096), timeout=10)
    yield client.close()
    client = yield connect_tcp(reactor, "127.0.0.1", service.port)
    try:
        body = yield client.call(310001, 1, 1, _args(5, 10), timeout=10)
        assert body == b"HEAD" + data[5:15]
    finally:
        yield client.close()
