"""Open files: the EMFILE flood on accept, and the warnings when the caps outgrow the open-file limit."""

from __future__ import annotations

import os
import re
import resource
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from process_support import ALLOW_ROOT, free_port, wait_until

from mailhook import openfiles
from mailhook.config.load import load

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = (ROOT / "fixtures" / "seed" / "text-outbound.xml").read_bytes()
FILES = 64  # the server's open-file limit in these tests: far below what its caps allow


def limited(files: int) -> None:
    """Run in the child before exec: give it `files` open files at most (soft and hard)."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))


def served(proc: subprocess.Popen[bytes], log: Path) -> bool:
    """Say whether `mailhook serve` logged that HTTP listens; fail if it ended first."""
    assert proc.poll() is None, log.read_text()
    return "http listening" in log.read_text()


def mailhook_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "MAILHOOK_CONFIG": ""} | ALLOW_ROOT


@pytest.mark.slow
def test_running_out_of_files_logs_one_line_not_a_traceback_flood_and_serving_resumes(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            # One process: its log lines carry no worker pid (a worker runs the same accept guard).
            [sys.executable, "-m", "mailhook", "serve", "--db", str(tmp_path / "m.db"), "--smtp-listen", "",
             "--http-listen", f"127.0.0.1:{port}", "--workers", "1"],
            cwd=tmp_path, env=mailhook_env(), stdout=out, stderr=out, preexec_fn=lambda: limited(FILES),
        )
    try:
        url = f"http://127.0.0.1:{port}/notifications"
        wait_until(lambda: served(proc, log), 30, "mailhook serve listening")
        assert "need up to 640 open files" in log.read_text()  # the warning at start: 512 + 128 > 64
        with ExitStack() as stack:
            # More connections than files: the kernel completes them all; the server cannot accept the rest.
            for _ in range(FILES + 20):
                stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=30))
            time.sleep(4)  # asyncio retries accept() every second: several rounds of failures
            during = log.read_text()
        started = time.monotonic()
        with httpx.Client(timeout=30) as client:
            response = client.post(url, content=SAMPLE)
        answered = time.monotonic() - started
        assert response.status_code == 200
        assert answered < 10.0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    failures = [line for line in during.splitlines() if "Too many open files" in line]
    assert len(failures) == 1, during[-3000:]
    assert re.search(r"ERROR mailhook.server: cannot accept connections on 127.0.0.1:\d+: Too many open files "
                     rf"\(open-file limit {FILES}\); retrying every second", failures[0])
    assert "Traceback" not in during
    assert len(during) < 5000


def test_check_config_warns_when_the_caps_do_not_fit_the_open_file_limit(tmp_path: Path) -> None:
    def check(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mailhook", "check-config", "--db", str(tmp_path / "m.db"), *flags],
            env=mailhook_env(), capture_output=True, text=True, timeout=60, preexec_fn=lambda: limited(1024),
        )

    too_many = check()  # 1000 SMTP sessions + 512 HTTP connections + 128 > 1024
    fits = check("--smtp-max-sessions", "400", "--http-max-connections", "400")
    http_off = check("--http-listen", "", "--smtp-max-sessions", "800")

    assert too_many.returncode == 0
    assert ("mailhook: warning: the connection caps need up to 1640 open files (smtp.max_sessions 1000 + "
            "http.max_connections 512 + 128 for mailhook itself) but this process may open only 1024"
            ) in too_many.stderr
    assert "LimitNOFILE=" in too_many.stderr
    assert fits.returncode == 0 and "warning" not in fits.stderr
    assert http_off.returncode == 0 and "warning" not in http_off.stderr


def test_the_files_needed_count_each_enabled_door_and_the_margin() -> None:
    settings = load({"http-max-connections": "300", "smtp-max-sessions": "200"}, {"MAILHOOK_CONFIG": ""} | ALLOW_ROOT)

    assert openfiles.needed(settings, smtp=True, http=True) == 300 + 200 + openfiles.MARGIN
    assert openfiles.needed(settings, smtp=False, http=True) == 300 + openfiles.MARGIN
    assert openfiles.needed(settings, smtp=True, http=False) == 200 + openfiles.MARGIN


@pytest.mark.slow
def test_serve_lifts_its_soft_open_file_limit_to_what_the_caps_need_within_the_hard_limit(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"

    def shell_like() -> None:  # a login shell's 1024, with room below the hard limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 4096))

    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailhook", "serve", "--db", str(tmp_path / "m.db"), "--smtp-listen",
             f"127.0.0.1:{free_port()}",
             "--http-listen", f"127.0.0.1:{port}"],
            cwd=tmp_path, env=mailhook_env(), stdout=out, stderr=out, preexec_fn=shell_like,
        )
    try:
        wait_until(lambda: served(proc, log), 30, "mailhook serve listening")
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    (line,) = [line for line in limits.splitlines() if line.startswith("Max open files")]
    soft, hard = (int(n) for n in line.split()[3:5])
    assert (soft, hard) == (1640, 4096)  # 1000 SMTP sessions + 512 HTTP connections + 128: what the caps need
    assert "open files" not in log.read_text()  # no warning: the caps fit
