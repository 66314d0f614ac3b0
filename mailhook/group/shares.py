"""How many workers `serve` runs, and each worker's share of the service's limits.

Every cap in the settings is a limit on the whole service. The kernel hands
each new connection to one worker, and a worker knows only its own sessions,
so each worker enforces its share: the cap divided by the number of workers,
rounded down (at least 1). The workers together then never exceed the cap
(unless it is smaller than the number of workers); a peer whose connections
all land on one worker may be refused a little before the cap.
"""

from __future__ import annotations

import os
from dataclasses import replace

from mailhook.config.settings import Settings

# (section, setting) of every cap that counts something the doors hold or do at once.
DIVIDED = (
    ("smtp", "max_sessions"),
    ("smtp", "max_per_ip"),
    ("smtp", "max_connection_rate"),  # 0 (no limit) stays 0
    ("smtp", "max_auth_checks"),
    ("http", "max_connections"),
    ("http", "max_per_ip"),
    ("parsing", "inflight_budget"),
)
# parsing.extraction_budget is not divided: the workers hold the parent's (group.borrowed.SharedBudget).


def worker_count(settings: Settings) -> int:
    """Return how many processes serve SMTP and HTTP: `server.workers`, or one per usable core when 0."""
    return settings.server.workers or len(os.sched_getaffinity(0))


def share(cap: int, workers: int) -> int:
    """Return one worker's share of `cap`: cap // workers, at least 1 (0, meaning no limit, stays 0)."""
    return 0 if cap == 0 else max(1, cap // workers)


def worker_settings(settings: Settings, workers: int) -> Settings:
    """Return the settings one of `workers` workers runs with: every cap in DIVIDED divided among them."""
    for section in {section for section, _ in DIVIDED}:
        current = getattr(settings, section)
        changes = {name: share(getattr(current, name), workers) for sec, name in DIVIDED if sec == section}
        settings = replace(settings, **{section: replace(current, **changes)})
    return settings
