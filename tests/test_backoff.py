"""The shared back-off: IMAP reconnects (with jitter) and the backlog's retries (without)."""

from __future__ import annotations

from mailhook.backoff import Backoff


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    backoff = Backoff(first=1.0, cap=8.0)
    delays = [backoff.next() for _ in range(6)]
    for n, delay in enumerate(delays):
        assert min(8.0, 2.0**n) / 2 <= delay <= min(8.0, 2.0**n)
    backoff.reset()
    assert backoff.next() <= 1.0


def test_backoff_without_jitter_doubles_exactly_and_says_the_upcoming_delay_first() -> None:
    backoff = Backoff(first=1.0, cap=60.0, jitter=False)
    upcoming = []
    delays = []
    for _ in range(8):
        upcoming.append(backoff.upcoming())
        delays.append(backoff.next())
    assert delays == upcoming == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    backoff.reset()
    assert backoff.next() == 1.0
