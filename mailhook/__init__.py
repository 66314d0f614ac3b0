"""mailhook: store CallFire notifications from email, IMAP and HTTP in one SQLite file."""

__version__ = "0.1.0"
