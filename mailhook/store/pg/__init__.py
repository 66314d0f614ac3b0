"""The PostgreSQL store, for several mailhook nodes on one database (psycopg 3, the `postgres` extra).

- connection.py: connecting (timeouts, application_name), and the migrations under an advisory lock
- schema.py: the same tables, columns and views as the SQLite schema, as PostgreSQL migrations
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
