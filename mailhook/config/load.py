"""Settings from flags, MAILHOOK_* environment variables and a TOML file, read once.

Precedence is flag > environment > file > default. Every secret option X has a
companion X_file naming a file that holds the secret (one line; a trailing
newline is dropped). A relative X_file is looked up in $CREDENTIALS_DIRECTORY
when set, so systemd's `LoadCredential=` works without the secret ever
appearing in the environment or the config file; outside systemd a relative
name from the config file is read next to it.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from mailhook.config.options import Option, convert, options
from mailhook.config.settings import CONFIG_NAME, DEFAULT_CONFIG, SECTIONS, TRIGGER_EVENTS, Settings
from mailhook.config.validate import validate
from mailhook.errors import ConfigError


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
