"""Imported only by the fork server that starts the extraction workers (its preload), never by mailhook itself.

systemd stops a service by sending SIGTERM to every process of its cgroup. The
fork server and the workers it forks must live through that stop's grace
period: a dead fork server breaks the worker pool (its workers' exit statuses
come through it), and the backlog would log a worker's death and start a new
pool while it finishes extracting what is pending. They end when mailhook
shuts the pool down, or with mailhook however it ends (see `workers._exit_with`).
"""

from __future__ import annotations

import signal

# Inherited by every worker forked from here.
signal.signal(signal.SIGTERM, signal.SIG_IGN)
