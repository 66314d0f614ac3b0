"""A worker process of `serve --workers N`: the SMTP and HTTP doors on an event loop of its own.

Started by `group.supervisor` as `python -m mailhook.group PARENT CHANNEL SMTP HTTP` (file
descriptors: the channel to the parent, the listening sockets, -1 for a door
that is off); its settings (with its share of every cap) arrive as the
channel's first message. It stores through `RemoteStorage`, so the doors and
the pipeline are the same as in a single process. It stops on SIGTERM
(closing its doors, finishing sessions in flight), and dies with the parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping

from mailhook import openfiles
from mailhook.budget import InflightBudget, return_big_frees
from mailhook.config.settings import Settings
from mailhook.errors import ConfigError
from mailhook.exitcodes import EX_CONFIG, EX_OK, EX_SOFTWARE
from mailhook.group.borrowed import GroupMetrics, RemoteExtraction, SharedBudget
from mailhook.group.channel import Channel
from mailhook.group.remote import RemoteStorage
from mailhook.group.turn_end import TurnEndSelector, new_loop
from mailhook.group.turns import TakingTurns
from mailhook.pipeline import Pipeline
from mailhook.server import Door, Runtime
from mailhook.thread_names import name_this_thread

log = logging.getLogger("mailhook.group")

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    """Serve until SIGTERM, or until the parent is gone; return the exit status."""
    parent, channel_fd, smtp_fd, http_fd = (int(arg) for arg in argv)
    _die_with(parent)
    for fd in (channel_fd, smtp_fd, http_fd):
        if fd >= 0:
            os.set_inheritable(fd, False)  # into nothing this worker might start
    channel = Channel(socket.socket(fileno=channel_fd))
    hello = channel.receive()
    if hello is None or hello[0] != "hello":
        return EX_SOFTWARE
    _, settings, env, index = hello
    name_this_thread(f"mailhook-worker-{index}")
    from mailhook.cli import configure_logging

    configure_logging(settings, os.environ, pid=True)
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    passed = (("smtp", smtp_fd), ("http", http_fd))
    # Every worker accepts on the same sockets: one connection a turn each, so a burst is shared out.
    sockets: dict[str, socket.socket] = {door: TakingTurns(fileno=fd) for door, fd in passed if fd >= 0}
    # As asyncio.run, on a loop whose selector sends each turn's writes as the turn ends (group.turn_end).
    selector = TurnEndSelector()
    try:
        with asyncio.Runner(loop_factory=lambda: new_loop(selector)) as runner:
            runner.run(serve(channel, settings, env, sockets, turn_end=selector))
    except ConfigError as exc:
        print(f"mailhook: configuration error (worker {index}): {exc}", file=sys.stderr)
        return EX_CONFIG
    return EX_OK


async def serve(
    channel: Channel, settings: Settings, env: Mapping[str, str], sockets: dict[str, socket.socket],
    turn_end: TurnEndSelector | None = None,
) -> None:
    """Run the SMTP and HTTP doors on `sockets`, storing through the parent, until SIGTERM or the parent's end."""
    loop = asyncio.get_running_loop()
    stopping, go = asyncio.Event(), asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    metrics: GroupMetrics | None = None
    storage = RemoteStorage(
        channel,
        on_ping=lambda number: _soon(loop, _pong, channel, number, metrics),
        on_lost=lambda: _soon(loop, stopping.set),
        on_go=lambda: _soon(loop, go.set),
        loop=loop,
        turn_end=turn_end,
    )
    accept_failures = openfiles.guard_accept(loop)
    openfiles.raise_limit(openfiles.needed(settings, smtp="smtp" in sockets, http="http" in sockets))
    # The deliveries are counted in the parent (it sees every receipt): no listener here.
    metrics = GroupMetrics(storage)
    return_big_frees()
    deferred = settings.smtp.acknowledge == "received" and "smtp" in sockets
    # Large deliveries are extracted in the parent's pool, within the parent's budget: as in one process.
    budget = SharedBudget(storage, settings.parsing.extraction_budget)
    pipeline = Pipeline(storage, settings.subscriptions,
                        limits=settings.parsing.mail_limits(), budget=budget,
                        executor=RemoteExtraction(storage),
                        deferred=frozenset({"smtp"}) if deferred else frozenset())
    runtime = Runtime(settings, env, pipeline, storage, metrics, sockets=sockets,
                      stopping=stopping, inflight=InflightBudget(settings.parsing.inflight_budget))
    doors: list[Door] = []
    try:
        modules = [importlib.import_module(module) for module, name in
                   (("mailhook.smtp.door", "smtp"), ("mailhook.http.door", "http")) if name in sockets]
        channel.send(("prepared", 0))
        await asyncio.wait([asyncio.ensure_future(go.wait()), asyncio.ensure_future(stopping.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
        if stopping.is_set():
            return
        for module in modules:
            doors.append(await module.start(runtime))
        runtime.doors = doors
        channel.send(("listening", 0, [address for door in doors for address in door.addresses()]))
        await stopping.wait()
    finally:
        for door in reversed(doors):
            try:
                await door.close()
            except Exception:
                log.exception("error while closing %s", door.name)
        storage.close()
        accept_failures.close()
        # A stop signalled twice (systemd's SIGTERM to the cgroup, then the parent's) changes nothing now. asyncio
        # closes its self-pipe before it removes its handler; a SIGTERM in between wrote to the closed pipe
        # (a traceback in the log: "OSError: [Errno 9] Bad file descriptor" in _sighandler_noop).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: object) -> None:
    with contextlib.suppress(RuntimeError):  # the loop has closed: the worker is ending anyway
        loop.call_soon_threadsafe(callback, *args)


def _pong(channel: Channel, number: int, metrics: GroupMetrics | None) -> None:
    # Sent from the event loop: an answer proves the loop runs, not only the reader thread. With it,
    # the worker's open SMTP sessions, which the parent's gauge sums over the workers now running.
    sessions = (metrics.registry.get_sample_value("mailhook_smtp_sessions") or 0.0) if metrics is not None else 0.0
    with contextlib.suppress(OSError):
        channel.send(("pong", number, sessions))


def _die_with(parent: int) -> None:
    """Ask the kernel to kill this process when the parent ends (kill -9 included); exit if it already has."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(EX_SOFTWARE)

