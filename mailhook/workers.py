"""The extraction worker processes: a forked pool for `mailhook ingest`, a fork server's pool for `serve`.

Both run `extract` on other cores (a parse in C holds the GIL); their workers
end with mailhook however it ends. Used by the pipeline (large deliveries from
the doors), the backlog, and the file door.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import select
import signal
import time
from concurrent.futures import Executor, ProcessPoolExecutor

from mailhook.thread_names import NamedThread, name_this_thread


def extraction_pool(workers: int | None = None) -> Executor | None:
    """Start a pool of extraction processes, one per usable core, or return None on a single core.

    Call it before any other thread starts: the workers are forked, and a fork
    copies only the calling thread, so no worker may inherit a lock held mid-use.
    """
    count = workers if workers is not None else len(os.sched_getaffinity(0))
    if count < 2:
        return None
    pool = ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("fork"), initializer=_worker_init)
    for future in [pool.submit(int) for _ in range(count)]:
        future.result()  # fork every worker now, from this thread
    return pool


def _worker_init() -> None:
    # A worker must not outlive mailhook when it is killed (kill -9 leaves no chance to stop the pool).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:
        os._exit(0)
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def worker_count() -> int:
    """Return how many extraction processes to run: one per core beyond the event loop's own, at least one."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """Start `workers` extraction processes.

    They come from a fork server, a clean process started for the purpose, so
    they never inherit the server's threads or locks, whenever they start.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["mailhook.forkserver", "mailhook.backlog"])
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_start, initargs=(os.getpid(),))


def _worker_start(owner: int) -> None:
    _worker_init()  # SIGTERM is ignored already, as in the fork server (mailhook.forkserver)
    name_this_thread("mailhook-extract")
    NamedThread(target=_exit_with, args=(owner,), name="mailhook-owner-watch", daemon=True).start()


def _exit_with(owner: int) -> None:
    """Exit when `owner` (the mailhook process) does, however it ends (kill -9 included).

    A worker's parent is the fork server, not mailhook, so PR_SET_PDEATHSIG
    does not see mailhook die, and the fork server waits for its workers:
    without this, both would outlive a killed mailhook.
    """
    try:
        watch = os.pidfd_open(owner)
    except OSError:  # a kernel without pidfds: look once a second
        while True:
            time.sleep(1)
            try:
                os.kill(owner, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:
                pass
    select.select([watch], [], [])
    os._exit(0)
