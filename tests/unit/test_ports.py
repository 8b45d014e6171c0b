"""Ports without root (issue 20, point 2): the probe, the plain user's defaults, and the one line a port that
cannot be had gives.  The real processes are in tests/integration/test_unprivileged_ports.py."""

from __future__ import annotations

import errno

import pytest

from nfsstack import tap
from nfsstack.rpc import ports
from nfsstack.rpc.ports import has_net_bind_service, listen_failure, unprivileged_port_start

STATUS = "Name:\tpython3\nCapInh:\t0000000000000000\nCapPrm:\t{caps}\nCapEff:\t{caps}\nCapBnd:\t000001ffffffffff\n"


@pytest.mark.parametrize("caps, expected", [
    ("0000000000000000", False),
    ("00000000000000c4", False),      # CAP_DAC_READ_SEARCH, CAP_SETGID, CAP_SETUID
    ("0000000000000400", True),       # CAP_NET_BIND_SERVICE only
    ("000001fffeffffff", True),       # root's
    ("000001fffefffbff", False),      # root's without CAP_NET_BIND_SERVICE
])
def test_the_capability_is_read_from_the_effective_set(tmp_path, caps, expected):
    status = tmp_path / "status"
    status.write_text(STATUS.format(caps=caps))
    assert has_net_bind_service(str(status)) is expected


def test_without_proc_root_is_assumed_able(tmp_path, monkeypatch):
    monkeypatch.setattr(ports.os, "geteuid", lambda: 0)
    assert has_net_bind_service(str(tmp_path / "missing"))
    monkeypatch.setattr(ports.os, "geteuid", lambda: 1000)
    assert not has_net_bind_service(str(tmp_path / "missing"))


def test_the_sysctl_moves_the_privileged_range(tmp_path, monkeypatch):
    sysctl = tmp_path / "ip_unprivileged_port_start"
    sysctl.write_text("0\n")
    assert unprivileged_port_start(str(sysctl)) == 0
    assert unprivileged_port_start(str(tmp_path / "missing")) == 1024
    monkeypatch.setattr(ports, "has_net_bind_service", lambda: False)
    monkeypatch.setattr(ports, "unprivileged_port_start", lambda: 1024)
    assert not ports.may_bind(111) and ports.may_bind(2049) and ports.may_bind(0)
    monkeypatch.setattr(ports, "unprivileged_port_start", lambda: 0)  # a rootless container's
    assert ports.may_bind(111)


def test_a_privileged_port_says_what_to_do_and_never_blames_rpcbind(monkeypatch):
    monkeypatch.setattr(ports, "unprivileged_port_start", lambda: 1024)
    error = PermissionError(errno.EACCES, "Permission denied")
    assert listen_failure("nfsd", 1023, error, "--nfs-port", 12049, "is knfsd running?") == (
        "nfsd: port 1023 needs root or CAP_NET_BIND_SERVICE; leave --nfs-port unset for 12049, "
        "or choose one above 1023")
    assert listen_failure("x", 111, error) == "x: port 111 needs root or CAP_NET_BIND_SERVICE; choose one above 1023"


def test_a_port_in_use_says_who_may_hold_it():
    error = OSError(errno.EADDRINUSE, "Address already in use")
    assert listen_failure("nfsd", 2049, error, "--nfs-port", 12049, "is knfsd running?") == (
        "nfsd: port 2049 is in use (is knfsd running?)")
    assert listen_failure("mountd", 12050, error) == (
        "mountd: port 12050 is in use (by another program: another nfsstack?)")
    assert listen_failure("mountd", 12050, OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")) == (
        "mountd: cannot listen on port 12050: Cannot assign requested address")


def _parsed(tmp_path, monkeypatch, *argv, may_bind=False) -> tap.Options:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tap, "may_bind", lambda port: may_bind)
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


def _ports(options) -> dict:
    return {name: options[name] for name in tap.UNPRIVILEGED_PORTS}


def test_a_plain_user_gets_the_documented_ports(tmp_path, monkeypatch):
    options = _parsed(tmp_path, monkeypatch)
    assert _ports(options) == {"portmap-port": 10111, "nfs-port": 12049, "mountd-port": 12050, "nlm-port": 12051,
                               "statd-port": 12052}
    assert options.unprivileged_ports == _ports(options)


def test_root_keeps_the_usual_ports(tmp_path, monkeypatch):
    options = _parsed(tmp_path, monkeypatch, may_bind=True)
    assert _ports(options) == {"portmap-port": 111, "nfs-port": 2049, "mountd-port": 0, "nlm-port": 0,
                               "statd-port": 0}
    assert options.unprivileged_ports == {}


def test_options_given_win_over_the_plain_users_ports(tmp_path, monkeypatch):
    config = tmp_path / "nfsstack.conf"
    config.write_text("[mountd]\nmountd-port = 20048\n")
    options = _parsed(tmp_path, monkeypatch, "--nfs-port", "2049", "--config", str(config))
    assert _ports(options) == {"portmap-port": 10111, "nfs-port": 2049, "mountd-port": 20048, "nlm-port": 12051,
                               "statd-port": 12052}


def test_with_system_rpcbind_the_portmapper_stays_where_rpcbind_is(tmp_path, monkeypatch):
    options = _parsed(tmp_path, monkeypatch, "--system-rpcbind")
    assert options["portmap-port"] == 111 and options["nfs-port"] == 12049
