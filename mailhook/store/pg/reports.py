"""Reading a PostgreSQL database for the reports (`mailhook stats`, `mailhook export`), as they read SQLite.

The reports' SQL is written once, in the portable subset both stores run
(`?` parameters, `coalesce`, `CASE`, `substr`); `Reader` takes it as a
`sqlite_utils.Database` would: `?` become psycopg's `%s`, `BEGIN` opens a
read-only snapshot (REPEATABLE READ), and values come back as SQLite gives
them — a sum of integers as an int (PostgreSQL's `numeric`), JSON columns
(`jsonb`) as their text — so both stores print the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.adapt import Loader
from psycopg.types.string import TextLoader

from mailhook.errors import RetryLater
from mailhook.store.pg.connection import connect
from mailhook.store.target import PostgresTarget

DIALECT = "postgresql"


class _NumberLoader(Loader):
    """Load `numeric` (what PostgreSQL's sum of bigints is) as int when whole, else float, as SQLite would."""

    def load(self, data: Any) -> int | float:
        value = Decimal(bytes(data).decode())
        return int(value) if value == value.to_integral_value() else float(value)


class _State:
    """What the reports ask of a connection: whether a read transaction is open."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    @property
    def in_transaction(self) -> bool:
        return self._conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE


class Reader:
    """A read connection to PostgreSQL that runs the reports' SQL (see the module docstring)."""

    dialect = DIALECT

    def __init__(self, conn: psycopg.Connection[Any], target: PostgresTarget) -> None:
        self._pg = conn
        self._target = target
        conn.adapters.register_loader("numeric", _NumberLoader)
        conn.adapters.register_loader("jsonb", TextLoader)
        conn.adapters.register_loader("json", TextLoader)
        self.conn = _State(conn)

    def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> psycopg.Cursor[Any]:
        """Run one statement written with `?` parameters; `BEGIN` starts a read-only snapshot."""
        if sql.strip().upper() == "BEGIN":
            sql = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
        try:
            if not parameters:
                return self._pg.execute(sql)  # no placeholders: psycopg leaves the text alone, % included
            return self._pg.execute(sql.replace("%", "%%").replace("?", "%s"), parameters)
        except psycopg.OperationalError as exc:
            raise RetryLater(f"storage unavailable ({self._target}): {self._target.scrub(str(exc).strip())}") from None

    def table_names(self) -> list[str]:
        """Return the tables of the current schema."""
        return [row[0] for row in self._pg.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'")]

    def view_names(self) -> list[str]:
        """Return the views of the current schema."""
        return [row[0] for row in self._pg.execute(
            "SELECT table_name FROM information_schema.views WHERE table_schema = current_schema()")]

    def close(self) -> None:
        """Close the connection (ending any read transaction)."""
        self._pg.close()


def open_reader(target: PostgresTarget, *, busy_timeout: float = 5.0) -> Reader:
    """Connect to `target` for reading (each statement its own transaction unless `BEGIN`); `RetryLater` if down.

    Reading never migrates: a database older than this mailhook is read as it is.
    """
    conn = connect(target, connect_timeout=max(busy_timeout, 1.0))
    conn.autocommit = True
    return Reader(conn, target)
