"""`Summary`: one line for the first of a flood of like events, then at most one line per interval counting them."""

from __future__ import annotations

import asyncio
import logging


class Summary:
    """Log the first of a kind of event at once, then at most one line per interval counting the rest.

    A flood of refusals or accept failures would otherwise fill the journal
    with one line (or one traceback) each; this keeps it to one line per
    `interval` for as long as the flood lasts. Must be used on the event loop.
    """

    def __init__(self, logger: logging.Logger, level: int, what: str, interval: float = 60.0) -> None:
        self.logger = logger
        self.level = level
        self.what = what
        self.interval = interval
        self.more = 0
        self.last = ""
        self._window: asyncio.TimerHandle | None = None

    def note(self, message: str, *args: object) -> None:
        """Record one event: logged now if none was in the last interval, else counted for the summary."""
        if self._window is None:
            self.logger.log(self.level, message, *args)
            self._window = asyncio.get_running_loop().call_later(self.interval, self._flush)
            return
        self.more += 1
        self.last = message % args if args else message

    def _flush(self) -> None:
        self._window = None
        if self._summarise():
            # Still flooding: keep counting, one line per interval.
            self._window = asyncio.get_running_loop().call_later(self.interval, self._flush)

    def _summarise(self) -> bool:
        if not self.more:
            return False  # quiet for a whole interval: the next event is logged at once
        self.logger.log(self.level, "%s: %d more in the last %g s (the last: %s)",
                        self.what, self.more, self.interval, self.last)
        self.more = 0
        return True

    def close(self) -> None:
        """Log what is still counted and stop the timer."""
        if self._window is not None:
            self._window.cancel()
            self._window = None
            self._summarise()
