"""The admin's commands: check-config, prune, backup and status.

They translate command-line arguments into calls on the config and store
modules and their results into text and exit codes; the work itself happens
there.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mailhook import openfiles
from mailhook.config.addresses import parse_address
from mailhook.config.load import explain
from mailhook.config.render import render
from mailhook.config.settings import Settings
from mailhook.config.validate import check_files
from mailhook.errors import ConfigError, RetryLater
from mailhook.exitcodes import EX_CANTCREAT, EX_CONFIG, EX_OK, EX_UNAVAILABLE, EX_UNHEALTHY, EX_USAGE
from mailhook.privileges import make_directories
from mailhook.store.target import PostgresTarget

_AGE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> timedelta:
    """Read an age like 90d, 12h, 30m, 45s or 2w."""
    match = _AGE.match(text.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not an age like 90d, 12h, 30m or 2w")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def run_check_config(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    """Print the effective configuration with secrets masked; exit 78 if anything is wrong."""
    flags = {key[4:]: value for key, value in vars(args).items() if key.startswith("opt:")}
    effective = explain(flags, env, args.config)
    sys.stdout.write(render(effective, env))
    problems = check_files(effective.settings, env)
    for problem in problems:
        print(f"mailhook: configuration error: {problem}", file=sys.stderr)
    shortfall = openfiles.shortfall(effective.settings, smtp=bool(effective.settings.smtp.listen),
                                    http=bool(effective.settings.http.listen))
    if shortfall:
        print(f"mailhook: warning: {shortfall}", file=sys.stderr)
    database = effective.settings.database(env)
    folder = database.parent if isinstance(database, Path) else None
    if folder is not None and not folder.is_dir():
        # Not an error: systemd's StateDirectory= creates it when the service starts.
        print(f"mailhook: note: storage.db: directory {folder} does not exist yet", file=sys.stderr)
    if not isinstance(database, Path) and not problems:
        problems += _check_postgres(database, effective.settings.storage.busy_timeout)
    return EX_CONFIG if problems else EX_OK


def _check_postgres(database: PostgresTarget, timeout: float) -> list[str]:
    """Connect to the configured PostgreSQL database and say what it holds; return the configuration problems."""
    from mailhook.store.pg.maintenance import describe

    try:
        found = describe(database, timeout=timeout)
    except ConfigError as exc:
        print(f"mailhook: configuration error: {exc}", file=sys.stderr)
        return [str(exc)]
    except RetryLater as exc:
        # Not a configuration error: the server may be down or failing over right now.
        print(f"mailhook: warning: {exc}", file=sys.stderr)
        return []
    print(f"mailhook: note: storage.db: connected to PostgreSQL {found['server_version']} at {database};"
          f" schema version {found['schema_version']} (this mailhook: {found['schema_expected']})"
          + (", a read-only standby" if found["standby"] else ""), file=sys.stderr)
    return []


def run_prune(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    """Delete what was received before the cutoff, in small transactions so serving goes on."""
    from mailhook.store.operations import operations

    cutoff = datetime.now(UTC) - args.older_than
    database = settings.database(env)
    result = operations(database).prune(database, cutoff, keep_raw=args.keep_raw, dry_run=args.dry_run,
                                        busy_timeout=settings.storage.busy_timeout)
    verb = "would delete" if args.dry_run else "deleted"
    what = "" if args.keep_raw else f"{result.deliveries} deliveries, "
    print(f"mailhook: {verb} {what}{result.events} events and {result.attempts} attempts received before "
          f"{cutoff.strftime('%Y-%m-%dT%H:%M:%SZ')}", file=sys.stderr)
    return EX_OK


def run_backup(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    """Write a consistent copy of the live database to PATH (a file, or a directory to put one in)."""
    from mailhook.store.operations import Unsupported, operations

    database = settings.database(env)
    store = operations(database)
    if store.kind != "sqlite":
        try:
            store.backup(database, Path(args.path))
        except Unsupported as exc:
            print(f"mailhook: {exc}", file=sys.stderr)
            return EX_USAGE
    from mailhook.store.maintenance import CannotWrite

    target = Path(args.path)
    if args.path.endswith("/") or target.is_dir():
        try:
            make_directories(target)
        except OSError as exc:
            print(f"mailhook: cannot create backup directory {target}: {exc.strerror}", file=sys.stderr)
            return EX_CANTCREAT
        target = target / f"mailhook-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.db"
    try:
        info = store.backup(database, target, busy_timeout=settings.storage.busy_timeout,
                            mode=settings.storage.file_mode())
    except FileNotFoundError as exc:
        print(f"mailhook: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    except (CannotWrite, ValueError, OSError) as exc:
        reason = (exc.strerror or exc) if isinstance(exc, OSError) else exc
        print(f"mailhook: cannot write backup {target}: {reason}", file=sys.stderr)
        return EX_CANTCREAT
    print(f"mailhook: backup written to {info.path}: {info.deliveries} deliveries, {info.events} events, "
          f"{info.size} bytes", file=sys.stderr)
    print(info.path)
    return EX_OK


def run_status(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    """Report the database (and with --server the running doors); exit 0 only when healthy."""
    from mailhook.store.operations import operations

    problems: list[str] = []
    database = settings.database(env)
    store = operations(database)
    try:
        report = store.status(database, busy_timeout=settings.storage.busy_timeout)
    except (FileNotFoundError, RetryLater) as exc:
        report = {"database": str(database), "error": str(exc)}
        problems.append(str(exc))
    if "error" not in report:
        # Whether the store would take a write now, whichever doors run (SMTP only, or none).
        report["storage"] = store.writable(database) or "ok"
        if report["storage"] != "ok":
            problems.append(f"storage: {report['storage']}")
        if report["schema_version"] != report["schema_expected"]:
            problems.append(f"schema version {report['schema_version']} but this mailhook expects "
                            f"{report['schema_expected']}: run `mailhook serve` once to migrate")
        if args.max_age is not None:
            newest = report.get("last_delivery_at")
            cutoff = datetime.now(UTC) - args.max_age
            if newest is None or datetime.fromisoformat(str(newest)) < cutoff:
                problems.append(f"no delivery since {cutoff.strftime('%Y-%m-%dT%H:%M:%SZ')}")
    if args.server:
        report["server"] = _probe(settings, args.timeout)
        problems += [f"{door}: {state}" for door, state in report["server"].items() if state != "ok"]
    report["healthy"] = not problems
    report["problems"] = problems
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        for key, value in report.items():
            if key not in ("problems", "server"):
                print(f"{key}: {value}")
        for door, state in report.get("server", {}).items():
            print(f"server {door}: {state}")
        for problem in problems:
            print(f"problem: {problem}")
    if "error" in report:
        return EX_UNAVAILABLE
    return EX_UNHEALTHY if problems else EX_OK


def _probe(settings: Settings, timeout: float) -> dict[str, str]:
    """Check that the configured doors answer: an SMTP 220 banner, HTTP /healthz 200."""
    result = {}
    if settings.smtp.listen:
        host, port = parse_address(settings.smtp.listen, "smtp.listen")
        try:
            with socket.create_connection((_connectable(host), port), timeout=timeout) as conn:
                banner = conn.recv(512)
            result["smtp"] = "ok" if banner.startswith(b"220") else f"unexpected banner: {_printable(banner[:60])}"
        except OSError as exc:
            result["smtp"] = f"unreachable ({_why(exc)})"
    if settings.http.listen:
        host, port = parse_address(settings.http.listen, "http.listen")
        url = f"http://{_bracket(_connectable(host))}:{port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                result["http"] = "ok" if response.status == 200 else f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            result["http"] = _unhealthy(exc)
        except urllib.error.URLError as exc:
            reason = exc.reason
            result["http"] = f"unreachable ({_why(reason) if isinstance(reason, OSError) else _printable(str(reason))})"
        except OSError as exc:
            result["http"] = f"unreachable ({_why(exc)})"
    return result


def _unhealthy(answer: urllib.error.HTTPError) -> str:
    """Say what an error answer from /healthz means: its reason in words ("disk full"), or its status."""
    try:
        reason = json.loads(answer.read(4096)).get("reason")
    except (OSError, ValueError, AttributeError):
        reason = None
    finally:
        answer.close()
    if isinstance(reason, str) and reason:
        return _printable(reason[:80])
    return f"HTTP {answer.code}"


def _why(exc: OSError) -> str:
    """Say in a few words why a connection failed, without Python's error text."""
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: is mailhook running?"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    return (exc.strerror or type(exc).__name__).lower()


def _printable(text: str | bytes) -> str:
    """Return peer-supplied text with control characters made visible."""
    from mailhook.logs import escape

    return escape(text.decode("utf-8", "replace") if isinstance(text, bytes) else text)


def _connectable(host: str) -> str:
    """Turn a wildcard listen address into one a client can connect to."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host

