"""The log helpers: a flood of one kind of event becomes one line per interval."""

from __future__ import annotations

import asyncio
import logging

import pytest

from mailhook.logs import Summary


def test_a_flood_is_logged_once_then_summed_up_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("mailhook.test-summary")

    async def flood() -> list[str]:
        summary = Summary(logger, logging.WARNING, "refusals", interval=0.3)
        for n in range(500):
            summary.note("refused peer=%s", f"10.0.0.{n % 250}")
        first = [r.getMessage() for r in caplog.records]
        await asyncio.sleep(0.45)  # one interval over: one summary line
        summary.note("refused peer=%s", "late")  # still within the second window: counted
        await asyncio.sleep(0.3)
        await asyncio.sleep(1.0)  # a whole quiet interval: the window closes
        summary.note("refused peer=%s", "after the quiet")  # logged at once
        summary.close()
        return first

    first = asyncio.run(flood())

    assert first == ["refused peer=10.0.0.0"]
    assert [r.getMessage() for r in caplog.records] == [
        "refused peer=10.0.0.0",
        "refusals: 499 more in the last 0.3 s (the last: refused peer=10.0.0.249)",
        "refusals: 1 more in the last 0.3 s (the last: refused peer=late)",
        "refused peer=after the quiet",
    ]
    assert {r.levelno for r in caplog.records} == {logging.WARNING}
