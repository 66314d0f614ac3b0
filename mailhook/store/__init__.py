"""The store: the only place with SQL. SQLite, or PostgreSQL (pg/); the doors and the pipeline see `interface.Storage`.

- connection.py: opening the database (pragmas, file modes) and the schema migrations
- walbuf.py: loading walbuf.c, the VFS through which the writer's connection writes a commit's WAL frames at once
- schema.py, figures.py: the schema, and the figure tables triggers keep current
- rows.py: an extraction as the rows to insert (built in worker processes too)
- write.py: `Store`, the write path (one transaction per batch)
- writer.py: `Writer`, the group-commit thread in front of `Store` (implements `interface.Storage`)
- reads.py: reads beside the writer (pending deliveries, totals, IMAP folder positions)
- maintenance.py: prune, backup and status, behind the admin commands
- target.py: which database `storage.db` names (a Path, or a PostgresTarget whose password never shows)
- open.py: `open_storage`, the writer for a target (SQLite's, or PostgreSQL's from pg/)
- pg/: the PostgreSQL store (connection and migrations, schema, write path, writer, reads)
"""
