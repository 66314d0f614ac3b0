"""A backfill's chunks: handed to the writer whole, one future each, committed within max_batch."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from process_support import ALLOW_ROOT
from test_files import TEXT_XML, contents, distinct_mbox, figures_and_full_scan
from test_store import _batch_with_failures, email, text_event

from mailhook.beside import extract_rows
from mailhook.config.load import load
from mailhook.errors import RetryLater
from mailhook.files import ingest as file_ingest
from mailhook.files.deliveries import Unreadable
from mailhook.files.extracted import IN_FLIGHT, Extracted
from mailhook.models import Delivery, Extraction, MailLimits, Receipt
from mailhook.pipeline import Pipeline
from mailhook.store.rows import Rows
from mailhook.store.writer import Writer


def chunk(first: int, count: int) -> list[tuple[Delivery, Extraction | Rows | None]]:
    return [(email(f"<{i}@x>"), Extraction(message_id=f"<{i}@x>", events=(text_event(i),)))
            for i in range(first, first + count)]


def test_a_chunk_is_answered_by_one_future_with_each_receipt_in_order(tmp_path: Path) -> None:
    batches: list[int] = []
    writer = Writer(tmp_path / "m.db", observer=lambda size, _: batches.append(size))
    try:
        receipts = writer.submit_many(chunk(1, 64)).result()
    finally:
        writer.close()
    assert [r.status for r in receipts if isinstance(r, Receipt)] == ["stored"] * 64
    assert [r.delivery_id for r in receipts if isinstance(r, Receipt)] == list(range(1, 65))
    assert batches == [64]


def test_an_item_that_cannot_be_stored_answers_retry_later_in_its_place_and_the_rest_are_stored(
    tmp_path: Path,
) -> None:
    writer = Writer(tmp_path / "m.db")
    try:
        results = writer.submit_many(_batch_with_failures()).result()
    finally:
        writer.close()
    assert [type(r).__name__ for r in results] == ["Receipt", "RetryLater", "Receipt", "Receipt", "Receipt", "Receipt"]
    assert [getattr(r, "status", None) for r in results] == ["stored", None, "stored", "duplicate", "pending", "stored"]
    assert "could not be stored" in str(results[1])


def test_a_chunk_of_max_batch_is_taken_and_one_larger_refused(tmp_path: Path) -> None:
    writer = Writer(tmp_path / "m.db", max_batch=8)
    try:
        assert len(writer.submit_many(chunk(1, 8)).result()) == 8
        with pytest.raises(ValueError, match="more than max_batch"):
            writer.submit_many(chunk(9, 9))
    finally:
        writer.close()


def test_chunks_and_single_deliveries_queued_together_commit_in_order_never_past_max_batch(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    batches: list[int] = []
    writer = Writer(db, busy_timeout=5, max_batch=5, observer=lambda size, _: batches.append(size))
    blocker = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")  # everything below queues up behind the first commit
    futures: list[Future[object]] = []
    first = 1
    for size in (3, 3, 1, 5, 2, 1, 4):
        if size == 1:
            futures.append(writer.submit(*chunk(first, 1)[0]))  # type: ignore[arg-type]
        else:
            futures.append(writer.submit_many(chunk(first, size)))  # type: ignore[arg-type]
        first += size
    threading.Timer(0.3, lambda: (blocker.execute("ROLLBACK"), blocker.close())).start()
    answers = [f.result() for f in futures]
    writer.close()
    receipts = [r for answer in answers for r in (answer if isinstance(answer, list) else [answer])]
    assert [r.delivery_id for r in receipts] == list(range(1, 20))
    assert sum(batches) == 19 and max(batches) <= 5 and len(batches) < 19


def test_a_chunk_in_a_failed_commit_raises_retry_later_and_after_close_too(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    writer = Writer(db, busy_timeout=0.2)
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(RetryLater, match="storage unavailable"):
            writer.submit_many(chunk(1, 3)).result()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert [r.status for r in writer.submit_many(chunk(1, 3)).result() if isinstance(r, Receipt)] == ["stored"] * 3
    writer.close()
    with pytest.raises(RetryLater, match="shutting down"):
        writer.submit_many(chunk(4, 1)).result()


class _OneAtATime:
    """A store without `submit_many` (as the serve workers' remote store): the pipeline submits one by one."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    def submit(self, delivery: Delivery, extraction: Extraction | Rows | None) -> Future[Receipt]:
        return self.writer.submit(delivery, extraction)


@pytest.mark.parametrize("one_at_a_time", [False, True])
def test_the_pipeline_reports_each_delivery_of_a_chunk_once_with_its_duplicate_and_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, one_at_a_time: bool
) -> None:
    caplog.set_level(logging.INFO, logger="mailhook")
    writer = Writer(tmp_path / "m.db")
    heard: list[str] = []
    store = _OneAtATime(writer) if one_at_a_time else writer
    pipeline = Pipeline(store, listeners=[lambda d, r, _: heard.append(r.status if r else "retry-later")])  # type: ignore[arg-type]
    items = _batch_with_failures()
    # The pending item's extraction is made here: None asks the pipeline to extract.
    try:
        results = pipeline.submit_many([d for d, _ in items], [found for _, found in items]).result()
    finally:
        writer.close()
    assert [getattr(r, "status", "retry-later") for r in results] == [
        "stored", "retry-later", "stored", "duplicate", "quarantined", "stored"]
    assert heard == ["stored", "retry-later", "stored", "duplicate", "quarantined", "stored"]
    lines = [r.getMessage() for r in caplog.records if r.name == "mailhook.ingest"]
    assert len(lines) == 6 and "status=retry-later" in lines[1] and "status=duplicate" in lines[3]


def test_the_pipeline_answers_every_delivery_of_a_chunk_retry_later_when_its_commit_fails(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    writer = Writer(db, busy_timeout=0.2)
    pipeline = Pipeline(writer)
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        items = chunk(1, 4)
        results = pipeline.submit_many([d for d, _ in items], [f for _, f in items]).result()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        writer.close()
    assert [type(r) for r in results] == [RetryLater] * 4


LIMIT = 20_000  # bytes: more than any email bench/distinct.py writes


def ingest(db: Path, mbox: Path, workers: int, *extra: str) -> subprocess.CompletedProcess[str]:
    code = ("import os, sys, logging; from mailhook.config.load import load;"
            " from mailhook.files.ingest import ingest_paths;"
            "logging.basicConfig(level=logging.WARNING);"
            f"sys.exit(ingest_paths([{str(mbox)!r}], load({{}}, os.environ), os.environ, quiet=False, stdin=None,"
            f" interactive=False, workers={workers}))")
    env = {**os.environ, **ALLOW_ROOT, "MAILHOOK_CONFIG": "", "MAILHOOK_DB": str(db),
           "MAILHOOK_MAX_MESSAGE_SIZE": str(LIMIT), **dict(e.split("=", 1) for e in extra)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False,
                          env=env)


def mbox_around_a_chunk_boundary(path: Path) -> Path:
    """150 distinct emails (over 256 KiB: extracted in workers), a duplicate inside the second chunk, and an email
    too large to store as the 64th (the last of the first chunk)."""
    distinct_mbox(path, 150)
    text = path.read_bytes()
    starts = [i + 1 for i in range(len(text)) if text.startswith(b"\nFrom ", i)]
    starts = [0, *starts]
    messages = [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]
    big = messages[63].replace(b"\n\n", b"\nX-Padding: " + b"x" * LIMIT + b"\n\n", 1)
    messages = [*messages[:63], big, *messages[64:70], messages[66], *messages[70:]]
    path.write_bytes(b"".join(messages))
    return path


def test_a_backfill_across_chunk_boundaries_counts_and_stores_the_same_with_one_or_two_processes(
    tmp_path: Path,
) -> None:
    mbox = mbox_around_a_chunk_boundary(tmp_path / "in.mbox")
    assert mbox.stat().st_size >= 256 << 10
    one, two = tmp_path / "one.db", tmp_path / "two.db"
    results = [ingest(one, mbox, 1), ingest(two, mbox, 2)]
    for result in results:
        assert result.returncode == 65, result.stderr
        assert f"in.mbox#64: cannot read: larger than the limit of {LIMIT} bytes" in result.stderr
    with sqlite3.connect(one) as conn:
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    for result in results:
        assert result.stderr.rstrip().endswith(f"mailhook: 149 stored, 1 duplicates, 0 quarantined, {events} events,"
                                               " 1 unreadable"), result.stderr
    assert contents(two) == contents(one)
    kept, scanned = figures_and_full_scan(two)
    assert kept == scanned


@pytest.mark.parametrize("max_batch", ["1", "63"])
def test_a_backfill_with_a_max_batch_below_a_chunk_commits_within_it(tmp_path: Path, max_batch: str) -> None:
    mbox = mbox_around_a_chunk_boundary(tmp_path / "in.mbox")
    result = ingest(tmp_path / "m.db", mbox, 2, f"MAILHOOK_STORAGE_MAX_BATCH={max_batch}")
    assert result.returncode == 65, result.stderr
    assert "149 stored, 1 duplicates" in result.stderr


def test_a_backfill_into_a_locked_database_reports_each_delivery_not_stored_and_exits_75(tmp_path: Path) -> None:
    mbox = mbox_around_a_chunk_boundary(tmp_path / "in.mbox")
    db = tmp_path / "m.db"
    assert ingest(db, tmp_path / "missing.mbox", 1).returncode == 65  # creates the database
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        result = ingest(db, mbox, 2, "MAILHOOK_STORAGE_BUSY_TIMEOUT=0.05")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert result.returncode == 75, result.stderr
    assert result.stderr.count(": not stored: ") == 150
    assert "mailhook: 0 stored, 0 duplicates, 0 quarantined, 0 events, 1 unreadable" in result.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM deliveries").fetchone() == (0,)


def test_a_backfill_imports_neither_sqlite_utils_nor_pandas(tmp_path: Path) -> None:
    # With pandas installed, importing sqlite_utils (which imports it) took ~0.3 s of a backfill's start.
    code = ("import os, sys; from mailhook.cli import main; code = main(['ingest', '-q', sys.argv[1]]);"
            "print(sorted(m for m in ('sqlite_utils', 'pandas', 'numpy') if m in sys.modules)); sys.exit(code)")
    env = {**os.environ, **ALLOW_ROOT, "MAILHOOK_CONFIG": "", "MAILHOOK_DB": str(tmp_path / "m.db")}
    result = subprocess.run([sys.executable, "-c", code, str(mbox_around_a_chunk_boundary(tmp_path / "in.mbox"))],
                            capture_output=True, text=True, timeout=300, check=False, env=env)
    assert result.returncode == 0, result.stderr  # the large email is within the default limit
    assert result.stdout.strip() == "[]"


def readable_and_not(count: int) -> list[Delivery | Unreadable]:
    """Return `count` distinct notification documents, every tenth replaced by an input that could not be read."""
    return [Unreadable(f"in#{i}", "too large") if i % 10 == 9 else
            Delivery(channel="file", raw=TEXT_XML + f"<!-- {i} -->".encode(), received_at="2026-01-01T00:00:00Z",
                     kind="document", source=f"in#{i}")
            for i in range(count)]


@pytest.mark.parametrize("count", [0, 1, 64, 64 * (IN_FLIGHT + 1) - 1, 64 * (IN_FLIGHT + 1),
                                   64 * (IN_FLIGHT + 1) + 1, 64 * 9 + 3])
def test_chunks_sent_ahead_fill_the_pool_to_its_limit_and_come_back_whole_and_in_order(count: int) -> None:
    items = readable_and_not(count)
    limits = MailLimits()
    with ThreadPoolExecutor(2) as pool:
        stream = Extracted(items, pool, {}, limits, 64)
        stream.send_ahead()
        stream.send_ahead()  # a second call adds nothing past the limit
        assert len(stream.in_flight) == min(-(-count // 64), IN_FLIGHT + 1)
        chunks = list(stream)
    assert [len(chunk) for chunk, _ in chunks] == [64] * (count // 64) + ([count % 64] if count % 64 else [])
    assert [item for chunk, _ in chunks for item in chunk] == items
    for chunk, found in chunks:
        for item, extraction in zip(chunk, found, strict=True):
            if isinstance(item, Unreadable):
                assert extraction is None
            else:
                assert extraction == extract_rows(item.raw, item.kind, {}, limits)


def test_without_a_pool_nothing_is_sent_ahead_or_read_before_iterating() -> None:
    items = readable_and_not(70)
    taken: list[int] = []

    def reading() -> Iterator[Delivery | Unreadable]:
        for n, item in enumerate(items):
            taken.append(n)
            yield item

    stream = Extracted(reading(), None, {}, MailLimits(), 64)
    stream.send_ahead()
    assert taken == [] and not stream.in_flight
    chunks = list(stream)
    assert [chunk for chunk, _ in chunks] == [items[:64], items[64:]]
    assert all(found == [None] * len(chunk) for chunk, found in chunks)


def test_a_backfill_whose_database_cannot_be_opened_stops_its_workers_and_raises(tmp_path: Path) -> None:
    # The first chunks are in the workers before the database is opened; the failure must not leave them behind.
    db = tmp_path / "m.db"
    db.write_bytes(b"not a database " * 1000)
    code = ("import os, sys, sqlite3, multiprocessing; from mailhook.config.load import load;"
            " from mailhook.files.ingest import ingest_paths\n"
            "try:\n"
            f"    ingest_paths([{str(mbox_around_a_chunk_boundary(tmp_path / 'in.mbox'))!r}], load({{}}, os.environ),"
            " os.environ, quiet=True, stdin=None, interactive=False, workers=2)\n"
            "except sqlite3.DatabaseError as exc:\n"
            "    print(type(exc).__name__, len(multiprocessing.active_children()))")
    env = {**os.environ, **ALLOW_ROOT, "MAILHOOK_CONFIG": "", "MAILHOOK_DB": str(db)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False,
                            env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["DatabaseError", "0"]


@pytest.mark.parametrize("window", [1, 63, 64, 65])
def test_a_backfill_with_a_window_below_at_and_past_a_chunk_stores_what_the_default_window_stores(
    tmp_path: Path, window: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    mbox = mbox_around_a_chunk_boundary(tmp_path / "in.mbox")
    default = tmp_path / "default.db"
    assert ingest(default, mbox, 1).returncode == 65
    env = {"MAILHOOK_CONFIG": "", "MAILHOOK_DB": str(tmp_path / "small.db"), "MAILHOOK_MAX_MESSAGE_SIZE": str(LIMIT)}
    monkeypatch.setattr(file_ingest, "_WINDOW", window)
    assert file_ingest.ingest_paths([str(mbox)], load({}, env), env, quiet=True, stdin=None, interactive=False,
                              workers=1) == 65
    assert contents(tmp_path / "small.db") == contents(default)
