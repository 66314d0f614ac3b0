"""Health tells the truth: /healthz and `mailhook status --server` say "disk full" or "database locked" in words
while the store refuses writes, and recover by themselves once it takes them again."""

from __future__ import annotations

import concurrent.futures
import errno
import json
import os
import signal
import smtplib
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from process_support import ALLOW_ROOT, free_port, wait_until
from smtp_support import notification

from mailhook.health import DISK_FULL, LOCKED, UNAVAILABLE, in_words, probe

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


# --- the words ----------------------------------------------------------------------------------------


def test_storage_errors_are_said_in_words() -> None:
    assert in_words(sqlite3.OperationalError("database or disk is full")) == DISK_FULL
    assert in_words(sqlite3.OperationalError("database is locked")) == LOCKED
    assert in_words(sqlite3.OperationalError("disk I/O error")) == UNAVAILABLE
    assert in_words(OSError(errno.ENOSPC, "No space left on device")) == DISK_FULL
    assert in_words(OSError(errno.EDQUOT, "Disk quota exceeded")) == DISK_FULL
    assert in_words(OSError(errno.EIO, "Input/output error")) == UNAVAILABLE
    wrapped = RuntimeError("storage unavailable: database or disk is full")
    wrapped.__cause__ = sqlite3.OperationalError("database or disk is full")
    assert in_words(wrapped) == DISK_FULL


def test_probe_of_a_healthy_store_passes_and_never_creates_a_database(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    sqlite3.connect(db).execute("PRAGMA journal_mode=WAL").close()
    assert probe(db) is None
    assert probe(tmp_path / "gone.db") == UNAVAILABLE
    assert not (tmp_path / "gone.db").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.db"]  # its probe file is gone too


# --- a running `mailhook serve` --------------------------------------------------------------------------


class Served:
    """`mailhook serve` as a user runs it, SMTP and HTTP on loopback ports, stderr in a file."""

    def __init__(self, db: Path, log: Path, *flags: str, http: bool = True) -> None:
        self.db = db
        self.log = log
        self.smtp, self.http = free_port(), free_port()
        self.env = {"MAILHOOK_CONFIG": "", "MAILHOOK_DB": str(db), "MAILHOOK_SMTP_LISTEN": f"127.0.0.1:{self.smtp}",
                    "MAILHOOK_HTTP_LISTEN": f"127.0.0.1:{self.http}" if http else "",
                    "MAILHOOK_STORAGE_BUSY_TIMEOUT": "1"}
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOOK_")} | ALLOW_ROOT | self.env
        with log.open("ab") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "mailhook", "serve", *flags], env=env, stderr=err)
        def up() -> bool:
            assert self.proc.poll() is None, log.read_text()
            return f"{'http' if http else 'smtp'} listening" in log.read_text()

        wait_until(up, 60, "mailhook serve listening")

    def healthz(self) -> tuple[int, dict[str, Any], float]:
        started = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/healthz", timeout=30) as answer:
                code, body = answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            code, body = exc.code, exc.read()
        return code, json.loads(body), time.monotonic() - started

    def status(self) -> tuple[int, str, float]:
        """Run `mailhook status --server` as an admin would; return its exit code, output and duration."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOOK_")} | self.env
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "mailhook", "status", "--server"], env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        return done.returncode, done.stdout + done.stderr, time.monotonic() - started

    def send(self, number: int, size: int = 0) -> int:
        # Padding after the document (lines a mail reader skips) makes a delivery that needs new disk space.
        message = notification(number) + b"\n" + (b"-" * 76 + b"\n") * (size // 77)
        with smtplib.SMTP("127.0.0.1", self.smtp, timeout=30) as smtp:
            try:
                smtp.sendmail("notifications@callfire.com", ["events@example.com"], message)
            except smtplib.SMTPResponseException as exc:
                return exc.smtp_code
            except smtplib.SMTPRecipientsRefused as exc:
                return next(iter(exc.recipients.values()))[0]
            return 250

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()




@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB file system (tmpfs) that can be filled to the last byte."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a small tmpfs for the full-disk test: {done.stderr.strip()}")
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Fill the file system to its last byte; return the file that holds the space."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (65536, 1):
            with pytest.raises(OSError, match="No space left"):
                _write_for_ever(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


def _write_for_ever(fd: int, chunk: bytes) -> None:
    while True:
        os.write(fd, chunk)


@pytest.mark.parametrize("acknowledge", ["stored", "received"])
def test_a_full_disk_makes_healthz_503_and_status_fail_with_disk_full_until_space_returns(
    small_disk: Path, tmp_path: Path, acknowledge: str
) -> None:
    served = Served(small_disk / "mailhook.db", tmp_path / "serve.log", "--smtp-acknowledge", acknowledge)
    try:
        assert served.send(1) == 250
        assert served.healthz()[:2] == (200, {"status": "ok"})
        filler = fill(small_disk)

        # Every delivery is refused for now (to be retried): health must say so, in words.
        assert served.send(2, size=200_000) == 451
        code, body, _ = served.healthz()
        assert (code, body) == (503, {"status": "unavailable", "reason": DISK_FULL})
        exit_code, output, _ = served.status()
        assert exit_code != 0
        assert "server http: disk full" in output and "problem: http: disk full" in output
        assert "Errno" not in output and "Error" not in output and "sqlite" not in output.lower()

        # Space comes back: health recovers by itself, with no delivery needed to prove it.
        filler.unlink()
        assert wait_until(lambda: served.healthz()[0] == 200, 15, "/healthz 200", interval=0.2)
        exit_code, output, _ = served.status()
        assert exit_code == 0, output
        assert served.send(3, size=200_000) == 250
    finally:
        served.stop()
    assert "storage accepts writes again (after disk full)" in (tmp_path / "serve.log").read_text()


def test_a_full_disk_is_reported_even_before_any_delivery_fails(small_disk: Path, tmp_path: Path) -> None:
    served = Served(small_disk / "mailhook.db", tmp_path / "serve.log")
    try:
        filler = fill(small_disk)
        assert served.healthz()[:2] == (503, {"status": "unavailable", "reason": DISK_FULL})
        filler.unlink()
        assert wait_until(lambda: served.healthz()[:2] == (200, {"status": "ok"}), 5, "/healthz ok", interval=0.2)
    finally:
        served.stop()


def test_status_says_disk_full_even_with_no_http_door_and_with_no_server(small_disk: Path, tmp_path: Path) -> None:
    # SMTP only: no /healthz to ask, so `status` probes the store itself.
    served = Served(small_disk / "mailhook.db", tmp_path / "serve.log", http=False)
    try:
        filler = fill(small_disk)
        exit_code, output, _ = served.status()
        assert exit_code == 1, output
        assert "server smtp: ok" in output and "problem: storage: disk full" in output
        served.stop()
        exit_code, output, _ = served.status()  # and with nothing running at all
        assert exit_code == 1 and "problem: storage: disk full" in output
        filler.unlink()
        exit_code, output, _ = served.status()
        assert "storage: ok" in output and "disk full" not in output
    finally:
        served.stop()


@pytest.mark.parametrize("acknowledge", ["stored", "received"])
def test_a_held_write_lock_is_reported_as_database_locked_promptly_and_recovers(
    tmp_path: Path, acknowledge: str
) -> None:
    served = Served(tmp_path / "mailhook.db", tmp_path / "serve.log", "--smtp-acknowledge", acknowledge)
    blocker = sqlite3.connect(served.db, isolation_level=None)
    try:
        assert served.send(1) == 250
        blocker.execute("BEGIN IMMEDIATE")  # an analyst's sqlite3 shell holding the write lock
        code, body, took = served.healthz()
        assert (code, body) == (503, {"status": "unavailable", "reason": LOCKED})
        assert took < 4.0  # well inside `status`'s 5 s per door, so it never says "timed out"
        assert served.send(2) == 451  # a delivery meanwhile waits busy_timeout (1 s), then is refused
        exit_code, output, took = served.status()
        assert exit_code != 0
        assert "server http: database locked" in output
        assert "timed out" not in output and "unreachable" not in output
        assert took < 15.0
        blocker.execute("ROLLBACK")
        assert served.healthz()[:2] == (200, {"status": "ok"})
        exit_code, output, _ = served.status()
        assert exit_code == 0, output
        assert served.send(3) == 250
    finally:
        blocker.close()
        served.stop()


def test_a_flood_of_healthz_during_a_held_lock_shares_one_probe_and_answers_promptly(tmp_path: Path) -> None:
    served = Served(tmp_path / "mailhook.db", tmp_path / "serve.log")
    blocker = sqlite3.connect(served.db, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(40) as pool:
            answers = list(pool.map(lambda _: served.healthz()[:2], range(40)))
        took = time.monotonic() - started
        assert answers == [(503, {"status": "unavailable", "reason": LOCKED})] * 40
        # Probes wait up to 1 s for the lock: one per request, one after another, would take 40 s.
        assert took < 10.0
        blocker.execute("ROLLBACK")
        assert wait_until(lambda: served.healthz()[:2] == (200, {"status": "ok"}), 5, "/healthz ok", interval=0.2)
    finally:
        blocker.close()
        served.stop()


def test_status_speaks_in_words_when_nothing_is_running(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOOK_")} | {
        "MAILHOOK_CONFIG": "", "MAILHOOK_DB": str(tmp_path / "m.db"),
        "MAILHOOK_SMTP_LISTEN": f"127.0.0.1:{free_port()}", "MAILHOOK_HTTP_LISTEN": f"127.0.0.1:{free_port()}"}
    subprocess.run([sys.executable, "-m", "mailhook", "ingest", "-q", str(ROOT / "fixtures" / "seed"
                                                                            / "campaign.json")],
                   env=env | ALLOW_ROOT, check=True, timeout=60)
    done = subprocess.run([sys.executable, "-m", "mailhook", "status", "--server", "--timeout", "2"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "server smtp: unreachable (connection refused: is mailhook running?)" in done.stdout
    assert "server http: unreachable (connection refused: is mailhook running?)" in done.stdout
    assert "Errno" not in done.stdout and "urlopen" not in done.stdout
