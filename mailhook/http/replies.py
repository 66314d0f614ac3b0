"""The HTTP door's answers: a stored notification's 200, JSON errors and `100 Continue`, naming `Server: mailhook`."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import HttpVersion11, hdrs, web
from multidict import CIMultiDict

from mailhook.http.answer import Answer
from mailhook.http.gate import SERVER
from mailhook.models import Receipt

_ANSWER = b'{"delivery_id": %d, "status": "%s", "events": %d, "duplicates": %d}'
# The 200 answer's header lines before Content-Length, in the order Response(headers=...) would write them.
_JSON_FIELDS = b"Content-Type: application/json; charset=utf-8\r\nServer: " + SERVER.encode() + b"\r\n"


def named(headers: dict[str, str] | None = None) -> CIMultiDict[str]:
    """Return `headers` with `Server: mailhook`, which names the service, not the library and Python behind it."""
    named: CIMultiDict[str] = CIMultiDict(headers or {})
    named[hdrs.SERVER] = SERVER
    return named


async def send_continue(request: web.Request) -> None:
    """Send the interim `100 Continue`, as aiohttp's default expect handler does."""
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the answer's own bytes are still to come


async def expect_any(request: web.Request) -> None:
    """aiohttp's own answer to `Expect` on the GET routes, its 417 naming only mailhook as server."""
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version == HttpVersion11:
        if expect.lower() == "100-continue":
            await send_continue(request)
        else:
            raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect}", headers=named())


def answer(receipt: Receipt) -> web.StreamResponse:
    if not receipt.error:
        # The common answer, formatted directly: the same bytes json.dumps gives (an int
        # and one of the fixed status words), without building a dict and encoding it.
        return Answer(_JSON_FIELDS, _ANSWER % (
            receipt.delivery_id, receipt.status.encode(), receipt.events, receipt.duplicates,
        ))
    body: dict[str, Any] = {
        "delivery_id": receipt.delivery_id,
        "status": receipt.status,
        "events": receipt.events,
        "duplicates": receipt.duplicates,
    }
    body["error"] = public_reason(receipt.error)
    return web.json_response(body, status=422, headers=named())


def public_reason(reason: str) -> str:
    """Keep a quarantine reason precise but never show the text of an unexpected Python exception."""
    if reason.startswith("internal error"):
        return "internal error while reading the document; it is stored for reprocessing"
    return reason


def error(status: int, message: str, *, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps({"error": message}),
        content_type="application/json",
        headers=named(headers),
    )
