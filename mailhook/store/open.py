"""Opening the store a target names: the SQLite writer for a file, the PostgreSQL writer for a URL."""

from __future__ import annotations

from pathlib import Path

from mailhook.errors import ConfigError
from mailhook.privileges import FILE_MODE
from mailhook.store.interface import Storage
from mailhook.store.target import Target
from mailhook.store.writer import Observer, Writer


def open_storage(
    target: Target,
    *,
    busy_timeout: float = 5.0,
    max_batch: int = 256,
    observer: Observer | None = None,
    checkpoint_interval: float = 60.0,
    mode: int = FILE_MODE,
    phone_region: str = "US",
) -> Storage:
    """Open (creating and migrating as needed) the store for `target`; blocking.

    `busy_timeout`, `checkpoint_interval` and `mode` concern the SQLite file
    only. PostgreSQL needs psycopg (`pip install 'mailhook[postgres]'`).
    """
    if isinstance(target, Path):
        return Writer(target, busy_timeout=busy_timeout, max_batch=max_batch, observer=observer,
                      checkpoint_interval=checkpoint_interval, mode=mode, phone_region=phone_region)
    try:
        from mailhook.store.pg.writer import PgWriter
    except ImportError as exc:
        raise ConfigError(f"storage.db is a PostgreSQL URL, but psycopg is not installed ({exc}): "
                          "pip install 'mailhook[postgres]'") from None
    return PgWriter(target, max_batch=max_batch, observer=observer, phone_region=phone_region,
                    busy_timeout=busy_timeout)
