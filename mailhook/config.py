"""Settings from flags, MAILHOOK_* environment variables and a TOML file, read once.

Precedence is flag > environment > file > default. Every option is declared
once, as a dataclass field with `option()` metadata; flags, environment
variable names and TOML keys are all derived from it, so they cannot drift.

Every secret option X has a companion X_file naming a file that holds the
secret (one line; a trailing newline is dropped). A relative X_file is looked
up in $CREDENTIALS_DIRECTORY when set, so systemd's `LoadCredential=` works
without the secret ever appearing in the environment or the config file;
outside systemd a relative name from the config file is read next to it.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mailhook.errors import ConfigError
from mailhook.models import MailLimits

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


def option(default: Any, help: str, *, flag: str | None = None, secret: bool = False) -> Any:
    """Declare a setting: its default, its help text, and optionally a shorter flag name."""
    meta = {"help": help, "flag": flag, "secret": secret}
    # Secrets stay out of repr() so a logged or printed Settings never shows them.
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta, repr=not secret)
    return field(default=default, metadata=meta, repr=not secret)


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """Where and how events are stored."""

    db: Path | None = option(None, "SQLite database file (default: mailhook.db here, or in $STATE_DIRECTORY)",
                             flag="db")
    busy_timeout: float = option(5.0, "seconds to wait for a locked database before answering 'retry later'")
    max_batch: int = option(256, "most deliveries committed in one transaction")
    checkpoint_interval: float = option(
        60.0, "seconds between the writer's WAL checkpoints, which keep the WAL file small (0: only SQLite's own)"
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
        "replaces the session longest without a mail command if that is at least this many seconds (0: never)")
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
class Settings:
    """Every setting mailhook reads, grouped by section."""

    storage: StorageSettings = field(default_factory=StorageSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    imap: ImapSettings = field(default_factory=ImapSettings)
    log: LogSettings = field(default_factory=LogSettings)
    service: ServiceSettings = field(default_factory=ServiceSettings)
    parsing: ParsingSettings = field(default_factory=ParsingSettings)
    subscriptions: Mapping[int, str] = field(default_factory=dict)

    def database(self, env: Mapping[str, str]) -> Path:
        """Return the database path: configured, or in systemd's state directory, or here."""
        if self.storage.db is not None:
            return self.storage.db
        state = env.get("STATE_DIRECTORY")
        if state:
            return Path(state.split(":")[0]) / "mailhook.db"
        return Path("mailhook.db")


SECTIONS: dict[str, type] = {
    "storage": StorageSettings,
    "smtp": SmtpSettings,
    "http": HttpSettings,
    "imap": ImapSettings,
    "log": LogSettings,
    "service": ServiceSettings,
    "parsing": ParsingSettings,
}


@dataclass(frozen=True, slots=True)
class Option:
    """One setting as the command line and environment see it."""

    section: str
    name: str
    flag: str
    env: str
    help: str
    kind: type
    repeatable: bool
    secret: bool
    default: Any = None


def options() -> list[Option]:
    """List every option with its flag and environment variable name."""
    result = []
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            flag = f.metadata.get("flag") or f"{section}-{f.name.replace('_', '-')}"
            kind, repeatable = _base_type(hints[f.name])
            result.append(
                Option(
                    section=section,
                    name=f.name,
                    flag=flag,
                    env="MAILHOOK_" + flag.upper().replace("-", "_"),
                    help=f.metadata.get("help", ""),
                    kind=kind,
                    repeatable=repeatable,
                    secret=f.metadata.get("secret", False),
                    default=f.default_factory() if callable(f.default_factory) else f.default,
                )
            )
    return result


def _base_type(hint: Any) -> tuple[type, bool]:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin is tuple:
        return str, True
    if origin in (typing.Union, types.UnionType):
        return _base_type(args[0])
    return hint, False


def convert(opt: Option, value: Any, where: str) -> Any:
    """Convert a raw value from a flag, variable or file to the option's type, naming it on error."""
    try:
        if opt.repeatable:
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise ValueError("expected a list of strings")
            return tuple(value)
        if opt.kind is bool:
            if isinstance(value, bool):
                return value
            lowered = str(value).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if opt.kind is int:
            if isinstance(value, bool):
                raise ValueError("expected an integer")
            return int(value)
        if opt.kind is float:
            if isinstance(value, bool):
                raise ValueError("expected a number")
            return float(value)
        if opt.kind is Path:
            return Path(str(value))
        if not isinstance(value, str):
            raise ValueError("expected a string")
        return value
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: bad value {value!r}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Effective:
    """The settings together with where they were read from, for `mailhook check-config`."""

    settings: Settings
    path: Path | None
    sources: Mapping[str, str]  # "section.name" -> the flag, variable or file that set it


def load(
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    config_file: str | Path | None = None,
) -> Settings:
    """Build the settings from explicit flags, the environment and the TOML file.

    `flags` holds only the flags given on the command line, keyed by `Option.flag`.
    """
    return explain(flags, env, config_file).settings


def config_path(env: Mapping[str, str], config_file: str | Path | None = None) -> Path | None:
    """Return the config file to read: --config or $MAILHOOK_CONFIG ('' for none), or the first default present."""
    if config_file is not None:
        # `--config ''` reads no file, like MAILHOOK_CONFIG=; Path('') would be '.', the current directory.
        return Path(config_file) if str(config_file) else None
    if "MAILHOOK_CONFIG" in env:
        return Path(env["MAILHOOK_CONFIG"]) if env["MAILHOOK_CONFIG"] else None
    candidates = [DEFAULT_CONFIG]
    if env.get("CONFIGURATION_DIRECTORY"):
        # systemd's ConfigurationDirectory= says where the admin keeps it.
        candidates.insert(0, Path(env["CONFIGURATION_DIRECTORY"].split(":")[0]) / CONFIG_NAME)
    return next((c for c in candidates if c.exists()), None)


def explain(
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    config_file: str | Path | None = None,
) -> Effective:
    """Like `load`, but also say which flag, variable or file set each option."""
    path = config_path(env, config_file)
    data: dict[str, Any] = _read_toml(path) if path is not None else {}
    all_options = options()
    _check_keys(data, path)
    known_env = {opt.env for opt in all_options} | {"MAILHOOK_CONFIG"}
    for name in sorted(env):
        if name.startswith("MAILHOOK_") and name not in known_env:
            raise ConfigError(f"{name}: unknown environment variable{_did_you_mean(name, known_env)}")
    values: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    sources: dict[str, str] = {}
    ranks: dict[str, int] = {}
    for opt in all_options:
        key = f"{opt.section}.{opt.name}"
        file_value = data.get(opt.section, {}).get(opt.name, MISSING)
        if opt.flag in flags:
            where, rank = f"--{opt.flag}", 3
            value = convert(opt, flags[opt.flag], where)
        elif opt.env in env:
            where, rank = opt.env, 2
            value = convert(opt, env[opt.env], where)
        elif file_value is not MISSING:
            where, rank = f"{path}", 1
            value = convert(opt, file_value, f"{path}: {key}")
        else:
            continue
        values[opt.section][opt.name] = value
        sources[key] = where
        ranks[key] = rank
    for opt in all_options:
        if opt.secret:
            _read_secret_file(opt, values[opt.section], sources, ranks, env, path)
    sections = {name: cls(**values[name]) for name, cls in SECTIONS.items()}
    settings = Settings(**sections, subscriptions=_subscriptions(data.get("subscriptions", {}), path))
    return Effective(validate(settings), path, sources)


def _check_keys(data: Mapping[str, Any], path: Path | None) -> None:
    known = {section: {f.name for f in fields(cls)} for section, cls in SECTIONS.items()}
    for section, table in data.items():
        if section == "subscriptions":
            continue
        if section not in SECTIONS:
            raise ConfigError(f"{path}: unknown section [{section}] (known: {', '.join([*SECTIONS, 'subscriptions'])})")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        for key in table:
            if key not in known[section]:
                raise ConfigError(f"{path}: unknown key {section}.{key}{_did_you_mean(key, known[section])}")


def _did_you_mean(name: str, known: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _read_secret_file(
    opt: Option, values: dict[str, Any], sources: dict[str, str], ranks: dict[str, int], env: Mapping[str, str],
    config: Path | None,
) -> None:
    """Replace a secret by the contents of its X_file companion when that was given with higher precedence.

    A relative name is found in $CREDENTIALS_DIRECTORY under systemd; outside
    it, a name from the config file is found next to that file, so that
    `LoadCredential=http-token:/etc/mailhook/http-token` and an admin's shell
    both find /etc/mailhook/http-token for `token_file = "http-token"`.
    """
    companion = f"{opt.name}_file"
    key, file_key = f"{opt.section}.{opt.name}", f"{opt.section}.{companion}"
    if companion not in values:
        return
    if opt.name in values:
        if ranks[key] == ranks[file_key]:
            raise ConfigError(f"{key} and {file_key} are both set ({sources[key]}); set only one")
        if ranks[key] > ranks[file_key]:
            return
    path = Path(values[companion])
    if not path.is_absolute() and env.get("CREDENTIALS_DIRECTORY"):
        path = Path(env["CREDENTIALS_DIRECTORY"]) / path
    elif not path.is_absolute() and config is not None and ranks[file_key] == 1:
        path = config.parent / path
    try:
        secret = path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"{file_key} ({sources[file_key]}): cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file_key} ({sources[file_key]}): {path} is not UTF-8 text") from None
    if not secret:
        raise ConfigError(f"{file_key} ({sources[file_key]}): {path} is empty")
    values[opt.name] = secret
    sources[key] = f"{sources[file_key]} via {path}"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _subscriptions(table: Any, path: Path | None) -> dict[int, str]:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [subscriptions] must be a table of SubscriptionId = \"TRIGGER_EVENT\"")
    result = {}
    for key, value in table.items():
        try:
            sub_id = int(key)
        except ValueError:
            raise ConfigError(f"{path}: subscriptions.{key}: the key must be a numeric SubscriptionId") from None
        if not isinstance(value, str) or value.upper() not in TRIGGER_EVENTS:
            raise ConfigError(
                f"{path}: subscriptions.{key}: {value!r} is not a trigger event "
                f"({', '.join(sorted(TRIGGER_EVENTS))})"
            )
        result[sub_id] = value.upper()
    return result


def validate(settings: Settings) -> Settings:
    """Check values that are wrong whatever their type; return the settings unchanged."""
    checks = [
        (settings.smtp.max_message_size > 0, "smtp.max_message_size must be positive"),
        (settings.smtp.max_sessions > 0, "smtp.max_sessions must be positive"),
        (settings.smtp.max_per_ip > 0, "smtp.max_per_ip must be positive"),
        (settings.smtp.max_recipients > 0, "smtp.max_recipients must be positive"),
        (
            min(settings.smtp.idle_timeout, settings.smtp.data_timeout) > 0,
            "smtp.idle_timeout and smtp.data_timeout must be positive",
        ),
        (settings.http.max_connections > 0, "http.max_connections must be positive"),
        (settings.http.max_per_ip > 0, "http.max_per_ip must be positive"),
        (settings.http.max_header_size >= 1024, "http.max_header_size must be at least 1024"),
        (
            min(settings.http.header_timeout, settings.http.keepalive_timeout, settings.http.body_timeout,
                settings.http.send_timeout) > 0,
            "http.header_timeout, keepalive_timeout, body_timeout and send_timeout must be positive",
        ),
        (settings.http.evict_after >= 0, "http.evict_after must not be negative"),
        (settings.smtp.max_session_time > 0, "smtp.max_session_time must be positive"),
        (settings.smtp.max_connection_rate >= 0, "smtp.max_connection_rate must not be negative"),
        (
            min(settings.smtp.max_junk_commands, settings.smtp.soft_error_limit, settings.smtp.hard_error_limit,
                settings.smtp.max_auth_failures) > 0,
            "smtp.max_junk_commands, smtp.soft_error_limit, smtp.hard_error_limit and smtp.max_auth_failures "
            "must be positive",
        ),
        (
            min(settings.smtp.error_sleep_time, settings.smtp.evict_after, settings.smtp.auth_failure_delay) >= 0
            and settings.smtp.auth_failure_delay_max >= settings.smtp.auth_failure_delay,
            "smtp.error_sleep_time, smtp.evict_after and smtp.auth_failure_delay must not be negative, and "
            "smtp.auth_failure_delay_max must be at least smtp.auth_failure_delay",
        ),
        (settings.smtp.refusal_log_interval > 0, "smtp.refusal_log_interval must be positive"),
        (settings.smtp.max_recipient_overshoot >= 0, "smtp.max_recipient_overshoot must not be negative"),
        (settings.smtp.max_auth_checks > 0, "smtp.max_auth_checks must be positive"),
        (settings.storage.max_batch > 0, "storage.max_batch must be positive"),
        *((getattr(settings.parsing, f.name) > 0, f"parsing.{f.name} must be positive")
          for f in fields(ParsingSettings)),
        (settings.storage.busy_timeout >= 0, "storage.busy_timeout must not be negative"),
        (settings.storage.checkpoint_interval >= 0, "storage.checkpoint_interval must not be negative"),
        (_known_region(settings.storage.phone_region), "storage.phone_region must be a region code such as US or GB"),
        (settings.imap.poll_interval > 0, "imap.poll_interval must be positive"),
        (0 < settings.imap.idle_timeout <= 29 * 60, "imap.idle_timeout must be between 0 and 1740 seconds"),
        (
            0 < settings.imap.reconnect_delay <= settings.imap.reconnect_max,
            "imap.reconnect_delay must be positive and at most imap.reconnect_max",
        ),
        (settings.imap.port is None or 0 < settings.imap.port < 65536, "imap.port must be between 1 and 65535"),
        (settings.imap.security in ("ssl", "starttls", "none"), "imap.security must be ssl, starttls or none"),
        (settings.imap.action in ("move", "seen", "leave"), "imap.action must be move, seen or leave"),
        (settings.log.format in ("text", "json"), "log.format must be text or json"),
        (settings.smtp.acknowledge in ("stored", "received"), "smtp.acknowledge must be stored or received"),
        (
            settings.log.level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"),
            "log.level must be DEBUG, INFO, WARNING or ERROR",
        ),
        (
            (settings.smtp.tls_cert is None) == (settings.smtp.tls_key is None),
            "smtp.tls_cert and smtp.tls_key go together",
        ),
        (
            not settings.smtp.require_starttls or settings.smtp.tls_cert is not None,
            "smtp.require_starttls needs smtp.tls_cert and smtp.tls_key",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    for name in ("smtp", "http"):
        listen = getattr(settings, name).listen
        if listen:
            parse_address(listen, f"{name}.listen")
    if settings.smtp.listen:
        # Checked here too (the door checks what it really binds) so nothing is opened or
        # created before refusing, and `check-config` reports it.
        refuse_open_relay(settings.smtp, [settings.smtp.listen])
    # Port 0 means "any free port": two doors asking for it never collide.
    if settings.smtp.listen and settings.smtp.listen == settings.http.listen and parse_address(
        settings.smtp.listen, "smtp.listen"
    )[1] != 0:
        raise ConfigError(f"smtp.listen and http.listen are both {settings.smtp.listen!r}")
    return settings


def check_files(settings: Settings, env: Mapping[str, str]) -> list[str]:
    """Return problems with the files the settings name (missing, unreadable), each naming its key."""
    problems = []
    for key, path in (
        ("smtp.tls_cert", settings.smtp.tls_cert),
        ("smtp.tls_key", settings.smtp.tls_key),
        ("smtp.auth_file", settings.smtp.auth_file),
        ("imap.ca_file", settings.imap.ca_file),
    ):
        if path is not None and not os.access(path, os.R_OK):
            problems.append(f"{key}: cannot read {path}")
    return problems


def render(effective: Effective, env: Mapping[str, str]) -> str:
    """Return the effective settings as TOML, secrets masked, each value annotated with its source."""
    settings = effective.settings
    lines = [
        "# mailhook effective configuration",
        f"# config file: {effective.path or '(none)'}",
        f"# database: {settings.database(env)}",
    ]
    for section in SECTIONS:
        lines += ["", f"[{section}]"]
        for opt in (o for o in options() if o.section == section):
            value = getattr(getattr(settings, section), opt.name)
            source = effective.sources.get(f"{section}.{opt.name}", "default")
            if value is None:
                lines.append(f"# {opt.name} =  (not set)")
                continue
            shown = json.dumps(MASK) if opt.secret else _toml_value(value)
            lines.append(f"{opt.name} = {shown}  # {source}")
    lines += ["", "[subscriptions]"]
    lines += [f'{sub_id} = "{event}"' for sub_id, event in sorted(settings.subscriptions.items())]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    # A JSON string is a valid TOML basic string.
    return json.dumps(str(value))


def parse_address(value: str, name: str) -> tuple[str, int]:
    """Split HOST:PORT (IPv6 as [::1]:25) into host and port, naming the setting on error."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{name}: {value!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def with_storage(settings: Settings, **changes: Any) -> Settings:
    """Return settings with storage options replaced (for tests and subcommands)."""
    return replace(settings, storage=replace(settings.storage, **changes))


def refuse_open_relay(smtp: SmtpSettings, addresses: list[str]) -> None:
    """Raise `ConfigError` when SMTP would take mail for anyone on a non-loopback address.

    Without `smtp.accept` only loopback may listen. A host name is let through:
    the door checks the IP addresses it really binds.
    """
    if smtp.accept:
        return
    for address in addresses:
        host = address.rpartition(":")[0].strip("[]") or "0.0.0.0"
        try:
            public = not ipaddress.ip_address(host).is_loopback
        except ValueError:
            public = False
        if public:
            raise ConfigError(
                f"smtp.listen is {', '.join(addresses)} but smtp.accept is empty: without a recipient "
                "allow-list mailhook accepts mail on a loopback address only; "
                "give --accept ADDR or --accept @DOMAIN (repeatable)"
            )


def _known_region(region: str) -> bool:
    from mailhook.derived import valid_region

    return valid_region(region)
