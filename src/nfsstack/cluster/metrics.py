"""Metrics for ``GET /metrics`` (Prometheus text format, through prometheus_client).

The hot path only bumps plain counters: :class:`CallStats` is the RPC
dispatchers' observer (a count, a sum and a bucket per procedure), and the
collector turns those and the services' own counters into metric families
when somebody scrapes.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Callable, Iterable

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry

#: Upper bounds (seconds) of the call latency histogram buckets.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


#: Clients counted one by one (``nfsstack stat``); the calls of any more are counted as OTHER_CLIENTS.
MAX_CLIENTS = 1024
OTHER_CLIENTS = "(others)"


class CallStats:
    """Per (program, procedure): calls, total seconds and a latency histogram; per client and program: calls."""

    def __init__(self, max_clients: int = MAX_CLIENTS) -> None:
        self.stats: dict[tuple[str, str], list] = {}
        self.clients: dict[tuple[str, str], int] = {}
        self.max_clients = max_clients
        self._known: set[str] = set()

    def __call__(self, program: str, procedure: str, seconds: float, client: str = "") -> None:
        entry = self.stats.get((program, procedure))
        if entry is None:
            entry = self.stats[(program, procedure)] = [0, 0.0, [0] * (len(BUCKETS) + 1)]
        entry[0] += 1
        entry[1] += seconds
        entry[2][bisect_left(BUCKETS, seconds)] += 1
        key = (client, program)
        n = self.clients.get(key)
        if n is None:
            if client not in self._known:
                if len(self._known) >= self.max_clients:
                    key = (OTHER_CLIENTS, program)
                    self.clients[key] = self.clients.get(key, 0) + 1
                    return
                self._known.add(client)
            n = 0
        self.clients[key] = n + 1


    def merged(self, others: Iterable[dict]) -> "CallStats":
        """These counts and those of ``others`` (nfsd workers' answers: ``calls`` rows of program, procedure,
        calls, seconds, buckets; ``clients`` rows of client, program, calls) summed, in a new CallStats."""
        out = CallStats(self.max_clients)
        out.stats = {key: [n, total, list(buckets)] for key, (n, total, buckets) in self.stats.items()}
        out.clients = dict(self.clients)
        for other in others:
            for program, procedure, n, total, buckets in other.get("calls", ()):
                entry = out.stats.setdefault((program, procedure), [0, 0.0, [0] * (len(BUCKETS) + 1)])
                entry[0] += n
                entry[1] += total
                entry[2] = [a + b for a, b in zip(entry[2], buckets)]
            for client, program, n in other.get("clients", ()):
                out.clients[(client, program)] = out.clients.get((client, program), 0) + n
        return out


class StackCollector(Collector):
    """Reads the stack's counters at scrape time; ``source()`` returns a dict of them (see nfsstack.service)."""

    def __init__(self, calls, source: Callable[[], dict]) -> None:
        #: The call counts: a CallStats, or a function returning one (the stack's summed with its workers').
        self.calls = calls
        self.source = source

    def collect(self) -> Iterable:
        s = self.source()
        calls = self.calls() if callable(self.calls) and not isinstance(self.calls, CallStats) else self.calls
        services = s.get("services", {})
        up = GaugeMetricFamily("nfsstack_up", "1 while every configured service serves, 0 in a partial stack.")
        up.add_metric([], int(all(services.values())))
        yield up
        service_up = GaugeMetricFamily("nfsstack_service_up", "1 while the configured service serves, else 0.",
                                       labels=["service"])
        for service, serving in services.items():
            service_up.add_metric([service], int(serving))
        yield service_up
        count = CounterMetricFamily("nfsstack_rpc_calls", "RPC calls answered, by program and procedure.",
                                    labels=["program", "procedure"])
        latency = HistogramMetricFamily("nfsstack_rpc_call_seconds", "Time from call to reply, by procedure.",
                                        labels=["program", "procedure"])
        for (program, procedure), (n, total, buckets) in sorted(calls.stats.items()):
            count.add_metric([program, procedure], n)
            cumulative, running = [], 0
            for bound, hits in zip(BUCKETS + (float("inf"),), buckets):
                running += hits
                cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
            latency.add_metric([program, procedure], cumulative, total)
        yield count
        yield latency
        errors = CounterMetricFamily("nfsstack_rpc_errors", "RPC error replies and dropped calls, by service.",
                                     labels=["service", "error"])
        for (service, error), n in sorted(s.get("rpc_errors", {}).items()):
            errors.add_metric([service, error], n)
        yield errors
        failures = CounterMetricFamily("nfsstack_nfs_failures", "NFSv3 calls answered with an error status.",
                                       labels=["procedure", "status"])
        for (procedure, status), n in sorted(s.get("nfs_failures", {}).items()):
            failures.add_metric([procedure, status], n)
        yield failures
        for name, doc, key in (("nfsstack_nfs_read_bytes", "Bytes returned by NFS READ.", "bytes_read"),
                               ("nfsstack_nfs_written_bytes", "Bytes written by NFS WRITE.", "bytes_written")):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], s.get(key, 0))
            yield c
        conns = GaugeMetricFamily("nfsstack_tcp_connections", "Open TCP connections, by service.",
                                  labels=["service"])
        for service, n in sorted(s.get("connections", {}).items()):
            conns.add_metric([service], n)
        yield conns
        locks = GaugeMetricFamily("nfsstack_locks", "NLM locks held and awaited, shares, files.", labels=["kind"])
        for kind, n in sorted(s.get("locks", {}).items()):
            if isinstance(n, int) and not isinstance(n, bool):
                locks.add_metric([kind], n)
        yield locks
        members = GaugeMetricFamily("nfsstack_keepalive_members", "Keepalive clients and peers, by state.",
                                    labels=["kind", "state"])
        for (kind, state), n in sorted(s.get("members", {}).items()):
            members.add_metric([kind, state], n)
        yield members
        datagrams = CounterMetricFamily("nfsstack_keepalive_datagrams", "Keepalive datagrams, by what became of them.",
                                        labels=["result"])
        for result, n in sorted(s.get("datagrams", {}).items()):
            datagrams.add_metric([result], n)
        yield datagrams
        kerberos = s.get("kerberos") or {}
        if kerberos:
            contexts = GaugeMetricFamily("nfsstack_gss_contexts", "RPCSEC_GSS contexts established (Kerberos).")
            contexts.add_metric([], kerberos["contexts"])
            yield contexts
            events = CounterMetricFamily("nfsstack_gss_events", "What the RPCSEC_GSS engines did: contexts made, "
                                         "destroyed, evicted, replays dropped, refusals by auth_stat.",
                                         labels=["event"])
            for event, n in sorted(kerberos["events"].items()):
                events.add_metric([event], n)
            yield events
        if "workers_not_answering" in s:
            silent = GaugeMetricFamily("nfsstack_nfsd_workers_not_answering",
                                       "nfsd worker processes that did not answer for this scrape (their counts "
                                       "are missing from the others).")
            silent.add_metric([], s["workers_not_answering"])
            yield silent


def registry(collector: StackCollector) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return reg
