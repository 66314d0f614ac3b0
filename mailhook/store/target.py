"""Which database a store opens: an SQLite file (a `Path`) or a PostgreSQL server (`PostgresTarget`).

Pure: parsing and masking only; nothing here connects. `storage.db` (`--db`,
`MAILHOOK_DB`) takes either a file name or a `postgresql://` (or
`postgres://`) URL; the password may be in the URL, in `storage.password`
(or its `storage.password_file`), or left to libpq's own `PGPASSWORD` and
`PGPASSFILE` (~/.pgpass). It is never shown: `str()` and `repr()` mask it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SCHEMES = ("postgresql", "postgres")
MASK = "********"


@dataclass(frozen=True, slots=True)
class PostgresTarget:
    """A PostgreSQL database to store in: its URL as configured, and a password given apart from it, if any.

    `str()` is the URL with every password masked, for logs, errors and
    `check-config`; `url` itself may hold the password and is never printed.
    """

    url: str = field(repr=False)
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return mask_url(self.url)

    def __repr__(self) -> str:
        return f"PostgresTarget({mask_url(self.url)!r})"

    def secrets(self) -> tuple[str, ...]:
        """Return every password this target carries (to scrub from a driver's error message)."""
        found = [self.password] if self.password else []
        parts = urlsplit(self.url)
        if parts.password:
            found.append(parts.password)
        found += [value for key, value in parse_qsl(parts.query) if key == "password" and value]
        return tuple(found)

    def scrub(self, text: str) -> str:
        """Return `text` with this target's passwords masked."""
        for secret in self.secrets():
            text = text.replace(secret, MASK)
        return text


Target = Path | PostgresTarget


def is_url(value: str | Path) -> bool:
    """Say whether a `storage.db` value names a PostgreSQL server rather than an SQLite file."""
    return isinstance(value, str) and re.match(r"(?i)(postgresql|postgres)://", value) is not None


def target(value: str | Path, password: str | None = None) -> Target:
    """Return the target a `storage.db` value names (a URL: PostgreSQL; anything else: an SQLite file)."""
    if is_url(value):
        return PostgresTarget(str(value), password)
    return Path(value)


def mask_url(url: str) -> str:
    """Return a connection URL with its password (in the authority or as `?password=`) masked."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hosts = netloc.rpartition("@")
            if ":" in userinfo:
                userinfo = userinfo.split(":", 1)[0] + ":" + MASK
            netloc = f"{userinfo}@{hosts}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, MASK if k == "password" else v) for k, v in pairs], safe="*/:")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        # Unparseable: show the scheme only rather than risk printing a password.
        return url.split("://", 1)[0] + "://" + MASK
