"""The file door's reading side: turn paths (.eml, mbox, Maildir, .xml, .json, stdin) into deliveries."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mailhook.beside import extract_rows
from mailhook.config.settings import Settings
from mailhook.errors import RetryLater
from mailhook.exitcodes import EX_DATAERR, EX_OK, EX_TEMPFAIL
from mailhook.models import Delivery, Kind, MailLimits, Receipt, kind_of, utcnow
from mailhook.pipeline import Found, Pipeline
from mailhook.store.open import open_storage
from mailhook.workers import extraction_pool

log = logging.getLogger("mailhook.files")

_MBOXRD_QUOTED = re.compile(rb"^>(>*From )", re.MULTILINE)
_DOCUMENT_SUFFIXES = {".xml": "document", ".json": "document"}


@dataclass(frozen=True, slots=True)
class Unreadable:
    """An input that could not even be read (missing, unreadable, too large): nothing is stored."""

    source: str
    reason: str


def deliveries(
    paths: list[str], *, received_at: str, max_size: int, stdin: BinaryIO | None = None
) -> Iterator[Delivery | Unreadable]:
    """Yield one delivery per message found under `paths` (`-` reads one message from stdin)."""
    for name in paths:
        if name == "-":
            if stdin is None:
                yield Unreadable("-", "no standard input")
                continue
            raw, sender = _envelope_line(stdin.read(max_size + 1))
            yield _checked(raw, "-", received_at, max_size, envelope_from=sender)
            continue
        path = Path(name)
        try:
            if path.is_dir():
                yield from _directory(path, received_at=received_at, max_size=max_size)
            else:
                yield from _file(path, received_at=received_at, max_size=max_size)
        except OSError as exc:
            yield Unreadable(name, exc.strerror or str(exc))


def _checked(raw: bytes, source: str, received_at: str, max_size: int, kind: Kind | None = None,
             envelope_from: str | None = None) -> Delivery | Unreadable:
    if len(raw) > max_size:
        return Unreadable(source, f"larger than the limit of {max_size} bytes")
    return Delivery(
        channel="file",
        raw=raw,
        received_at=received_at,
        kind=kind or kind_of(raw),
        source=source,
        envelope_from=envelope_from,
    )


def _envelope_line(raw: bytes) -> tuple[bytes, str | None]:
    """Split off the `From sender date` line an MTA pipe (Postfix flag F, procmail) puts first."""
    if not raw.startswith(b"From "):
        return raw, None
    line, _, rest = raw.partition(b"\n")
    sender = line[5:].split(b" ", 1)[0].decode("ascii", "replace").strip()
    return rest, sender or None


def _directory(path: Path, *, received_at: str, max_size: int) -> Iterator[Delivery | Unreadable]:
    if all((path / sub).is_dir() for sub in ("cur", "new")):
        folders = [path / "new", path / "cur"]
        for folder in folders:
            for entry in sorted(folder.iterdir()):
                if entry.is_file() and not entry.name.startswith("."):
                    yield from _file(entry, received_at=received_at, max_size=max_size, kind="email")
        return
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            if not name.startswith("."):
                yield from _file(Path(root) / name, received_at=received_at, max_size=max_size)


def _file(
    path: Path, *, received_at: str, max_size: int, kind: Kind | None = None
) -> Iterator[Delivery | Unreadable]:
    with path.open("rb") as fh:
        head = fh.read(5)
        fh.seek(0)
        if kind is None and head == b"From ":
            yield from _mbox(fh, str(path), received_at=received_at, max_size=max_size)
            return
        size = os.fstat(fh.fileno()).st_size
        if size > max_size:
            yield Unreadable(str(path), f"larger than the limit of {max_size} bytes")
            return
        raw = fh.read()
    if kind is None:
        kind = "document" if path.suffix.lower() in _DOCUMENT_SUFFIXES else kind_of(raw)
    yield _checked(raw, str(path), received_at, max_size, kind)


def _mbox(fh: BinaryIO, name: str, *, received_at: str, max_size: int) -> Iterator[Delivery | Unreadable]:
    """Split an mbox on its `From ` lines, streaming, and undo mboxrd `>From ` quoting.

    A line starting `From ` begins a message when it is the first line or
    follows a blank one. The file is read in large blocks searched with
    `bytes.find`, not line by line; a message over `max_size` is counted, not held.
    """
    buf = b"\n"  # a newline before the first byte: a first line starting "From " begins a message
    eof = False
    number = 0
    sender: str | None = None
    start = body = 0  # where the current message's "From " line and its bytes begin in buf
    dropped = 0  # bytes of the current message let go because it is too large to store
    search = 0
    while True:
        i = buf.find(b"\nFrom ", search)
        end = -1 if i < 0 else buf.find(b"\n", i + 6)
        if (i < 0 or end < 0) and not eof:
            if i < 0:
                if number and len(buf) - body > max_size + 16:
                    dropped += len(buf) - 8 - body
                    start = body = len(buf) - 8
                elif not number:
                    start = max(0, len(buf) - 8)
                search = max(search, len(buf) - 5)
            chunk = fh.read(_BLOCK)
            eof = not chunk
            # One copy per block: keep only the unfinished message.
            buf = buf[start:] + chunk
            search -= start
            body -= start
            start = 0
            continue
        if i < 0:
            break
        if i and buf[i - 1] != 10 and not (buf[i - 1] == 13 and buf[i - 2] == 10):
            search = i + 1  # "From " inside a message: the line before it is not blank
            continue
        line_end = end + 1 if end >= 0 else len(buf)
        if number:
            yield _message(buf[body : i + 1], dropped, f"{name}#{number}", received_at, max_size, sender)
        number += 1
        sender = buf[i + 6 : line_end].split(b" ", 1)[0].decode("ascii", "replace").strip() or None
        start, body, dropped = i + 1, line_end, 0
        search = end if end >= 0 else len(buf)
    if number:
        yield _message(buf[body:], dropped, f"{name}#{number}", received_at, max_size, sender)


_BLOCK = 1 << 20


def _message(
    raw: bytes, dropped: int, source: str, received_at: str, max_size: int, sender: str | None
) -> Delivery | Unreadable:
    # The blank line before the next "From " belongs to the mbox, not the message.
    if raw.endswith(b"\n") and (len(raw) == 1 or raw[-2] == 10):
        raw = raw[:-1]
    elif raw.endswith(b"\r\n") and (len(raw) == 2 or raw[-3] == 10):
        raw = raw[:-2]
    if dropped + len(raw) > max_size:
        return Unreadable(source, f"larger than the limit of {max_size} bytes")
    if b">From " in raw:  # every quoted line holds one; most messages have none, so skip the regex
        raw = _MBOXRD_QUOTED.sub(rb"\1", raw)
    return _checked(raw, source, received_at, max_size, "email", sender)


def ingest_paths(
    paths: list[str],
    settings: Settings,
    env: Mapping[str, str],
    *,
    quiet: bool,
    stdin: BinaryIO | None,
    interactive: bool,
    verbose: bool = False,
    workers: int | None = None,
) -> int:
    """Store every message under `paths`; return the exit code (EX_OK; EX_DATAERR unreadable; EX_TEMPFAIL retry).

    A backfill is quiet: a progress bar on a terminal and one summary line; each
    delivery's log line only at DEBUG, or at INFO with `verbose`. Extraction
    runs in `workers` processes (default: one per core; 1: in this process)
    when the input is worth it; the database is the same whatever the count.
    """
    # The pool is forked before the writer thread starts, so no worker inherits a lock held mid-write.
    pool = _extraction_pool(paths, workers)
    limits = settings.parsing.mail_limits()
    items = deliveries(paths, received_at=utcnow(), max_size=settings.smtp.max_message_size, stdin=stdin)
    # A chunk is committed whole, so never more than a commit may hold.
    stream = _Extracted(items, pool, settings.subscriptions, limits, min(_CHUNK, settings.storage.max_batch))
    try:
        # The workers extract the first chunks while this process opens (creates, migrates) the database.
        stream.send_ahead()
        writer = open_storage(
            settings.database(env), busy_timeout=settings.storage.busy_timeout,
            max_batch=settings.storage.max_batch,
            mode=settings.storage.file_mode(),
            phone_region=settings.storage.phone_region,
        )
    except BaseException:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        raise
    # Each delivery's log line only at DEBUG, unless --verbose: a backfill is quiet.
    pipeline = Pipeline(writer, settings.subscriptions, limits=limits,
                        log_level=logging.INFO if verbose else logging.DEBUG)
    totals = {"stored": 0, "duplicate": 0, "quarantined": 0, "events": 0, "unreadable": 0}
    # Chunks handed to the writer, each answered by one future; `waiting` counts their deliveries.
    pending: deque[tuple[list[Delivery], Future[list[Receipt | RetryLater]]]] = deque()
    waiting = 0
    progress = _Progress(enabled=interactive and not quiet, total_bytes=_input_bytes(paths))
    retry = False

    def settle(chunk: list[Delivery], future: Future[list[Receipt | RetryLater]]) -> None:
        nonlocal retry
        # Each log line is written by then, as for every door's delivery.
        for delivery, result in zip(chunk, future.result(), strict=True):
            if isinstance(result, RetryLater):
                retry = True
                log.error("%s: not stored: %s", delivery.source, result)
                continue
            totals[result.status] += 1
            totals["events"] += result.events
            progress.tick(len(delivery.raw))

    try:
        for chunk, found in stream:
            readable: list[Delivery] = []
            extractions: list[Found | None] = []
            for item, extraction in zip(chunk, found, strict=True):
                if isinstance(item, Unreadable):
                    totals["unreadable"] += 1
                    log.error("%s: cannot read: %s", item.source, item.reason)
                    continue
                readable.append(item)
                extractions.append(extraction)
            if readable:
                pending.append((readable, pipeline.submit_many(readable, extractions)))
                waiting += len(readable)
            # A bounded window keeps memory flat on huge mboxes while commits stay grouped.
            while waiting > _WINDOW:
                done, future = pending.popleft()
                waiting -= len(done)
                settle(done, future)
        while pending:
            settle(*pending.popleft())
    finally:
        writer.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        progress.done()
    if not quiet:
        print(
            f"mailhook: {totals['stored']} stored, {totals['duplicate']} duplicates, "
            f"{totals['quarantined']} quarantined, {totals['events']} events"
            + (f", {totals['unreadable']} unreadable" if totals["unreadable"] else ""),
            file=sys.stderr,
        )
    if totals["quarantined"]:
        log.warning("%d deliveries quarantined: see deliveries.error", totals["quarantined"])
    if retry:
        return EX_TEMPFAIL
    if totals["unreadable"]:
        return EX_DATAERR
    return EX_OK


# Deliveries handed to the writer and not yet settled: two commits of the default max_batch. Beyond that
# the writer falls behind, and what it holds when the input ends it commits alone, the workers idle
# (2,000 left ~0.3 s of a 10,000-email backfill's ~4 s on one core).
_WINDOW = 512
# Parallel extraction from about a hundred emails (was: a megabyte, some 450); below that the
# workers' start-up costs about what they save (60 and 200 emails timed alike, within noise).
_PARALLEL_BYTES = 256 << 10
_CHUNK = 64
_IN_FLIGHT = 4


def _input_bytes(paths: list[str]) -> int | None:
    """Return the total size of the input files, walking directories; None when unknown (stdin)."""
    total = 0
    for name in paths:
        if name == "-":
            return None
        path = Path(name)
        try:
            if path.is_dir():
                total += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            else:
                total += path.stat().st_size
        except OSError:
            continue
    return total


def _extraction_pool(paths: list[str], workers: int | None = None) -> Executor | None:
    """Return a process pool of `workers` (default: every core) for extraction when the input is worth it."""
    if workers is not None and workers < 2:
        return None
    total = 0
    for name in paths:
        path = Path(name)
        try:
            if name != "-" and path.is_dir():
                total = _PARALLEL_BYTES
            elif name != "-":
                total += path.stat().st_size
        except OSError:
            continue
    return extraction_pool(workers) if total >= _PARALLEL_BYTES else None


def _extract_chunk(
    chunk: list[tuple[bytes, Kind]], subscriptions: Mapping[int, str], limits: MailLimits
) -> list[Found]:
    """Extract a chunk of deliveries in a worker process, as the rows to store.

    Rows (plain tuples) cost the parent far less to unpickle than `Extraction`s,
    and building them here takes that work off the parent too.
    """
    return [extract_rows(raw, kind, subscriptions, limits) for raw, kind in chunk]


class _Extracted:
    """The items in chunks of `size`, in input order, each with its extractions done in `pool`.

    An Unreadable's extraction is None, and so is every one without a pool (to be extracted in this thread).
    Iterating yields `(chunk, extractions)` pairs; at most `_IN_FLIGHT` + 1 chunks are in the pool at once.
    """

    def __init__(
        self, items: Iterable[Delivery | Unreadable], pool: Executor | None, subscriptions: Mapping[int, str],
        limits: MailLimits, size: int = 64,
    ) -> None:
        self.items = iter(items)
        self.pool = pool
        self.subscriptions = dict(subscriptions)
        self.limits = limits
        self.size = size
        self.in_flight: deque[tuple[list[Delivery | Unreadable], Future[list[Found]]]] = deque()
        self.exhausted = False

    def send_ahead(self) -> None:
        """Hand the pool chunks until `_IN_FLIGHT` + 1 are in it or the input ends; without a pool, nothing."""
        while self.pool is not None and not self.exhausted and len(self.in_flight) <= _IN_FLIGHT:
            chunk = self._next_chunk()
            if chunk:
                work = [(d.raw, d.kind) for d in chunk if isinstance(d, Delivery)]
                self.in_flight.append(
                    (chunk, self.pool.submit(_extract_chunk, work, self.subscriptions, self.limits)))

    def _next_chunk(self) -> list[Delivery | Unreadable]:
        chunk: list[Delivery | Unreadable] = []
        for item in self.items:
            chunk.append(item)
            if len(chunk) >= self.size:
                return chunk
        self.exhausted = True
        return chunk

    def __iter__(self) -> Iterator[tuple[list[Delivery | Unreadable], list[Found | None]]]:
        if self.pool is None:
            while not self.exhausted:
                chunk = self._next_chunk()
                if chunk:
                    yield chunk, [None] * len(chunk)
            return
        # Enough chunks in flight to keep every worker busy, few enough to bound memory.
        self.send_ahead()
        while self.in_flight:
            chunk, future = self.in_flight.popleft()
            results = iter(future.result())
            self.send_ahead()  # before handing this chunk on, so the workers never wait for it
            yield chunk, [next(results) if isinstance(item, Delivery) else None for item in chunk]


class _Progress:
    """A progress bar redrawn in place on stderr, only on a terminal: share of the input bytes, count, rate.

    Redrawn at most five times a second, so it costs nothing next to storing.
    """

    WIDTH = 30
    EVERY = 0.2

    def __init__(self, *, enabled: bool, total_bytes: int | None = None) -> None:
        self.enabled = enabled
        self.total = total_bytes
        self.count = 0
        self.bytes = 0
        self.started = self.drawn = time.monotonic()
        self.shown = False

    def tick(self, size: int = 0) -> None:
        self.count += 1
        self.bytes += size
        if self.enabled and self.count % 64 == 0 and (
            not self.shown or (now := time.monotonic()) - self.drawn >= self.EVERY
        ):
            now = time.monotonic()
            self.drawn = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.count / max(now - self.started, 1e-9)
        text = f"{self.count:,} messages ({rate:,.0f}/s)"
        if self.total:
            share = min(self.bytes / self.total, 1.0)
            filled = int(share * self.WIDTH)
            text = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {share:4.0%} " + text
        print(f"\r{text}\x1b[K", end="", file=sys.stderr, flush=True)
        self.shown = True

    def done(self) -> None:
        if self.shown:
            # The summary line follows on the same line, replacing the bar.
            print("\r\x1b[K", end="", file=sys.stderr, flush=True)
