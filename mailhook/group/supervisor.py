"""The parent of `serve --workers N`: binds the listening sockets once and keeps N worker processes serving.

Started by `server.serve` as its one door for SMTP and HTTP (the IMAP poller
and the backlog stay in the parent, once). Each worker inherits the listening
sockets and a socketpair to the parent, over which its deliveries reach the
parent's one group-commit writer (`group.service`). A worker that dies is
logged and replaced; one whose event loop stops answering the heartbeat
withholds the service's watchdog ping. Closing sends every worker SIGTERM
and waits while they finish the sessions in flight, still storing what they
send; `serve` flushes the writer after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mailhook.backoff import Backoff
from mailhook.config.addresses import parse_address
from mailhook.errors import ConfigError, RetryLater
from mailhook.exitcodes import EX_CONFIG
from mailhook.group.channel import Channel
from mailhook.group.service import StoreService
from mailhook.group.shares import worker_count, worker_settings
from mailhook.systemd import describe, watchdog_interval
from mailhook.thread_names import NamedThread

if TYPE_CHECKING:
    from mailhook.server import Runtime

log = logging.getLogger("mailhook.group")

HEARTBEAT = 1.0
# Seconds a worker's loop may leave heartbeats unanswered (or a worker take to come back) before the
# service's watchdog ping is withheld.
STALL = 10.0
START_TIMEOUT = 60.0
BIND_RETRY = 2.0
# What a worker must not inherit: it speaks neither to systemd nor takes its sockets itself.
PRIVATE = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


@dataclass
class Worker:
    """One worker process and the service answering its store requests."""

    index: int
    process: subprocess.Popen[bytes]
    service: StoreService
    answered: float = field(default_factory=time.monotonic)


class Group:
    """The SMTP and HTTP doors, served by `count` worker processes; a `server.Door`."""

    name = "workers"

    def __init__(self, runtime: Runtime, count: int) -> None:
        self.runtime = runtime
        self.count = count
        self.sockets: dict[str, socket.socket] = {}
        self.workers: dict[int, Worker] = {}
        self.closing = False
        self.restarts = 0
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._backoff = Backoff(0.1, 10.0, jitter=False)
        # A hung worker must withhold the ping well before systemd's WatchdogSec= runs out.
        interval = watchdog_interval(runtime.env)
        self.stall = max(3 * HEARTBEAT, min(STALL, interval)) if interval else STALL

    async def open(self) -> None:
        """Bind (or take systemd's) sockets, start every worker and wait until each one listens."""
        self.sockets = self._listening()
        # The SMTP sessions open now, over the workers running (each tells its own with every heartbeat).
        self.runtime.metrics.smtp_sessions.set_function(
            lambda: sum(worker.service.sessions for worker in list(self.workers.values())))
        started = [self._spawn(index) for index in range(self.count)]
        try:
            # Every worker prepared (imported, connected) before any accepts: a connection systemd's
            # socket activation queued then meets a worker only moments before READY=1, not seconds.
            for worker in started:
                await self._step(worker, worker.service.prepared)
            for worker in started:
                worker.service.go()
            for worker in started:
                await self._step(worker, worker.service.ready)
        except BaseException:
            await self.close()
            raise
        for door, sock in self.sockets.items():
            log.info("%s listening on %s", door, describe(sock))
        pids = ", ".join(str(worker.process.pid) for worker in started)
        log.info("%d worker processes serving (pids %s)", self.count, pids)
        self._keep(self._heartbeat())

    def addresses(self) -> list[str]:
        """Return no addresses: `open()` logged them, by door."""
        return []

    def trouble(self) -> str | None:
        """Return why the group is not healthy (a worker missing or not answering), or None."""
        now = time.monotonic()
        missing = self.count - len(self.workers)
        if missing:
            return f"{missing} of {self.count} worker processes not running"
        late = [worker.index for worker in self.workers.values() if now - worker.answered > self.stall]
        if late:
            return f"worker processes {late} do not answer the heartbeat"
        return None

    async def close(self) -> None:
        """Send every worker SIGTERM, wait while they finish their sessions (SIGKILL past the grace), then unbind."""
        self.closing = True
        for task in self._tasks:
            task.cancel()
        # Ours first: once each worker has closed its copy too, new connections are refused at once.
        for sock in self.sockets.values():
            sock.close()
        for worker in self.workers.values():
            _signal(worker.process, signal.SIGTERM)
        settings = self.runtime.settings
        grace = settings.smtp.shutdown_grace + settings.http.body_timeout + 15.0
        deadline = self._loop.time() + grace
        for worker in list(self.workers.values()):
            try:
                await asyncio.wait_for(asyncio.shield(worker.service.ended), max(0.1, deadline - self._loop.time()))
            except TimeoutError:
                log.error("worker %d (pid %d) still runs %.0f s after SIGTERM; killing it",
                          worker.index, worker.process.pid, grace)
                _signal(worker.process, signal.SIGKILL)
            await self._loop.run_in_executor(None, worker.process.wait)
        self.workers.clear()

    def _listening(self) -> dict[str, socket.socket]:
        settings, passed = self.runtime.settings, self.runtime.sockets
        result = dict(passed)
        for door, listen in (("smtp", settings.smtp.listen), ("http", settings.http.listen)):
            if door not in result and listen:
                result[door] = _bind(listen, f"{door}.listen")
        return result

    def _spawn(self, index: int) -> Worker:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = {door: sock.fileno() for door, sock in self.sockets.items()}
        argv = [sys.executable, "-m", "mailhook.group", str(os.getpid()), str(child.fileno()),
                str(fds.get("smtp", -1)), str(fds.get("http", -1))]
        # Spawned from the loop's thread, which lives as long as serve: the workers' PR_SET_PDEATHSIG
        # fires when the thread that started them ends.
        process = subprocess.Popen(argv, pass_fds=(child.fileno(), *fds.values()), env=environment(os.environ),
                                   stdin=subprocess.DEVNULL)
        child.close()
        channel = Channel(parent)
        settings = worker_settings(self.runtime.settings, self.count)
        channel.send(("hello", settings, environment(self.runtime.env), index))
        service = StoreService(channel, self.runtime.pipeline, self._loop, f"worker-{index}", self.runtime.metrics)
        service.start()
        worker = Worker(index, process, service)
        self.workers[index] = worker
        NamedThread(target=self._reap, args=(worker,), name=f"mailhook-reap-{index}", daemon=True).start()
        return worker

    async def _step(self, worker: Worker, step: asyncio.Future[Any]) -> None:
        """Wait until `worker` reaches `step` (prepared, listening); raise if it ends first (its log says why)."""
        waiting: list[asyncio.Future[Any]] = [step, worker.service.ended]
        done, _ = await asyncio.wait(waiting, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if step not in done:
            code = await self._loop.run_in_executor(None, worker.process.wait)
            message = f"worker process {worker.index} did not start (exit status {code}); see the lines above"
            # Exit 78 only for what a restart cannot mend (systemd's RestartPreventExitStatus=78).
            # Anything else: exit 75, and systemd starts the service again (Restart=on-failure).
            raise ConfigError(message) if code == EX_CONFIG else RetryLater(message)
        worker.answered = time.monotonic()

    def _reap(self, worker: Worker) -> None:
        code = worker.process.wait()
        self._loop.call_soon_threadsafe(self._ended, worker, code)

    def _ended(self, worker: Worker, code: int) -> None:
        if self.closing or self.workers.get(worker.index) is not worker:
            return
        del self.workers[worker.index]
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        delay = self._backoff.next()
        log.error("worker %d (pid %d) %s; starting a new one in %.1f s", worker.index, worker.process.pid, how, delay)
        self.restarts += 1
        self._keep(self._restart(worker.index, delay))

    async def _restart(self, index: int, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.closing:
            return
        worker = self._spawn(index)
        try:
            await self._step(worker, worker.service.prepared)
            worker.service.go()
            await self._step(worker, worker.service.ready)
        except (ConfigError, RetryLater) as exc:
            log.error("%s", exc)  # _ended starts another after a longer pause
            return
        log.info("worker %d (pid %d) listening again", index, worker.process.pid)
        self._backoff.reset()

    async def _heartbeat(self) -> None:
        number = 0
        while True:
            number += 1
            now = time.monotonic()
            for worker in self.workers.values():
                if worker.service.pong >= number - 1:
                    worker.answered = now
                worker.service.ping(number)
            await asyncio.sleep(HEARTBEAT)

    def _keep(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _bind(listen: str, name: str) -> socket.socket:
    """Bind and listen on HOST:PORT once, for every worker to accept on."""
    host, port = parse_address(listen, name)
    # The workers of a predecessor killed a moment ago (restarted by systemd, kill -9 included) may
    # hold the port for a few milliseconds more, until the kernel delivers their PR_SET_PDEATHSIG.
    for _ in range(int(BIND_RETRY / 0.05)):
        try:
            return _listen(host, port, listen, name)
        except ConfigError as exc:
            if exc.__cause__ is None or getattr(exc.__cause__, "errno", None) != errno.EADDRINUSE:
                raise
        time.sleep(0.05)
    return _listen(host, port, listen, name)


def _listen(host: str, port: int, listen: str, name: str) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"{name}: cannot listen on {listen}: {exc.strerror or exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"{name}: cannot listen on {listen}: {exc.strerror or exc}") from exc
    return sock


def _signal(process: subprocess.Popen[bytes], sig: int) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)


async def start(runtime: Runtime) -> Group:
    """Start the worker processes serving SMTP and HTTP (`server.workers` of them)."""
    group = Group(runtime, worker_count(runtime.settings))
    await group.open()
    runtime.checks.append(group.trouble)
    return group


def environment(env: Mapping[str, str]) -> dict[str, str]:
    """Return `env` without what only the parent may use (systemd's notify socket, watchdog, passed sockets)."""
    return {key: value for key, value in env.items() if key not in PRIVATE}
