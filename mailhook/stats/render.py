"""A stats `Report` as text tables for a terminal, or as one JSON object for scripts."""

from __future__ import annotations

import json
from typing import Any

from mailhook.stats.report import Report


def to_json(report: Report) -> str:
    """Return the report as indented JSON for scripts."""
    return json.dumps(report.as_dict(), indent=2, ensure_ascii=False)


def render(report: Report) -> str:
    """Return the report as aligned plain-text tables for a terminal."""
    w = report.window
    scope = [f"time basis: {w.time}"]
    if w.since:
        scope.append(f"since {w.since}")
    if w.until:
        scope.append(f"until {w.until} (exclusive)")
    if w.broadcast_id is not None:
        scope.append(f"campaign {w.broadcast_id}")
    t = report.totals
    lines = [
        "mailhook stats: " + ", ".join(scope),
        f"{t.events} events ({t.calls} calls, {t.texts} texts, {t.campaign_events} campaign events, "
        f"{t.other_events} other), {t.attempts} tries, {t.duration} s of calls "
        f"(+ {t.transfer_duration} s transferred legs), billed {_money(t.billed_amount)}",
    ]
    if report.deliveries is not None:
        counts = ", ".join(f"{v} {k}" for k, v in report.deliveries.items())
        period = " received in this period" if w.since or w.until else ""
        lines.append(f"deliveries{period}: {counts}")
    lines += ["", "Events by type and result"]
    lines += _table(
        ("event type", "result", "events", "tries", "duration s", "xfer leg s", "billed"),
        [(r.event_type, r.final_result or "-", r.events, r.attempts, r.duration, r.transfer_duration,
          _money(r.billed_amount))
         for r in report.by_type],
    )
    lines += ["", "Campaigns"]
    lines += _table(
        ("campaign", "name", "calls", "LA", "AM", "NO_ANS", "BUSY", "texts", "sent", "failed", "DNT",
         "inbound", "replies", "replied", "tries", "duration s", "xfer leg s", "billed"),
        [(c.broadcast_id if c.broadcast_id is not None else "(none)", _cut(c.name or "-"), m.calls,
          _pct(m.live_answer_rate), _pct(m.machine_rate), _pct(m.no_answer_rate), _pct(m.busy_rate),
          m.texts, m.sent, m.failed, m.dnt, m.received, c.replies, _pct(c.reply_rate), m.attempts, m.duration,
          m.transfer_duration, _money(m.billed_amount))
         for c in report.campaigns for m in (c.measures,)],
    )
    lines += ["", "By day (UTC)"]
    lines += _table(
        ("day", "events", "calls", "texts", "campaign", "other", "tries", "duration s", "xfer leg s", "billed"),
        [(d.day, m.events, m.calls, m.texts, m.campaign_events, m.other_events, m.attempts, m.duration,
          m.transfer_duration, _money(m.billed_amount)) for d in report.days for m in (d.measures,)],
    )
    return "\n".join(lines) + "\n"


def _table(headers: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    if not rows:
        return ["  (no events)"]
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    numeric = [all(_numeric(r[i]) for r in cells) for i in range(len(headers))]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(wd) if num else v.ljust(wd)
                         for v, wd, num in zip(values, widths, numeric, strict=True)).rstrip()

    return [line(list(headers)), line(["-" * wd for wd in widths]), *(line(r) for r in cells)]


def _numeric(text: str) -> bool:
    return text == "-" or text.replace(".", "", 1).replace("%", "").lstrip("-").isdigit()


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _money(amount: float) -> str:
    return f"{amount:.4f}".rstrip("0").rstrip(".") if amount else "0"


def _cut(text: str, width: int = 24) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
