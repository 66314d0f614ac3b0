"""A no-op HTTP server: aiohttp answering 200 at once, the ceiling of mailhook's HTTP stack.

    python bench/noop_http.py PORT

Same library and same shape as mailhook's webhook door (POST /notifications,
body read in full, JSON answer), but nothing is parsed or stored.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.Response]]


async def notifications(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({"delivery_id": 0, "events": 0, "duplicates": 0, "size": len(body)})


async def serve(port: int, handler: Handler) -> None:
    """Serve `handler` as POST /notifications on 127.0.0.1:`port` until cancelled."""
    app = web.Application()
    app.router.add_post("/notifications", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


async def main(port: int) -> None:
    await serve(port, notifications)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
