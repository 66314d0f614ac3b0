"""Import the extractors even while the email half of mailhook.extract is still being written.

mailhook/extract/__init__.py imports mailhook.mail and mailhook.extract.text;
until both exist, this registers the package without running its __init__
so the document extractors can be tested on their own.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Mapping
from pathlib import Path

from mailhook.errors import Unreadable
from mailhook.models import Extraction

_ENTRY: Callable[..., Extraction] | None = None


def _ensure_package() -> None:
    global _ENTRY
    try:
        from mailhook.extract import extract

        _ENTRY = extract
    except ImportError:
        sys.modules.pop("mailhook.extract", None)
        import mailhook

        package = types.ModuleType("mailhook.extract")
        package.__path__ = [str(Path(mailhook.__file__).parent / "extract")]
        package.__package__ = "mailhook.extract"
        sys.modules["mailhook.extract"] = package


_ensure_package()


def entry_point() -> Callable[..., Extraction] | None:
    """Return mailhook.extract.extract, or None while its email half cannot be imported."""
    return _ENTRY


def extract_document(raw: bytes, subscriptions: Mapping[int, str]) -> Extraction:
    """Do what mailhook.extract.extract does for a document, for use until it imports."""
    if _ENTRY is not None:
        return _ENTRY(raw, "document", subscriptions)
    from mailhook.extract.document import read_document

    try:
        events, notes = read_document(raw, subscriptions)
    except Unreadable as exc:
        return Extraction(reason=str(exc))
    except RecursionError:
        return Extraction(reason="input nested too deeply to read")
    return Extraction(events=tuple(events), notes=tuple(notes))
