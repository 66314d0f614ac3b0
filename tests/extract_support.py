"""Import the extractors even while the email half of mailhook.extract is still being written.

mailhook/extract/__init__.py imports mailhook.mail and mailhook.extract.text;
until both exist, this registers the package without running its __init__
so the document extractors can be tested on their own.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Mapping
from pathlib import Path

from mailhook.errors import Unreadable
from mailhook.models import Extraction


def _ensure_package() -> None:
    try:
        import mailhook.extract  # noqa: F401
    except ImportError:
        sys.modules.pop("mailhook.extract", None)
        import mailhook

        package = types.ModuleType("mailhook.extract")
        package.__path__ = [str(Path(mailhook.__file__).parent / "extract")]
        package.__package__ = "mailhook.extract"
        sys.modules["mailhook.extract"] = package


_ensure_package()


def extract_document(raw: bytes, subscriptions: Mapping[int, str]) -> Extraction:
    """Do what mailhook.extract.extract does for a document, for use until it imports."""
    if importlib.util.find_spec("mailhook.mail") is not None:
        from mailhook.extract import extract

        return extract(raw, "document", subscriptions)
    from mailhook.extract.document import read_document

    try:
        events, notes = read_document(raw, subscriptions)
    except Unreadable as exc:
        return Extraction(reason=str(exc))
    except RecursionError:
        return Extraction(reason="input nested too deeply to read")
    return Extraction(events=tuple(events), notes=tuple(notes))
