"""The settings, as frozen dataclasses: every option declared once, with `option()` metadata.

Flags, environment variable names and TOML keys are all derived from that
metadata (options.py), so they cannot drift. Pure: nothing here reads a file or
the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mailhook.errors import ConfigError
from mailhook.models import MailLimits
from mailhook.store.target import PostgresTarget, Target, target

DEFAULT_CONFIG = Path("/etc/mailhook/mailhook.toml")
CONFIG_NAME = "mailhook.toml"
MASK = "********"
TRIGGER_EVENTS = frozenset(
    {
        "OUTBOUND_CALL_FINISHED",
        "OUTBOUND_TEXT_FINISHED",
        "INBOUND_CALL_FINISHED",
        "INBOUND_TEXT_FINISHED",
        "CAMPAIGN_STARTED",
        "CAMPAIGN_STOPPED",
        "CAMPAIGN_FINISHED",
    }
)


def option(
    default: Any, help: str, *, flag: str | None = None, secret: bool = False, shown: bool = True
) -> Any:
    """Declare a setting: its default, its help text, and optionally a shorter flag name.

    `shown=False` keeps a value that may contain a secret (a URL) out of repr() too.
    """
    meta = {"help": help, "flag": flag, "secret": secret}
    # Secrets stay out of repr() so a logged or printed Settings never shows them.
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta, repr=not secret and shown)
    return field(default=default, metadata=meta, repr=not secret and shown)


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """Where and how events are stored."""

    # str first: a URL must reach `target()` as written (a Path would fold its '//').
    db: str | Path | None = option(
        None, "SQLite database file (default: mailhook.db here, or in $STATE_DIRECTORY), or a PostgreSQL URL "
        "postgresql://USER@HOST:PORT/DB", flag="db", shown=False)
    password: str | None = option(
        None, "PostgreSQL password (prefer password_file; or libpq's PGPASSFILE/PGPASSWORD); unused for SQLite",
        secret=True)
    password_file: Path | None = option(
        None, "file holding storage.password (relative: in $CREDENTIALS_DIRECTORY)")
    busy_timeout: float = option(5.0, "seconds to wait for a locked database before answering 'retry later'")
    max_batch: int = option(256, "most deliveries committed in one transaction")
    checkpoint_interval: float = option(
        60.0, "seconds between the writer's WAL checkpoints, which keep the WAL file small"
        " (0: only those its size calls for)"
    )
    phone_region: str = option(
        "US", "region (ISO 3166 code) for reading phone numbers written without a country code into E.164"
    )
    group_readable: bool = option(
        False, "create the database, its -wal/-shm and backups 0640 (group may read) instead of 0600"
    )

    def file_mode(self) -> int:
        """Return the mode the database files and backups are created with."""
        return 0o640 if self.group_readable else 0o600


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """The SMTP door."""

    listen: str = option("127.0.0.1:2525", "SMTP address HOST:PORT ('' turns SMTP off)")
    hostname: str = option("mailhook", "name the server gives in its banner and EHLO")
    accept: tuple[str, ...] = option(
        (), "recipient ADDR or @DOMAIN to accept (repeatable); empty accepts any recipient, but then SMTP may "
        "listen on loopback addresses only", flag="accept")
    senders: tuple[str, ...] = option((), "envelope sender ADDR or @DOMAIN allowed (repeatable; default any)")
    max_message_size: int = option(10 * 1024 * 1024, "largest message or body in bytes",
                                   flag="max-message-size")
    max_sessions: int = option(1000, "most concurrent SMTP sessions")
    max_per_ip: int = option(100, "most concurrent SMTP sessions from one address")
    max_recipients: int = option(100, "most envelope recipients of one message (RFC 5321's minimum)")
    max_recipient_overshoot: int = option(
        1000, "RCPTs refused with 452 past max_recipients before each further one counts as an error toward "
        "hard_error_limit; reset by each message accepted (Postfix smtpd_recipient_overshoot_limit)")
    acknowledge: str = option(
        "stored", "when 250 is sent: 'stored' (raw bytes and events committed) or 'received' (raw bytes "
        "committed; events extracted moments later in worker processes, for high volume)")
    idle_timeout: float = option(300.0, "seconds an SMTP session may stay silent")
    data_timeout: float = option(600.0, "seconds a client may take to send one message after DATA")
    shutdown_grace: float = option(30.0, "seconds a stopping server lets SMTP transactions in flight finish")
    max_connection_rate: int = option(
        0, "most connections one address may open per minute; more get 421 (0: no limit; Postfix "
        "smtpd_client_connection_rate_limit)")
    max_session_time: float = option(1200.0, "seconds one SMTP session may last, whatever it does")
    max_junk_commands: int = option(
        100, "commands that carry no mail (NOOP, RSET, HELP, VRFY, EXPN, a third HELO/EHLO) one session may send "
        "before it is closed; reset by each message accepted (Postfix smtpd_junk_command_limit)")
    soft_error_limit: int = option(10, "error replies (5xx) in one session after which each further one is "
                                       "delayed by error_sleep_time (Postfix smtpd_soft_error_limit)")
    error_sleep_time: float = option(1.0, "seconds each error reply past soft_error_limit is delayed "
                                          "(Postfix smtpd_error_sleep_time)")
    hard_error_limit: int = option(20, "error replies (5xx) in one session after which it is closed "
                                       "(Postfix smtpd_hard_error_limit)")
    evict_after: float = option(
        10.0, "at max_per_ip (same address) or max_sessions (an address with more sessions), a new connection "
        "replaces the session longest without an accepted message if that is at least this many seconds (0: never)")
    refusal_log_interval: float = option(60.0, "seconds between the summary lines logging connections refused at "
                                               "max_sessions, max_per_ip and max_connection_rate")
    max_auth_failures: int = option(3, "failed AUTH attempts on one connection before it is closed")
    auth_failure_delay: float = option(2.0, "seconds the first failed AUTH from an address waits before its 535; "
                                            "doubles with each further failure from that address")
    auth_failure_delay_max: float = option(15.0, "longest delay before a failed AUTH's 535, in seconds")
    max_auth_checks: int = option(
        2, "password checks (PBKDF2, ~0.15 s CPU each) run at once, in threads; one address gets one at a time")
    tls_cert: Path | None = option(None, "PEM certificate for STARTTLS")
    tls_key: Path | None = option(None, "PEM private key for STARTTLS")
    require_starttls: bool = option(False, "refuse mail transactions before STARTTLS")
    auth_file: Path | None = option(None, "password file (user:hash lines) enabling SMTP AUTH")


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """The HTTP door."""

    listen: str = option("127.0.0.1:8080", "HTTP address HOST:PORT ('' turns HTTP off)")
    token: str | None = option(None, "token required as ?token= or basic-auth password", flag="http-token",
                               secret=True)
    token_file: Path | None = option(None, "file holding http.token (relative: in $CREDENTIALS_DIRECTORY)",
                                     flag="http-token-file")
    webhook_secret: str | None = option(None, "v2 webhook secret for X-CallFire-Signature",
                                        flag="webhook-secret", secret=True)
    webhook_secret_file: Path | None = option(
        None, "file holding http.webhook_secret (relative: in $CREDENTIALS_DIRECTORY)", flag="webhook-secret-file"
    )
    # Connection limits and timeouts, after nginx's limit_conn, client_header_timeout,
    # keepalive_timeout and client_body_timeout (docs/security.md).
    max_connections: int = option(512, "most concurrent HTTP connections; more get 503 at once")
    max_per_ip: int = option(100, "most concurrent HTTP connections from one address; more get 503 at once")
    max_header_size: int = option(32768, "largest request line and headers together, in bytes; more get 400")
    header_timeout: float = option(60.0, "seconds a client may take to send a request's line and headers")
    evict_after: float = option(
        0.0, "at max_connections, a new connection replaces the one longest without a whole request head (an "
        "incomplete head or an idle keep-alive) from the address holding the most, if waiting at least this many "
        "seconds")
    keepalive_timeout: float = option(75.0, "seconds an HTTP connection may stay idle between requests")
    body_timeout: float = option(60.0, "seconds a client may take to send one request body")
    send_timeout: float = option(60.0, "seconds a client may leave an answer unread before the connection is closed")


@dataclass(frozen=True, slots=True)
class ImapSettings:
    """The IMAP poller (off unless a host is set)."""

    host: str | None = option(None, "IMAP server to poll")
    port: int | None = option(None, "IMAP port (default 993 for ssl, else 143)")
    security: str = option("ssl", "ssl, starttls or none")
    ca_file: Path | None = option(None, "CA bundle to trust for the IMAP server's certificate")
    user: str | None = option(None, "IMAP user name")
    password: str | None = option(None, "IMAP password (prefer password_file)", secret=True)
    password_file: Path | None = option(None, "file holding imap.password (relative: in $CREDENTIALS_DIRECTORY)")
    folders: tuple[str, ...] = option(("INBOX",), "folders to watch (repeatable)")
    action: str = option("move", "after storing: move, seen or leave")
    move_to: str = option("CallFire/Processed", "folder processed messages are moved to")
    quarantine_folder: str = option("CallFire/Quarantine", "folder unreadable messages are moved to")
    poll_interval: float = option(60.0, "seconds between polls when IDLE is unavailable")
    idle_timeout: float = option(300.0, "seconds before IDLE is re-issued (servers end it after 30 minutes)")
    reconnect_delay: float = option(1.0, "seconds before the first reconnect; doubles on each failure")
    reconnect_max: float = option(300.0, "longest wait between reconnects, in seconds")


@dataclass(frozen=True, slots=True)
class ParsingSettings:
    """How much an email may make the parser do, and how much extraction runs at once (docs/security.md)."""

    max_containers: int = option(100, "most multipart and message/rfc822 containers in one email (bounds nesting)")
    max_parts: int = option(1000, "most MIME parts (delimiter lines) in one email")
    max_lines: int = option(250_000, "most lines in one email")
    max_header_fields: int = option(10_000, "most header fields in all of one email's parts")
    header_size_limit: int = option(102_400, "bytes of one header field kept; the excess is discarded")
    extraction_budget: int = option(
        10 * 1024 * 1024, "most bytes of deliveries larger than 64 KiB being extracted at once"
    )
    inflight_budget: int = option(
        256 * 1024 * 1024, "most bytes of messages and bodies still being received, both doors together; "
        "past it SMTP answers 452 4.3.1 and HTTP 503 (try again later)"
    )

    def mail_limits(self) -> MailLimits:
        """Return the limits the email reader enforces."""
        return MailLimits(
            max_containers=self.max_containers, max_parts=self.max_parts, max_lines=self.max_lines,
            max_header_fields=self.max_header_fields, header_size_limit=self.header_size_limit,
        )


@dataclass(frozen=True, slots=True)
class LogSettings:
    """Logging."""

    level: str = option("INFO", "log level: DEBUG, INFO, WARNING or ERROR", flag="log-level")
    format: str = option("text", "log format: text or json", flag="log-format")


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """How the process itself may run."""

    allow_root: bool = option(False, "let serve, imap and ingest run as root (refused by default)",
                              flag="allow-root")


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """How `serve` spreads its work over processes."""

    workers: int = option(
        0, "processes serving SMTP and HTTP, around one writer (0: one per usable core; 1: a single process)",
        flag="workers")


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting mailhook reads, grouped by section."""

    storage: StorageSettings = field(default_factory=StorageSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    imap: ImapSettings = field(default_factory=ImapSettings)
    log: LogSettings = field(default_factory=LogSettings)
    service: ServiceSettings = field(default_factory=ServiceSettings)
    parsing: ParsingSettings = field(default_factory=ParsingSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    subscriptions: Mapping[int, str] = field(default_factory=dict)

    def database(self, env: Mapping[str, str]) -> Target:
        """Return the database: a PostgreSQL URL, or an SQLite file (configured, in $STATE_DIRECTORY, or here)."""
        if self.storage.db is not None:
            return target(self.storage.db, self.storage.password)
        state = env.get("STATE_DIRECTORY")
        if state:
            return Path(state.split(":")[0]) / "mailhook.db"
        return Path("mailhook.db")

    def sqlite_database(self, env: Mapping[str, str], command: str) -> Path:
        """Return the SQLite database path for a `command` that works on SQLite only; ConfigError for PostgreSQL."""
        found = self.database(env)
        if isinstance(found, PostgresTarget):
            raise ConfigError(f"{command} works on an SQLite database only, not on {found}")
        return found


SECTIONS: dict[str, type] = {
    "storage": StorageSettings,
    "smtp": SmtpSettings,
    "http": HttpSettings,
    "imap": ImapSettings,
    "log": LogSettings,
    "service": ServiceSettings,
    "parsing": ParsingSettings,
    "server": ServerSettings,
}


def with_storage(settings: Settings, **changes: Any) -> Settings:
    """Return settings with storage options replaced (for tests and subcommands)."""
    return replace(settings, storage=replace(settings.storage, **changes))
