"""DATA and a whole body answered as they arrive (smtp/body_at_once.py): the replies, limits and stores of the loop.

Each case over a real socket runs twice, with the session's answers at once
and without them (`BodyAtOnce.data_at_once` off: the command loop and
`smtp_DATA` answer everything, as before), and must give the same bytes on
the wire, the same stored messages and the same in-flight budget; each also
says whether the body was stored from the protocol callback
(`store_at_once`) or handed on to the loop.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from conftest import StartServer
from hypothesis import given, settings
from hypothesis import strategies as st
from process_support import wait_until
from smtp_support import locked, notification, on_the_wire, raw_session, read_reply, rows, say

from mailhook.budget import InflightBudget
from mailhook.server import Runtime
from mailhook.smtp.body_at_once import BodyAtOnce
from mailhook.smtp.door import SmtpDoor
from mailhook.smtp.fastpath import END, read_body, whole_body
from mailhook.smtp.handler import StoreOutcome
from mailhook.smtp.mail_rcpt import MailAndRcpt

LIMIT = 3000  # smtp.max_message_size in these tests: the line limit is the same (at least 1001, at most 1 MiB)
ENVELOPE = (b"EHLO client.test", b"MAIL FROM:<notifications@callfire.com>", b"RCPT TO:<ops@example.com>")


class Paths:
    """Count the bodies stored as they arrived (`store_at_once`), the real method run as it is."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, at_once: bool) -> None:
        self.at_once = 0
        if not at_once:
            monkeypatch.setattr(BodyAtOnce, "data_at_once", MailAndRcpt.data_at_once)
        store_at_once = BodyAtOnce.store_at_once

        def counted(session: BodyAtOnce, *args: Any) -> None:
            self.at_once += 1
            store_at_once(session, *args)

        monkeypatch.setattr(BodyAtOnce, "store_at_once", counted)


def _body(size: int) -> bytes:
    """A body of exactly `size` bytes as sent, its end included: a notification, then lines of padding."""
    head = on_the_wire(notification(970_000_000 + size).replace(b"\n", b"\r\n"))
    pad = size - len(head) - 3  # the end's ".CRLF" (its CRLF before is the last line's)
    assert pad >= 72, size
    lines, last = divmod(pad, 70)
    if last < 2:  # the last line takes the rest: 70 or 71 bytes
        lines, last = lines - 1, last + 70
    body = head + (b"x" * 68 + b"\r\n") * lines + b"x" * (last - 2) + b"\r\n" + b".\r\n"
    assert len(body) == size and body.endswith(END), (size, len(body))
    return body


def _to_data(f: BinaryIO) -> None:
    """Send the envelope, each command answered 2xx, then DATA, answered 354."""
    for line in ENVELOPE:
        assert say(f, line)[:1] == b"2"
    assert say(f, b"DATA").startswith(b"354 ")


def _transaction(runtime: Runtime, pieces: list[bytes], *, pause: float = 0.0, end: bytes = b"QUIT\r\n") -> list[bytes]:
    """Send the envelope, DATA, then `pieces` (each its own write), then `end`; return every reply after DATA's."""
    sock, f = raw_session(runtime)
    with sock, f:
        _to_data(f)
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(pause)
        sock.sendall(end)
        replies = []
        while line := read_reply(f):
            replies.append(line)
        return replies


def _stored(runtime: Runtime) -> list[tuple[Any, ...]]:
    db = runtime.settings.storage.db
    assert db is not None
    return rows(db, "SELECT raw, status FROM deliveries ORDER BY id")


Both = Callable[..., tuple[list[bytes], list[Any], int]]


@pytest.fixture
def both(start_server: StartServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Both:
    """Return `both(send, **sections)`: `send` run with the answers at once and without, on servers of their own.

    Both must give the same replies, stores and in-flight budget; it returns
    them, and how many bodies were stored as they arrived.
    """
    runs = itertools.count()

    def run(at_once: bool, send: Callable[[Runtime], list[bytes]], sections: dict[str, Any]) -> tuple[Any, ...]:
        with monkeypatch.context() as patch:
            paths = Paths(patch, at_once=at_once)
            smtp = {"max_message_size": LIMIT, **sections.get("smtp", {})}
            storage = {**sections.get("storage", {}), "db": tmp_path / f"{next(runs)}.db"}
            runtime = start_server(**{**sections, "smtp": smtp, "storage": storage})
            replies = send(runtime)
            wait_until(lambda: runtime.inflight.used == 0, 10, "the in-flight bytes given back")
            return replies, _stored(runtime), runtime.inflight.used, paths.at_once

    def run_both(send: Callable[[Runtime], list[bytes]], **sections: Any) -> tuple[list[bytes], list[Any], int]:
        on = run(True, send, sections)
        off = run(False, send, sections)
        assert on[:3] == off[:3]
        assert off[3] == 0
        return on[0], on[1], on[3]

    return run_both


@pytest.mark.parametrize("size", [LIMIT - 1, LIMIT, LIMIT + 1, LIMIT + 3, LIMIT + 4, LIMIT + 60])
def test_a_body_at_the_size_limit_is_stored_as_it_arrives_and_past_it_read_and_refused_by_the_loop(
    both: Both, size: int,
) -> None:
    body = _body(size)
    replies, stored, at_once = both(lambda runtime: _transaction(runtime, [body]))
    # Past min(line limit, size limit) the body goes to `read_body`, which stores it while its content (the body
    # without the end's ".CRLF") is within the limit, and refuses it after.
    assert at_once == (1 if size <= LIMIT else 0)
    if size - 3 <= LIMIT:
        assert replies[0].startswith(b"250 2.0.0 OK delivery 1 ") and len(stored) == 1
    else:
        assert replies[0] == b"552 Error: Too much mail data\r\n" and stored == []
    assert replies[-1].startswith(b"221")


@pytest.mark.parametrize("length", [LIMIT - 5, LIMIT - 4, LIMIT - 2, LIMIT - 1, LIMIT, LIMIT + 1])
def test_a_body_of_one_line_at_the_line_limit_is_stored_as_it_arrives_and_past_it_read_by_the_loop(
    both: Both, length: int,
) -> None:
    # One line of `length` bytes and its CRLF, then the end: LIMIT bytes in all at LIMIT - 5.
    body = b"y" * length + END
    replies, stored, at_once = both(lambda runtime: _transaction(runtime, [body]))
    assert at_once == (1 if len(body) <= LIMIT else 0)
    if length == LIMIT - 5:
        assert replies[0].startswith(b"250 ") and stored[0][0] == body[:-3]
    if length >= LIMIT:
        assert replies[0] in (b"500 Line too long (see RFC5321 4.5.3.1.6)\r\n", b"552 Error: Too much mail data\r\n")


@pytest.mark.parametrize("room", [0, 1])
def test_a_body_that_fits_the_in_flight_budget_exactly_is_stored_as_it_arrives_and_one_byte_short_gets_452(
    both: Both, room: int,
) -> None:
    body = _body(2000)

    def send(runtime: Runtime) -> list[bytes]:
        # Another message holds all of the budget but len(body) - room bytes (taken while the server is idle).
        budget = runtime.inflight
        hold = budget.hold()
        assert hold.grow(budget.limit - len(body) + room)
        try:
            return _transaction(runtime, [body])
        finally:
            hold.close()

    replies, stored, at_once = both(send, parsing={"inflight_budget": 100_000})
    assert at_once == (0 if room else 1)
    if room:
        assert replies[0] == b"452 4.3.1 Insufficient system storage\r\n" and stored == []
    else:
        assert replies[0].startswith(b"250 2.0.0 OK delivery 1 ") and len(stored) == 1


@pytest.mark.parametrize("after", [
    b"NOOP\r\n",  # a command pipelined after the end, in the body's own write
    b"MAIL FROM:<notifications@callfire.com>\r\n",
    b"QU",  # part of one (QUIT, its rest in the next write)
])
def test_bytes_after_the_end_in_the_same_write_send_the_body_to_the_loop(
    both: Both, after: bytes,
) -> None:
    body = _body(1500)
    replies, stored, at_once = both(
                                     lambda runtime: _transaction(runtime, [body + after], end=_rest(after)))
    assert at_once == 0 and len(stored) == 1 and replies[0].startswith(b"250 2.0.0 OK delivery 1 ")


def _rest(after: bytes) -> bytes:
    return b"IT\r\n" if after == b"QU" else b"QUIT\r\n"


def test_a_body_in_two_writes_is_read_by_the_loop(both: Both) -> None:
    body = _body(1500)
    replies, stored, at_once = both(
                                     lambda runtime: _transaction(runtime, [body[:700], body[700:]], pause=0.2))
    assert at_once == 0 and len(stored) == 1 and stored[0][0] == body[:-3]
    assert replies[0].startswith(b"250 2.0.0 OK delivery 1 ")


def test_commands_sent_while_the_body_is_stored_are_answered_after_its_reply(both: Both) -> None:
    body = _body(1500)

    def send(runtime: Runtime) -> list[bytes]:
        door = next(d for d in runtime.doors if isinstance(d, SmtpDoor))
        db = runtime.settings.storage.db
        assert db is not None
        sock, f = raw_session(runtime)
        with sock, f:
            _to_data(f)
            with locked(db):
                sock.sendall(body)
                wait_until(lambda: len(door.storing) == 1, 10, "the message being stored")
                sock.sendall(b"NOOP\r\n")
                time.sleep(0.2)
                sock.sendall(b"MAIL FROM:<notifications@callfire.com>\r\nQUIT\r\n")
                time.sleep(0.2)
            replies = []
            while line := read_reply(f):
                replies.append(line)
            return replies

    replies, stored, at_once = both(send)
    assert at_once == 1 and len(stored) == 1
    assert replies[0].startswith(b"250 2.0.0 OK delivery 1 ")
    assert replies[1:] == [b"250 OK\r\n", b"250 2.1.0 OK\r\n", b"221 Bye\r\n"]


@pytest.mark.parametrize("leaving", ["eof", "reset"])
def test_a_client_that_leaves_while_its_body_is_stored_leaves_the_caps_and_the_store_goes_on(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch, leaving: str,
) -> None:
    body = _body(1500)
    paths = Paths(monkeypatch, at_once=True)
    runtime = start_server()
    door = next(d for d in runtime.doors if isinstance(d, SmtpDoor))
    db = runtime.settings.storage.db
    assert db is not None
    sock, f = raw_session(runtime)
    with locked(db):
        with sock, f:
            _to_data(f)
            sock.sendall(body)
            wait_until(lambda: len(door.storing) == 1, 10, "the message being stored")
            if leaving == "reset":  # closed with an RST: the server sees the connection lost, not an EOF
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        wait_until(lambda: not door.sessions, 10, "the session gone with its client")
        stores = list(door.storing)
        assert len(stores) == 1 and not stores[0].done()  # its store goes on, and the door waits for it
        assert runtime.inflight.used == len(body)  # its bytes still held: given back when the store is done
    wait_until(lambda: not door.storing, 30, "the store done")
    wait_until(lambda: runtime.inflight.used == 0, 10, "the message's in-flight bytes given back")
    assert paths.at_once == 1
    assert [raw for raw, _ in _stored(runtime)] == [body[:-3]]


def test_a_body_that_never_comes_after_a_354_sent_at_once_times_out_as_before(both: Both) -> None:
    def send(runtime: Runtime) -> list[bytes]:
        sock, f = raw_session(runtime)
        with sock, f:
            _to_data(f)
            return [read_reply(f)]

    replies, stored, _ = both(send, smtp={"data_timeout": 1.0, "idle_timeout": 60.0})
    assert replies == [b"421 4.4.2 Timeout, closing connection\r\n"] and stored == []


@pytest.mark.parametrize("line", [b"DATA x", b"data", b"DATA  "])
def test_data_lines_answered_at_once_only_where_the_loop_would_send_354(
    both: Both, line: bytes,
) -> None:
    body = _body(1500)

    def send(runtime: Runtime) -> list[bytes]:
        sock, f = raw_session(runtime)
        with sock, f:
            for command in ENVELOPE:
                assert say(f, command)[:1] == b"2"
            replies = [say(f, line)]
            if replies[0].startswith(b"354"):
                sock.sendall(body)
                replies.append(read_reply(f))
            return replies

    replies, _, at_once = both(send)
    if line == b"DATA x":
        assert replies == [b"501 Syntax: DATA\r\n"] and at_once == 0
    else:
        assert replies[0].startswith(b"354") and replies[1].startswith(b"250 ") and at_once == 1


def test_data_before_any_recipient_gets_the_loops_503(both: Both) -> None:
    def send(runtime: Runtime) -> list[bytes]:
        sock, f = raw_session(runtime)
        with sock, f:
            assert say(f, ENVELOPE[0])[:1] == b"2"
            assert say(f, ENVELOPE[1])[:1] == b"2"
            return [say(f, b"DATA"), say(f, b"QUIT")]

    replies, _, _ = both(send)
    assert replies == [b"503 Error: need RCPT command\r\n", b"221 Bye\r\n"]


_BODY_PIECES = st.lists(st.sampled_from([b"a", b".", b"..", b"\r\n", b"\r", b"\n", b"\r\n.\r\n", b".\r\n", b"xyz"]),
                        max_size=12)


@settings(max_examples=400, deadline=None)
@given(pieces=_BODY_PIECES, limit=st.integers(1, 40))
def test_whole_body_gives_what_read_body_reads_or_declines(pieces: list[bytes], limit: int) -> None:
    data = b"".join(pieces)
    content = whole_body(data, limit)
    if content is None:
        return
    loop = asyncio.new_event_loop()
    try:
        reader = asyncio.StreamReader(limit=max(limit, 1001), loop=loop)
        reader.feed_data(data + b"NEXT")
        reader.feed_eof()
        budget = InflightBudget(1 << 20)
        read, refusal = loop.run_until_complete(read_body(reader, max(limit, 1001), limit, budget.hold()))
        rest = loop.run_until_complete(reader.read())
    finally:
        loop.close()
    assert (read, refusal, rest) == (content, None, b"NEXT")  # the whole of `data`, nothing after it
    assert len(data) <= limit


@pytest.mark.parametrize(("data", "expected"), [
    (b".\r\n", b""),
    (b"\r\n.\r\n", b"\r\n"),
    (b"..a\r\n..\r\n.\r\n", b".a\r\n.\r\n"),
    (b".\r\nx\r\n.\r\n", None),  # ends at its start: the rest is a command
    (b"a\r\n.\r\nb\r\n.\r\n", None),  # ends twice
    (b"a\r\n.\r\n ", None),
    (b"a\r\n", None),
])
def test_whole_body_of_edge_cases(data: bytes, expected: bytes | None) -> None:
    assert whole_body(data, 100) == expected
    assert whole_body(data, len(data)) == expected
    assert whole_body(data, len(data) - 1) is None


def test_a_store_cancelled_while_its_body_taken_at_once_waits_ends_the_session_as_the_loop_ends_it(
    both: Both,
) -> None:
    # The session's outcome cancelled as the hand-over cancels it when the store's own future was cancelled
    # (`handover.settle`, by `Outcome.drop`, which the outcome does not refuse): the loop's `await` raises, and
    # the session closes without a reply.
    body = _body(1500)

    def send(runtime: Runtime) -> list[bytes]:
        door = next(d for d in runtime.doors if isinstance(d, SmtpDoor))
        db = runtime.settings.storage.db
        assert db is not None
        sock, f = raw_session(runtime)
        with sock, f:
            _to_data(f)
            (session,) = list(door.sessions)
            with locked(db):
                sock.sendall(body)
                wait_until(lambda: len(door.storing) == 1, 10, "the message being stored")
                (outcome,) = list(door.storing)
                session.loop.call_soon_threadsafe(outcome.drop)
                wait_until(lambda: not door.storing, 10, "the store given up")
                replies = [read_reply(f)]
            wait_until(lambda: not door.sessions, 10, "the session closed")
            return replies

    replies, _, at_once = both(send, storage={"busy_timeout": 30})
    assert replies == [b""] and at_once == 1


def test_a_body_stored_as_it_arrives_is_replied_to_in_the_loop_turn_that_settles_its_store(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Loop turns counted by a callback that schedules itself again (`call_soon`: once per turn of the loop).
    turn = [0]
    settled: list[int] = []
    replied: list[int] = []
    set_result, replied_at_once = StoreOutcome.set_result, BodyAtOnce._replied

    def counted_set_result(outcome: StoreOutcome, result: Any) -> None:
        settled.append(turn[0])
        set_result(outcome, result)

    def counted_replied(session: BodyAtOnce, *args: Any) -> None:
        replied.append(turn[0])
        replied_at_once(session, *args)

    monkeypatch.setattr(StoreOutcome, "set_result", counted_set_result)
    monkeypatch.setattr(BodyAtOnce, "_replied", counted_replied)
    paths = Paths(monkeypatch, at_once=True)
    runtime = start_server()
    door = next(d for d in runtime.doors if isinstance(d, SmtpDoor))
    sock, f = raw_session(runtime)
    with sock, f:
        _to_data(f)
        (session,) = list(door.sessions)
        ticking = [True]

        def tick() -> None:
            turn[0] += 1
            if ticking[0]:
                session.loop.call_soon(tick)

        session.loop.call_soon_threadsafe(tick)
        wait_until(lambda: turn[0] > 0, 10, "the turns counted")
        sock.sendall(_body(1500))
        assert read_reply(f).startswith(b"250 2.0.0 OK delivery 1 ")
        ticking[0] = False
    assert paths.at_once == 1 and len(settled) == 1 and replied == settled
