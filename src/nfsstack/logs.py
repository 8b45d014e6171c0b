"""The stack's own log messages and their level (``--log-level``).

Every module logs through :func:`logger`, whose events pass one level filter
before they reach Twisted's global log publisher (and so twistd's log file):
``--log-level info`` (the default) drops debug messages, ``warn`` keeps only
warnings and errors.  Twisted's own messages are not filtered.
"""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

LEVELS = ("debug", "info", "warn", "error", "critical")

_levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_levels])


def logger(namespace: str) -> Logger:
    """A Logger for ``namespace`` whose events are filtered by the stack's level."""
    return Logger(namespace=namespace, observer=_observer)


def set_level(name: str) -> None:
    """Keep events of level ``name`` (one of :data:`LEVELS`) and above."""
    _levels.setLogLevelForNamespace("nfsstack", LogLevel.levelWithName(name))
