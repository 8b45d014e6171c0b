"""Installing the package as users do: ``pip install -e .`` keeps ``twistd nfsstack`` working.

With the packages mapped one by one to their directories, an editable install put no directory on sys.path
that holds ``twisted/plugins``, so Twisted's plugin search never saw the plugin and ``twistd nfsstack`` said
"Unknown command".  The test makes a virtual environment of its own (the system's site-packages hold a regular
install of nfsstack, which would hide the problem) and installs into it from the package index.
"""

import subprocess
import sys

import pytest

from tests.support import REPO


def test_editable_install_keeps_the_twistd_plugin(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "-e", str(REPO)],
                         capture_output=True, text=True, timeout=600)
    if pip.returncode != 0 and "Could not find a version" in pip.stderr:
        pytest.skip(f"the package index cannot be reached: {pip.stderr.strip()[-300:]}")
    assert pip.returncode == 0, pip.stderr
    out = subprocess.run([str(venv / "bin" / "twistd"), "nfsstack", "--help"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Unknown command" not in out.stdout + out.stderr
    assert "--exports" in out.stdout and "SIGHUP reloads" in " ".join(out.stdout.split())
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import nfsstack, twisted.plugins.nfsstack_plugin as p; print(nfsstack.__file__, p.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=60)
    package, plugin = where.stdout.split()
    assert package.startswith(str(REPO / "src")) and plugin.startswith(str(REPO / "src" / "twisted")), where.stdout
