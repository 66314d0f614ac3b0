"""The `mailhook migrate-to` command: copy the SQLite database (`--db`) into PostgreSQL, resumably.

The work is `mailhook.store.pg.copy`; this module reads the arguments, opens
both databases, prints progress, and turns the outcome into an exit code.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from mailhook.exitcodes import EX_DATAERR, EX_NOINPUT, EX_OK, EX_TEMPFAIL, EX_USAGE
from mailhook.store.target import PostgresTarget, is_url, mask_url

if TYPE_CHECKING:
    from mailhook.config.settings import Settings
    from mailhook.store.pg.copy import Progress

HELP = "copy the SQLite database (--db) into a PostgreSQL database; rerun to resume or to copy what is new"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `mailhook migrate-to`'s arguments and its run function to its subparser."""
    parser.add_argument("url", metavar="postgresql://USER@HOST/DATABASE",
                        help="the PostgreSQL database to copy into (its schema is created if missing)")
    parser.add_argument("--password-file", type=Path, metavar="FILE",
                        help="read the PostgreSQL password from FILE (else the URL's, PGPASSWORD or ~/.pgpass)")
    parser.add_argument("--batch", type=int, default=500, metavar="N",
                        help="deliveries per transaction (default 500)")
    parser.add_argument("--quiet", "-q", action="store_true", help="print only the summary and errors")
    parser.set_defaults(run=run_migrate_to)


def run_migrate_to(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    """Run `mailhook migrate-to`: copy every delivery, event, attempt and IMAP position not yet copied."""
    import psycopg

    from mailhook.store.pg.connection import open_database
    from mailhook.store.pg.copy import CannotCopy, LockWaited, copy_database

    if not is_url(args.url):
        print(f"mailhook: migrate-to takes a postgresql:// URL, not {args.url!r}", file=sys.stderr)
        return EX_USAGE
    if args.batch < 1:
        print("mailhook: --batch must be at least 1", file=sys.stderr)
        return EX_USAGE
    source = settings.database(env)
    if not isinstance(source, Path):
        print(f"mailhook: migrate-to copies from an SQLite file (--db), and --db is {source}", file=sys.stderr)
        return EX_USAGE
    if not source.is_file():
        print(f"mailhook: no database at {source}", file=sys.stderr)
        return EX_NOINPUT
    password = None
    if args.password_file is not None:
        try:
            password = args.password_file.read_text().strip()
        except OSError as exc:
            print(f"mailhook: cannot read {args.password_file}: {exc.strerror}", file=sys.stderr)
            return EX_NOINPUT
    target = PostgresTarget(args.url, password)
    conn = open_database(target)
    started = time.monotonic()
    shown = [started]

    def report(progress: Progress) -> None:
        now = time.monotonic()
        if args.quiet or (now - shown[0] < 2 and progress.last_id < progress.total_deliveries):
            return
        shown[0] = now
        print(f"mailhook: copied {progress.deliveries} deliveries (up to id {progress.last_id}),"
              f" {progress.events} events, {progress.attempts} attempts", file=sys.stderr)

    try:
        done = copy_database(source, conn, batch=args.batch, progress=report, lock_wait=settings.storage.busy_timeout)
    except CannotCopy as exc:
        print(f"mailhook: {exc}", file=sys.stderr)
        return EX_DATAERR
    except LockWaited as exc:
        print(f"mailhook: migrate-to stopped: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except psycopg.OperationalError as exc:
        # The server went away (or ended this session) mid-copy: the batch under way was rolled back.
        said = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"mailhook: migrate-to stopped: database {target}: {target.scrub(said)};"
              " a rerun resumes after the last batch copied", file=sys.stderr)
        return EX_TEMPFAIL
    finally:
        conn.close()
    skipped = f" ({done.skipped_events} events were there already)" if done.skipped_events else ""
    print(f"mailhook: migrate-to {mask_url(args.url)}: copied {done.deliveries} deliveries, {done.events} events,"
          f" {done.attempts} attempts in {time.monotonic() - started:.1f} s{skipped}; the database now holds"
          f" everything {source} held", file=sys.stderr)
    return EX_OK
