"""The pipeline: one ingest function for every door, its log line, and reprocessing."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from loop_support import WakeUps

from mailhook.cli import main
from mailhook.errors import RetryLater
from mailhook.extract import extract
from mailhook.models import Delivery, Extraction, Receipt
from mailhook.pipeline import Pipeline
from mailhook.store.writer import Writer

SEED = Path(__file__).parent.parent / "fixtures" / "seed"


def document(name: str, channel: str = "http") -> Delivery:
    return Delivery(channel=channel, raw=(SEED / name).read_bytes(), received_at="x", kind="document",  # type: ignore[arg-type]
                    remote_addr="127.0.0.1")


@pytest.fixture
def pipeline(tmp_path: Path):  # type: ignore[no-untyped-def]
    writer = Writer(tmp_path / "m.db", busy_timeout=0.2)
    yield Pipeline(writer, {610798003: "CAMPAIGN_STARTED"})
    writer.close()


def test_ingest_returns_a_durable_receipt(pipeline: Pipeline, tmp_path: Path) -> None:
    receipt = pipeline.ingest(document("call-outbound.json"))
    assert (receipt.status, receipt.events) == ("stored", 1)
    with sqlite3.connect(tmp_path / "m.db") as conn:
        assert conn.execute("SELECT event_type, resource_id FROM events").fetchall() == [
            ("OUTBOUND_CALL_FINISHED", 974239899003)
        ]


def test_configured_subscription_decides_the_campaign_event(pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline.ingest(document("campaign.json"))
    with sqlite3.connect(tmp_path / "m.db") as conn:
        assert conn.execute("SELECT event_type, event_type_source FROM events").fetchall() == [
            ("CAMPAIGN_STARTED", "config")
        ]


def test_async_ingest_gives_the_same_receipt_as_sync(pipeline: Pipeline) -> None:
    receipt = asyncio.run(pipeline.ingest_async(document("text-inbound.json")))
    assert (receipt.status, receipt.events) == ("stored", 1)
    assert pipeline.ingest(document("text-inbound.json")).status == "duplicate"


def test_each_delivery_gets_one_log_line(pipeline: Pipeline, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailhook")
    pipeline.ingest(document("text-outbound.xml"))
    lines = [r.getMessage() for r in caplog.records if r.name == "mailhook.ingest"]
    assert len(lines) == 1
    assert lines[0].startswith("delivery channel=http peer=127.0.0.1 message_id=- status=stored")
    assert " events=1 " in lines[0] and " ms=" in lines[0]


def test_a_delivery_extracted_elsewhere_gets_the_same_log_line_and_listeners(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The file door's parallel path: extraction done in worker processes, storing through the pipeline.
    caplog.set_level(logging.INFO, logger="mailhook")
    heard: list[tuple[Delivery, Receipt | None]] = []
    writer = Writer(tmp_path / "m.db")
    pipeline = Pipeline(writer, listeners=[lambda delivery, receipt, _: heard.append((delivery, receipt))])
    try:
        delivery = document("text-outbound.xml", channel="file")
        found = extract(delivery.raw, delivery.kind, {})
        receipt = pipeline.submit(delivery, found).result()
        # Told before the receipt is handed back: a door answers only after its delivery is reported.
        assert heard == [(delivery, receipt)]
        lines = [r.getMessage() for r in caplog.records if r.name == "mailhook.ingest"]
        assert len(lines) == 1 and lines[0].startswith("delivery channel=file ")
    finally:
        writer.close()


def test_a_deferred_channel_is_stored_pending_and_handed_to_the_pending_listeners(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailhook")
    pending: list[int] = []
    writer = Writer(tmp_path / "m.db")
    pipeline = Pipeline(writer, deferred=frozenset({"smtp"}), pending_listeners=[lambda id, _: pending.append(id)])
    try:
        email = Delivery(channel="smtp", raw=b"Subject: x\r\n\r\nx\r\n", received_at="x")
        accepted = asyncio.run(pipeline.ingest_async(email))
        assert accepted.status == "pending" and pending == [accepted.delivery_id]
        # Its log line comes once the backlog has stored its events; other channels are stored at once.
        assert not [r for r in caplog.records if r.name == "mailhook.ingest"]
        assert asyncio.run(pipeline.ingest_async(document("text-inbound.json"))).status == "stored"
        assert pending == [accepted.delivery_id]
    finally:
        writer.close()


def test_storage_trouble_raises_retry_later_and_is_logged(
    pipeline: Pipeline, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline.ingest(document("text-outbound.xml"))
    blocker = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(RetryLater):
            pipeline.ingest(document("campaign.json"))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert any("status=retry-later" in r.getMessage() for r in caplog.records)
    assert pipeline.ingest(document("campaign.json")).status == "stored"


def test_reprocess_reads_deliveries_an_older_parser_quarantined(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    writer = Writer(db)
    raw = (SEED / "call-outbound.json").read_bytes()
    old = Delivery(channel="http", raw=raw, received_at="x", kind="document")
    writer.submit(old, Extraction(reason="old parser could not read it")).result()
    writer.close()

    assert main(["reprocess", "--db", str(db), "--quarantined"], env={}) == 0
    assert main(["reprocess", "--db", str(db)], env={}) == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT status, error, event_count FROM deliveries").fetchall() == [("stored", None, 1)]
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (1,)


def test_large_deliveries_are_read_off_the_event_loop_small_ones_on_it(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import mailhook.submitter

    threads: list[int] = []
    real = mailhook.submitter.extract

    def spy(*args: Any, **kwargs: Any) -> Extraction:
        threads.append(threading.get_ident())
        return real(*args, **kwargs)

    monkeypatch.setattr(mailhook.submitter, "extract", spy)
    small = document("call-outbound.json")
    large = Delivery(channel="http", raw=small.raw + b" " * mailhook.submitter.INLINE_LIMIT, received_at="x",
                     kind="document")

    async def both() -> tuple[int, Receipt, Receipt]:
        return threading.get_ident(), await pipeline.ingest_async(small), await pipeline.ingest_async(large)

    loop_thread, first, second = asyncio.run(both())
    assert threads[0] == loop_thread and threads[1] != loop_thread
    assert (first.status, second.status) == ("stored", "duplicate")


def _die_on_poison(raw: bytes, kind: Any, subscriptions: Any, limits: Any, content_type: str | None = None) -> Any:
    """Extract as the worker does, but die as a crashing worker would on a delivery that says so."""
    import os

    from mailhook.beside import extract_rows

    if b"KILL-THE-WORKER" in raw:
        os._exit(70)
    return extract_rows(raw, kind, subscriptions, limits, content_type)


def test_a_large_delivery_is_extracted_in_the_worker_process_and_one_that_kills_it_is_quarantined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mailhook.beside
    import mailhook.submitter
    from mailhook.workers import worker_pool

    monkeypatch.setattr(mailhook.beside, "extract_rows", _die_on_poison)
    writer = Writer(tmp_path / "m.db")
    pools = [worker_pool(1)]

    def renew() -> Any:
        pools.append(worker_pool(1))
        return pools[-1]

    pipeline = Pipeline(writer, {}, executor=pools[0], new_executor=renew)
    padding = b" " * mailhook.submitter.INLINE_LIMIT
    good = Delivery(channel="http", raw=document("call-outbound.json").raw + padding, received_at="x",
                    kind="document")
    poison = Delivery(channel="http", raw=b'{"KILL-THE-WORKER": 1}' + padding, received_at="x", kind="document")

    async def run() -> list[Receipt]:
        return [await pipeline.ingest_async(d) for d in (good, poison, good)]

    try:
        first, killed, again = asyncio.run(run())
    finally:
        writer.close()
        for pool in pools:
            pool.shutdown()
    assert (first.status, first.events) == ("stored", 1)
    assert (killed.status, killed.error) == ("quarantined", "extraction crashed its worker process")
    assert again.status == "duplicate"
    assert len(pools) == 3  # the first worker and its replacement both died on the poison


def test_a_large_email_over_a_structure_limit_is_refused_without_waiting_for_the_budget(tmp_path: Path) -> None:
    import mailhook.submitter
    from mailhook.budget import ByteBudget
    from mailhook.models import MailLimits

    writer = Writer(tmp_path / "m.db")
    pipeline = Pipeline(writer, {}, limits=MailLimits(max_parts=5), budget=ByteBudget(1000))
    padding = b"x" * mailhook.submitter.INLINE_LIMIT + b"\r\n"
    parts = b"".join(b"--b\r\n\r\n%d\r\n" % i for i in range(10))
    over = Delivery(channel="smtp", received_at="x", raw=b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
                    + padding + parts + b"--b--\r\n")
    within = Delivery(channel="smtp", received_at="x", raw=b"Subject: big\r\n\r\n" + padding)

    async def run() -> tuple[Receipt, bool]:
        gate = asyncio.Event()

        async def hog() -> None:
            async with pipeline.budget.hold(1000):
                await gate.wait()

        hogging = asyncio.create_task(hog())
        await asyncio.sleep(0)
        refused = await asyncio.wait_for(pipeline.ingest_async(over), 10)
        waiting = asyncio.create_task(pipeline.ingest_async(within))
        await asyncio.sleep(0.3)
        waited = not waiting.done()  # an email within the limits waits for its turn
        gate.set()
        await hogging
        await waiting
        return refused, waited

    try:
        refused, waited = asyncio.run(run())
    finally:
        writer.close()
    assert refused.status == "quarantined" and refused.error and "(limit max_parts 5)" in refused.error
    assert waited


def test_a_huge_json_integer_is_quarantined_with_mailhook_s_reason_not_python_s(pipeline: Pipeline) -> None:
    raw = b'{"TextNotification": {"SubscriptionId": 1, "Text": {"id": ' + b"9" * 5000 + b"}}}"
    receipt = pipeline.ingest(Delivery(channel="http", raw=raw, received_at="x", kind="document"))
    assert receipt.status == "quarantined"
    assert receipt.error is not None and "an integer of more than 4300 digits" in receipt.error
    assert "sys.set_int_max_str_digits" not in receipt.error and "Exceeds the limit" not in receipt.error


def test_deliveries_finished_together_are_handed_to_the_loop_with_one_wake_up(pipeline: Pipeline) -> None:
    # A group commit finishes many deliveries at once in the writer's thread; each used to wake the
    # event loop on its own (asyncio.wrap_future: a self-pipe write and a Handle per delivery).
    import threading
    from concurrent.futures import Future

    async def scenario() -> tuple[int, list[object]]:
        loop = asyncio.get_running_loop()
        wakeups = WakeUps(loop)
        sources: list[Future[Receipt]] = [Future() for _ in range(8)]
        waiters = [pipeline._on_loop(source) for source in sources]

        def commit() -> None:  # as the writer does: every future of the batch, one after another
            for i, source in enumerate(sources[:6]):
                source.set_result(Receipt(i + 1, "stored", 1))
            sources[6].set_exception(RetryLater("disk full"))
            sources[7].cancel()

        writer = threading.Thread(target=commit)
        writer.start()
        writer.join()  # the loop is held meanwhile, as it is while it extracts
        outcomes = await asyncio.gather(*waiters, return_exceptions=True)
        return wakeups.count, outcomes

    wakeups, outcomes = asyncio.run(scenario())
    assert wakeups == 1
    assert [o.delivery_id for o in outcomes[:6]] == [1, 2, 3, 4, 5, 6]  # type: ignore[union-attr]
    assert isinstance(outcomes[6], RetryLater)
    assert isinstance(outcomes[7], asyncio.CancelledError)


def test_deliveries_finished_on_the_loops_own_thread_resolve_at_once_without_a_wake_up(pipeline: Pipeline) -> None:
    # A worker of `serve --workers N` resolves its deliveries on its loop (it reads the parent's answers
    # there): nothing to wake, and no turn of the loop to wait for.
    from concurrent.futures import Future

    async def scenario() -> tuple[int, list[bool], list[object]]:
        loop = asyncio.get_running_loop()
        wakeups = WakeUps(loop)
        sources: list[Future[Receipt]] = [Future() for _ in range(4)]
        waiters = [pipeline._on_loop(source) for source in sources]
        waiters[3].cancel()  # its session went away meanwhile
        sources[0].set_result(Receipt(1, "stored", 1))
        sources[1].set_exception(RetryLater("disk full"))
        sources[2].cancel()
        sources[3].set_result(Receipt(4, "stored", 1))
        done = [waiter.done() for waiter in waiters]
        outcomes = await asyncio.gather(*waiters, return_exceptions=True)
        return wakeups.count, done, outcomes

    wakeups, done, outcomes = asyncio.run(scenario())
    assert wakeups == 0
    assert done == [True, True, True, True]
    assert outcomes[0].delivery_id == 1  # type: ignore[union-attr]
    assert isinstance(outcomes[1], RetryLater)
    assert isinstance(outcomes[2], asyncio.CancelledError)
    assert isinstance(outcomes[3], asyncio.CancelledError)


def test_a_delivery_started_from_the_loop_resolves_only_after_its_log_line_and_listeners(
    pipeline: Pipeline, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The SMTP door's path (`ingest_soon`): reported in the writer's callback that hands it to the loop.
    caplog.set_level(logging.INFO, logger="mailhook")
    told: list[str | None] = []
    pipeline.listeners.append(lambda delivery, receipt, elapsed: told.append(receipt.status if receipt else None))

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "mailhook.ingest"]

    async def scenario() -> None:
        receipt = await pipeline.ingest_soon(document("text-outbound.xml"))
        assert (receipt.status, receipt.events) == ("stored", 1)
        assert told == ["stored"] and len(lines()) == 1 and "status=stored" in lines()[0]
        blocker = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(RetryLater):
                await pipeline.ingest_soon(document("campaign.json"))
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert told == ["stored", None] and len(lines()) == 2 and "status=retry-later" in lines()[1]
        # A channel acknowledged on receipt: stored pending, neither extracted nor reported yet.
        pipeline.deferred = frozenset({"http"})
        accepted = await pipeline.ingest_soon(document("campaign.json"))
        assert accepted.status == "pending" and told == ["stored", None]

    asyncio.run(scenario())


class _OneAtATime:
    """A real writer seen without `submit_many` (as PostgreSQL's): the pipeline gathers its futures itself."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    def submit(self, delivery: Delivery, extraction: Any) -> Any:
        return self.writer.submit(delivery, extraction)

    def complete(self, completion: Any) -> Any:
        return self.writer.complete(completion)


@pytest.mark.parametrize("together", [True, False], ids=["submit_many", "one_at_a_time"])
def test_a_backlog_chunk_is_completed_by_one_future_and_each_stored_delivery_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, together: bool,
) -> None:
    from mailhook.store.rows import Completion

    caplog.set_level(logging.INFO, logger="mailhook")
    writer = Writer(tmp_path / "m.db")
    try:
        pipeline = Pipeline(writer if together else _OneAtATime(writer))  # type: ignore[arg-type]
        told: list[str | None] = []
        pipeline.listeners.append(lambda delivery, receipt, elapsed: told.append(receipt.status if receipt else None))
        deliveries = [document(name) for name in ("campaign.json", "text-inbound.json")]
        pending = [writer.submit(delivery, None).result() for delivery in deliveries]
        assert [receipt.status for receipt in pending] == ["pending", "pending"]
        found = [(delivery, Completion(receipt.delivery_id, delivery.sha256, extract(delivery.raw, "document", {})))
                 for delivery, receipt in zip(deliveries, pending, strict=True)]
        results = pipeline.complete_many(found, [0.0, 0.0]).result()
    finally:
        writer.close()
    assert [(result.status, result.events) for result in results] == [("stored", 1), ("stored", 1)]  # type: ignore[union-attr]
    assert told == ["stored", "stored"]
    lines = [record.getMessage() for record in caplog.records if record.name == "mailhook.ingest"]
    assert len(lines) == 2 and all("status=stored" in line for line in lines)
    with sqlite3.connect(tmp_path / "m.db") as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (2,)
