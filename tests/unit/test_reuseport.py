"""The socket groups of ``--workers``: steered by the client's address, whatever its port; a port in use refused."""

import errno
import select
import socket

import pytest

from nfsstack.rpc.reuseport import bind_groups, steering_program


def arrival(group, source: str) -> int:
    """The place in ``group`` where a connection or datagram from ``source`` (a new port each time) arrives."""
    if group.kind == socket.SOCK_STREAM:
        client = socket.create_connection((group.host, group.sockets[0].getsockname()[1]), timeout=2,
                                          source_address=(source, 0))
    else:
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind((source, 0))
        client.sendto(b"x", (group.host, group.sockets[0].getsockname()[1]))
    with client:
        ready, _, _ = select.select(group.sockets, [], [], 2)
        assert len(ready) == 1
        if group.kind == socket.SOCK_STREAM:
            ready[0].accept()[0].close()
        else:
            ready[0].recvfrom(16)
        return group.sockets.index(ready[0])


def test_each_client_address_reaches_one_socket_of_the_group_whatever_its_port():
    port, groups = bind_groups(["127.0.0.1"], 0, 2)
    try:
        assert [g.netid for g in groups] == ["tcp", "udp"] and all(len(g.sockets) == 2 for g in groups)
        for group in groups:
            one = {arrival(group, "127.0.0.1") for _ in range(4)}
            two = {arrival(group, "127.0.0.2") for _ in range(4)}
            assert len(one) == 1 and len(two) == 1 and one != two, (group.netid, one, two)
    finally:
        for group in groups:
            group.stopListening()


def test_a_port_in_use_is_refused_not_shared():
    port, groups = bind_groups(["127.0.0.1"], 0, 2)
    try:
        with pytest.raises(OSError) as e:
            bind_groups(["127.0.0.1"], port, 2)
        assert e.value.errno == errno.EADDRINUSE
    finally:
        for group in groups:
            group.stopListening()


def test_the_program_takes_the_source_address_modulo_the_group():
    ipv4 = steering_program(socket.AF_INET, 3)
    assert ipv4[0][3] == (-0x100000 + 12) & 0xFFFFFFFF and ipv4[-2][3] == 3 and len(ipv4) == 3
    ipv6 = steering_program(socket.AF_INET6, 2)
    assert [insn[3] for insn in ipv6 if insn[0] == 0x20] == [(-0x100000 + o) & 0xFFFFFFFF for o in (8, 12, 16, 20)]
