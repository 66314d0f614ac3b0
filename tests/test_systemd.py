"""The systemd protocol and units: sd_notify on a real datagram socket, the unit files, socket activation."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import tomllib
import urllib.request
from pathlib import Path

import pytest
from process_support import ALLOW_ROOT, free_port, wait_until

from mailhook import openfiles, opening
from mailhook.config.load import load
from mailhook.config.options import options
from mailhook.config.settings import SECTIONS
from mailhook.metrics import Metrics
from mailhook.pipeline import Pipeline
from mailhook.runtime import Runtime
from mailhook.status_line import Counters, supervise
from mailhook.store.interface import Storage
from mailhook.store.open import open_storage
from mailhook.store.writer import Writer
from mailhook.systemd import Notifier, listen_sockets, watchdog_interval

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"
EXEC_START = "/opt/mailhook/bin/mailhook"
SAMPLE = (ROOT / "fixtures" / "seed" / "text-inbound.json").read_bytes()

needs_analyze = pytest.mark.needs("systemd-analyze", "systemd")


def receive_until(sock: socket.socket, wanted: str, seen: list[str]) -> list[str]:
    """Collect messages (lists of VAR=value lines) until one has the line `wanted`."""
    while True:
        lines = sock.recv(4096).decode().split("\n")
        seen.extend(lines)
        if wanted in lines:
            return lines


# --- the protocol ---------------------------------------------------------------------------------


def test_notifier_sends_one_datagram_of_assignments(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.ready("2 deliveries")
    assert sock.recv(4096) == b"READY=1\nSTATUS=2 deliveries"
    assert notifier.status("multi\nline", watchdog=True)
    assert sock.recv(4096) == b"STATUS=multi line\nWATCHDOG=1"
    assert notifier.stopping("bye")
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=bye"
    notifier.close()


def test_notifier_reaches_an_abstract_socket() -> None:
    name = f"mailhook-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.notify("WATCHDOG=1")
        assert sock.recv(64) == b"WATCHDOG=1"
        notifier.close()


def test_notifier_without_a_manager_does_nothing_and_never_raises(tmp_path: Path) -> None:
    assert not Notifier({}).enabled
    assert not Notifier({}).ready("x")
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "missing.sock")})
    assert gone.enabled
    assert not gone.ready("x")
    assert not gone.status("y", watchdog=True)


def test_watchdog_interval_is_half_the_timeout_and_only_for_us() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({}) is None


def test_sockets_for_another_process_are_not_taken() -> None:
    assert listen_sockets({"LISTEN_PID": "1", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "smtp:http"}) == {}
    assert listen_sockets({}) == {}


def test_watchdog_pings_stop_once_the_writer_is_gone(tmp_path: Path, notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    writer = Writer(tmp_path / "w.db", checkpoint_interval=0)
    runtime = Runtime(load({}, {"MAILHOOK_CONFIG": ""}), {}, Pipeline(writer), writer, Metrics())
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000"})

    async def supervised() -> list[list[str]]:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(supervise(runtime, notifier, Counters()))
        try:
            messages = [(await loop.run_in_executor(None, sock.recv, 4096)).decode().split("\n")]
            await loop.run_in_executor(None, writer.close)
            while "WATCHDOG=1" in messages[-1]:
                messages.append((await loop.run_in_executor(None, sock.recv, 4096)).decode().split("\n"))
            for _ in range(3):
                messages.append((await loop.run_in_executor(None, sock.recv, 4096)).decode().split("\n"))
            return messages
        finally:
            task.cancel()

    messages = asyncio.run(supervised())
    notifier.close()
    assert "WATCHDOG=1" in messages[0]
    after = messages[-4:]
    assert all("WATCHDOG=1" not in m and m[0].startswith("STATUS=") for m in after)


def test_a_slow_database_open_asks_for_more_start_time(
    tmp_path: Path, notify_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = notify_socket
    opened = threading.Event()

    def slow_writer(*args: object, **kwargs: object) -> Storage:
        # Stands in for a long migration: the database opens only once systemd was asked for time.
        assert opened.wait(30)
        return open_storage(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(opening, "open_storage", slow_writer)
    monkeypatch.setattr(opening, "EXTEND_EVERY", 0.05)
    settings = load({"db": str(tmp_path / "slow.db"), "storage-checkpoint-interval": "0"}, {"MAILHOOK_CONFIG": ""})
    notifier = Notifier({"NOTIFY_SOCKET": path})

    async def open_it() -> Storage:
        task = asyncio.create_task(opening.open_writer(settings, {}, Metrics(), notifier))
        lines = (await asyncio.get_running_loop().run_in_executor(None, sock.recv, 4096)).decode().split("\n")
        assert lines == ["EXTEND_TIMEOUT_USEC=150000", "STATUS=opening the database (migrating)"]
        opened.set()
        return await task

    writer = asyncio.run(open_it())
    assert writer.alive
    writer.close()
    notifier.close()


# --- `mailhook serve` under a pretend service manager ---------------------------------------------


def serve_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "MAILHOOK_CONFIG": "",
        "MAILHOOK_DB": str(tmp_path / "mailhook.db"),
        "MAILHOOK_SMTP_LISTEN": "127.0.0.1:0",
        "MAILHOOK_HTTP_LISTEN": "127.0.0.1:0",
        **ALLOW_ROOT,
        **extra,
    }


def listening(log: Path) -> dict[str, tuple[str, int]]:
    """Read the doors' bound addresses from the server's log."""
    found = re.findall(r"(smtp|http) listening on (\S+):(\d+)", log.read_text())
    return {door: (host.strip("[]"), int(port)) for door, host, port in found}


@pytest.mark.slow
def test_serve_notifies_ready_status_watchdog_and_stopping(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    log = tmp_path / "serve.log"
    env = serve_env(tmp_path, NOTIFY_SOCKET=path, WATCHDOG_USEC="200000")
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "mailhook", "serve"], env=env, cwd=tmp_path, stderr=err)
    try:
        seen: list[str] = []
        ready = receive_until(sock, "READY=1", seen)
        assert any(line.startswith("STATUS=0 deliveries") for line in ready)
        # READY=1 means both doors answer and the database exists.
        doors = listening(log)
        assert set(doors) == {"smtp", "http"}
        with smtplib.SMTP(*doors["smtp"], timeout=10) as smtp:
            assert smtp.noop()[0] == 250
        assert (tmp_path / "mailhook.db").exists()
        host, port = doors["http"]
        request = urllib.request.Request(f"http://{host}:{port}/notifications", data=SAMPLE, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        while not any(re.match(r"STATUS=1 deliveries .*, 1 events", line) for line in seen):
            receive_until(sock, "WATCHDOG=1", seen)
        # Pings keep coming from the running loop.
        pings = seen.count("WATCHDOG=1")
        receive_until(sock, "WATCHDOG=1", seen)
        assert seen.count("WATCHDOG=1") > pings
        proc.send_signal(signal.SIGTERM)
        stopping = receive_until(sock, "STOPPING=1", seen)
        assert any(line.startswith("STATUS=stopping") for line in stopping)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_status_line_shows_the_databases_totals_not_only_this_runs(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    env = serve_env(tmp_path, NOTIFY_SOCKET=path)
    unreadable = tmp_path / "unreadable.json"
    unreadable.write_text('{"not": "callfire"}')
    seed = ROOT / "fixtures" / "seed"
    # An earlier run stored three deliveries (one quarantined) with two events.
    subprocess.run([sys.executable, "-m", "mailhook", "ingest", "-q", str(seed / "campaign.json"),
                    str(seed / "text-inbound.json"), str(unreadable)], env=env, cwd=tmp_path, timeout=60,
                   capture_output=True, check=False)
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "mailhook", "serve"], env=env, cwd=tmp_path, stderr=err)
    try:
        ready = receive_until(sock, "READY=1", [])
        status = next(line for line in ready if line.startswith("STATUS="))
        assert status.startswith("STATUS=3 deliveries (1 quarantined), 2 events in the database; "
                                 "since start 0 deliveries"), status
        host, port = listening(log)["http"]
        request = urllib.request.Request(f"http://{host}:{port}/notifications", data=SAMPLE.replace(
            b"826451071003", b"826451071099"), method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        proc.send_signal(signal.SIGTERM)
        stopping = receive_until(sock, "STOPPING=1", [])
        assert any(line.startswith("STATUS=stopping: 4 deliveries (1 quarantined), 3 events in the database; "
                                   "since start 1 deliveries") for line in stopping), stopping
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_serve_never_says_ready_when_the_database_cannot_open(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    (tmp_path / "a-file").write_text("not a directory")
    env = serve_env(tmp_path, NOTIFY_SOCKET=path, MAILHOOK_DB=str(tmp_path / "a-file" / "m.db"))
    result = subprocess.run([sys.executable, "-m", "mailhook", "serve"], env=env, cwd=tmp_path,
                            capture_output=True, timeout=60, check=False)
    assert result.returncode == 78
    assert b"storage.db" in result.stderr
    sock.setblocking(False)
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            break
    assert not any("READY=1" in m.split("\n") for m in messages)


def test_logs_carry_syslog_priorities_only_when_stderr_is_the_journal(tmp_path: Path) -> None:
    document = tmp_path / "unreadable.json"
    document.write_text('{"not": "callfire"}')
    for journal in (True, False):
        log = tmp_path / f"stderr-{journal}.log"
        with log.open("wb") as err:
            stat = os.fstat(err.fileno())
            env = serve_env(tmp_path, MAILHOOK_DB=str(tmp_path / f"j-{journal}.db"))
            if journal:
                env["JOURNAL_STREAM"] = f"{stat.st_dev}:{stat.st_ino}"
            # --verbose: a backfill logs its deliveries at INFO only when asked (-q keeps only warnings).
            subprocess.run([sys.executable, "-m", "mailhook", "ingest", "--verbose", str(document),
                            str(ROOT / "fixtures" / "seed" / "campaign.json")],
                           env=env, cwd=tmp_path, stderr=err, timeout=60, check=True)
        lines = log.read_text().splitlines()
        warning = next(line for line in lines if "status=quarantined" in line)
        info = next(line for line in lines if "status=stored" in line)
        if journal:
            assert warning.startswith("<4>WARNING mailhook.ingest: delivery ")
            assert info.startswith("<6>INFO mailhook.ingest: delivery ")
        else:
            assert warning.startswith("WARNING mailhook.ingest: delivery ")
            assert info.startswith("INFO ")


@pytest.mark.slow
def _backlogs(*ports: int) -> list[str]:
    """Return the listen backlog (ss's Send-Q) of the listener on each port, '' where none listens."""
    shown = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, check=True).stdout.splitlines()
    found = {line.split()[3].rpartition(":")[2]: line.split()[2] for line in shown}
    return [found.get(str(port), "") for port in ports]


@pytest.mark.needs("systemd-socket-activate", "systemd")
@pytest.mark.needs("ss", "iproute2")
def test_serve_uses_the_sockets_systemd_passes(tmp_path: Path, notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    smtp_port, http_port, configured = free_port(), free_port(), free_port()
    env = {"PYTHONPATH": str(ROOT), "MAILHOOK_CONFIG": "", "MAILHOOK_DB": str(tmp_path / "m.db"), **ALLOW_ROOT,
           # The configured addresses must be ignored: SMTP elsewhere, HTTP off.
           "MAILHOOK_SMTP_LISTEN": f"127.0.0.1:{configured}", "MAILHOOK_HTTP_LISTEN": "", "NOTIFY_SOCKET": path}
    command = ["systemd-socket-activate", f"--listen=127.0.0.1:{smtp_port}", f"--listen=127.0.0.1:{http_port}",
               "--fdname=smtp:http", *(f"--setenv={k}={v}" for k, v in env.items()),
               sys.executable, "-m", "mailhook", "serve"]
    with (tmp_path / "serve.log").open("wb") as err:
        proc = subprocess.Popen(command, cwd=tmp_path, stderr=err)
    try:
        # systemd-socket-activate listens first and starts mailhook on the first connection,
        # which then waits in the passed socket's backlog until mailhook accepts it.
        def connected() -> smtplib.SMTP:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            return smtplib.SMTP("127.0.0.1", smtp_port, timeout=30)

        backlogs = wait_until(lambda: all(_backlogs(smtp_port, http_port)) and _backlogs(smtp_port, http_port), 10,
                              "systemd-socket-activate listening")

        with wait_until(connected, 10, "systemd-socket-activate listening") as smtp:
            assert smtp.noop()[0] == 250
        receive_until(sock, "READY=1", [])
        assert set(listening(tmp_path / "serve.log").values()) == {("127.0.0.1", smtp_port), ("127.0.0.1", http_port)}
        # asyncio and aiohttp listen() again on a socket they are given: with the backlog it came with.
        assert _backlogs(smtp_port, http_port) == backlogs
        request = urllib.request.Request(f"http://127.0.0.1:{http_port}/notifications", data=SAMPLE, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", configured), timeout=5):
            pass
        proc.send_signal(signal.SIGTERM)
        receive_until(sock, "STOPPING=1", [])
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def backlog(port: int) -> int:
    """Read a listening socket's backlog as the kernel has it: `ss` shows it as Send-Q."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    (line,) = out.splitlines()
    return int(line.split()[2])


@pytest.mark.slow
@pytest.mark.needs("ss", "iproute2")
@pytest.mark.parametrize("workers", [1, 2])
def test_sockets_systemd_passes_keep_the_backlog_the_unit_gave_them(tmp_path: Path, workers: int) -> None:
    """As systemd does with Backlog=512: listening sockets at fd 3 and 4, LISTEN_PID set to the server's own pid.

    With one process the doors serve them; with two workers, each worker serves the same sockets.
    """
    sockets = []
    for _ in range(2):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(1000)  # not 100 (asyncio's), 128 (aiohttp's) nor 511 (mailhook's own)
        sockets.append(sock)
    smtp_port, http_port = (sock.getsockname()[1] for sock in sockets)
    # The launcher puts the sockets at fd 3 and 4 and execs the server in its own process, as systemd would.
    launcher = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
                "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='2', LISTEN_FDNAMES='smtp:http'); "
                "os.execv(sys.executable, [sys.executable, '-m', 'mailhook', 'serve'])")
    env = {**serve_env(tmp_path), "MAILHOOK_SMTP_LISTEN": "", "MAILHOOK_HTTP_LISTEN": "",
           "MAILHOOK_WORKERS": str(workers)}
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", launcher, *(str(s.fileno()) for s in sockets)],
                                cwd=tmp_path, env=env, stderr=err, pass_fds=[s.fileno() for s in sockets])
    for sock in sockets:
        sock.close()  # the server holds them now
    try:
        for _ in range(600):
            if len(listening(log)) == 2:
                break
            assert proc.poll() is None, log.read_text()
            threading.Event().wait(0.05)
        assert listening(log) == {"smtp": ("127.0.0.1", smtp_port), "http": ("127.0.0.1", http_port)}
        request = urllib.request.Request(f"http://127.0.0.1:{http_port}/notifications", data=SAMPLE, method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200

        assert backlog(http_port) == 1000
        assert backlog(smtp_port) == 1000
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- the unit files -------------------------------------------------------------------------------


def unit_copy(tmp_path: Path) -> Path:
    """Copy the units, pointing ExecStart at a program that exists here (verify checks it does)."""
    folder = tmp_path / "units"
    folder.mkdir()
    for unit in [*UNITS.glob("*.service"), *UNITS.glob("*.socket")]:
        text = unit.read_text()
        (folder / unit.name).write_text(text.replace(EXEC_START, shutil.which("true") or "/bin/true"))
    return folder


def test_service_runs_the_documented_program_as_a_notify_service() -> None:
    text = (UNITS / "mailhook.service").read_text()
    assert re.search(rf"^ExecStart={re.escape(EXEC_START)} serve$", text, re.M)
    for line in ("Type=notify", "StateDirectory=mailhook", "ConfigurationDirectory=mailhook", "DynamicUser=yes",
                 "AmbientCapabilities=CAP_NET_BIND_SERVICE"):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    assert re.search(r"^WatchdogSec=\d+", text, re.M)
    assert EXEC_START in (ROOT / "docs" / "operations.md").read_text()


def test_the_service_may_open_enough_files_for_the_default_connection_caps() -> None:
    text = (UNITS / "mailhook.service").read_text()
    match = re.search(r"^LimitNOFILE=(\d+)$", text, re.M)
    assert match, "mailhook.service sets no LimitNOFILE=: a service gets 1024 open files"
    defaults = load({}, {"MAILHOOK_CONFIG": ""})
    assert int(match[1]) >= 2 * openfiles.needed(defaults, smtp=True, http=True)  # room to raise the caps


@needs_analyze
def test_units_verify_without_any_warning(tmp_path: Path) -> None:
    folder = unit_copy(tmp_path)
    units = sorted(str(p) for p in folder.iterdir())
    assert len(units) >= 3
    result = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    # verify exits 0 even for unknown keys, so anything it says is a failure.
    assert result.stderr.strip() == ""


@needs_analyze
def test_verify_check_notices_an_unknown_key(tmp_path: Path) -> None:
    folder = unit_copy(tmp_path)
    service = folder / "mailhook.service"
    service.write_text(service.read_text().replace("[Service]\n", "[Service]\nWatchDogSeconds=5\n"))
    result = subprocess.run(["systemd-analyze", "verify", str(service)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert "WatchDogSeconds" in result.stderr


@needs_analyze
def test_service_exposure_is_at_most_2_0() -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(UNITS / "mailhook.service")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    level = re.search(r"Overall exposure level for mailhook\.service: (\d+\.\d+)", result.stdout)
    assert level is not None and float(level[1]) <= 2.0


def test_sockets_name_their_doors() -> None:
    names = {unit.name: re.search(r"^FileDescriptorName=(\w+)$", unit.read_text(), re.M)
             for unit in UNITS.glob("*.socket")}
    assert {m[1] for m in names.values() if m} == {"smtp", "http"}
    for unit in UNITS.glob("*.socket"):
        assert re.search(r"^Service=mailhook\.service$", unit.read_text(), re.M), unit.name


@pytest.mark.needs("systemd-sysusers", "systemd")
def test_sysusers_snippet_creates_the_fixed_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(UNITS / "mailhook.sysusers")],
                   capture_output=True, timeout=60, check=True)
    passwd = (tmp_path / "etc" / "passwd").read_text()
    assert re.search(r"^mailhook:x:\d+:\d+:[^:]*:/var/lib/mailhook:", passwd, re.M)
    assert re.search(r"^mailhook:x:\d+:", (tmp_path / "etc" / "group").read_text(), re.M)


# --- the example config ---------------------------------------------------------------------------


def test_example_config_shows_every_option_in_its_section() -> None:
    text = (UNITS / "mailhook.toml").read_text()
    parts = re.split(r"^\[(\w+)\]$", text, flags=re.M)
    bodies = dict(zip(parts[1::2], parts[2::2], strict=True))
    assert set(SECTIONS) | {"subscriptions"} == set(bodies)
    for opt in options():
        assert re.search(rf"^(# )?{opt.name} = ", bodies[opt.section], re.M), f"{opt.section}.{opt.name}"
        assert opt.env in bodies[opt.section], opt.env


def test_example_config_loads_and_so_does_every_commented_example(tmp_path: Path) -> None:
    example = UNITS / "mailhook.toml"
    settings = load({}, {}, example)
    assert settings.smtp.listen == "0.0.0.0:25"
    # Uncomment every example line (but keep secrets and their files apart): it must still load.
    text = re.sub(r"^# ((?!token_file|webhook_secret_file|password_file)\w+ = )", r"\1", example.read_text(),
                  flags=re.M)
    uncommented = tmp_path / "all.toml"
    uncommented.write_text(text)
    everything = tomllib.loads(text)
    assert everything["subscriptions"]
    settings = load({}, {}, uncommented)
    assert settings.imap.host == "imap.example.com"
    assert settings.subscriptions
