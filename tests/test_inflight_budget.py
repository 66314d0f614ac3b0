"""The in-flight budget (parsing.inflight_budget) at and one byte past its limit: the budget, SMTP DATA, HTTP bodies."""

from __future__ import annotations

import asyncio
import smtplib
import socket

import httpx
import pytest
from conftest import StartServer
from process_support import read_all
from smtp_support import FIXTURES, notification, rows, smtp_address

from mailhook.budget import InflightBudget
from mailhook.config.settings import Settings
from mailhook.smtp.fastpath import NO_ROOM, read_body

TEXT_XML = (FIXTURES / "seed" / "text-outbound.xml").read_bytes()
MIB = 1024 * 1024


def test_a_hold_takes_bytes_up_to_the_limit_and_refuses_one_past_it() -> None:
    budget = InflightBudget(100)
    first, second = budget.hold(), budget.hold()
    assert first.grow(60) and second.grow(40)
    assert budget.used == 100
    assert not first.grow(1)  # one byte past: refused, nothing counted
    assert (first.refused, first.received, budget.used) == (True, 60, 100)
    first.close()
    assert budget.used == 40
    assert second.grow(60)
    second.close()
    second.close()  # giving back twice gives nothing more
    assert budget.used == 0


def test_the_default_budgets_fit_under_the_units_memory_max() -> None:
    parsing = Settings().parsing
    assert parsing.inflight_budget == 256 * MIB
    # Extraction holds up to ~32x the bytes it reads (docs/security.md); in flight, the bytes themselves.
    assert parsing.inflight_budget + 32 * parsing.extraction_budget < 800 * MIB


def _read(stream: bytes, budget: InflightBudget) -> tuple[bytes, str | None, bytes]:
    """Run read_body over `stream` with a hold on `budget`; return the body, the refusal and what is left unread."""

    async def run() -> tuple[bytes, str | None, bytes]:
        reader = asyncio.StreamReader(limit=1000)
        reader.feed_data(stream)
        reader.feed_eof()
        with budget.hold() as hold:
            body, refusal = await read_body(reader, 998, 0, hold)
            assert budget.used == (len(stream) - len(b"QUIT\r\n") if refusal is None else 0)
        return body, refusal, await reader.read()

    return asyncio.run(run())


class _CountingReader(asyncio.StreamReader):
    """A stream reader counting the reads made of it."""

    reads = 0

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        self.reads += 1
        return await super().readuntil(separator)

    async def readexactly(self, n: int) -> bytes:
        self.reads += 1
        return await super().readexactly(n)

    async def read(self, n: int = -1) -> bytes:
        self.reads += 1
        return await super().read(n)


def _reads(body: bytes, limit: int = 1000) -> tuple[int, bytes, str | None]:
    """Return how many reads `read_body` makes of `body` (through its end marker), and what it gives."""

    async def run() -> tuple[int, bytes, str | None]:
        reader = _CountingReader(limit=limit)
        reader.feed_data(body + b".\r\nQUIT\r\n")
        reader.feed_eof()
        content, refusal = await read_body(reader, limit - 2, 0)
        reads = reader.reads
        assert await reader.read() == b"QUIT\r\n"
        return reads, content, refusal

    return asyncio.run(run())


def test_a_body_within_the_stream_limit_is_read_in_two_reads_however_many_lines_end_in_a_dot() -> None:
    body = b"Subject: t\r\n\r\nHello.\r\n..stuffed.\r\nBye.\r\n"
    assert _reads(body) == (2, body.replace(b"\r\n..", b"\r\n."), None)


@pytest.mark.parametrize("line", [b"x\r\n", b"\r\n", b"a.\r\n", b"..\r\n", b"\r\n.x\r", b"\r\r\n", b".\r\r\n"])
def test_a_body_of_short_lines_is_read_in_blocks_not_a_few_bytes_at_a_time(line: bytes) -> None:
    body = line * 20_000 + b"\r\n"
    reads, content, refusal = _reads(body, limit=100_000)
    assert refusal is None and len(content) >= len(body) - 20_000
    # At most a block through each line ending in ".\r\n" (as the line-by-line reading before), never more.
    assert reads <= 3 + body.count(b".\r\n") + 3 * len(body) // 100_000, reads


@pytest.mark.parametrize("over", [0, 1])
def test_a_data_body_exactly_at_the_budget_is_read_and_one_byte_over_gets_452_with_the_rest_dropped(over: int) -> None:
    lines = b"".join(b"line %05d\r\n" % n for n in range(3000))  # ~33 KB in ~30 blocks of 1 KB and less
    stream = lines + b".\r\nQUIT\r\n"
    budget = InflightBudget(len(lines) + 3 - over)  # what DATA reads: the lines and the lone dot line

    body, refusal, rest = _read(stream, budget)

    assert rest == b"QUIT\r\n"  # the whole DATA was read, however it ended
    assert budget.used == 0
    if over:
        assert (body, refusal) == (b"", NO_ROOM)
    else:
        assert (body, refusal) == (lines, None)


def test_an_smtp_message_past_the_budget_gets_452_and_the_session_goes_on(start_server: StartServer) -> None:
    runtime = start_server(parsing={"inflight_budget": 200_000})
    big = notification(940_000_001).replace(b"\n\n", b"\nX-Pad: y\n\n" + (b"z" * 70 + b"\n") * 3000, 1)
    assert len(big) > 200_000
    with smtplib.SMTP(*smtp_address(runtime), timeout=30) as smtp:
        smtp.ehlo()
        smtp.mail("notifications@callfire.com")
        smtp.rcpt("ops@example.com")
        code, message = smtp.data(big)
        assert (code, message) == (452, b"4.3.1 Insufficient system storage")
        assert runtime.inflight.used == 0
        # Temporary, not an error: the same session sends a message within the budget.
        smtp.sendmail("notifications@callfire.com", ["ops@example.com"], notification(940_000_002))
    assert rows(runtime.writer.store.path, "SELECT resource_id FROM events") == [(940_000_002,)]
    assert runtime.inflight.used == 0


@pytest.mark.parametrize("over", [0, 1])
def test_an_http_body_exactly_at_the_budget_is_stored_and_one_byte_over_gets_503(
    start_server: StartServer, over: int
) -> None:
    body = TEXT_XML + b" " * 100_000
    runtime = start_server(smtp={"listen": ""}, http={"listen": "127.0.0.1:0"},
                           parsing={"inflight_budget": len(body) - over})
    door = next(d for d in runtime.doors if d.name == "http")
    url = f"http://{door.addresses()[0]}/notifications"
    with httpx.Client(timeout=30) as client:
        response = client.post(url, content=body)
        if over:
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "30"
            assert response.json() == {"error": "too many bodies being received; retry later"}
            assert rows(runtime.writer.store.path, "SELECT count(*) FROM deliveries") == [(0,)]
        else:
            assert response.status_code == 200, response.text
        assert runtime.inflight.used == 0
        assert client.post(url, content=TEXT_XML).status_code == 200  # a small one still fits


@pytest.mark.parametrize("over", [0, 1])
def test_a_body_that_comes_whole_with_its_head_exactly_at_the_budget_is_stored_and_one_byte_over_gets_503(
    start_server: StartServer, over: int
) -> None:
    # Head and body in one write: the door takes the body whole (Intake.whole_body), counted in one go.
    runtime = start_server(smtp={"listen": ""}, http={"listen": "127.0.0.1:0"},
                           parsing={"inflight_budget": len(TEXT_XML) - over})
    host, _, port = next(d for d in runtime.doors if d.name == "http").addresses()[0].rpartition(":")
    head = b"POST /notifications HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
    request = head % len(TEXT_XML) + TEXT_XML
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        reply = read_all(sock)
    if over:
        assert reply.startswith(b"HTTP/1.1 503 ") and b"\r\nRetry-After: 30\r\n" in reply, reply
        assert rows(runtime.writer.store.path, "SELECT count(*) FROM deliveries") == [(0,)]
    else:
        assert reply.startswith(b"HTTP/1.1 200 "), reply
    assert runtime.inflight.used == 0
