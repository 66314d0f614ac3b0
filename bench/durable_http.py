"""A durable no-op HTTP server: aiohttp answering 200 only once the body is committed to SQLite.

    python bench/durable_http.py PORT DATABASE

The least any server must do to acknowledge only what is durable on this
disk: the body is appended to one table (no indexes, no extraction) of a
SQLite database in WAL mode with `synchronous=FULL`, by one writer thread
that gathers everything queued while the previous commit was made durable,
commits it in one transaction, then wakes every request of that batch. The
difference between this server and `noop_http.py` is the durability floor;
the difference between mailhook and this server is mailhook's own work.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import sys
import threading

from aiohttp import web
from noop_http import serve

_Waiting = tuple[bytes, asyncio.Future[int]]


class GroupCommit:
    """One writer thread: gather what is queued, one transaction, then answer every waiting request."""

    def __init__(self, path: str, loop: asyncio.AbstractEventLoop, max_batch: int = 256) -> None:
        self.path = path
        self.loop = loop
        self.max_batch = max_batch
        self.queue: queue.SimpleQueue[_Waiting] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="durable-writer", daemon=True).start()

    def _run(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE IF NOT EXISTS bodies (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        while True:
            batch = [self.queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            db.execute("BEGIN IMMEDIATE")
            ids = [db.execute("INSERT INTO bodies (body) VALUES (?)", (body,)).lastrowid or 0 for body, _ in batch]
            db.execute("COMMIT")
            # One wake-up of the loop per batch, not one per request.
            done = [(future, id_) for (_, future), id_ in zip(batch, ids, strict=True)]
            self.loop.call_soon_threadsafe(_answer, done)

    async def store(self, body: bytes) -> int:
        future: asyncio.Future[int] = self.loop.create_future()
        self.queue.put((body, future))
        return await future


def _answer(done: list[tuple[asyncio.Future[int], int]]) -> None:
    for future, id_ in done:
        if not future.done():
            future.set_result(id_)


async def main(port: int, path: str) -> None:
    writer = GroupCommit(path, asyncio.get_running_loop())

    async def notifications(request: web.Request) -> web.Response:
        body = await request.read()
        delivery_id = await writer.store(body)
        return web.json_response({"delivery_id": delivery_id, "events": 0, "duplicates": 0, "size": len(body)})

    await serve(port, notifications)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
