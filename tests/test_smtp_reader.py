"""The session's reader gives what asyncio's StreamReader gives: the same reads, errors, pauses and leftovers.

Both readers are fed the same pipelined transcript, cut into pieces at every
place, and read as the session reads it (commands with the command loop's
recovery from a long line, DATA's peek and its searches for the end); the log
of every result, error and transport pause must be the same.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from process_support import wait_until
from smtp_support import client, notification, rows

from mailhook.server import Runtime
from mailhook.smtp.door import SmtpDoor
from mailhook.smtp.fastpath import END
from mailhook.smtp.reader import SessionReader

LIMIT = 16
# Commands, one line past the limit, another far past it (more than twice the limit: the transport pauses),
# a DATA body read by its peek and searches, a pipelined command and an unfinished line.
TRANSCRIPT = (b"EHLO x\r\nMAIL FROM:<a@b>\r\n" + b"L" * 20 + b"\r\n" + b"M" * 40 + b"\r\n"
              b"DATA\r\nSubject: s\r\n\r\nhi\r\n.\r\nQUIT\r\nunfinish")
# The reads: ("line", sep) as the command loop reads (after a LimitOverrunError, read what it consumed and search
# again), ("until", sep), ("exactly", n) and ("read", n) as DATA's reader and aiosmtpd's AUTH read.
READS: list[tuple[str, Any]] = [
    ("line", b"\n"), ("line", b"\n"), ("line", b"\n"), ("line", b"\n"), ("line", b"\n"),
    ("exactly", 3), ("until", END), ("until", b".\r\n"), ("line", b"\n"), ("until", b"\r\n"), ("read", 4),
    ("exactly", 2), ("read", -1),
]


class RecordingTransport(asyncio.Transport):
    """A transport that writes nothing and records when its reader pauses and resumes it."""

    def __init__(self, log: list[object]) -> None:
        super().__init__()
        self.log = log

    def pause_reading(self) -> None:
        self.log.append("pause")

    def resume_reading(self) -> None:
        self.log.append("resume")


async def _read(reader: asyncio.StreamReader, reads: list[tuple[str, Any]], log: list[object]) -> None:
    for kind, arg in reads:
        try:
            if kind == "line":
                try:
                    log.append(("line", await reader.readuntil(arg)))
                except asyncio.LimitOverrunError as error:
                    log.append(("overrun", error.args[0], error.consumed))
                    log.append(("read", await reader.read(error.consumed)))
                    while True:
                        try:
                            log.append(("rest", await reader.readuntil(arg)))
                            break
                        except asyncio.LimitOverrunError as more:
                            log.append(("overrun", more.args[0], more.consumed))
                            log.append(("read", await reader.read(more.consumed)))
            elif kind == "until":
                log.append(("until", await reader.readuntil(arg)))
            elif kind == "exactly":
                log.append(("exactly", await reader.readexactly(arg)))
            else:
                log.append(("read", await reader.read(arg)))
        except asyncio.IncompleteReadError as error:
            log.append(("incomplete", error.partial, error.expected))
        except asyncio.LimitOverrunError as error:
            log.append(("overrun", error.args[0], error.consumed))
        except Exception as error:  # noqa: BLE001 - compared, not handled
            log.append((type(error).__name__, str(error)))


def _new_reader(reader_type: type[asyncio.StreamReader]) -> asyncio.StreamReader:
    """Return a new reader of `reader_type` (asyncio's or the session's) on the running loop, with the test's limit."""
    loop = asyncio.get_running_loop()
    return SessionReader(LIMIT, loop) if reader_type is SessionReader else asyncio.StreamReader(limit=LIMIT, loop=loop)


async def _run(reader_type: type[asyncio.StreamReader], pieces: list[bytes], end: str,
               reads: list[tuple[str, Any]]) -> list[object]:
    """Feed `pieces` (then EOF, or a lost connection) to a new reader while `reads` read it; return the log."""
    log: list[object] = []
    reader = _new_reader(reader_type)
    reader.set_transport(RecordingTransport(log))
    task = asyncio.create_task(_read(reader, reads, log))
    for piece in pieces:
        await asyncio.sleep(0)
        log.append(("fed", len(piece)))
        reader.feed_data(piece)
        await asyncio.sleep(0)
    if end == "eof":
        reader.feed_eof()
    else:
        reader.set_exception(ConnectionResetError("lost"))
    await task
    log.append(("at_eof", reader.at_eof()))
    return log


def _both(pieces: list[bytes], end: str, reads: list[tuple[str, Any]] = READS) -> tuple[list[object], list[object]]:
    async def run() -> tuple[list[object], list[object]]:
        return (await _run(asyncio.StreamReader, pieces, end, reads), await _run(SessionReader, pieces, end, reads))

    return asyncio.run(run())


@pytest.mark.parametrize("end", ["eof", "lost"])
def test_a_pipelined_transcript_cut_at_every_place_reads_as_asyncios_stream_reader_reads_it(end: str) -> None:
    async def run() -> None:
        for cut in range(len(TRANSCRIPT) + 1):
            pieces = [TRANSCRIPT[:cut], TRANSCRIPT[cut:]]
            expected = await _run(asyncio.StreamReader, pieces, end, READS)
            assert await _run(SessionReader, pieces, end, READS) == expected, cut

    asyncio.run(run())


def test_the_transcript_read_a_byte_at_a_time_and_whole_reads_as_asyncios_reader_reads_it() -> None:
    for pieces in ([TRANSCRIPT[i:i + 1] for i in range(len(TRANSCRIPT))], [TRANSCRIPT]):
        expected, got = _both(pieces, "eof")
        assert got == expected
    assert "pause" in expected and "resume" in expected  # the whole transcript is more than twice the limit


def test_a_transcript_cut_in_three_at_every_pair_of_places_reads_as_asyncios_reader_reads_it() -> None:
    async def run() -> None:
        for a, b in itertools.combinations(range(0, len(TRANSCRIPT) + 1, 3), 2):
            pieces = [TRANSCRIPT[:a], TRANSCRIPT[a:b], TRANSCRIPT[b:]]
            expected = await _run(asyncio.StreamReader, pieces, "eof", READS)
            assert await _run(SessionReader, pieces, "eof", READS) == expected, (a, b)

    asyncio.run(run())


@pytest.mark.parametrize("line", [b"x" * (LIMIT - 1), b"x" * LIMIT, b"x" * (LIMIT + 1), b"x" * (LIMIT + 2),
                                  b"x" * (2 * LIMIT), b"x" * (2 * LIMIT + 1)])
def test_lines_at_and_past_the_limit_read_as_asyncios_reader_reads_them(line: bytes) -> None:
    for stream in (line + b"\r\nNEXT\r\n", line):  # ended, and cut off by EOF mid-line
        for cut in range(len(stream) + 1):
            expected, got = _both([stream[:cut], stream[cut:]], "eof",
                                  [("line", b"\n"), ("until", b"\r\n"), ("exactly", 2), ("read", -1)])
            assert got == expected, (stream, cut)


async def _second_reads_while_one_waits(reader: asyncio.StreamReader) -> tuple[asyncio.Task[bytes], list[object]]:
    """Start a read that waits, then try a second `readuntil` and `readexactly`: the first read, and their errors."""
    first = asyncio.create_task(reader.readuntil(b"\n"))
    await asyncio.sleep(0)
    refusals: list[object] = []
    for second in (reader.readuntil(b"\n"), reader.readexactly(1)):
        try:
            await second
        except RuntimeError as error:
            refusals.append(str(error))
    return first, refusals


def _on_both(scenario: Callable[[asyncio.StreamReader], Awaitable[list[object]]]) -> tuple[list[object], list[object]]:
    """Run `scenario` on a new asyncio StreamReader, then on a new SessionReader: what each gave."""
    async def both() -> tuple[list[object], list[object]]:
        return await scenario(_new_reader(asyncio.StreamReader)), await scenario(_new_reader(SessionReader))

    return asyncio.run(both())


def test_a_second_read_while_one_waits_is_refused_as_asyncio_refuses_it() -> None:
    async def scenario(reader: asyncio.StreamReader) -> list[object]:
        first, results = await _second_reads_while_one_waits(reader)
        first.cancel()  # a waiting read cancelled: the next one waits anew
        results.append([type(r).__name__ for r in await asyncio.gather(first, return_exceptions=True)])
        again = asyncio.create_task(reader.readexactly(2))
        await asyncio.sleep(0)
        reader.feed_data(b"ab\n")
        results.append(await again)
        results.append(await reader.readuntil(b"\n"))
        return results

    expected, got = _on_both(scenario)
    assert got == expected
    assert any("already waiting" in str(result) for result in got)


def test_a_refused_second_read_leaves_the_first_waiting_for_its_data() -> None:
    async def scenario(reader: asyncio.StreamReader) -> list[object]:
        first, results = await _second_reads_while_one_waits(reader)
        reader.feed_data(b"line\n")  # wakes the first read: the refused ones did not drop its waiter
        results.append(await asyncio.wait_for(first, 5))
        return results

    expected, got = _on_both(scenario)
    assert got == expected
    assert got[-1] == b"line\n"


def test_bad_arguments_are_refused_as_asyncio_refuses_them() -> None:
    expected, got = _both([b"abc"], "eof", [("until", b""), ("exactly", -1), ("exactly", 0), ("read", -1)])
    assert got == expected


PIECES = st.sampled_from([b"a", b"MAIL FROM:<a@b>", b"\r\n", b"\r", b"\n", b".", b"\r\n.\r\n", b"x" * 17,
                          b"y" * 33, b"DATA\r\n", b"..\r\n"])
KINDS = st.one_of(st.tuples(st.just("line"), st.sampled_from([b"\n", b"\r\n"])),
                  st.tuples(st.just("until"), st.sampled_from([END, b".\r\n", b"\r\n", b"\n"])),
                  st.tuples(st.just("exactly"), st.integers(0, 40)),
                  st.tuples(st.just("read"), st.sampled_from([-1, 0, 1, 5, 100])))


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(PIECES, max_size=12), cuts=st.lists(st.integers(0, 200), max_size=4),
       reads=st.lists(KINDS, max_size=10), end=st.sampled_from(["eof", "lost"]))
def test_any_stream_cut_anywhere_and_any_reads_give_what_asyncios_reader_gives(
    pieces: list[bytes], cuts: list[int], reads: list[tuple[str, Any]], end: str,
) -> None:
    stream = b"".join(pieces)
    chunks = [stream[a:b] for a, b in itertools.pairwise([0, *sorted(c for c in cuts if c < len(stream)), None])]
    expected, got = _both(chunks, end, reads)
    assert got == expected


def test_a_session_feeds_its_own_reader_until_its_connection_is_lost_and_nothing_after(server: Runtime) -> None:
    door = next(d for d in server.doors if isinstance(d, SmtpDoor))
    with client(server) as smtp:
        smtp.ehlo()
        (session,) = list(door.sessions)
        reader = session.fed
        assert isinstance(reader, SessionReader) and session._reader is reader
        # Between commands, what arrives goes to `command_received`: MAIL and RCPT answered at once, or fed the reader.
        wait_until(lambda: session.data_received == session.command_received, 10, "the loop waiting for a command")
        smtp.sendmail("notifications@callfire.com", ["ops@example.com"], notification(940_000_001))
    wait_until(lambda: session.fed is None, 10, "the session's connection_lost")
    assert "data_received" not in vars(session)  # the protocol's own again, which feeds no reader now
    assert reader.at_eof()
    assert rows(server.settings.storage.db, "SELECT count(*) FROM events") == [(1,)]  # type: ignore[arg-type]
