"""`Runtime`: what `serve` hands every `Door` it starts (settings, pipeline, writer, metrics, sockets, budgets)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from mailhook.backlog import Backlog
from mailhook.budget import InflightBudget
from mailhook.config.settings import Settings
from mailhook.metrics import Metrics
from mailhook.pipeline import Pipeline
from mailhook.store.interface import Storage


class Door(Protocol):
    """A running door: something that receives deliveries until closed."""

    name: str

    def addresses(self) -> list[str]:
        """Return the addresses the door listens on (HOST:PORT), if any."""
        ...

    async def close(self) -> None:
        """Stop accepting, finish what is in flight, and release the sockets."""
        ...


@dataclass
class Runtime:
    """What every door needs: the settings, the pipeline and the shared metrics."""

    settings: Settings
    env: Mapping[str, str]
    pipeline: Pipeline
    writer: Storage
    metrics: Metrics
    doors: list[Door] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # Listening sockets passed by systemd (socket activation), by door name: a door
    # given one serves on it instead of binding its configured address.
    sockets: dict[str, socket.socket] = field(default_factory=dict)
    # Extracts what the SMTP door acknowledged on receipt (and what an earlier run left pending).
    backlog: Backlog | None = None
    # Bytes of messages still being received, both doors together (parsing.inflight_budget).
    inflight: InflightBudget = field(default_factory=lambda: InflightBudget(256 * 1024 * 1024))
    # Each says why the service is unhealthy (or None); any reason withholds the watchdog ping.
    checks: list[Callable[[], str | None]] = field(default_factory=list)
