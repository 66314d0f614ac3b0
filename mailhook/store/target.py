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
from urllib.parse import parse_qsl, unquote, urlsplit

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
        """Return every password this target carries, as written and decoded (to scrub from a driver's message)."""
        found = [self.password] if self.password else []
        written = _userinfo_password(self.url)
        if written:
            found += [written, unquote(written)]
        query = urlsplit(self.url).query if "?" in self.url else ""
        found += [value for key, value in parse_qsl(query) if key == "password" and value]
        found += re.findall(r"(?i)[?&]password=([^&#]+)", self.url)
        # Longest first: a password that holds another one's text is masked whole.
        return tuple(sorted(set(found), key=len, reverse=True))

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
    """Return a connection URL with its password (in the authority or as `?password=`) masked.

    The authority's user information runs to the last `@`, not to the first
    `/`, `?` or `#`: a password written with those unencoded (which libpq
    cannot read either) is masked whole instead of shown from that character on.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    userinfo, at, hosts = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = userinfo.split(":", 1)[0] + ":" + MASK + "@" + hosts
    return scheme + "://" + re.sub(r"(?i)([?&]password=)[^&#]*", lambda m: m.group(1) + MASK, rest)


def _userinfo_password(url: str) -> str | None:
    """Return the password in a URL's user information as written (to the last `@`), if any."""
    rest = url.partition("://")[2]
    userinfo, at, _ = rest.rpartition("@")
    return userinfo.split(":", 1)[1] or None if at and ":" in userinfo else None
