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
    "--keepalive-key", "--node-name", "--log-level",
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


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (file handles)")
def test_state_files_open_to_others_are_made_private_and_the_mount_list_follows_the_exports(tmp_path):
    """A state directory or handle key others can read is made private at start, with a warning (whoever reads
    the key can forge a handle to any file); the mount list forgets directories no export holds, at start and
    after a reload."""
    import signal
    import time

    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o755)
    (state / "handle.key").write_bytes(os.urandom(32))
    (state / "handle.key").chmod(0o644)
    for name in ("kept", "dropped", "old"):
        (tmp_path / name).mkdir()
    (state / "rmtab").write_text(
        f'{{"host": "10.0.0.1", "dir": "{tmp_path / "kept"}"}}\n{{"host": "10.0.0.2", "dir": "{tmp_path / "old"}"}}\n'
        f'{{"host": "10.0.0.3", "dir": "{tmp_path / "dropped"}"}}\n')
    exports = tmp_path / "exports"
    exports.write_text(f"{tmp_path / 'kept'} 127.0.0.1(rw)\n{tmp_path / 'dropped'} 127.0.0.1(rw)\n")
    port = free_port()
    stack = Stack("--bind", "127.0.0.1", "--nfs-port", "0", "--status-port", "0", "--portmap-port", str(port),
                  "--exports", str(exports), "--state-dir", str(state), workdir=str(tmp_path))
    stack.start(port, timeout=30)
    try:
        assert state.stat().st_mode & 0o7777 == 0o700 and (state / "handle.key").stat().st_mode & 0o7777 == 0o600
        rmtab = (state / "rmtab").read_text()
        assert "10.0.0.1" in rmtab and "10.0.0.3" in rmtab and "10.0.0.2" not in rmtab, rmtab
        exports.write_text(f"{tmp_path / 'kept'} 127.0.0.1(rw)\n")
        stack.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "10.0.0.3" in (state / "rmtab").read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        rmtab = (state / "rmtab").read_text()
        assert "10.0.0.1" in rmtab and "10.0.0.3" not in rmtab, rmtab
    finally:
        stack.stop()
    log = stack.log_text()
    assert "was open to other users (mode 0755)" in log and "was open to other users (mode 0644)" in log, log
    assert f"10.0.0.2:{tmp_path / 'old'} forgotten" in log and f"10.0.0.3:{tmp_path / 'dropped'} forgotten" in log, log
