"""The `mailhook stats` command: its flags (the window flags `export` shares), opening the database, printing."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from mailhook.exitcodes import EX_NOINPUT, EX_OK

if TYPE_CHECKING:
    from mailhook.config.settings import Settings
    from mailhook.stats.reader import Reader
from mailhook.stats.queries import collect
from mailhook.stats.render import render, to_json
from mailhook.stats.window import Window, parse_bound

HELP = "summarize events: by type and result, per campaign, per day"


def bound_since(text: str) -> str:
    """Parse `--since` for argparse."""
    return _bound(text, until=False)


def bound_until(text: str) -> str:
    """Parse `--until` for argparse."""
    return _bound(text, until=True)


def _bound(text: str, *, until: bool) -> str:
    try:
        return parse_bound(text, until=until)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not YYYY, YYYY-MM, YYYY-MM-DD or an ISO 8601 time (YYYY-MM-DDTHH:MM[:SS][Z|±HH:MM])"
        ) from None


def add_window_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags that choose which events a command covers."""
    parser.add_argument("--since", type=bound_since, metavar="WHEN",
                        help="from this year, month, date or time on (inclusive; UTC unless an offset is given)")
    parser.add_argument("--until", type=bound_until, metavar="WHEN",
                        help="up to this time (exclusive); a year, month or date includes that whole period")
    parser.add_argument("--broadcast", type=int, metavar="ID", help="only the campaign with this broadcast id")
    parser.add_argument("--time", choices=("event", "received"), default="event",
                        help="which time --since/--until and days use: the event's own time "
                             "(modified, else created) or when mailhook received it (default: event)")


def window_from(args: argparse.Namespace) -> Window:
    """Build the window the parsed flags describe."""
    return Window(since=args.since, until=args.until, broadcast_id=args.broadcast, time=args.time)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `mailhook stats`' flags and its run function to its subparser."""
    add_window_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object for scripts")
    parser.set_defaults(run=run_stats)


def open_for_reading(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> Reader | None:
    """Open the configured database (SQLite file or PostgreSQL) for reading, or say why not and return None."""
    from pathlib import Path

    from mailhook.store.operations import operations

    target = settings.database(env)
    if isinstance(target, Path) and not target.is_file():
        print(f"mailhook: no database at {target}", file=sys.stderr)
        return None
    db: Reader = operations(target).open_reader(target, busy_timeout=settings.storage.busy_timeout)
    if "events" not in db.table_names():
        db.close()
        print(f"mailhook: {target} holds no mailhook tables yet; start `mailhook serve` (or `mailhook ingest`) on it"
              " once to create them", file=sys.stderr)
        return None
    return db


def run_stats(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    """Run `mailhook stats`: print the report as tables, or as JSON with --json."""
    db = open_for_reading(args, settings, env)
    if db is None:
        return EX_NOINPUT
    try:
        report = collect(db, window_from(args))
    finally:
        db.close()
    sys.stdout.write(to_json(report) + "\n" if args.json else render(report))
    return EX_OK
