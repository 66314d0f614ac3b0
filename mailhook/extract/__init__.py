"""Turn a delivery's raw bytes into CallFire events, or into a reason they can't be read.

This package is the pure core: no sockets, no database, no environment.
`extract()` is its one entry point and never raises for bad input; every
failure becomes the `reason` of the returned `Extraction`.
"""

from __future__ import annotations

from collections.abc import Mapping

from mailhook.errors import Unreadable
from mailhook.extract.charset import charset_of, decode_document
from mailhook.extract.document import read_document
from mailhook.extract.mail import parse_mail
from mailhook.extract.text import read_text, read_text_noted
from mailhook.models import Event, Extraction, Kind, MailLimits

__all__ = ["extract", "read_document", "read_text"]


def extract(
    raw: bytes,
    kind: Kind,
    subscriptions: Mapping[int, str] | None = None,
    *,
    content_type: str | None = None,
    limits: MailLimits | None = None,
) -> Extraction:
    """Read every notification event in `raw` (an email read within `limits`), or say why there is none.

    `content_type` is the Content-Type a bare document came with (an HTTP
    header): its `charset` is honoured as mailhook.extract.charset orders it.
    An email carries its own, per part.
    """
    subs = subscriptions or {}
    try:
        if kind == "document":
            text, notes = decode_document(raw, charset_of(content_type))
            events, found = read_document(text, subs)
            notes += found
            return Extraction(events=tuple(events), notes=tuple(notes))
        return _extract_email(raw, subs, limits)
    except Unreadable as exc:
        return Extraction(reason=str(exc))
    except RecursionError:
        return Extraction(reason="input nested too deeply to read")
    except Exception as exc:  # noqa: BLE001 - a parser bug must quarantine, never lose, the input
        return Extraction(reason=f"internal error while reading: {type(exc).__name__}: {exc}")


def _extract_email(raw: bytes, subs: Mapping[int, str], limits: MailLimits | None) -> Extraction:
    """Look for an embedded document in every part first, then for human-readable fields."""
    mail = parse_mail(raw, limits)
    reasons: list[str] = []
    notes: list[str] = []
    # One email may carry several notifications, and the same one twice (the
    # plain and HTML alternatives, a body and an attachment): keep each once.
    found: dict[str, Event] = {}
    for candidate in mail.documents:
        try:
            events, found_notes = read_document(candidate.data, subs)
        except Unreadable as exc:
            reasons.append(f"{candidate.origin}: {exc}")
            continue
        notes.extend(found_notes)
        for event in events:
            found.setdefault(event.dedupe_key, event)
    if found:
        return Extraction(
            events=tuple(found.values()),
            notes=tuple(notes),
            message_id=mail.message_id,
            subject=mail.subject,
        )
    for part in mail.texts:
        try:
            events, text_notes = read_text_noted(
                part.text, subject=mail.subject, subscriptions=subs, html=part.html
            )
        except Unreadable as exc:
            reasons.append(f"{part.origin}: {exc}")
            continue
        if events:
            return Extraction(
                events=tuple(events),
                notes=(*notes, *(f"{part.origin}: {note}" for note in text_notes)),
                message_id=mail.message_id,
                subject=mail.subject,
            )
    reason = "; ".join(reasons) if reasons else "no CallFire notification found in any part"
    return Extraction(reason=reason, notes=tuple(notes), message_id=mail.message_id, subject=mail.subject)
