"""Shared test settings."""

import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=20000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session", autouse=True)
def one_temporary_directory():
    """Every temporary directory the tests and their servers make (exports, workdirs, logs, guest initrds)
    is made under one directory, removed when the session ends, so no run leaves litter in the system's."""
    top = tempfile.mkdtemp(prefix="nfsstack-pytest-")
    os.chmod(top, 0o1777)  # like /tmp: servers that switch to a caller's uid still walk through it
    previous, tempfile.tempdir = tempfile.tempdir, top
    try:
        yield top
    finally:
        tempfile.tempdir = previous
        shutil.rmtree(top, ignore_errors=True)
