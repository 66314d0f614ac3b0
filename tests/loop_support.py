"""Helpers for tests of what wakes an event loop."""

from __future__ import annotations

import asyncio
from typing import Any


class WakeUps:
    """Counts the wake-ups of `loop` from other threads (its `call_soon_threadsafe` calls) from now on."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.count = 0
        self._original = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = self._counted  # type: ignore[method-assign]

    def _counted(self, *args: Any, **kwargs: Any) -> Any:
        self.count += 1
        return self._original(*args, **kwargs)
