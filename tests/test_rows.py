"""The payload bound counts the UTF-8 bytes a delivery's payloads take, ASCII or not, at and past the limit."""

from __future__ import annotations

import pytest

from mailhook.models import Attempt, Event, Extraction
from mailhook.store.rows import PAYLOAD_RATIO, rows
from mailhook.store.schema import ATTEMPT_COLUMNS, EVENT_COLUMNS

SIZE = 100
# `{"x":""}` around the text, in the event's payload and in its one attempt's.
_WRAPPING = 2 * len('{"x":""}')


def _extraction(text: str) -> Extraction:
    """One event and one attempt, each with the payload {"x": text}."""
    attempt = Attempt(record_id=1, payload={"x": text})
    return Extraction(events=(Event("TEXT_SENT", "explicit", "v1", "xml", resource_id=1, payload={"x": text},
                                    attempts=(attempt,)),))


@pytest.mark.parametrize(
    ("character", "utf8_bytes"), [("y", 1), ("é", 2), ("€", 3), ("😀", 4)],
)  # fmt: skip
def test_payloads_of_exactly_the_ratio_in_utf8_bytes_are_stored_and_one_byte_more_is_not(
    character: str, utf8_bytes: int
) -> None:
    room = PAYLOAD_RATIO * SIZE - _WRAPPING  # UTF-8 bytes left for the two texts
    count, left = divmod(room // 2, utf8_bytes)
    text = character * count + "y" * left
    assert len(text.encode()) * 2 + _WRAPPING == PAYLOAD_RATIO * SIZE
    kept = rows(_extraction(text), SIZE)
    assert kept.reason is None and len(kept.events) == 1
    over = rows(_extraction(text + "y"), SIZE)
    assert over.events == ()
    assert over.reason == (f"payloads of {PAYLOAD_RATIO * SIZE + 2} bytes would exceed {PAYLOAD_RATIO}x "
                           f"the {SIZE} bytes received; events not stored")


def test_a_lone_surrogate_is_measured_and_stored_as_u_fffd() -> None:
    found = rows(_extraction("a\udc80b"), SIZE)
    assert found.reason is None
    _, values, attempts = found.events[0]
    assert values[EVENT_COLUMNS.index("payload")] == '{"x":"a\ufffdb"}'
    assert attempts[0][ATTEMPT_COLUMNS.index("payload")] == '{"x":"a\ufffdb"}'
