"""The twistd plugin: options, start-up and shutdown."""

import os
import socket
import subprocess

import pytest

from tests.support import Stack, free_port, server_env, twistd

REQUIRED_OPTIONS = [
    "--exports", "--state-dir", "--bind", "--portmap-port", "--nfs-port", "--mountd-port", "--nlm-port",
    "--statd-port", "--status-port", "--system-rpcbind", "--remote-calls", "--max-record", "--idle-timeout",
    "--grace-time", "--status-bind", "--status-allow", "--peers", "--keepalive-interval", "--keepalive-misses",
    "--keepalive-key", "--node-name",
]


def test_help_documents_every_option(tmp_path):
    out = subprocess.run([twistd(), "-n", "nfsstack", "--help"], capture_output=True, text=True, env=server_env(),
                         cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    for option in REQUIRED_OPTIONS:
        assert option in out.stdout, option
    text = " ".join(out.stdout.split())  # the help wraps lines where it likes
    assert "[default: 111]" in text and "[default: 2049]" in text and "[default: 1110]" in text


def test_bad_option_value_is_a_usage_error(tmp_path):
    out = subprocess.run([twistd(), "-n", "nfsstack", "--portmap-port", "70000"], capture_output=True, text=True,
                         env=server_env(), cwd=tmp_path, timeout=60)
    assert out.returncode != 0 and "65535" in (out.stdout + out.stderr)


def test_port_taken_exits_with_a_hint():
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        stack = Stack("--bind", "127.0.0.1", "--nfs-port", "0", "--status-port", "0", "--portmap-port", str(port))
        with pytest.raises(RuntimeError) as e:
            stack.start(port, timeout=20)
        assert "--system-rpcbind" in str(e.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (file handles)")
def test_corrupt_state_files_are_reported_and_rebuilt(tmp_path):
    """Garbage in every state file: the stack starts, says what it rebuilt, and serves; no crash loop."""
    state = tmp_path / "state"
    (state / "nsm").mkdir(parents=True)
    (state / "nsm" / "state").write_bytes(b"\xff\xfe not a number")
    (state / "nsm" / "monitors.json").write_text("[{broken")
    (state / "nsm" / "notify.json").write_text('[{"mon_name": 5}]')
    (state / "rmtab").write_text("not json\n")
    (state / "handle.key").write_bytes(b"short")
    (tmp_path / "export").mkdir()
    (tmp_path / "exports").write_text(f"{tmp_path / 'export'} 127.0.0.1(rw,insecure)\n")
    port = free_port()
    stack = Stack("--bind", "127.0.0.1", "--nfs-port", "0", "--status-port", "0", "--portmap-port", str(port),
                  "--exports", str(tmp_path / "exports"), "--state-dir", str(state), workdir=str(tmp_path))
    stack.start(port, timeout=30)
    try:
        from tests.support import NfsClient

        c = NfsClient(str(tmp_path / "export"), port)
        assert c("GETATTR", c.root).ok
        c.close()
    finally:
        stack.stop()
    log = stack.log_text()
    assert "Traceback" not in log, log
    assert "corrupt" in log and "not a mount entry" in log, log
    assert int((state / "nsm" / "state").read_text()) % 2 == 1
    assert len((state / "handle.key").read_bytes()) >= 32


@pytest.mark.parametrize("kind", ["symlink to /", "file", "another user's directory"])
def test_a_default_export_that_is_not_our_own_directory_is_refused(tmp_path, kind):
    """Without --exports the stack exports ./export: a symlink there (a link to / exported the whole root
    filesystem rw), a file, or a directory of another user is refused at start with one clear message."""
    export = tmp_path / "export"
    if kind == "symlink to /":
        export.symlink_to("/")
    elif kind == "file":
        export.write_text("not a directory\n")
    else:
        export.mkdir()
        os.chown(export, 12345, 12345)
    port = free_port()
    out = subprocess.run([twistd(), "-n", "--pidfile=", "nfsstack", "--bind", "127.0.0.1", "--portmap-port", str(port),
                          "--nfs-port", "0", "--status-port", "0"], capture_output=True, text=True, env=server_env(),
                         cwd=tmp_path, timeout=60)
    said = out.stdout + out.stderr
    assert out.returncode != 0, said
    assert "not exported" in said and "--exports FILE" in said and "Traceback" not in said, said
    assert {"symlink to /": "is a symlink (to /)", "file": "is not a directory",
            "another user's directory": "belongs to uid 12345"}[kind] in said, said


def test_the_default_export_admits_this_machine_only(tmp_path, monkeypatch):
    """The default export is rw for loopback clients (127.0.0.0/8 and ::1) and for nobody else."""
    from nfsstack.service import default_exports

    monkeypatch.chdir(tmp_path)
    exports = default_exports()
    (export,) = list(exports)
    assert export.path == str(tmp_path / "export") and (tmp_path / "export").is_dir()
    assert (tmp_path / "export").stat().st_mode & 0o7777 == 0o1777
    no_name = lambda address: None  # noqa: E731
    for address in ("127.0.0.1", "127.3.4.5", "::1"):
        options = export.options_for(address, no_name)
        assert options is not None and not options.read_only and options.root_squash, address
    for address in ("10.0.0.5", "192.168.1.20", "2001:db8::1", "::ffff:10.0.0.5"):
        assert export.options_for(address, no_name) is None, address
