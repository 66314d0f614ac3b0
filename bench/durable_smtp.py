"""A durable no-op SMTP server: aiosmtpd answering 250 only once the message is committed to SQLite.

    python bench/durable_smtp.py PORT DATABASE

The SMTP twin of `durable_http.py`, and the least any SMTP server must do to
acknowledge only what is durable on this disk: the raw message is appended
to one table (no indexes, no extraction) by the same group-commit writer
(WAL, `synchronous=FULL`). The gap between `noop_smtp.py` and this server is
the durability floor; the gap between this server and mailhook is mailhook's
own work.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from durable_http import GroupCommit
from noop_smtp import serve


class DurableHandler:
    """Store each message's raw bytes durably, then answer 250."""

    def __init__(self, writer: GroupCommit) -> None:
        self.writer = writer

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        delivery_id = await self.writer.store(bytes(envelope.original_content or b""))
        return f"250 2.0.0 OK delivery {delivery_id}"


async def main(port: int, path: str) -> None:
    await serve(port, DurableHandler(GroupCommit(path, asyncio.get_running_loop())), "durable")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
