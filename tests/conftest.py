"""Shared fixtures: a real `mailhook serve` running on a background thread's event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from outside import Certificate, require, self_signed
from postgres_support import Cluster, start_cluster
from process_support import ALLOW_ROOT

from mailhook.config.settings import Settings
from mailhook.config.validate import validate
from mailhook.group.channel import Channel
from mailhook.server import Runtime, serve

# Subprocesses that inherit this environment (mailhook ingest, imap, serve) may run as root; a test
# of `serve` runs one process unless it asks for workers (--workers N beats MAILHOOK_WORKERS).
os.environ.update(ALLOW_ROOT, MAILHOOK_WORKERS="1")


class BackgroundServer:
    """Runs `serve()` on its own thread and loop until `stop()`; the test thread talks to it over sockets."""

    def __init__(self, settings: Settings, env: Mapping[str, str]) -> None:
        self.settings = settings
        self.env = env
        self.loop: asyncio.AbstractEventLoop | None = None
        self._started: concurrent.futures.Future[Runtime] = concurrent.futures.Future()
        self._finished: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, name="mailhook-test-server", daemon=True)

    def start(self) -> Runtime:
        """Start serving and return the runtime once every door listens (re-raising a startup error)."""
        self._thread.start()
        return self._started.result(timeout=30)

    def stop(self) -> None:
        """Ask the server to stop as SIGTERM would, wait for it, and re-raise anything it raised."""
        started = self._started.done() and self._started.exception() is None
        if started and self.loop is not None:
            self.loop.call_soon_threadsafe(self._started.result().stopping.set)
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the server did not stop"
        if started:
            self._finished.result()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            if not self._started.done():
                self._started.set_exception(exc)
            self._finished.set_exception(exc)
        else:
            self._finished.set_result(None)

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        started: asyncio.Future[Runtime] = self.loop.create_future()
        started.add_done_callback(self._announce)
        await serve(self.settings, self.env, started=started)

    def _announce(self, started: asyncio.Future[Runtime]) -> None:
        if not started.cancelled() and started.exception() is None:
            self._started.set_result(started.result())


def make_settings(db: Path, **sections: Mapping[str, Any]) -> Settings:
    """Build test settings: SMTP on 127.0.0.1:0, HTTP off, IMAP off, one process, then each section's overrides."""
    settings = Settings()
    settings = dataclasses.replace(
        settings,
        server=dataclasses.replace(settings.server, workers=1),
        storage=dataclasses.replace(settings.storage, db=db),
        smtp=dataclasses.replace(settings.smtp, listen="127.0.0.1:0"),
        http=dataclasses.replace(settings.http, listen=""),
    )
    for name, changes in sections.items():
        if name == "subscriptions":
            settings = dataclasses.replace(settings, subscriptions=dict(changes))
        else:
            settings = dataclasses.replace(settings, **{name: dataclasses.replace(getattr(settings, name), **changes)})
    return validate(settings)


StartServer = Callable[..., Runtime]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Return `start(env=None, **sections)` that runs `mailhook serve` and returns its Runtime.

    Sections are dicts of overrides, e.g. `start(smtp={"accept": ("@x",)}, http={"listen": "127.0.0.1:0"})`;
    the database is `tmp_path / "mailhook.db"` unless `storage={"db": ...}` says otherwise. Door
    addresses: `runtime.doors[i].addresses()`. Every server started is stopped cleanly afterwards.
    """
    servers: list[BackgroundServer] = []

    def start(env: Mapping[str, str] | None = None, **sections: Mapping[str, Any]) -> Runtime:
        server = BackgroundServer(make_settings(tmp_path / "mailhook.db", **sections), env or {})
        servers.append(server)
        return server.start()

    yield start
    errors = []
    for server in reversed(servers):
        try:
            server.stop()
        except Exception as exc:  # noqa: BLE001 - stop them all, then report
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def server(start_server: StartServer) -> Runtime:
    """A running `mailhook serve` with default test settings (SMTP on 127.0.0.1, any recipient)."""
    return start_server()


@pytest.fixture(autouse=True)
def _outside_programs(request: pytest.FixtureRequest) -> None:
    """Honour `@pytest.mark.needs(command, package)`: skip locally, fail in CI, when it is missing."""
    for mark in request.node.iter_markers("needs"):
        require(*mark.args)


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """One self-signed certificate and key for the whole run (mx.hooks.test, localhost, 127.0.0.1)."""
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    """One throwaway PostgreSQL cluster for the whole run (Debian's postgresql, on a loopback port)."""
    # Outside pytest's base directory: the server runs as another user, and pytest keeps its
    # directories 0700 (and another run may remove or recreate them meanwhile).
    directory = Path(tempfile.mkdtemp(prefix="mailhook-pg-"))
    cluster = start_cluster(directory)
    try:
        yield cluster
    finally:
        cluster.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_cluster: Cluster) -> Iterator[str]:
    """The URL of a new, empty database on the test cluster (password included), dropped afterwards."""
    if not postgres_cluster.running():
        postgres_cluster.start()
    url = postgres_cluster.create_database()
    yield url
    if not postgres_cluster.running():
        postgres_cluster.start()
    postgres_cluster.drop_database(url.rsplit("/", 1)[1])


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket listening where NOTIFY_SOCKET will point, as systemd's would."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    yield sock, path
    sock.close()


@pytest.fixture
def pair() -> Iterator[tuple[Channel, Channel]]:
    """Both ends of a group channel over a socket pair: (the worker's, the parent's)."""
    worker, parent = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ends = Channel(worker), Channel(parent)
    yield ends
    for end in ends:
        end.close()
