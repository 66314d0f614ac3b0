"""Per-address bookkeeping behind the SMTP door's limits: connection rates, AUTH penalties, refusal summaries.

Pure: each table is given the time (the event loop's clock) and never
touches a socket, a timer or the log. Every table remembers at most
`MAX_REMEMBERED` addresses, so a peer with many addresses cannot grow it
without bound.
"""

from __future__ import annotations

import collections
import re

# What an envelope address or HELO name must not hold: a control character (C0,
# DEL, C1), a line or paragraph separator (U+2028, U+2029), a bidi embedding,
# override or isolate (U+202A-U+202E, U+2066-U+2069), which can make a logged or
# displayed address read as another, or a byte that was not UTF-8 (aiosmtpd
# decodes arguments with surrogateescape, so such a byte arrives as a lone surrogate).
UNFIT_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")

# Most addresses one table remembers at once.
MAX_REMEMBERED = 10_000
# The time unit of smtp.max_connection_rate, in seconds (Postfix's anvil_rate_time_unit).
RATE_UNIT = 60.0
# An address's failed AUTH count is forgotten this many seconds after its last failure (as Dovecot's auth penalty).
AUTH_PENALTY_MEMORY = 600.0


def _make_room(table: dict[str, tuple[float, int]], stale: float) -> None:
    """Drop the entries older than `stale` or, if none is, the oldest half (dicts keep insertion order)."""
    old = [peer for peer, (at, _) in table.items() if at < stale]
    for peer in old or list(table)[: MAX_REMEMBERED // 2]:
        del table[peer]


class ConnectionRate:
    """Connections per address in the current RATE_UNIT, as Postfix's anvil counts them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: dict[str, tuple[float, int]] = {}  # address -> (when its unit started, connections in it)

    def too_fast(self, peer: str, now: float) -> bool:
        """Count a connection from `peer`; say whether it is over the limit (0: no limit) in its unit."""
        if not self.limit:
            return False
        started, count = self.seen.pop(peer, (now, 0))
        if now - started >= RATE_UNIT:
            started, count = now, 0
        if len(self.seen) >= MAX_REMEMBERED:
            _make_room(self.seen, now - RATE_UNIT)
        self.seen[peer] = (started, count + 1)
        return count >= self.limit


class AuthPenalty:
    """Failed AUTH attempts per address, and the growing delay each new failure waits before its 535."""

    def __init__(self, first: float, longest: float) -> None:
        self.first, self.longest = first, longest
        self.failures: dict[str, tuple[float, int]] = {}  # address -> (when it last failed, failures since)

    def failed(self, peer: str, now: float) -> tuple[float, int]:
        """Count a failure from `peer`; return its delay and the address's recent failures.

        The delay doubles with each failure from the address (forgotten
        AUTH_PENALTY_MEMORY seconds after its last), up to `longest`.
        """
        last, count = self.failures.pop(peer, (now, 0))
        count = 1 if now - last > AUTH_PENALTY_MEMORY else count + 1
        if len(self.failures) >= MAX_REMEMBERED:
            _make_room(self.failures, now - AUTH_PENALTY_MEMORY)
        self.failures[peer] = (now, count)
        return min(self.first * 2 ** min(count - 1, 32), self.longest), count

    def pending(self, peer: str, now: float) -> float:
        """Return the delay `peer`'s next failure would wait: 0 unless the address failed lately.

        An address already penalised waits this long before its password is
        even checked, so that parallel guesses cannot buy hashing time.
        """
        last, count = self.failures.get(peer, (now, 0))
        if not count or now - last > AUTH_PENALTY_MEMORY:
            return 0.0
        return float(min(self.first * 2 ** min(count, 32), self.longest))

    def forgive(self, peer: str) -> None:
        """Forget `peer`'s failures (it authenticated)."""
        self.failures.pop(peer, None)


class RefusalSummary:
    """Connections refused at the caps since the last summary line: by reason, and by address."""

    def __init__(self) -> None:
        self.reasons: collections.Counter[str] = collections.Counter()
        self.peers: collections.Counter[str] = collections.Counter()

    def add(self, peer: str, reason: str) -> bool:
        """Count a refusal; True when it is the first since the last summary (time to plan the next one)."""
        first = not self.reasons
        self.reasons[reason] += 1
        if peer in self.peers or len(self.peers) < MAX_REMEMBERED:
            self.peers[peer] += 1
        return first

    def take(self, interval: float) -> tuple[str, tuple[object, ...]] | None:
        """Return the summary line (a format and its arguments) and start counting afresh; None if nothing."""
        if not self.reasons:
            return None
        top, top_count = self.peers.most_common(1)[0]
        line = (
            "refused %d connections in the last %.0f s: %d at smtp.max_sessions, %d at smtp.max_per_ip, "
            "%d at smtp.max_connection_rate; from %d addresses%s, most from %s (%d)",
            (sum(self.reasons.values()), interval, self.reasons["too_many_sessions"],
             self.reasons["too_many_from_address"], self.reasons["too_fast"], len(self.peers),
             "+" if len(self.peers) >= MAX_REMEMBERED else "", top, top_count),
        )
        self.reasons.clear()
        self.peers.clear()
        return line
