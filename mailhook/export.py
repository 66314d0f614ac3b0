"""Stream rows out of the database as CSV or JSON Lines in constant memory.

Rows are read in keyset pages (`id > last ORDER BY id LIMIT n`), each page its
own short read, so an export of millions of rows neither holds memory for them
nor pins one WAL snapshot for its whole run: the writer's checkpoints can
proceed between pages. Rows committed after the export started are left out,
so the output is the database as of its start.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

from mailhook.exitcodes import EX_NOINPUT, EX_OK, EX_USAGE
from mailhook.models import CALL_TYPES, CAMPAIGN_TYPES, TEXT_TYPES
from mailhook.stats.command import add_window_arguments, open_for_reading, window_from
from mailhook.stats.reader import Reader
from mailhook.stats.window import Window

if TYPE_CHECKING:
    from mailhook.config.settings import Settings

Format = Literal["csv", "jsonl"]
FORMATS: tuple[Format, ...] = ("csv", "jsonl")
PAGE = 2000


@dataclass(frozen=True, slots=True)
class Source:
    """How to read one exportable table or view (as `v`), the table its `id` is the key of, and its event."""

    columns: str
    relation: str
    key_table: str
    event_id: str | None
    # What --since/--until compare for a source with no event (deliveries: when received).
    time: str = "v.received_at"

    def select(self, columns: str | None = None, dialect: str = "sqlite") -> str:
        """Return the SELECT (of `columns`, default all) and FROM that read rows in key order from the key table."""
        columns = columns or self.columns
        if self.relation == self.key_table or dialect != "sqlite":
            # PostgreSQL's planner reads a view's rows in key order by itself (and has no CROSS JOIN ... ON).
            return f"SELECT {columns} FROM {self.relation} AS v"
        # Driving from the key table keeps every page a short rowid range scan; reading the
        # view directly lets SQLite pick its event_type index and sort all remaining rows per page.
        return f"SELECT {columns} FROM {self.key_table} AS k CROSS JOIN {self.relation} AS v ON v.id = k.id"


SOURCES: dict[str, Source] = {
    "events": Source("v.*", "events", "events", "v.id"),
    "texts": Source("v.*", "texts", "events", "v.id"),
    "calls": Source("v.*", "calls", "events", "v.id"),
    "campaign_events": Source("v.*", "campaign_events", "events", "v.id"),
    # One row per campaign, kept current on ingest; --since/--until select by when it was last seen.
    "campaigns": Source("v.*", "campaigns", "campaigns", None, "v.last_seen"),
    "attempts": Source("v.*", "attempts_detail", "attempts", "v.event_id"),
    # The raw bytes stay in the database: they are binary and can be megabytes each.
    "deliveries": Source(
        "v.id, v.channel, v.received_at, v.status, v.error, v.message_id, v.envelope_from,"
        " v.envelope_to, v.subject, v.content_type, v.remote_addr, v.size, v.sha256, v.notes, v.source,"
        " v.event_count, v.duplicate_count",
        "deliveries",
        "deliveries",
        None,
    ),
}

TYPE_GROUPS: dict[str, tuple[str, ...]] = {"calls": CALL_TYPES, "texts": TEXT_TYPES, "campaigns": CAMPAIGN_TYPES}


def event_types(values: Iterable[str]) -> tuple[str, ...]:
    """Expand `--type` values: event types in any case, comma lists, and `calls`/`texts`/`campaigns`."""
    result: list[str] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            group = TYPE_GROUPS.get(item.lower())
            for name in group or (item.upper(),):
                if name not in result:
                    result.append(name)
    return tuple(result)


def query(table: str, window: Window, types: Sequence[str] = (), columns: str | None = None,
          dialect: str = "sqlite") -> tuple[str, list[Any]]:
    """Return the paged SELECT (of `columns`, default all) for `table` in `dialect`, and its filter parameters.

    The statement takes three more parameters after those: the last key read,
    the newest key to include, and the page size.
    """
    source = SOURCES[table]
    sql = source.select(columns, dialect)
    key = "v.id" if source.relation == source.key_table or dialect != "sqlite" else "k.id"
    join = "CROSS JOIN" if dialect == "sqlite" else "JOIN"
    conditions: list[str] = []
    params: list[Any] = []
    if source.event_id is None:
        if types or window.broadcast_id is not None:
            raise ValueError(f"--type and --broadcast do not apply to {table}")
        conditions, params = window.between(source.time)
    elif types or window.since or window.until or window.broadcast_id is not None:
        # Filter on the owning event exactly as `mailhook stats` does, so the two agree.
        # CROSS JOIN keeps `v` the outer loop, read in key order: each page costs only its own rows.
        sql += f" {join} events AS e ON e.id = {source.event_id}"
        where, where_params = window.where()
        conditions.append(where)
        params += where_params
        if types:
            conditions.append(f"e.event_type IN ({', '.join('?' * len(types))})")
            params += types
    conditions += [f"{key} > ?", f"{key} <= ?"]
    return f"{sql} WHERE {' AND '.join(conditions)} ORDER BY {key} LIMIT ?", params


# Left out unless asked for: the whole notification as JSON, two thirds of a CSV's bytes.
UNLESS_ASKED = ("payload",)
# Never exported: PostgreSQL's full-text index column (SQLite keeps its index apart, in events_fts).
INTERNAL = ("message_tsv",)


def rows(db: Reader, table: str, window: Window, types: Sequence[str] = (), page: int = PAGE,
         columns: Sequence[str] | None = None) -> tuple[list[str], Iterator[tuple[Any, ...]]]:
    """Return the column names and a lazy iterator over the matching rows, oldest first.

    `columns` chooses and orders the columns (`*`: every one); by default every
    column but `payload`. Raises ValueError naming a column the table lacks.
    """
    # A PostgreSQL reader (mailhook.store.pg.reports) says so; a sqlite_utils.Database has no dialect.
    dialect = getattr(db, "dialect", "sqlite")
    sql, params = query(table, window, types, dialect=dialect)
    cursor = db.execute(sql, [*params, 0, 0, 0])
    available = [d[0] for d in cursor.description if d[0] not in INTERNAL]
    cursor.close()
    if columns is None:
        chosen = [c for c in available if c not in UNLESS_ASKED]
    elif list(columns) == ["*"]:
        chosen = available
    else:
        chosen = list(dict.fromkeys(columns))
        unknown = [c for c in chosen if c not in available]
        if unknown:
            raise ValueError(f"{table} has no column {', '.join(unknown)} (it has: {', '.join(available)})")
    # Pages are keyed on id: read it along, and leave it out of the output when not chosen.
    hidden = "id" not in chosen
    select = ", ".join(f'v."{c}"' for c in [*chosen, *(["id"] if hidden else [])])
    sql, params = query(table, window, types, select, dialect)
    newest = db.execute(f"SELECT coalesce(max(id), 0) FROM {SOURCES[table].key_table}").fetchone()[0]
    id_index = len(chosen) if hidden else chosen.index("id")

    def pages() -> Iterator[tuple[Any, ...]]:
        last = 0
        while True:
            batch = db.execute(sql, [*params, last, newest, page]).fetchall()
            if not batch:
                return
            yield from ([row[:-1] for row in batch] if hidden else batch)
            last = batch[-1][id_index]

    return chosen, pages()


def write(out: TextIO, fmt: Format, columns: Sequence[str], records: Iterable[tuple[Any, ...]]) -> int:
    """Write the header (CSV) and every record to `out`; return how many records were written."""
    count = 0
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for record in records:
            writer.writerow(record)
            count += 1
    else:
        for record in records:
            out.write(json.dumps(dict(zip(columns, record, strict=True)), ensure_ascii=False))
            out.write("\n")
            count += 1
    return count


def export(db: Reader, out: TextIO, *, fmt: Format = "csv", table: str = "events",
           window: Window | None = None, types: Sequence[str] = (), columns: Sequence[str] | None = None) -> int:
    """Stream `table`'s rows inside `window` (and of `types`) to `out` as `fmt`; return the row count."""
    names, records = rows(db, table, window or Window(), types, columns=columns)
    return write(out, fmt, names, records)


HELP = "write events (or texts, calls, campaigns, attempts, deliveries) as CSV or JSON Lines"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `mailhook export`'s flags and its run function to its subparser."""
    parser.add_argument("--format", choices=FORMATS, default="csv", help="csv (default) or jsonl")
    parser.add_argument("--table", choices=tuple(SOURCES), default="events",
                        help="what to export (default events; attempts come with their event's columns)")
    parser.add_argument("--type", action="append", default=[], metavar="TYPE",
                        help="only these event types (repeatable, comma-separated; also calls, texts, campaigns)")
    parser.add_argument("--columns", action="append", metavar="COLUMNS",
                        help="only these columns, in this order (repeatable, comma-separated; '*' for all); "
                             "by default every column but payload")
    add_window_arguments(parser)
    parser.add_argument("--output", "-o", type=Path, metavar="FILE",
                        help="write to FILE (appearing only when complete) instead of standard output")
    parser.set_defaults(run=run_export)


def run_export(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    """Run `mailhook export`: stream the chosen rows to standard output or a file."""
    db = open_for_reading(args, settings, env)
    if db is None:
        return EX_NOINPUT
    try:
        relation = SOURCES[args.table].relation
        if relation not in db.table_names() and relation not in db.view_names():
            print(f"mailhook: this database has no {relation} yet; open it once with a writing command "
                  "(serve, ingest) to upgrade its schema", file=sys.stderr)
            return EX_NOINPUT
        try:
            chosen = [c.strip() for value in args.columns or () for c in value.split(",") if c.strip()] or None
            columns, records = rows(db, args.table, window_from(args), event_types(args.type), columns=chosen)
        except ValueError as exc:
            print(f"mailhook: {exc}", file=sys.stderr)
            return EX_USAGE
        if args.output is None:
            count = _to_stdout(args.format, columns, records)
        else:
            partial = args.output.with_name(args.output.name + ".part")
            with partial.open("w", encoding="utf-8", newline="") as out:
                count = write(out, args.format, columns, records)
            partial.replace(args.output)
    finally:
        db.close()
    print(f"exported {count} {args.table} rows", file=sys.stderr)
    return EX_OK


def _to_stdout(fmt: Format, columns: Sequence[str], records: Iterable[tuple[Any, ...]]) -> int:
    try:
        count = write(sys.stdout, fmt, columns, records)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader (head, a closed pager) has all it wanted; stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return count
