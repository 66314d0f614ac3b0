"""Prometheus metrics for the running server, fed by the pipeline, the writer and the doors."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from mailhook.models import Delivery, Receipt


class Metrics:
    """The counters and gauges `GET /metrics` exposes, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.deliveries = Counter(
            "mailhook_deliveries", "Deliveries received, by channel and outcome",
            ["channel", "status"], registry=self.registry,
        )
        self.events = Counter(
            "mailhook_events", "New events stored, by channel", ["channel"], registry=self.registry
        )
        self.delivery_seconds = Histogram(
            "mailhook_delivery_seconds", "Time from receipt to durable acknowledgement",
            ["channel"], registry=self.registry,
        )
        self.commit_batch = Histogram(
            "mailhook_commit_batch_size", "Deliveries per group commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "mailhook_commit_seconds", "Duration of one group commit", registry=self.registry
        )
        self.queue_depth = Gauge(
            "mailhook_writer_queue_depth", "Deliveries waiting for the next commit", registry=self.registry
        )
        self.smtp_sessions = Gauge(
            "mailhook_smtp_sessions", "Open SMTP sessions", registry=self.registry
        )

    def on_delivery(self, delivery: Delivery, receipt: Receipt | None, elapsed: float) -> None:
        """Count one delivery's outcome (a pipeline listener)."""
        status = receipt.status if receipt else "retry_later"
        self.deliveries.labels(delivery.channel, status).inc()
        self.delivery_seconds.labels(delivery.channel).observe(elapsed)
        if receipt is not None and receipt.events:
            self.events.labels(delivery.channel).inc(receipt.events)

    def on_commit(self, size: int, elapsed: float) -> None:
        """Record one group commit (the writer's observer)."""
        self.commit_batch.observe(size)
        self.commit_seconds.observe(elapsed)

    def track_queue(self, depth: Callable[[], int]) -> None:
        """Read the writer's queue depth whenever metrics are scraped."""
        self.queue_depth.set_function(depth)

    def render(self) -> bytes:
        """Return the metrics in Prometheus text format."""
        return generate_latest(self.registry)
