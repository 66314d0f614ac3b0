"""`Option`: each setting as its flag and `MAILHOOK_*` variable name it; `convert`: a raw value to its type."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mailhook.config.settings import SECTIONS
from mailhook.errors import ConfigError


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
