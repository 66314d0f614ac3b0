"""Every exit code a mailhook command returns, from sysexits.h (`os.EX_*`), in one place.

The commands (cli.py, admin, stats, export, files, serve, imap) return these
and only cli.main hands them to the process; docs/operations.md lists what
each command returns.
"""

from __future__ import annotations

import os

EX_OK = os.EX_OK  # 0
# Not a sysexits.h code: `mailhook status` found a problem (as Nagios-style checks say 1).
EX_UNHEALTHY = 1
EX_USAGE = os.EX_USAGE  # 64; argparse itself exits 2 for a bad command line
EX_DATAERR = os.EX_DATAERR  # 65: input unreadable or too large; retrying the same input cannot help
EX_NOINPUT = os.EX_NOINPUT  # 66: no database to read
EX_UNAVAILABLE = os.EX_UNAVAILABLE  # 69: the running service cannot be reached
EX_SOFTWARE = os.EX_SOFTWARE  # 70
EX_CANTCREAT = os.EX_CANTCREAT  # 73: a backup cannot be written
EX_TEMPFAIL = os.EX_TEMPFAIL  # 75: storage unavailable; an MTA retries later
EX_NOPERM = os.EX_NOPERM  # 77: run as root without --allow-root
EX_CONFIG = os.EX_CONFIG  # 78
# As a shell reports a process ended by SIGINT (128 + 2).
EX_INTERRUPTED = 130
