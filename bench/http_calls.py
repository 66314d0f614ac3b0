"""Instructions per call of pieces of the HTTP door's per-request path, on the protocol of a live connection.

    valgrind --tool=callgrind python bench/http_calls.py MODE 0
    valgrind --tool=callgrind python bench/http_calls.py MODE 20000

The per-call count is the difference of the two totals divided by 20,000
(deterministic; the whole server's count per request moves by several k
between runs of one tree, more than these cuts). One request to a server
served through `mailhook.http.connection` makes the calls inside its
handler, mid-request and with nothing paused, as the door's reads make them:

    resume-base / resume-new  aiohttp's `resume_reading()` / mailhook's (after a read)
    eof-base / eof-new        the same with resume_parser=False (at a body's end)
    response-dict / -multi    a 200 answer's `Response` with its headers as a dict / a CIMultiDict
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable

from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict

from mailhook.config.settings import HttpSettings
from mailhook.http import listener as http_listener
from mailhook.metrics import Metrics

BODY = b'{"delivery_id": 1, "status": "stored", "events": 1, "duplicates": 0}'
DICT = {hdrs.CONTENT_TYPE: "application/json; charset=utf-8"}
MULTI = CIMultiDict(DICT)


def calls(mode: str, count: int, protocol: RequestHandler) -> None:
    """Make `count` calls of what `mode` names (the same loop for every mode)."""
    call: Callable[[], object] = {
        "resume-base": lambda: RequestHandler.resume_reading(protocol),
        "resume-new": lambda: protocol.resume_reading(),
        "eof-base": lambda: RequestHandler.resume_reading(protocol, resume_parser=False),
        "eof-new": lambda: protocol.resume_reading(resume_parser=False),
        "response-dict": lambda: web.Response(body=BODY, headers=DICT),
        "response-multi": lambda: web.Response(body=BODY, headers=MULTI),
    }[mode]
    for _ in range(count):
        call()


async def main(mode: str, count: int) -> None:
    """Serve one POST whose handler makes the calls; print the answer's status line."""

    async def handler(request: web.Request) -> web.Response:
        assert request.protocol is not None
        calls(mode, count, request.protocol)
        await request.read()
        return web.Response(body=BODY, headers=MULTI)

    app = web.Application()
    app.router.add_post("/", handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    log = logging.getLogger("bench")
    listener = await http_listener.listen(runner, HttpSettings(listen="127.0.0.1:0"), Metrics(), log, log)
    host, port = listener.addresses()[0].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    print((await reader.read(4096)).split(b"\r\n")[0].decode())
    writer.close()
    listener.close()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
