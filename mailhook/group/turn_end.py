"""An epoll selector that runs what is due at the end of an event-loop turn, just before the loop waits for I/O.

A worker of `serve --workers N` sends the writes of one loop turn to the
parent in one frame, once the turn's callbacks have all run. Scheduled by
`call_soon`, that send was a callback of the next turn: when nothing else
was ready (one session, or a quiet moment at eight) that turn was the send
alone, one more pass of asyncio's `_run_once` and one more `epoll_wait`
(with a zero timeout) per frame. asyncio's selector loop asks its selector
for I/O once per turn, after the turn's callbacks and before the next's, so
a selector of its own (asyncio takes any `selectors.BaseSelector`) is where
the end of a turn can be kept without touching asyncio's internals: the
frame leaves in that same call, then the loop waits for its answer.
"""

from __future__ import annotations

import asyncio
import logging
import selectors
from collections.abc import Callable

log = logging.getLogger("mailhook.group")

# Run at a turn's end; returns True when it scheduled callbacks on the loop (the loop must not block then).
TurnEnd = Callable[[], bool]


class TurnEndSelector(selectors.DefaultSelector):
    """The platform's default selector, with hooks run once each at the start of its next `select()`."""

    def __init__(self) -> None:
        super().__init__()
        self._due: list[TurnEnd] = []

    def at_turn_end(self, hook: TurnEnd) -> None:
        """Run `hook` once, when the loop's current turn has run its callbacks (on the loop's thread)."""
        self._due.append(hook)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        """Run the hooks now due, then wait for I/O as asked; not at all if a hook scheduled a callback."""
        if self._due:
            due, self._due = self._due, []
            for hook in due:
                try:
                    if hook():
                        timeout = 0
                except Exception:  # as asyncio logs a failing callback: the loop goes on
                    log.exception("error at the end of an event-loop turn")
                    timeout = 0
        events: list[tuple[selectors.SelectorKey, int]] = super().select(timeout)
        return events


def new_loop(selector: TurnEndSelector) -> asyncio.AbstractEventLoop:
    """Return a new event loop that asks `selector` for I/O (as `asyncio.run`'s loop, with that selector)."""
    return asyncio.SelectorEventLoop(selector)
