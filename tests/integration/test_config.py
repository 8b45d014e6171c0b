"""``--config FILE`` (nfs.conf-style INI), the shipped etc/nfsstack.conf, and the systemd unit etc/nfsstack.service."""

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from twisted.python import reflect, usage

from nfsstack import config
from nfsstack.tap import Options
from tests.support import REPO, Stack, free_port, server_env, twistd

EXAMPLE = REPO / "etc" / "nfsstack.conf"
UNIT = REPO / "etc" / "nfsstack.service"


def _all_options() -> tuple[dict, dict]:
    """The class's own lists, read independently of the loader: flags (name -> 0) and parameters."""
    flags: list = []
    reflect.accumulateClassList(Options, "optFlags", flags)
    parameters: list = []
    reflect.accumulateClassList(Options, "optParameters", parameters)
    return {f[0]: f for f in flags}, {p[0]: p for p in parameters}


def _parse(*argv: str) -> Options:
    o = Options()
    o.parseOptions(list(argv))
    return o


@pytest.fixture
def exports(tmp_path) -> Path:
    (tmp_path / "export").mkdir()
    path = tmp_path / "exports"
    path.write_text(f"{tmp_path / 'export'} 127.0.0.1(rw,insecure)\n")
    return path


def test_every_option_has_a_key_the_loader_accepts(tmp_path):
    """Each flag and parameter of Options, written alone in its section, is read and sets that option."""
    flags, parameters = _all_options()
    assert flags and len(parameters) > 1, "no options found"
    for name in list(flags) + [p for p in parameters if p != "config"]:
        if name in flags:
            value, expected = "yes", 1
        else:
            _, _, default, _, coerce = (list(parameters[name]) + [None] * 5)[:5]
            coerce = coerce or str
            if isinstance(default, bool) or default is None or isinstance(default, str):
                value = "some-value" if default in (None, "") else f"{default}x"
            else:
                value = str(default + 1)  # a number other than the default, so that setting it shows
            try:
                expected = coerce(value)
            except ValueError:  # a string its coercer checks (a level name): its default, written out
                value, expected = str(default), coerce(str(default))
        path = tmp_path / f"{name}.conf"
        path.write_text(f"[{config.section_of(name)}]\n{name} = {value}\n")
        o = Options()
        applied = config.apply_config(o, str(path))
        assert name in applied, name
        assert o[name] == expected, (name, o[name], expected)


def test_the_example_file_loads_names_every_key_and_its_values_take_effect(exports):
    text = EXAMPLE.read_text()
    # Every option has a line in the example (set, or commented out with its default).
    documented = set(re.findall(r"^#? ?([a-z][a-z-]*) =", text, re.MULTILINE))
    flags, parameters = _all_options()
    assert documented == (set(flags) | set(parameters)) - {"config"}
    o = _parse("--config", str(EXAMPLE), "--exports", str(exports))
    assert o["state-dir"] == "/var/lib/nfsstack"
    assert (o["mountd-port"], o["nlm-port"], o["statd-port"]) == (20048, 4045, 32765)
    assert o["nfs-port"] == 2049 and o["threads"] == 64  # commented out: the defaults
    assert o["exports"] == str(exports)  # the file says /etc/exports: the command line wins
    # The commented-out defaults, uncommented, are valid too: the example's lines are real keys and values.
    uncommented = Path(str(exports) + ".conf")
    uncommented.write_text(re.sub(r"^# ([a-z][a-z-]*) =", r"\1 =", text, flags=re.MULTILINE))
    everything = config.apply_config(Options(), str(uncommented))
    assert set(everything) == documented


def test_the_command_line_wins_even_with_the_default_value(tmp_path, exports):
    conf = tmp_path / "c.conf"
    conf.write_text(f"[nfsstack]\nexports = {exports}\nidle-timeout = 10\n"
                    "[nfsd]\nnfs-port = 3049\nthreads = 8\n[portmap]\nremote-calls = yes\n"
                    "[keepalive]\nnode-name = from-file\n")
    # 2049 is also the default: what counts is that the command line gave it, not that it differs.
    o = _parse("--config", str(conf), "--nfs-port", "2049", "--node-name=from-command-line")
    assert o["nfs-port"] == 2049 and o["node-name"] == "from-command-line"
    assert o["threads"] == 8 and o["idle-timeout"] == 10.0 and o["remote-calls"] == 1
    # The order does not matter: --config after the option.
    o = _parse("--threads", "4", "--config", str(conf))
    assert o["threads"] == 4 and o["nfs-port"] == 3049
    # A file's flag set to "no" leaves the flag off; the command line's flag is on whatever the file says.
    conf.write_text(f"[nfsstack]\nexports = {exports}\n[portmap]\nremote-calls = no\nsystem-rpcbind = off\n")
    o = _parse("--config", str(conf), "--system-rpcbind")
    assert o["remote-calls"] == 0 and o["system-rpcbind"] == 1


def test_mistakes_are_errors_naming_file_and_line(tmp_path, exports):
    conf = tmp_path / "bad.conf"
    conf.write_text("\n".join([
        "# comment",                      # 1
        "[nfsstack]",                     # 2
        f"exports = {exports}",           # 3
        "[nfsd]",                         # 4
        "nfs-prot = 2049",                # 5  a typo
        "threads = many",                 # 6  the coercer refuses
        "mountd-port = 20048",            # 7  belongs in [mountd]
        "[nfs]",                          # 8  unknown section
        "threads = 8",                    # 9
        "[portmap]",                      # 10
        "system-rpcbind = perhaps",       # 11 not a flag value
        "portmap-port = 70000",           # 12 the port coercer refuses
        "",
    ]))
    with pytest.raises(usage.UsageError) as e:
        _parse("--config", str(conf))
    message = str(e.value)
    # Unknown names first (values are checked once every name is known).
    assert f"{conf}:5: unknown key 'nfs-prot' in [nfsd] (did you mean nfs-port?)" in message, message
    assert f"{conf}:7: mountd-port belongs in [mountd], not [nfsd]" in message, message
    assert f"{conf}:8: unknown section [nfs]" in message, message
    fixed = ("nfs-prot", "mountd", "[nfs]", "threads = 8")  # the names fixed: now the values are checked
    conf.write_text("\n".join(line for line in conf.read_text().splitlines() if not line.startswith(fixed)))
    with pytest.raises(usage.UsageError) as e:
        _parse("--config", str(conf), "--portmap-port", "111")  # a bad value is an error even when overridden
    message = str(e.value)
    assert f"{conf}:5: threads:" in message and "many" in message, message
    assert f"{conf}:7: system-rpcbind is a flag: yes or no, not 'perhaps'" in message, message
    assert f"{conf}:8: portmap-port: port 70000 is not in 0..65535" in message, message
    # A key given twice, a missing file, and DEFAULT (configparser's section that would apply everywhere).
    conf.write_text("[nfsd]\nthreads = 1\nthreads = 2\n")
    with pytest.raises(usage.UsageError, match=r"bad.conf:3: threads is set twice in \[nfsd\]"):
        _parse("--config", str(conf))
    with pytest.raises(usage.UsageError, match="cannot read"):
        _parse("--config", str(tmp_path / "missing.conf"))
    conf.write_text("[DEFAULT]\nthreads = 1\n")
    with pytest.raises(usage.UsageError, match=r"bad.conf:1: unknown section \[DEFAULT\]"):
        _parse("--config", str(conf))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (file handles)")
def test_twistd_serves_where_the_file_says_and_the_command_line_overrides(tmp_path, exports):
    """Through the plugin: the file's portmapper port, bind address and state dir are used; the command line's
    port wins over the file's."""
    file_port, command_line_port = free_port(), free_port()
    conf = tmp_path / "nfsstack.conf"
    conf.write_text(f"[nfsstack]\nexports = {exports}\nbind = 127.0.0.1\nstate-dir = {tmp_path / 'state'}\n"
                    f"[portmap]\nportmap-port = {file_port}\n[nfsd]\nnfs-port = 0\n[status]\nstatus-port = 0\n")
    stack = Stack("--config", str(conf), workdir=str(tmp_path)).start(file_port, timeout=30)
    stack.stop()
    assert (tmp_path / "state" / "handle.key").exists()
    stack = Stack("--config", str(conf), "--portmap-port", str(command_line_port), workdir=str(tmp_path))
    stack.start(command_line_port, timeout=30)
    try:
        assert not stack._answers(file_port)
    finally:
        stack.stop()
    conf.write_text("[nfsd]\nnfs-prot = 0\n")
    out = subprocess.run([twistd(), "-n", "nfsstack", "--config", str(conf)], capture_output=True, text=True,
                         env=server_env(), cwd=tmp_path, timeout=60)
    assert out.returncode != 0 and f"{conf}:2: unknown key 'nfs-prot'" in out.stdout + out.stderr


# -- etc/nfsstack.service ------------------------------------------------------------------------------------------

def _unit() -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            keys.setdefault(key.strip(), []).append(value.strip())
    return keys


def test_the_unit_starts_the_plugin_with_the_config_reloads_on_hup_and_keeps_the_capabilities_it_needs(exports):
    keys = _unit()
    start = shlex.split(keys["ExecStart"][0])
    assert Path(start[0]).name == "twistd" and start[1:] == ["-n", "--pidfile=", "--logfile=-", "nfsstack",
                                                              "--config", "/etc/nfsstack.conf"]
    # The plugin's options in ExecStart parse, with the shipped file in place of /etc/nfsstack.conf.
    o = _parse(*[str(EXAMPLE) if a == "/etc/nfsstack.conf" else a for a in start[5:]], "--exports", str(exports))
    assert o["state-dir"] == "/var/lib/" + keys["StateDirectory"][0]
    assert keys["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    capabilities = set(" ".join(keys["CapabilityBoundingSet"]).split())
    assert {"CAP_DAC_READ_SEARCH", "CAP_SETUID", "CAP_SETGID", "CAP_NET_BIND_SERVICE", "CAP_CHOWN", "CAP_FOWNER",
            "CAP_FSETID", "CAP_DAC_OVERRIDE", "CAP_MKNOD"} <= capabilities
    assert "CAP_SYS_ADMIN" not in capabilities
    assert keys["NoNewPrivileges"] == ["yes"] and keys["ProtectSystem"] == ["full"]
    # io_uring must stay: a system call filter could remove io_uring_setup/io_uring_enter (the stack would fall
    # back to a slower path); RestrictAddressFamilies without AF_INET/AF_INET6/AF_UNIX would stop it serving.
    assert "SystemCallFilter" not in keys
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= set(keys["RestrictAddressFamilies"][0].split())
    assert int(keys["LimitNOFILE"][0]) >= 65536


def _verify(unit: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_unit(tmp_path):
    """``systemd-analyze verify``: a clean exit and not one warning about the unit (an unknown or misspelled
    directive is only a warning: "Unknown key 'Foo' in section [Service], ignoring").

    ExecStart names /usr/local/bin/twistd (where a root ``pip install`` on Debian puts it), which this machine
    may not have: the copy verified points at this Python's twistd.
    """
    real = os.path.realpath(twistd())
    assert os.access(real, os.X_OK), real
    text = UNIT.read_text()
    start = re.search(r"^ExecStart=(\S+)", text, re.MULTILINE).group(1)
    unit = tmp_path / "nfsstack.service"
    unit.write_text(text.replace(f"ExecStart={start} ", f"ExecStart={real} "))
    out = _verify(unit)
    complaints = [line for line in (out.stdout + out.stderr).splitlines() if "nfsstack.service" in line]
    assert out.returncode == 0 and not complaints, out.stdout + out.stderr
