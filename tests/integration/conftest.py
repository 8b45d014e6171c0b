"""Fixtures the integration tests share."""

import pytest

from tests.support import Stack, netns


@pytest.fixture
def ns():
    """A private network namespace of the test's own, loopback up."""
    with netns() as name:
        yield name


@pytest.fixture
def stack(ns):
    """The whole stack with its defaults (portmapper on 111) in ``ns``; its log must hold no traceback."""
    s = Stack(netns=ns).start()
    yield s
    s.stop()
    assert "Traceback" not in s.log_text(), s.log_text()
