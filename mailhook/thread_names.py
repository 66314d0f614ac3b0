"""OS names for mailhook's threads and worker processes, so `top -H`, `ps -L` and the journal tell them apart.

Python 3.11 names a thread for Python only: the kernel sees every thread of
the server as `python3` (or `mailhook`), which leaves an admin asking which
of them spends the CPU. Linux keeps 15 bytes of a name; elsewhere these
calls do nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import threading

PR_SET_NAME = 15  # <linux/prctl.h>
LONGEST = 15  # the kernel's TASK_COMM_LEN, less its NUL


def os_name(name: str) -> str:
    """Return the name the kernel keeps for `name`: "mailhook-" shortened to "mh-", then 15 bytes at most."""
    if name.startswith("mailhook-"):
        name = "mh-" + name.removeprefix("mailhook-")
    return name.encode("utf-8", "replace")[:LONGEST].decode("utf-8", "ignore")


def name_this_thread(name: str) -> None:
    """Give the calling thread `name` as its OS name (`/proc/self/task/TID/comm`); nothing where it cannot."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):  # no prctl in this libc: the name is only a convenience
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, os_name(name).encode(), 0, 0, 0)


class NamedThread(threading.Thread):
    """A thread that takes its Python name as its OS name too (see `os_name`) before it runs its target."""

    def run(self) -> None:
        """Name the thread for the OS, then run the target as `threading.Thread` does."""
        name_this_thread(self.name)
        super().run()
