"""A folder's messages fetched in bounded chunks: their sizes first, then their bodies a chunk at a time."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from imapclient import IMAPClient

FETCH_BYTES = 16 * 1024 * 1024  # most message bytes asked for in one FETCH
FETCH_COUNT = 100


def sizes(client: IMAPClient, uids: Sequence[int]) -> dict[int, int]:
    """Return each message's RFC822.SIZE by UID (a message expunged meanwhile is missing)."""
    found: dict[int, int] = {}
    for start in range(0, len(uids), 1000):
        for uid, data in client.fetch(uids[start:start + 1000], ["RFC822.SIZE"]).items():
            found[uid] = int(data.get(b"RFC822.SIZE", 0))
    return found


def chunks(uids: Sequence[int], sizes: Mapping[int, int]) -> Iterator[list[int]]:
    """Yield `uids` in order, in chunks of at most FETCH_COUNT messages and (past the first) FETCH_BYTES bytes."""
    chunk: list[int] = []
    total = 0
    for uid in uids:
        if chunk and (total + sizes[uid] > FETCH_BYTES or len(chunk) >= FETCH_COUNT):
            yield chunk
            chunk, total = [], 0
        chunk.append(uid)
        total += sizes[uid]
    if chunk:
        yield chunk
