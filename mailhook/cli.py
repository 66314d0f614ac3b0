"""The `mailhook` command: parse arguments, read settings once, run a subcommand, exit.

This is the only module that reads the environment or calls `sys.exit`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from mailhook import __version__
from mailhook.config.load import load
from mailhook.config.options import Option, options
from mailhook.config.settings import CONFIG_NAME, DEFAULT_CONFIG, Settings
from mailhook.errors import ConfigError, RetryLater
from mailhook.exitcodes import EX_CONFIG, EX_DATAERR, EX_INTERRUPTED, EX_NOPERM, EX_OK, EX_TEMPFAIL
from mailhook.privileges import root_refusal, secret_flag_warnings

log = logging.getLogger("mailhook.cli")

CONFIG_HELP = (f"TOML config file (default: {DEFAULT_CONFIG}, or {CONFIG_NAME} in $CONFIGURATION_DIRECTORY when "
               "systemd sets it; '' reads none; env MAILHOOK_CONFIG)")
INGEST_EXIT_CODES = f"""\
environment:
  MAILHOOK_CONFIG, MAILHOOK_DB, MAILHOOK_MAX_MESSAGE_SIZE and the other MAILHOOK_* variables named above
  (an MTA pipe transport sets them with its own environment)

exit codes:
  {EX_OK}   every input stored (duplicates and quarantined input too, with a warning)
  {EX_DATAERR}  an input could not be read at all, or was too large (EX_DATAERR: do not retry)
  {EX_TEMPFAIL}  storage unavailable (EX_TEMPFAIL: an MTA retries later)
  {EX_NOPERM}  run as root without --allow-root (EX_NOPERM)
  {EX_CONFIG}  configuration error (EX_CONFIG)
  2   bad command line
"""

Command = Callable[[argparse.Namespace, Settings, Mapping[str, str]], int]

# Which option sections each subcommand reads; flags of the others would only confuse.
COMMAND_SECTIONS: dict[str, tuple[str, ...]] = {
    "serve": ("storage", "smtp", "http", "imap", "log", "service", "parsing", "server"),
    "ingest": ("storage", "log", "service", "parsing"),
    "imap": ("storage", "imap", "log", "service", "parsing"),
    "reprocess": ("storage", "log", "parsing"),
    "check-config": ("storage", "smtp", "http", "imap", "log", "service", "parsing", "server"),
    "prune": ("storage", "log"),
    "backup": ("storage", "log"),
    "status": ("storage", "smtp", "http", "log"),
    "stats": ("storage", "log"),
    "export": ("storage", "log"),
    "migrate-to": ("storage", "log"),
}


def build_parser(
    command: str | None = None,
) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction[argparse.ArgumentParser]]:
    """Build the argument parser with one subparser per command (of `command` only the ones it needs).

    The analysts' commands take their flags from their modules (~30 ms of
    imports): they are left out when `command` names another command.
    """
    parser = argparse.ArgumentParser(
        prog="mailhook",
        description="Store CallFire notifications from email, IMAP and HTTP in one SQLite file.",
    )
    parser.add_argument("--version", action="version", version=f"mailhook {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = _command(sub, "serve", "receive notifications over SMTP and HTTP (and IMAP when configured)")
    serve.set_defaults(run=_lazy("mailhook.server", "run_serve"))

    ingest = _command(sub, "ingest", "store notification files: .eml, mbox, Maildir, .xml, .json, or - for stdin",
                      epilog=INGEST_EXIT_CODES)
    ingest.add_argument("paths", nargs="+", metavar="PATH", help="files or directories; - reads one message from stdin")
    (size,) = (opt for opt in options() if opt.flag == "max-message-size")
    ingest.add_argument("--max-message-size", dest="max_message_size", type=int, default=argparse.SUPPRESS,
                        metavar="BYTES", help=_option_help(size))
    ingest.add_argument("--quiet", "-q", action="store_true",
                        help="print only warnings and errors: no progress bar, summary or migration lines")
    ingest.add_argument("--verbose", "-v", action="store_true",
                        help="log one line per delivery (at INFO; otherwise they are DEBUG)")
    ingest.set_defaults(run=_run_ingest)

    imap = _command(sub, "imap", "poll an IMAP mailbox for notification emails")
    imap.set_defaults(run=_lazy("mailhook.imap.door", "run_imap"))

    reprocess = _command(sub, "reprocess", "re-read stored raw deliveries with the current extractors")
    reprocess.add_argument("--quarantined", action="store_true", help="only deliveries that are quarantined")
    reprocess.set_defaults(run=_run_reprocess)

    password = _command(sub, "smtp-password", "print a smtp.auth_file line for USER; reads the password from stdin")
    password.add_argument("user", metavar="USER", help="the SMTP AUTH user name")
    password.set_defaults(run=_lazy("mailhook.smtp.auth", "run_smtp_password"))
    _add_housekeeping(sub)
    if command is None or command not in _OTHER_THAN_ANALYSIS:
        _add_analysis(sub)
    return parser, sub


# The commands built before `_add_analysis`: one of them parses the same without the analysts' commands.
_OTHER_THAN_ANALYSIS = frozenset({"serve", "ingest", "imap", "reprocess", "smtp-password",
                                  "check-config", "prune", "backup", "status"})


def parse_age(text: str) -> timedelta:
    """Read an age like 90d, 12h, 30m, 45s or 2w (`mailhook.admin.parse_age`, imported only when one is given).

    mailhook.admin imports urllib.request and http.client (~45 ms) for `status --server`.
    """
    from mailhook.admin import parse_age as parse

    return parse(text)


def _add_housekeeping(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the admin's commands: check-config, prune, backup, status."""
    check = _command(sub, "check-config", "print the effective configuration (secrets masked); exit 78 on errors")
    check.set_defaults(run=_lazy("mailhook.admin", "run_check_config"))

    prune = _command(sub, "prune", "delete deliveries and events received before a cutoff")
    prune.add_argument("--older-than", type=parse_age, required=True, metavar="AGE",
                       help="cutoff age: 90d, 12h, 30m or 2w")
    prune.add_argument("--keep-raw", action="store_true",
                       help="delete only events and attempts; keep the deliveries with their raw bytes")
    prune.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")
    prune.set_defaults(run=_lazy("mailhook.admin", "run_prune"))

    backup = _command(sub, "backup", "write a consistent copy of the database, also while serving")
    backup.add_argument("path", metavar="PATH",
                        help="backup file, or a directory (existing, or ending in /) to put a dated one in")
    backup.set_defaults(run=_lazy("mailhook.admin", "run_backup"))

    status = _command(sub, "status", "report database health (and with --server the running doors)")
    status.add_argument("--server", action="store_true", help="also check the SMTP banner and HTTP /healthz")
    status.add_argument("--max-age", type=parse_age, metavar="AGE",
                        help="unhealthy when the newest delivery is older than AGE")
    status.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each door (default 5)")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(run=_lazy("mailhook.admin", "run_status"))


def _add_analysis(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the analysts' read-only commands: stats and export (their flags live in their modules)."""
    from mailhook import export
    from mailhook.stats import command as stats

    stats.add_arguments(_command(sub, "stats", stats.HELP))
    export.add_arguments(_command(sub, "export", export.HELP))
    from mailhook import migrate

    migrate.add_arguments(_command(sub, "migrate-to", migrate.HELP))


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str, sections: Sequence[str] = (),
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=help, epilog=epilog,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, metavar="FILE", help=CONFIG_HELP)  # a str: '' means none
    for opt in options():
        if opt.section not in (COMMAND_SECTIONS.get(name) or sections):
            continue
        kwargs: dict[str, Any] = {"dest": f"opt:{opt.flag}", "default": argparse.SUPPRESS,
                                  "help": _option_help(opt)}
        if opt.kind is bool and not opt.repeatable:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif opt.repeatable:
            kwargs["action"] = "append"
            kwargs["metavar"] = "VALUE"
        else:
            kwargs["metavar"] = opt.name.upper()
        parser.add_argument(f"--{opt.flag}", **kwargs)
    return parser


def _option_help(opt: Option) -> str:
    """Return an option's help with its default (unless the text already gives it) and its variable."""
    if "default" in opt.help:
        return f"{opt.help} (env {opt.env})"
    value = opt.default
    if value is None or value in ((), []):
        shown = "none"
    elif isinstance(value, bool):
        shown = "on" if value else "off"
    elif isinstance(value, float):
        shown = f"{value:g}"
    elif value == "":
        shown = "empty"
    else:
        shown = str(value)
    return f"{opt.help} (default: {shown.replace('%', '%%')}; env {opt.env})"


def _lazy(module: str, name: str) -> Command:
    """Import a door only when its command runs, so `mailhook ingest` starts fast."""

    def run(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
        import importlib

        command: Command = getattr(importlib.import_module(module), name)
        return command(args, settings, env)

    return run


def configure_logging(settings: Settings, env: Mapping[str, str] | None = None, *, pid: bool = False) -> None:
    """Send logs to stderr, one line per record, at the configured level (naming the process, with `pid`)."""
    from mailhook.logs import setup

    setup(settings.log.level, settings.log.format, journal=env is not None and _stderr_is_journal(env), pid=pid)


def _stderr_is_journal(env: Mapping[str, str]) -> bool:
    """Say whether stderr is journald's stream ($JOURNAL_STREAM names its device:inode)."""
    try:
        device, inode = (int(part) for part in env.get("JOURNAL_STREAM", "").split(":"))
        stat = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (stat.st_dev, stat.st_ino) == (device, inode)


def console() -> int:
    """Run the `mailhook` command in a process of its own (the console script and `python -m mailhook`)."""
    # sqlite-utils imports pandas and numpy whenever they are installed, for helpers mailhook never
    # calls: ~0.5 s of CPU on every start of `mailhook stats` or `export`. None in sys.modules makes
    # their import fail, which sqlite-utils expects; only here, where nothing else shares the process.
    for name in ("pandas", "numpy"):
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    return main()


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run the command line and return its exit code (the console script exits with it)."""
    environ = dict(os.environ if env is None else env)
    given = list(sys.argv[1:] if argv is None else argv)
    parser, _ = build_parser(next((arg for arg in given if not arg.startswith("-")), None))
    args = parser.parse_args(given)
    flags = {key[4:]: value for key, value in vars(args).items() if key.startswith("opt:")}
    if "max_message_size" in vars(args):
        flags["max-message-size"] = args.max_message_size
    try:
        settings = load(flags, environ, args.config)
    except ConfigError as exc:
        print(f"mailhook: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    configure_logging(settings, environ)
    refusal = root_refusal(args.command, settings.service.allow_root)
    if refusal is not None:
        print(f"mailhook: {refusal}", file=sys.stderr)
        return EX_NOPERM
    for warning in secret_flag_warnings(flags, {o.flag: o.env for o in options() if o.secret}):
        log.warning("%s", warning)
    try:
        code: int = args.run(args, settings, environ)
    except ConfigError as exc:
        print(f"mailhook: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except RetryLater as exc:
        print(f"mailhook: {exc}; try again later", file=sys.stderr)
        return EX_TEMPFAIL
    except KeyboardInterrupt:
        return EX_INTERRUPTED
    return code


def _run_ingest(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    from mailhook.files.ingest import ingest_paths

    if args.quiet:
        root = logging.getLogger("mailhook")
        root.setLevel(max(root.level, logging.WARNING))
    return ingest_paths(args.paths, settings, env, quiet=args.quiet, stdin=sys.stdin.buffer,
                        interactive=sys.stderr.isatty(), verbose=args.verbose)


def _run_reprocess(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    from mailhook.reprocess import reprocess
    from mailhook.store.operations import operations

    database = settings.database(env)
    store = operations(database).open_store(database, busy_timeout=settings.storage.busy_timeout,
                                            mode=settings.storage.file_mode(),
                                            phone_region=settings.storage.phone_region)
    try:
        receipts = reprocess(store, settings.subscriptions, quarantined_only=args.quarantined,
                             limits=settings.parsing.mail_limits())
    finally:
        store.close()
    new = sum(r.events for r in receipts)
    still = sum(1 for r in receipts if r.status == "quarantined")
    print(f"reprocessed {len(receipts)} deliveries: {new} new events, {still} still quarantined", file=sys.stderr)
    return EX_OK
