"""Values as PostgreSQL can hold them: text without NUL or lone surrogates, JSON that jsonb accepts.

Shared by the nodes' write path, `mailhook reprocess` and `mailhook migrate-to`,
and free of the SQLite store, so that reprocessing on PostgreSQL never loads sqlite3.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from mailhook.store.rows import mend_json

_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")
# What PostgreSQL text cannot hold: NUL, and lone surrogates (psycopg cannot encode them to UTF-8).
_UNFIT = re.compile("[\x00\ud800-\udfff]")


def clean(value: Any) -> Any:
    """Return a value PostgreSQL text can hold: NUL characters and lone surrogates become U+FFFD."""
    if isinstance(value, str) and _UNFIT.search(value):
        return _UNFIT.sub("\ufffd", value)
    return value


def clean_json(text: str) -> str:
    """Return JSON text jsonb accepts: NUL and lone surrogates, raw or escaped (`\\u0000`), become U+FFFD."""
    if "\\u0000" in text:
        text = _NUL_ESCAPE.sub(r"\1\\ufffd", text)
    # Lone surrogates as the SQLite store mends them (store/rows.py, shared); jsonb refuses an escaped one too.
    return clean(mend_json(text))  # type: ignore[no-any-return]


def cleaned(values: Iterable[Any], columns: Sequence[str]) -> list[Any]:
    """Return a row's values cleaned for its columns (`clean_json` for the payload, `clean` for the rest)."""
    return [clean_json(v) if c == "payload" and isinstance(v, str) else clean(v)
            for v, c in zip(values, columns, strict=True)]
