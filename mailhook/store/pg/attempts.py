"""An event's attempts inserted on PostgreSQL: by the nodes' write path and by `mailhook reprocess`.

Free of the SQLite store (reprocessing on PostgreSQL never loads sqlite3).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from mailhook.store.pg.text import cleaned
from mailhook.store.schema import ATTEMPT_COLUMNS

ATTEMPT_ROWS = 500
"""Most attempts one INSERT holds (the protocol carries at most 65,535 parameters): each INSERT's values are
cleaned between two statements of the batch, a pause `session.IDLE_IN_TRANSACTION` counts, kept short."""

_INSERT_ATTEMPTS = f"INSERT INTO attempts (event_id, {', '.join(ATTEMPT_COLUMNS)}) VALUES "
_ATTEMPT_ROW = f"(%s, {', '.join(['%s'] * len(ATTEMPT_COLUMNS))})"


def insert_attempts(
    target: psycopg.Connection[Any] | psycopg.Cursor[Any], event_id: int, attempts: Sequence[Sequence[Any]]
) -> None:
    """Insert `attempts` (rows of ATTEMPT_COLUMNS' values) for `event_id`, in INSERTs of at most ATTEMPT_ROWS.

    One statement each, not executemany: that runs in pipeline mode, and a process frozen inside a pipeline
    leaves its session "active" between two messages, where no idle timeout of the server ends it.
    """
    for start in range(0, len(attempts), ATTEMPT_ROWS):
        part = attempts[start:start + ATTEMPT_ROWS]
        target.execute(_INSERT_ATTEMPTS + ", ".join([_ATTEMPT_ROW] * len(part)),
                       [v for a in part for v in (event_id, *cleaned(a, ATTEMPT_COLUMNS))])
