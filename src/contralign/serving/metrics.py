"""Prometheus metrics of one server, in a registry of its own (two apps in one process, as in
the tests, never share or clash).

Names (``GET /metrics``, Prometheus text format):

- ``contralign_requests_total{endpoint, status}``: requests answered, by route and status code;
- ``contralign_request_seconds{endpoint}``: request latency (histogram);
- ``contralign_items_total{endpoint}``: texts embedded, by route;
- ``contralign_batch_size``: items per encoder batch (histogram, from the dynamic batcher);
- ``contralign_batch_seconds``: time per encoder batch (histogram).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Latency buckets from 1 ms to 10 s: a static tower answers in about a millisecond, a
# transformer batch of 64 long texts on a CPU in seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServerMetrics:
    """The server's counters and histograms, and their text exposition."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("contralign_requests", "HTTP requests answered",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("contralign_request_seconds", "HTTP request latency",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.items = Counter("contralign_items", "Texts embedded", ["endpoint"],
                             registry=self.registry)
        self.batch_size = Histogram("contralign_batch_size", "Items per encoder batch",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_seconds = Histogram("contralign_batch_seconds", "Time per encoder batch",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        """The batcher's ``on_batch`` callback (called from its worker thread; thread-safe)."""
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
