"""Lines a thread holds (a commit's deliveries) are written in one write, as one by one, before any answer."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest
from loop_support import WakeUps

from mailhook import logs
from mailhook.delivery_log import log_delivery
from mailhook.models import Delivery, Receipt
from mailhook.pipeline import Pipeline
from mailhook.store.writer import Writer

SEED = Path(__file__).parent.parent / "fixtures" / "seed"
HOSTILE = 'a\rINFO mailhook.ingest: forged\x00\n"x status=stored"@b \u2028 end'


class Recording:
    """A stderr that keeps each write apart, and notes it among other events."""

    def __init__(self, events: list[object] | None = None) -> None:
        self.writes: list[str] = []
        self.events = events if events is not None else []

    def write(self, text: str) -> int:
        self.writes.append(text)
        self.events.append(("write", text))
        return len(text)

    def flush(self) -> None:
        pass


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recording]:
    """A recording stderr, installed by `_setup`; mailhook's handlers are restored after the test."""
    root = logging.getLogger("mailhook")
    handlers, level = list(root.handlers), root.level
    stream = Recording()
    stream.monkeypatch = monkeypatch  # type: ignore[attr-defined]
    yield stream
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def _setup(stderr: Recording, fmt: str = "text", **options: bool) -> None:
    """Install `stderr` as sys.stderr (inside the test: pytest sets its own before each phase), then `logs.setup`."""
    stderr.monkeypatch.setattr(sys, "stderr", stderr)  # type: ignore[attr-defined]
    logs.setup("info", fmt, **options)


def _deliveries() -> list[tuple[Delivery, Receipt | None, float]]:
    smtp = Delivery("smtp", b"x" * 2311, "t", envelope_from="bounce@callfire.com", envelope_to=("ops@example.com",),
                    remote_addr="203.0.113.5")
    hostile = Delivery("smtp", b"y", "t", envelope_from=HOSTILE, envelope_to=("a b@example.com", HOSTILE),
                       remote_addr="127.0.0.1")
    http = Delivery("http", b"{}", "t", kind="document", remote_addr="::1", content_type="application/json")
    return [
        (smtp, Receipt(42, "stored", 1, 0, None, "<m.1@callfire.com>", ("TEXT_SENT",)), 0.0042),
        (hostile, Receipt(43, "quarantined", 0, 0, f"unreadable: {HOSTILE}", HOSTILE), 0.1),
        (http, Receipt(44, "duplicate", 0, 2, None, None), 12.34567),
        (http, None, 0.5),
        (smtp, Receipt(45, "stored", 3, 1, None, "<m.2@callfire.com>", ("A", "B", "C")), 0.0),
    ]


def _log_all() -> None:
    for delivery, receipt, elapsed in _deliveries():
        log_delivery(delivery, receipt, elapsed)
    logging.getLogger("mailhook.writer").warning("a line of another logger, peer %s", HOSTILE)
    try:
        raise ValueError(HOSTILE)
    except ValueError:
        logging.getLogger("mailhook.writer").exception("with a traceback")
    logging.getLogger("mailhook.writer").debug("below the level: not written")


@pytest.mark.parametrize(
    ("fmt", "journal", "pid"),
    [("text", False, False), ("text", True, False), ("text", False, True), ("json", False, False),
     ("json", False, True)],
)  # fmt: skip
def test_held_lines_are_written_in_one_write_byte_for_byte_as_written_one_by_one(
    stderr: Recording, fmt: str, journal: bool, pid: bool
) -> None:
    _setup(stderr, fmt, journal=journal, pid=pid)
    _log_all()
    one_by_one = list(stderr.writes)
    assert len(one_by_one) == 7
    stderr.writes.clear()
    with logs.HeldLines():
        _log_all()
        assert stderr.writes == []
    assert len(stderr.writes) == 1
    held = stderr.writes[0]
    if fmt == "json":
        # Each record has its own time; everything else is the same, key for key, in the same order.
        def untimed(text: str) -> list[list[tuple[str, object]]]:
            return [[(k, v) for k, v in json.loads(line).items() if k != "time"] for line in text.splitlines()]

        assert untimed(held) == untimed("".join(one_by_one))
        assert [line[: line.index('"time"')] for line in held.splitlines()] == ["{"] * 7
    else:
        assert held == "".join(one_by_one)
    assert held.count("\n") == "".join(one_by_one).count("\n") and held.endswith("\n")


def test_what_waits_for_the_lines_runs_after_they_are_written_and_at_once_without_a_hold(stderr: Recording) -> None:
    _setup(stderr)
    events = stderr.events
    logs.after_lines(events.append, "at once")
    assert events == ["at once"]
    with logs.HeldLines():
        log_delivery(*_deliveries()[0])
        logs.after_lines(events.append, "answer 1")
        with logs.HeldLines():  # nested: only the outermost hold writes
            log_delivery(*_deliveries()[2])
            logs.after_lines(events.append, "answer 2")
        assert events == ["at once"]
    assert [e if isinstance(e, str) else e[0] for e in events] == ["at once", "write", "answer 1", "answer 2"]
    assert events[1][1].count("\n") == 2  # type: ignore[index]


def test_a_failing_write_or_answer_does_not_keep_the_other_answers(
    stderr: Recording, monkeypatch: pytest.MonkeyPatch
) -> None:
    _setup(stderr)
    monkeypatch.setattr(logging, "raiseExceptions", False)  # handleError then stays silent, as in production

    def broken(text: str) -> int:
        raise OSError("stderr is gone")

    monkeypatch.setattr(stderr, "write", broken)
    answered: list[int] = []

    def fails() -> None:
        raise RuntimeError("a callback that fails")

    with logs.HeldLines():
        log_delivery(*_deliveries()[0])
        logs.after_lines(answered.append, 1)
        logs.after_lines(fails)
        logs.after_lines(answered.append, 2)
    assert answered == [1, 2]


def _document(name: str) -> Delivery:
    return Delivery("http", (SEED / name).read_bytes(), "t", kind="document", remote_addr="127.0.0.1")


def test_a_commits_deliveries_are_logged_in_one_write_and_each_answered_only_after_it(
    stderr: Recording, tmp_path: Path
) -> None:
    _setup(stderr)
    events = stderr.events
    writer = Writer(tmp_path / "m.db", busy_timeout=10.0)
    pipeline = Pipeline(writer)
    names = ["text-outbound.xml", "text-inbound.json", "call-outbound.json", "campaign.json", "text-outbound-json.json"]
    try:
        pipeline.ingest(_document("text-outbound.xml"))  # the database exists; the line of this one is not counted
        events.clear()
        documents = [_document(name) for name in names[1:]]
        futures: list[Future[Receipt]] = []

        def answered(delivery: Delivery) -> None:
            futures.append(pipeline.submit(delivery))
            futures[-1].add_done_callback(lambda done: events.append(("answer", done.result().delivery_id)))

        blocker = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            answered(documents[0])
            deadline = time.monotonic() + 10
            while writer.depth and time.monotonic() < deadline:  # the writer took the first and waits on the lock
                time.sleep(0.01)
            for delivery in documents[1:]:
                answered(delivery)
            assert writer.depth == 3
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        receipts = [future.result(timeout=10) for future in futures]
    finally:
        writer.close()
    assert [kind for kind, _ in events] == ["write", "answer", "write", "answer", "answer", "answer"]
    first, rest = events[0][1], events[2][1]
    assert isinstance(first, str) and isinstance(rest, str)
    assert first.count("\n") == 1 and f"delivery_id={receipts[0].delivery_id} " in first
    assert rest.count("\n") == 3
    assert all(f"delivery_id={r.delivery_id} " in line for r, line in zip(receipts[1:], rest.splitlines(), strict=True))


def test_a_delivery_from_the_loop_is_answered_after_its_line_is_written(stderr: Recording, tmp_path: Path) -> None:
    import asyncio

    _setup(stderr)
    writer = Writer(tmp_path / "m.db")
    pipeline = Pipeline(writer)
    try:
        async def scenario() -> list[str]:
            seen: list[str] = []
            receipts = await asyncio.gather(*(pipeline.ingest_soon(_document(name)) for name in
                                              ("text-outbound.xml", "text-inbound.json", "call-outbound.json")))
            for receipt in receipts:
                seen.append(next(w for w in stderr.writes if f"delivery_id={receipt.delivery_id} " in w))
            return seen

        assert len(asyncio.run(scenario())) == 3
    finally:
        writer.close()
    assert "".join(stderr.writes).count("mailhook.ingest: delivery") == 3


def test_a_json_line_is_what_json_dumps_writes_for_its_fields() -> None:
    from decimal import Decimal

    formatter = logs.JsonFormatter(pid=True)
    entry = logging.LogRecord("mailhook.ingest", logging.WARNING, "", 0, "delivery %s", ("ünï \u2028",), None)
    entry.delivery = {"channel": "smtp", "peer": HOSTILE, "message_id": None, "events": 3, "ms": 4.2,
                      "size": 10**20, "ok": True, "odd": Decimal("1.50"), "path": Path("/x y")}
    line = formatter.format(entry)
    data = json.loads(line)
    expected = {"time": data["time"], "level": "warning", "logger": "mailhook.ingest",
                "message": "delivery ünï \\u2028", "pid": os.getpid(),
                **{k: logs.escape(v) if isinstance(v, str) else v for k, v in entry.delivery.items()}}
    assert line == json.dumps(expected, default=str)


def test_a_workers_answers_of_one_frame_are_logged_in_one_write_each_answered_after_it_without_a_wake_up(
    stderr: Recording,
) -> None:
    # A worker of `serve --workers N` reads the parent's answers on its loop: the lines of a frame's
    # deliveries go in one write, and their waiters are resolved without a thread-safe wake-up of that loop.
    import asyncio
    import socket

    from mailhook.group import wire
    from mailhook.group.channel import Channel
    from mailhook.group.remote import RemoteStorage

    _setup(stderr, pid=True)
    events = stderr.events
    worker_end, parent_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    parent = Channel(parent_end)

    async def scenario() -> tuple[int, list[Receipt]]:
        loop = asyncio.get_running_loop()
        storage = RemoteStorage(Channel(worker_end), on_ping=lambda _: None, on_lost=lambda: None, loop=loop)
        pipeline = Pipeline(storage)
        waiters = [pipeline.ingest_soon(_document(name))
                   for name in ("text-outbound.xml", "text-inbound.json", "call-outbound.json")]
        for waiter in waiters:
            waiter.add_done_callback(lambda done: events.append(("answer", done.result().delivery_id)))
        frame = await loop.run_in_executor(None, parent.receive_all)
        assert frame is not None and len(frame) == 3
        wakeups = WakeUps(loop)
        parent.send_all([("receipt", number, wire.receipt_values(Receipt(50 + number, "stored", 1)))
                         for _, number, *_ in frame])
        receipts = await asyncio.gather(*waiters)
        storage.close()
        return wakeups.count, receipts

    try:
        wakeups, receipts = asyncio.run(scenario())
    finally:
        parent.close()
    assert wakeups == 0
    assert [receipt.delivery_id for receipt in receipts] == [50, 51, 52]
    assert [kind for kind, _ in events] == ["write", "answer", "answer", "answer"]
    lines = events[0][1]
    assert isinstance(lines, str) and lines.count("\n") == 3
    assert all(f"delivery_id={50 + n} " in line for n, line in enumerate(lines.splitlines()))
