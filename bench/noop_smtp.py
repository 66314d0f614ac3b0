"""A no-op SMTP server: aiosmtpd answering 250 at once, the ceiling of mailhook's SMTP stack.

    python bench/noop_smtp.py PORT

It runs aiosmtpd's SMTP protocol on its own asyncio loop via loop.create_server,
as mailhook does, with a handler that stores nothing and answers 250 to DATA.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from aiosmtpd.smtp import SMTP


class NoopHandler:
    """Accept every message without looking at it."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 2.0.0 OK"


async def serve(port: int, handler: Any, name: str) -> None:
    """Serve aiosmtpd's SMTP with `handler` on 127.0.0.1:`port` until cancelled."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, decode_data=False, enable_SMTPUTF8=True, data_size_limit=10 * 2**20,
                     hostname=name, ident=f"ESMTP {name}"),
        "127.0.0.1", port, reuse_address=True,
    )
    async with server:
        await server.serve_forever()


async def main(port: int) -> None:
    await serve(port, NoopHandler(), "noop")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
