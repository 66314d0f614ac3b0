"""An analyst's query loop over a read-only connection, for bench/readwrite.py.

    python bench/analyst.py DB SECONDS

Runs typical analyst queries (by type and result, per campaign, per day,
full-text search, the latest deliveries) one after another until SECONDS
have passed (or SIGTERM), each in its own read transaction, and prints how many ran.
"""

from __future__ import annotations

import signal
import sqlite3
import sys
import time
from pathlib import Path

QUERIES = (
    "SELECT event_type, final_result, count(*) FROM events GROUP BY 1, 2",
    "SELECT broadcast_id, count(*), sum(billed_amount), sum(duration) FROM events GROUP BY 1 ORDER BY 2 DESC LIMIT 20",
    "SELECT substr(COALESCE(modified, created, received_at), 1, 10) AS day, count(*) FROM events GROUP BY 1",
    "SELECT count(*) FROM events_fts WHERE events_fts MATCH 'appointment'",
    "SELECT id, channel, status, subject, size FROM deliveries ORDER BY id DESC LIMIT 50",
    "SELECT * FROM texts ORDER BY id DESC LIMIT 100",
    "SELECT result, count(*), avg(duration) FROM attempts_detail GROUP BY 1",
)


def main() -> int:
    db, seconds = Path(sys.argv[1]), float(sys.argv[2])
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    deadline = time.monotonic() + seconds
    count = 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while time.monotonic() < deadline:
            for query in QUERIES:
                conn.execute(query).fetchall()
                count += 1
    finally:
        conn.close()
        print(count, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
