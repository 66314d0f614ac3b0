"""Every fixture under fixtures/ is extracted into exactly the events its .expected.json lists.

An expected file may name the `content_type` its sample comes with (fixtures/http: a POST's header).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fulltext_support import assert_values_whole

from mailhook.extract import extract

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
EXPECTED_SUFFIX = ".expected.json"


def _cases() -> list[tuple[Path, Path]]:
    """Pair every `X.expected.json` with the one sample `X.<ext>` beside it."""
    cases = []
    for expected in sorted(FIXTURES.rglob(f"*{EXPECTED_SUFFIX}")):
        stem = expected.name[: -len(EXPECTED_SUFFIX)]
        assert not stem.endswith(".expected"), f"{expected}: an expected file of an expected file"
        samples = [p for p in expected.parent.glob(f"{stem}.*") if p != expected and p.name != expected.name]
        samples = [p for p in samples if p.name[len(stem) + 1 :].count(".") == 0]
        cases.append((samples[0] if len(samples) == 1 else expected.with_name(f"{stem}.MISSING"), expected))
    return cases


def _drop_payload_and_nulls(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if v is not None and k != "payload"}


def _event_dict(event: Any) -> dict[str, Any]:
    out = _drop_payload_and_nulls(event.row())
    out["attempts"] = [_drop_payload_and_nulls(a.row()) for a in event.attempts]
    return out


@pytest.mark.parametrize(
    ("sample", "expected_path"),
    _cases(),
    ids=[str(e.relative_to(FIXTURES))[: -len(EXPECTED_SUFFIX)] for _, e in _cases()],
)
def test_fixture_extracts_to_its_expected_events(sample: Path, expected_path: Path) -> None:
    expected = json.loads(expected_path.read_text(encoding="utf-8"))
    assert sample.exists(), f"no single sample file beside {expected_path.name}"
    subscriptions = {int(k): v for k, v in expected.get("subscriptions", {}).items()}
    result = extract(sample.read_bytes(), expected["kind"], subscriptions, content_type=expected.get("content_type"))

    if expected["quarantined"] is None:
        assert result.reason is None, result.reason
        assert [_event_dict(e) for e in result.events] == expected["events"]
    else:
        assert result.events == ()
        assert result.reason is not None
        assert expected["quarantined"] in result.reason
    for note in expected.get("notes", []):
        assert any(note in n for n in result.notes), (note, result.notes)


@pytest.mark.parametrize(
    ("sample", "expected_path"),
    _cases(),
    ids=[str(e.relative_to(FIXTURES))[: -len(EXPECTED_SUFFIX)] for _, e in _cases()],
)
def test_every_stored_text_value_appears_whole_in_the_decoded_fixture(sample: Path, expected_path: Path) -> None:
    expected = json.loads(expected_path.read_text(encoding="utf-8"))
    subscriptions = {int(k): v for k, v in expected.get("subscriptions", {}).items()}
    raw = sample.read_bytes()
    result = extract(raw, expected["kind"], subscriptions, content_type=expected.get("content_type"))
    assert_values_whole(result, raw, expected["kind"], expected.get("content_type"))
