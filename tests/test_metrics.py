"""Metrics: counters fed by the pipeline, writer and doors, scraped as Prometheus text over HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from conftest import StartServer
from prometheus_client.parser import text_string_to_metric_families

from mailhook.metrics import Metrics
from mailhook.models import Channel, Delivery, Receipt
from mailhook.store.write import Store

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Read Prometheus text into {(sample name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _delivery(channel: Channel = "http") -> Delivery:
    return Delivery(channel=channel, raw=b"{}", received_at="2026-11-27T00:00:00.000Z", kind="document")


def test_a_delivery_counts_its_status_and_each_new_event_by_type() -> None:
    metrics = Metrics()
    receipt = Receipt(
        7, "stored", events=3, duplicates=2,
        event_types=("OUTBOUND_CALL_FINISHED", "OUTBOUND_CALL_FINISHED", "CAMPAIGN_STARTED"),
    )

    metrics.on_delivery(_delivery(), receipt, 0.01)

    samples = parse(metrics.render().decode())
    assert value(samples, "mailhook_deliveries_total", channel="http", status="stored") == 1
    assert value(samples, "mailhook_events_total", channel="http", event_type="OUTBOUND_CALL_FINISHED") == 2
    assert value(samples, "mailhook_events_total", channel="http", event_type="CAMPAIGN_STARTED") == 1
    assert value(samples, "mailhook_duplicate_events_total", channel="http") == 2
    assert value(samples, "mailhook_delivery_seconds_count", channel="http") == 1


def test_a_delivery_that_could_not_be_stored_counts_as_retry_later() -> None:
    metrics = Metrics()

    metrics.on_delivery(_delivery("smtp"), None, 0.5)

    samples = parse(metrics.render().decode())
    assert value(samples, "mailhook_deliveries_total", channel="smtp", status="retry_later") == 1
    assert value(samples, "mailhook_deliveries_total", channel="smtp", status="stored") == 0


def test_deliveries_on_several_channels_each_count_in_their_own_series_however_often_they_come() -> None:
    # A channel's series are kept after its first delivery: later ones, a new status or event type among
    # them, still count where a fresh `labels()` lookup would.
    metrics = Metrics()
    outcomes: list[tuple[Channel, Receipt | None]] = [
        ("smtp", Receipt(1, "stored", events=1, duplicates=0, event_types=("TEXT_SENT",))),
        ("http", Receipt(2, "duplicate", events=0, duplicates=1, event_types=())),
        ("smtp", Receipt(3, "stored", events=2, duplicates=1, event_types=("TEXT_SENT", "CALL_FINISHED"))),
        ("smtp", None),
        ("smtp", Receipt(4, "quarantined", events=0, duplicates=0, event_types=())),
        ("http", Receipt(5, "stored", events=1, duplicates=0, event_types=("TEXT_SENT",))),
    ]
    for channel, receipt in outcomes:
        metrics.on_delivery(_delivery(channel), receipt, 0.01)

    samples = parse(metrics.render().decode())
    deliveries = {(channel, status): value(samples, "mailhook_deliveries_total", channel=channel, status=status)
                  for channel in ("smtp", "http") for status in ("stored", "duplicate", "quarantined", "retry_later")}
    assert deliveries == {("smtp", "stored"): 2, ("smtp", "duplicate"): 0, ("smtp", "quarantined"): 1,
                          ("smtp", "retry_later"): 1, ("http", "stored"): 1, ("http", "duplicate"): 1,
                          ("http", "quarantined"): 0, ("http", "retry_later"): 0}
    assert value(samples, "mailhook_events_total", channel="smtp", event_type="TEXT_SENT") == 2
    assert value(samples, "mailhook_events_total", channel="smtp", event_type="CALL_FINISHED") == 1
    assert value(samples, "mailhook_events_total", channel="http", event_type="TEXT_SENT") == 1
    assert value(samples, "mailhook_duplicate_events_total", channel="smtp") == 1
    assert value(samples, "mailhook_duplicate_events_total", channel="http") == 1
    assert value(samples, "mailhook_delivery_seconds_count", channel="smtp") == 4
    assert value(samples, "mailhook_delivery_seconds_count", channel="http") == 2


def test_every_channel_and_status_is_exported_before_the_first_delivery() -> None:
    samples = parse(Metrics().render().decode())

    for channel in ("smtp", "imap", "http", "file"):
        for status in ("stored", "duplicate", "quarantined", "retry_later"):
            assert ("mailhook_deliveries_total", (("channel", channel), ("status", status))) in samples


def test_commits_rejections_queue_depth_and_smtp_sessions_are_exported() -> None:
    metrics = Metrics()
    depth = [4]
    metrics.track_queue(lambda: depth[0])

    metrics.on_commit(3, 0.002)
    metrics.on_commit(1, 0.004)
    metrics.on_rejected("http", "unauthorized")
    metrics.smtp_sessions.inc()
    first = parse(metrics.render().decode())
    depth[0] = 0
    second = parse(metrics.render().decode())

    assert value(first, "mailhook_commit_batch_size_count") == 2
    assert value(first, "mailhook_commit_batch_size_sum") == 4
    assert value(first, "mailhook_commit_seconds_count") == 2
    assert value(first, "mailhook_rejected_total", channel="http", reason="unauthorized") == 1
    assert value(first, "mailhook_smtp_sessions") == 1
    assert (value(first, "mailhook_writer_queue_depth"), value(second, "mailhook_writer_queue_depth")) == (4, 0)


def test_two_servers_in_one_process_never_share_counts() -> None:
    one, two = Metrics(), Metrics()

    one.on_delivery(_delivery(), Receipt(1, "stored", 1, event_types=("OUTBOUND_TEXT_FINISHED",)), 0.0)

    assert value(parse(two.render().decode()), "mailhook_deliveries_total", channel="http", status="stored") == 0


@pytest.fixture
def base(start_server: StartServer) -> str:
    runtime = start_server(http={"listen": "127.0.0.1:0", "token": "tok"}, smtp={"listen": ""})
    door = next(d for d in runtime.doors if d.name == "http")
    return f"http://{door.addresses()[0]}"


def scrape(client: httpx.Client, base: str) -> Samples:
    response = client.get(f"{base}/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def test_metrics_over_http_change_when_deliveries_arrive(base: str) -> None:
    with httpx.Client(timeout=30) as client:
        before = scrape(client, base)
        call = (FIXTURES / "seed" / "call-outbound.json").read_bytes()
        stored = client.post(f"{base}/notifications?token=tok", content=call)
        client.post(f"{base}/notifications?token=tok", content=call)
        client.post(f"{base}/notifications?token=tok", content=b"<not-callfire/>")
        client.post(f"{base}/notifications?token=wrong", content=b"{}")
        after = scrape(client, base)

    assert stored.status_code == 200
    changes = [
        value(after, name, **labels) - value(before, name, **labels)
        for name, labels in [
            ("mailhook_deliveries_total", {"channel": "http", "status": "stored"}),
            ("mailhook_deliveries_total", {"channel": "http", "status": "duplicate"}),
            ("mailhook_deliveries_total", {"channel": "http", "status": "quarantined"}),
            ("mailhook_events_total", {"channel": "http", "event_type": "OUTBOUND_CALL_FINISHED"}),
            ("mailhook_duplicate_events_total", {"channel": "http"}),
            ("mailhook_rejected_total", {"channel": "http", "reason": "unauthorized"}),
            ("mailhook_commit_batch_size_sum", {}),
            ("mailhook_delivery_seconds_count", {"channel": "http"}),
        ]
    ]
    assert changes == [1, 1, 1, 1, 1, 1, 3, 3]
    assert value(after, "mailhook_writer_queue_depth") == 0
    assert ("mailhook_smtp_sessions", ()) in after


def test_metrics_are_served_as_openmetrics_when_the_scraper_asks(base: str) -> None:
    response = httpx.get(f"{base}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


def test_pending_deliveries_gauge_counts_what_waits_for_its_events(start_server: StartServer, tmp_path: Path) -> None:
    runtime = start_server(http={"listen": "127.0.0.1:0"}, smtp={"listen": ""})
    door = next(d for d in runtime.doors if d.name == "http")
    base = f"http://{door.addresses()[0]}"
    with httpx.Client(timeout=30) as client:
        assert value(scrape(client, base), "mailhook_pending_deliveries") == 0
        # Rows a writer of another process stored pending (as acknowledge=received does); nothing woke
        # this server's backlog, so they wait, and the gauge shows them.
        store = Store(tmp_path / "mailhook.db")
        store.write([(_delivery("smtp"), None) for _ in range(3)])
        store.close()
        assert value(scrape(client, base), "mailhook_pending_deliveries") == 3
