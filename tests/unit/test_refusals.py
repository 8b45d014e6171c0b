"""Refusals by export policy are logged per client, at most once a minute each, with how many were not."""

from twisted.logger import globalLogPublisher

from nfsstack.refusals import RefusalLog


def test_each_client_and_reason_is_logged_once_per_interval_with_the_count():
    now = [1000.0]
    said = []

    def observe(event):
        if event.get("log_namespace") == "nfsstack.access":
            said.append(event["log_format"].format(**{k: v for k, v in event.items() if isinstance(k, str)}))

    globalLogPublisher.addObserver(observe)
    try:
        log = RefusalLog(lambda: now[0], interval=60.0)
        for _ in range(5):
            log.refused("192.0.2.1", "a change to a read-only export", "/srv")
        log.refused("192.0.2.2", "a change to a read-only export", "/srv")
        log.refused("192.0.2.1", "call from an unprivileged port to a secure export", "/srv")
        now[0] += 59.0
        log.refused("192.0.2.1", "a change to a read-only export", "/srv")
        now[0] += 1.0
        log.refused("192.0.2.1", "a change to a read-only export", "/srv")
    finally:
        globalLogPublisher.removeObserver(observe)
    assert said == [
        "refused 192.0.2.1: a change to a read-only export (/srv)",
        "refused 192.0.2.2: a change to a read-only export (/srv)",
        "refused 192.0.2.1: call from an unprivileged port to a secure export (/srv)",
        "refused 192.0.2.1: a change to a read-only export (/srv); 5 more since the last message",
    ]


def test_the_table_is_bounded():
    log = RefusalLog(lambda: 0.0, limit=100)
    for n in range(1000):
        log.refused(f"10.0.{n // 256}.{n % 256}", "no export entry admits this client", "/srv")
    assert len(log._seen) <= 100
