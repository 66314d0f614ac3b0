"""The one place the commands get the operations of the store a database target names.

A target (`mailhook.store.target`) is an SQLite file (a `Path`) or a
PostgreSQL database (`PostgresTarget`). `operations(target)` returns the store's operations
the commands need (reading for reports, prune, status, backup, reprocess,
describing it for check-config); the commands call them without knowing
which store they talk to. Each store's modules are imported only when its
operations run, so a command on PostgreSQL never loads sqlite3, and one on
SQLite never loads psycopg.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from mailhook.store.target import PostgresTarget, Target


class Pruned(Protocol):
    """How many rows a prune deleted (or would delete)."""

    @property
    def deliveries(self) -> int: ...

    @property
    def events(self) -> int: ...

    @property
    def attempts(self) -> int: ...


class Unsupported(Exception):
    """The operation does not apply to this store; the message says what to do instead."""


@dataclass(frozen=True, slots=True)
class Operations:
    """What the commands do to a store, whichever it is (see `operations`)."""

    kind: str
    open_reader: Callable[..., Any]
    prune: Callable[..., Pruned]
    status: Callable[..., dict[str, Any]]
    backup: Callable[..., Any]
    writable: Callable[[Target], str | None]
    open_store: Callable[..., Any]


def operations(target: Target) -> Operations:
    """Return the operations of the store `target` names: PostgreSQL for a URL, else the SQLite file."""
    return _POSTGRES if isinstance(target, PostgresTarget) else _SQLITE


def _sqlite_reader(target: Target, *, busy_timeout: float = 5.0) -> Any:
    from mailhook.store.connection import open_readonly

    return open_readonly(_file(target), busy_timeout=busy_timeout)


def _sqlite_prune(target: Target, cutoff: datetime, **options: Any) -> Pruned:
    from mailhook.store.maintenance import prune

    return prune(_file(target), cutoff, **options)


def _sqlite_status(target: Target, **options: Any) -> dict[str, Any]:
    from mailhook.store.maintenance import status

    return status(_file(target), **options)


def _sqlite_backup(target: Target, destination: Path, **options: Any) -> Any:
    from mailhook.store.maintenance import backup

    return backup(_file(target), destination, **options)


def _sqlite_writable(target: Target) -> str | None:
    from mailhook.health import probe

    return probe(_file(target))


def _sqlite_store(target: Target, **options: Any) -> Any:
    from mailhook.store.write import Store

    return Store(_file(target), **options)


def _pg(target: Target) -> PostgresTarget:
    assert isinstance(target, PostgresTarget)
    return target


def _file(target: Target) -> Path:
    assert isinstance(target, Path)
    return target


def _pg_reader(target: Target, *, busy_timeout: float = 5.0) -> Any:
    from mailhook.store.pg.reports import open_reader

    return open_reader(_pg(target), busy_timeout=busy_timeout)


def _pg_prune(target: Target, cutoff: datetime, **options: Any) -> Pruned:
    from mailhook.store.pg.maintenance import prune

    return prune(_pg(target), cutoff, **options)


def _pg_status(target: Target, **options: Any) -> dict[str, Any]:
    from mailhook.store.pg.maintenance import status

    return status(_pg(target), **options)


def _pg_backup(target: Target, destination: Path, **options: Any) -> Any:
    raise Unsupported(
        "backup copies an SQLite file; for PostgreSQL use pg_dump (e.g. `pg_dump --format=custom "
        "--file=mailhook.dump DATABASE`) or your provider's backups and point-in-time recovery")


def _pg_writable(target: Target) -> str | None:
    from mailhook.store.pg.maintenance import writable

    return writable(_pg(target))


def _pg_store(target: Target, **options: Any) -> Any:
    from mailhook.store.pg.maintenance import open_store

    return open_store(_pg(target), **options)


_SQLITE = Operations("sqlite", _sqlite_reader, _sqlite_prune, _sqlite_status, _sqlite_backup, _sqlite_writable,
                     _sqlite_store)
_POSTGRES = Operations("postgresql", _pg_reader, _pg_prune, _pg_status, _pg_backup, _pg_writable, _pg_store)
