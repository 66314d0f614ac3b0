"""Printing the effective settings (`mailhook check-config --print`), secrets masked, as TOML."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mailhook.config.load import Effective
from mailhook.config.options import options
from mailhook.config.settings import (
    MASK,
    SECTIONS,
)
from mailhook.store.target import is_url, mask_url


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
            if opt.secret:
                shown = json.dumps(MASK)
            elif is_url(value):  # storage.db: a PostgreSQL URL may hold the password
                shown = json.dumps(mask_url(value))
            else:
                shown = _toml_value(value)
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
