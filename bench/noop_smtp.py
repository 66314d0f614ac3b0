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


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    handler = NoopHandler()
    server = await loop.create_server(
        lambda: SMTP(handler, decode_data=False, enable_SMTPUTF8=True, data_size_limit=10 * 2**20,
                     hostname="noop", ident="ESMTP noop"),
        "127.0.0.1", port, reuse_address=True,
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
