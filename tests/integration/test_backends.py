"""Backends besides the local one, served by the whole stack (``--backend``): the README's example of a backend of
one's own (examples/zipexport.py, a zip archive read only) read by libnfs's tools, and a backend module that cannot
be loaded refused at start with one line."""

import os
import re
import shutil
import subprocess
import time
import zipfile

import pytest

from tests.support import REPO, Stack, can_make_netns, in_netns, netns, server_env, twistd

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not can_make_netns(), reason="needs root and ip netns"),
    pytest.mark.skipif(any(shutil.which(t) is None for t in ("nfs-ls", "nfs-cat")),
                       reason="needs libnfs-utils (tests/install-deps.sh)"),
]

PHOTO = bytes(range(256)) * 1000  # 256,000 bytes: several READs of libnfs's size


def test_the_readme_example_is_the_example_file():
    """What the README shows is what the tests serve."""
    readme = (REPO / "README.md").read_text()
    example = (REPO / "examples" / "zipexport.py").read_text()
    assert f"```python\n{example}```" in readme


@pytest.fixture
def zipped(tmp_path, monkeypatch):
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("readme.txt", "three files\n")
        z.writestr("2026/", "")
        z.writestr("2026/beach.raw", PHOTO)
        z.writestr("2026/12/snow.txt", "white\n")  # a directory only its entry names
    exports = tmp_path / "exports"
    exports.write_text("/photos 127.0.0.1(ro,insecure)\n")
    monkeypatch.setenv("NFSSTACK_ZIP", str(archive))
    monkeypatch.setenv("PYTHONPATH", str(REPO / "examples"))
    with netns() as ns:
        stack = Stack("--exports", str(exports), "--state-dir", str(tmp_path / "state"),
                      "--backend", "zipexport:factory", netns=ns).start()
        try:
            yield ns, stack
        finally:
            stack.stop()
    assert "Traceback" not in stack.log_text(), stack.log_text()


def test_a_zip_archive_is_listed_and_read_by_libnfs(zipped):
    ns, stack = zipped
    r = in_netns(ns, "nfs-ls", "-R", "nfs://127.0.0.1/photos")
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^-r--r--r--\s+1\s+0\s+0\s+12 readme\.txt$", r.stdout, re.M), r.stdout
    assert re.search(r"^dr-xr-xr-x\s+2\s+0\s+0\s+\d+ 2026$", r.stdout, re.M), r.stdout
    assert re.search(rf"^-r--r--r--\s+1\s+0\s+0\s+{len(PHOTO)} 2026/beach\.raw$", r.stdout, re.M), r.stdout
    assert re.search(r"^-r--r--r--\s+1\s+0\s+0\s+6 2026/12/snow\.txt$", r.stdout, re.M), r.stdout
    r = in_netns(ns, "nfs-cat", "nfs://127.0.0.1/photos/2026/12/snow.txt")
    assert r.returncode == 0 and r.stdout == "white\n", r.stdout + r.stderr
    got = subprocess.run(["ip", "netns", "exec", ns, "nfs-cat", "nfs://127.0.0.1/photos/2026/beach.raw"],
                         capture_output=True, timeout=60)
    assert got.returncode == 0 and got.stdout == PHOTO, (len(got.stdout), got.stderr)
    assert "storage: zipexport:factory" in stack.log_text()


def test_a_change_to_the_zip_is_refused_read_only(zipped):
    ns, _ = zipped
    r = in_netns(ns, "nfs-cp", "/etc/hostname", "nfs://127.0.0.1/photos/new.txt")
    assert r.returncode != 0


def test_a_backend_that_cannot_be_loaded_is_one_line(tmp_path):
    r = subprocess.run([twistd(), "-n", "--pidfile=", "nfsstack", "--backend", "no_such_module:factory"],
                       cwd=tmp_path, env=server_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "--backend no_such_module:factory: No module named 'no_such_module'" in r.stdout + r.stderr, r.stdout
    assert "Traceback" not in r.stdout + r.stderr


def test_the_readme_application_serves_the_example(tmp_path, monkeypatch):
    """The README's embedding (a .tac built with nfsstack.tap's Options and makeService), run by ``twistd -ny``."""
    readme = (REPO / "README.md").read_text()
    tac = re.search(r"```python\n(from twisted\.application import service\n.*?)```", readme, re.S).group(1)
    (tmp_path / "app.tac").write_text(tac)
    with zipfile.ZipFile(tmp_path / "export.zip", "w") as z:
        z.writestr("hello.txt", "hello from a tac\n")
    (tmp_path / "exports").write_text(f"{tmp_path}/export 127.0.0.1(ro,insecure)\n")
    monkeypatch.setenv("NFSSTACK_ZIP", str(tmp_path / "export.zip"))
    monkeypatch.setenv("PYTHONPATH", str(REPO / "examples"))
    with netns() as ns:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, twistd(), "-n", "--pidfile=", "--logfile=app.log",
                                 "-y", "app.tac"], cwd=tmp_path, env=server_env())
        try:
            for _ in range(100):
                r = in_netns(ns, "nfs-cat", f"nfs://127.0.0.1{tmp_path}/export/hello.txt")
                if r.returncode == 0 or proc.poll() is not None:
                    break
                time.sleep(0.2)
            assert r.returncode == 0 and r.stdout == "hello from a tac\n", (r.stdout, r.stderr,
                                                                            (tmp_path / "app.log").read_text())
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_the_memory_backend_is_served_by_the_stack(tmp_path):
    """``--backend memory``: a tree per export, written and read by libnfs, nothing of it on the server's disk."""
    (tmp_path / "exports").write_text("/scratch 127.0.0.1(rw,insecure,no_root_squash)\n")
    with netns() as ns:
        stack = Stack("--exports", str(tmp_path / "exports"), "--state-dir", str(tmp_path / "state"),
                      "--backend", "memory", "--memory-limit", "8", netns=ns).start()
        try:
            (tmp_path / "note.txt").write_text("kept in memory\n")
            r = in_netns(ns, "nfs-cp", str(tmp_path / "note.txt"), "nfs://127.0.0.1/scratch/note.txt")
            assert r.returncode == 0, r.stdout + r.stderr
            r = in_netns(ns, "nfs-cat", "nfs://127.0.0.1/scratch/note.txt")
            assert r.returncode == 0 and r.stdout == "kept in memory\n", r.stdout + r.stderr
            r = in_netns(ns, "nfs-ls", "nfs://127.0.0.1/scratch")
            assert re.search(r"^-\S+\s+1\s+\d+\s+\d+\s+15 note\.txt$", r.stdout, re.M), r.stdout
            (tmp_path / "big").write_bytes(b"x" * (9 << 20))  # more than the 8 MiB limit
            r = in_netns(ns, "nfs-cp", str(tmp_path / "big"), "nfs://127.0.0.1/scratch/big", timeout=60)
            assert r.returncode != 0
            assert not os.path.exists("/scratch")
        finally:
            stack.stop()
    assert "storage: memory" in stack.log_text() and "Traceback" not in stack.log_text(), stack.log_text()
