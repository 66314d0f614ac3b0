"""The PostgreSQL store, for several mailhook nodes on one database (psycopg 3, the `postgres` extra).

Laid out as the SQLite store beside it (docs/architecture.md, the store row, names every module):

- connection.py, session.py: connecting (timeouts, application_name), the migrations under an advisory
  lock, and the bounds every session's transactions run under
- schema.py, figures.py, figure_triggers.py: the same tables, columns, views and figures as the SQLite
  schema, as PostgreSQL migrations and PL/pgSQL triggers
- write.py: `PgStore`, a batch in one transaction made safe for several nodes; its connection and probes
  in upkeep.py, its key locks in keys.py, a delivery's row in deliveries.py, its events in event_rows.py,
  their attempts in attempts.py (shared with reprocess.py), text as PostgreSQL can hold it in text.py
- writer.py: the writer thread over `PgStore`; reads.py, reports.py, maintenance.py, reprocess.py,
  copy.py: everything else that reads or writes the database
- lease.py, pending.py, frozen.py: what several nodes share (the IMAP folder lease, the backlog's
  claims) and the sessions of nodes frozen mid-exchange
"""

from __future__ import annotations

import sys

# `mailhook.cli.console` puts None in sys.modules for numpy and pandas so that sqlite-utils does not
# import them; psycopg takes "numpy" in sys.modules to mean numpy is there and reads `numpy.integer`
# from it when it first dumps an int list (AttributeError on None). Nothing that talks to PostgreSQL
# loads sqlite-utils, so the placeholders go.
for _name in ("numpy", "pandas"):
    if _name in sys.modules and sys.modules[_name] is None:
        del sys.modules[_name]
