"""A load generator that costs every server the same: asyncio SMTP sessions or HTTP keep-alive connections.

    python bench/load.py smtp PORT FILE [--sessions 8] [--mail-params "SIZE={size}"]
    python bench/load.py http PORT FILE [--connections 8]

FILE holds ready-made payloads (bench/distinct.py `--smtp-file` / `--http-file`):
SMTP DATA already in CRLF, dot-stuffed and terminated, or whole HTTP requests,
so the client does no per-message work beyond writing bytes and reading the
reply. SMTP: N persistent sessions (EHLO once, then MAIL, RCPT, DATA per
message, no pipelining, since not every server offers it); HTTP: N HTTP/1.1
keep-alive connections, one request in flight on each. The sessions take the
next payload from one shared queue, so a slow session never idles the rest.
Prints one JSON line: messages sent, seconds from the first connection to the
last answer, and any refusals (any answer but 250 / 2xx) with the first one.

`--mail-params TEXT` adds ESMTP parameters to every MAIL, `{size}` filled with
the payload's length: smtplib's `sendmail` sends `size={size}` whenever the
server offers SIZE, aiosmtplib's `send_message` `size={size} BODY=8BITMIME`
(with 8BITMIME offered, as mailhook does), Postfix `SIZE={size} BODY=8BITMIME`.
The MAIL lines are made before the first connection, so the client's work stays the same.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from distinct import read_records


class Tally:
    """What the sessions saw: messages answered, and refusals with the first one's text."""

    def __init__(self) -> None:
        self.done = 0
        self.refused = 0
        self.first_refusal = ""

    def refuse(self, what: str) -> None:
        self.refused += 1
        self.first_refusal = self.first_refusal or what


async def _reply(reader: asyncio.StreamReader) -> bytes:
    """Read one (possibly multi-line) SMTP reply; return it."""
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the SMTP session")
        lines.append(line)
        if line[3:4] != b"-":
            return b"".join(lines)


async def _command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes, code: bytes) -> bytes:
    writer.write(line)
    reply = await _reply(reader)
    if not reply.startswith(code):
        raise ConnectionError(f"{line.strip()!r} got {reply.strip()!r}")
    return reply


def mail_commands(payloads: list[bytes], params: str) -> list[bytes]:
    """Return each payload's MAIL command line, with `params` (`{size}`: the payload's length) when given."""
    plain = b"MAIL FROM:<bounce@callfire.com>\r\n"
    if not params:
        return [plain] * len(payloads)
    return [f"MAIL FROM:<bounce@callfire.com> {params.format(size=len(p))}\r\n".encode() for p in payloads]


async def smtp_session(port: int, work: Iterator[tuple[bytes, bytes]], tally: Tally) -> None:
    """Send (MAIL line, payload) pairs from `work` over one persistent SMTP session until it is empty."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        greeting = await _reply(reader)
        if not greeting.startswith(b"220"):
            raise ConnectionError(f"greeting {greeting!r}")
        await _command(reader, writer, b"EHLO bench.example.com\r\n", b"250")
        for mail, payload in work:
            await _command(reader, writer, mail, b"250")
            await _command(reader, writer, b"RCPT TO:<ops@example.com>\r\n", b"250")
            await _command(reader, writer, b"DATA\r\n", b"354")
            writer.write(payload)
            reply = await _reply(reader)
            if reply.startswith(b"250"):
                tally.done += 1
            else:
                tally.refuse(reply.decode(errors="replace").strip())
        writer.write(b"QUIT\r\n")
        await writer.drain()
        await _reply(reader)
    finally:
        writer.close()


async def http_connection(port: int, work: Iterator[bytes], tally: Tally) -> None:
    """Send requests from `work` over one keep-alive HTTP/1.1 connection until it is empty."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for request in work:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head[9:12]
            length, chunked = 0, False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            if chunked:
                while True:
                    size = int((await reader.readline()).split(b";")[0], 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            else:
                body = await reader.readexactly(length)
                del body
            if status.startswith(b"2"):
                tally.done += 1
            else:
                tally.refuse(head.split(b"\r\n")[0].decode(errors="replace"))
    finally:
        writer.close()


async def run(kind: str, port: int, payloads: list[bytes], parallel: int, mail_params: str = "") -> dict[str, object]:
    tally = Tally()
    work: Iterator[Any]
    session: Callable[[int, Iterator[Any], Tally], Awaitable[None]]
    if kind == "smtp":
        work, session = zip(mail_commands(payloads, mail_params), payloads, strict=True), smtp_session
    else:
        work, session = iter(payloads), http_connection
    started = time.perf_counter()
    results = await asyncio.gather(*(session(port, work, tally) for _ in range(parallel)), return_exceptions=True)
    elapsed = time.perf_counter() - started
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    return {"messages": tally.done, "seconds": elapsed, "refused": tally.refused,
            "first_refusal": tally.first_refusal, "errors": errors}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("smtp", "http"))
    parser.add_argument("port", type=int)
    parser.add_argument("file", type=Path)
    parser.add_argument("--sessions", "--connections", type=int, default=8, dest="parallel")
    parser.add_argument("--mail-params", default="",
                        help='SMTP: ESMTP parameters for every MAIL, e.g. "SIZE={size}" (the payload\'s length)')
    args = parser.parse_args()
    payloads = read_records(args.file)
    result = asyncio.run(run(args.kind, args.port, payloads, args.parallel, args.mail_params))
    print(json.dumps(result))
    return 0 if not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
