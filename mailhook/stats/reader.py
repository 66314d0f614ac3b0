"""`Reader`: what the reports read a database through, SQLite's or PostgreSQL's alike."""

from __future__ import annotations

from typing import Any, Protocol


class _State(Protocol):
    @property
    def in_transaction(self) -> bool: ...


class Reader(Protocol):
    """What the reports read through: `sqlite_utils.Database`, or the PostgreSQL reader in `mailhook.store.pg`."""

    @property
    def conn(self) -> _State: ...

    def execute(self, sql: str, parameters: Any = None) -> Any:
        """Run one statement with `?` parameters and return its cursor."""
        ...

    def table_names(self) -> list[str]:
        """Return the database's tables."""
        ...

    def view_names(self) -> list[str]:
        """Return the database's views."""
        ...

    def close(self) -> None:
        """Close the connection."""
        ...
