"""Prometheus metrics for the running server, fed by the pipeline, the writer and the doors.

Every metric lives in a registry of its own (not prometheus-client's global
one), so several servers in one process (tests) never share counts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import choose_encoder

from mailhook.models import Delivery, Receipt

CHANNELS = ("smtp", "imap", "http", "file")
STATUSES = ("stored", "duplicate", "quarantined", "retry_later")


class Metrics:
    """The counters and gauges `GET /metrics` exposes, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.deliveries = Counter(
            "mailhook_deliveries", "Deliveries received, by channel and outcome",
            ["channel", "status"], registry=self.registry,
        )
        self.events = Counter(
            "mailhook_events", "New events stored, by channel and event type",
            ["channel", "event_type"], registry=self.registry,
        )
        self.duplicates = Counter(
            "mailhook_duplicate_events", "Events received again and not stored twice, by channel",
            ["channel"], registry=self.registry,
        )
        self.rejected = Counter(
            "mailhook_rejected", "Requests refused before anything was stored, by channel and reason",
            ["channel", "reason"], registry=self.registry,
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
        self.pending = Gauge(
            "mailhook_pending_deliveries", "Deliveries acknowledged whose events are not stored yet",
            registry=self.registry,
        )
        # Each labelled series once: `.labels()` validates and locks on every call,
        # which costs more than the increment it leads to.
        self._children: dict[tuple[Any, ...], Any] = {}
        # A delivery's series by its channel: one lookup, not a key tuple per series per delivery.
        self._channels: dict[str, _ChannelSeries] = {}
        # Zero-valued series from the start, so a dashboard's rate() sees the
        # first delivery instead of a series appearing out of nothing.
        for channel in CHANNELS:
            for status in STATUSES:
                self._child(self.deliveries, channel, status)
            self._child(self.duplicates, channel)

    def _child(self, metric: Any, *labels: str) -> Any:
        """Return the series of `metric` with these label values, made once and then reused."""
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def on_delivery(self, delivery: Delivery, receipt: Receipt | None, elapsed: float) -> None:
        """Count one delivery's outcome (a pipeline listener)."""
        series = self._channels.get(delivery.channel)
        if series is None:
            series = self._channels[delivery.channel] = _ChannelSeries(self, delivery.channel)
        status = receipt.status if receipt else "retry_later"
        (series.deliveries.get(status) or series.delivery(status)).inc()
        series.seconds.observe(elapsed)
        if receipt is None:
            return
        for event_type in receipt.event_types:
            (series.events.get(event_type) or series.event(event_type)).inc()
        if receipt.duplicates:
            series.duplicates.inc(receipt.duplicates)

    def on_rejected(self, channel: str, reason: str) -> None:
        """Count a request a door refused before storing anything (e.g. `unauthorized`, `too_large`)."""
        self._child(self.rejected, channel, reason).inc()

    def on_commit(self, size: int, elapsed: float) -> None:
        """Record one group commit (the writer's observer)."""
        self.commit_batch.observe(size)
        self.commit_seconds.observe(elapsed)

    def track_queue(self, depth: Callable[[], int]) -> None:
        """Read the writer's queue depth whenever metrics are scraped."""
        self.queue_depth.set_function(depth)

    def track_pending(self, count: Callable[[], float]) -> None:
        """Count the pending deliveries (acknowledge=received's backlog) whenever metrics are scraped."""
        self.pending.set_function(count)

    def render(self) -> bytes:
        """Return the metrics in the Prometheus text format."""
        return generate_latest(self.registry)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """Return the metrics and their Content-Type in the format a scraper's Accept header asks for.

        Prometheus text format 0.0.4 unless OpenMetrics is asked for.
        """
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    async def scrape(self, accept: str | None) -> tuple[bytes, str]:
        """Return what `GET /metrics` answers: this registry's `exposition` (a group worker asks its parent's)."""
        return self.exposition(accept)


class _ChannelSeries:
    """The series one channel's deliveries count in (`Metrics.on_delivery`), each looked up once."""

    __slots__ = ("channel", "deliveries", "duplicates", "events", "metrics", "seconds")

    def __init__(self, metrics: Metrics, channel: str) -> None:
        self.metrics = metrics
        self.channel = channel
        self.deliveries: dict[str, Any] = {}
        self.events: dict[str, Any] = {}
        self.seconds = metrics._child(metrics.delivery_seconds, channel)
        self.duplicates = metrics._child(metrics.duplicates, channel)

    def delivery(self, status: str) -> Any:
        """Return (and keep) the series of this channel's deliveries with `status`."""
        child = self.deliveries[status] = self.metrics._child(self.metrics.deliveries, self.channel, status)
        return child

    def event(self, event_type: str) -> Any:
        """Return (and keep) the series of this channel's new events of `event_type`."""
        child = self.events[event_type] = self.metrics._child(self.metrics.events, self.channel, event_type)
        return child
