"""The PostgreSQL store, for several mailhook nodes on one database (psycopg 3, the `postgres` extra).

- connection.py: connecting (timeouts, application_name), and the migrations under an advisory lock
- schema.py: the same tables, columns and views as the SQLite schema, as PostgreSQL migrations
"""
