"""The PostgreSQL store, for several nodes on one database."""
