"""`validate`: the checks on settings that are wrong whatever their type; `check_files`: the files they name."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import fields

from mailhook.config.addresses import parse_address, refuse_open_relay
from mailhook.config.settings import ParsingSettings, Settings
from mailhook.errors import ConfigError


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
        (settings.http.evict_after >= 0, "http.evict_after must not be negative"),
        (settings.smtp.refusal_log_interval > 0, "smtp.refusal_log_interval must be positive"),
        (settings.smtp.max_recipient_overshoot >= 0, "smtp.max_recipient_overshoot must not be negative"),
        (settings.smtp.max_auth_checks > 0, "smtp.max_auth_checks must be positive"),
        (settings.storage.max_batch > 0, "storage.max_batch must be positive"),
        (settings.server.workers >= 0, "server.workers must not be negative"),
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


def _known_region(region: str) -> bool:
    from mailhook.derived import valid_region

    return valid_region(region)
