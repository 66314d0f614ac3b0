"""The shipped units under a real systemd: a Debian container booted with systemd as PID 1 (systemd-nspawn).

mailhook is installed into /opt/mailhook inside it as docs/operations.md says, with the units and the example
config from systemd/. Skipped where this machine cannot run nspawn (fails under CI, where .ci/run installs it).
The tests run in order on one container, each starting from the state the one before left.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import nspawn
import pytest
from process_support import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

DB = "/var/lib/private/mailhook/mailhook.db"  # DynamicUser=yes: /var/lib/mailhook is a link to it
DOMAIN = "callfire-notify.example.com"  # the example config's smtp.accept
SRC = "/usr/local/src/mailhook"

# Senders for the stop-under-load test: stdlib only (the container's python3), each message a new text id.
LOAD = r'''
import json, smtplib, sys, threading
from email.message import EmailMessage

seed = json.load(open("/usr/local/src/mailhook/fixtures/seed/text-inbound.json"))
acked = open("/ci/acked", "a", buffering=1)
lock = threading.Lock()

def send(worker):
    try:
        smtp = smtplib.SMTP("127.0.0.1", 25, timeout=30)
        for n in range(100000):
            text = 10_000_000 + worker * 100_000 + n
            seed["TextNotification"]["Text"]["@id"] = str(text)
            msg = EmailMessage()
            msg["From"], msg["To"], msg["Subject"] = "notifications@callfire.com", "ops@DOMAIN", f"load {text}"
            msg["Message-ID"] = f"<load-{text}@callfire.test>"
            msg.set_content(json.dumps(seed))
            smtp.sendmail("notifications@callfire.com", ["ops@DOMAIN"], msg.as_bytes())
            with lock:
                acked.write(f"<load-{text}@callfire.test>\n")
    except (OSError, smtplib.SMTPException) as exc:
        print(f"worker {worker} stopped: {exc!r}", flush=True)

threads = [threading.Thread(target=send, args=(w,)) for w in range(4)]
for t in threads: t.start()
for t in threads: t.join()
'''.replace("DOMAIN", DOMAIN)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[nspawn.Container]:
    """A booted container with mailhook installed in /opt/mailhook and the units and config in place."""
    cannot_run(nspawn.cannot_run())
    started = time.monotonic()
    root = nspawn.rootfs()
    built = time.monotonic()
    where = tmp_path_factory.mktemp("nspawn")
    ci = where / "ci"
    ci.mkdir()
    (ci / "load.py").write_text(LOAD)
    (where / "opt").mkdir()
    pip_cache = nspawn.CACHE / "pip"
    pip_cache.mkdir(parents=True, exist_ok=True)
    binds = {SRC: nspawn.copy_source(where / "src"), "/opt/mailhook": where / "opt", "/ci": ci,
             "/root/.cache/pip": pip_cache}
    box = nspawn.Container(root, binds, where / "boot.log")
    cannot_run(box.probe())
    # docs/operations.md, "Install" (python3-venv and sqlite3 are in the rootfs):
    box.install(f"python3 -m venv /opt/mailhook && /opt/mailhook/bin/pip install -q {SRC} && "
                f"install -D -m 0644 {SRC}/docs/operations.md /opt/mailhook/share/doc/mailhook/operations.md && "
                "/opt/mailhook/bin/mailhook --version")
    installed = time.monotonic()
    try:
        box.boot()
    except AssertionError as exc:
        box.shutdown()
        cannot_run(f"systemd-nspawn cannot boot systemd as PID 1 here: {exc}")
    try:
        # docs/operations.md, "Run it as a systemd service":
        box.run("install", "-m", "0644", f"{SRC}/systemd/mailhook.service", "/etc/systemd/system/")
        box.run("install", "-D", "-m", "0644", f"{SRC}/systemd/mailhook.toml", "/etc/mailhook/mailhook.toml")
        box.run("ln", "-s", "/opt/mailhook/bin/mailhook", "/usr/local/bin/mailhook")
        box.run("mailhook", "check-config")
        verified = box.run("systemd-analyze", "verify", "/etc/systemd/system/mailhook.service", check=False)
        assert verified.returncode == 0 and "mailhook" not in verified.stderr, verified.stderr
        box.run("systemctl", "daemon-reload")
        print(f"rootfs {built - started:.0f} s, install {installed - built:.0f} s, "
              f"boot {time.monotonic() - installed:.0f} s")
        yield box
    finally:
        box.shutdown()


def cannot_run(reason: str | None) -> None:
    """Skip with `reason` where this machine cannot run the container (fail under CI, which must)."""
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def journal(box: nspawn.Container) -> str:
    return box.run("journalctl", "--no-pager", "-o", "cat", "-u", "mailhook.service", check=False).stdout


def count(box: nspawn.Container, sql: str) -> int:
    return int(box.run("sqlite3", f"file:{DB}?mode=ro", sql).stdout.strip() or 0)


def swaks(box: nspawn.Container, text_id: int) -> str:
    """Send one notification email with swaks to port 25 in the container; return swaks' transcript."""
    body = (Path(__file__).parent.parent / "fixtures/seed/text-inbound.json").read_text()
    body = body.replace('"@id": "', f'"@id": "{text_id}', 1)
    done = box.run("swaks", "--server", "127.0.0.1", "--port", "25", "--from", "notifications@callfire.com",
                   "--to", f"ops@{DOMAIN}", "--header", f"Message-Id: <swaks-{text_id}@callfire.test>",
                   "--body", body, "--timeout", "60", check=False)
    assert done.returncode == 0, done.stdout + done.stderr + journal(box)[-3000:]
    return done.stdout


def test_the_service_reaches_active_with_ready(box: nspawn.Container) -> None:
    # Type=notify: `systemctl start` returns only after READY=1 (or fails).
    box.run("systemctl", "start", "mailhook.service", timeout=180)
    shown = box.show("mailhook.service", "ActiveState", "SubState", "StatusText", "Type", "NotifyAccess")
    assert (shown["ActiveState"], shown["SubState"], shown["Type"]) == ("active", "running", "notify"), shown
    assert "deliveries" in shown["StatusText"], shown
    assert "Started mailhook.service" in box.run("journalctl", "--no-pager", "-b").stdout


def test_a_swaks_email_and_a_curl_post_are_stored(box: nspawn.Container) -> None:
    said = swaks(box, 1)
    assert "<-  250 2.0.0 OK delivery" in said, said
    posted = box.run("curl", "-sS", "--fail-with-body", "--data-binary",
                     f"@{SRC}/fixtures/seed/text-outbound.xml", "-H", "Content-Type: text/xml",
                     "http://127.0.0.1:8080/notifications")
    assert '"status": "stored"' in posted.stdout, posted.stdout
    assert count(box, "SELECT count(*) FROM deliveries WHERE status = 'stored'") == 2
    assert count(box, "SELECT count(*) FROM events") == 2


def test_a_stopped_process_is_caught_by_the_watchdog_and_restarted(box: nspawn.Container) -> None:
    before = box.show("mailhook.service", "MainPID", "NRestarts")
    box.run("sh", "-c", f"kill -STOP {before['MainPID']}")  # the shell's kill: no procps in the rootfs
    # WatchdogSec=30s, then RestartSec=2s and a new start.
    wait_until(lambda: box.show("mailhook.service", "NRestarts")["NRestarts"] != before["NRestarts"], 120,
               "a restart after the watchdog timeout")
    box.run("systemctl", "start", "mailhook.service", timeout=180)  # waits for the new READY=1
    after = box.show("mailhook.service", "MainPID", "ActiveState")
    assert after["ActiveState"] == "active" and after["MainPID"] != before["MainPID"], after
    assert "Watchdog timeout" in journal(box)
    assert "250 2.0.0 OK delivery" in swaks(box, 2)


def test_systemctl_stop_under_load_exits_cleanly_with_every_acknowledged_message_stored(
    box: nspawn.Container,
) -> None:
    acked = box.binds["/ci"] / "acked"
    senders = subprocess.Popen(box.command("python3", "/ci/load.py"), env=nspawn.ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: acked.exists() and len(acked.read_text().splitlines()) >= 200, 120,
                   "200 messages acknowledged")
        box.run("systemctl", "stop", "mailhook.service", timeout=120)
        said, _ = senders.communicate(timeout=120)
    finally:
        senders.kill()
    shown = box.show("mailhook.service", "ActiveState", "Result", "ExecMainStatus")
    stopping = journal(box).rpartition("stopping: closing doors")[2]
    # Exited by itself with status 0: not killed by SIGTERM's default action or by the stop timeout's SIGKILL.
    assert (shown["ActiveState"], shown["Result"], shown["ExecMainStatus"]) == ("inactive", "success", "0"), shown
    assert "Deactivated successfully" in stopping and "code=killed" not in stopping, stopping
    assert said.count("stopped") == 4, said  # every sender was cut off by the stop, not finished
    ids = set(acked.read_text().split())
    stored = set(box.run("sqlite3", f"file:{DB}?mode=ro",
                         "SELECT message_id FROM deliveries WHERE message_id LIKE '<load-%'").stdout.split())
    assert len(ids) >= 200 and ids <= stored, f"acknowledged but not stored: {sorted(ids - stored)[:10]}"


def _backlog(box: nspawn.Container, port: int) -> list[str]:
    """Return the backlog (Send-Q) of each listener on `port`, as `ss` shows it."""
    lines = box.run("ss", "-Hltn", f"sport = :{port}").stdout.splitlines()
    return [line.split()[2] for line in lines]


def test_socket_activation_starts_it_on_the_first_connection_and_keeps_the_backlog(box: nspawn.Container) -> None:
    for unit in ("mailhook.socket", "mailhook-http.socket"):
        box.run("install", "-m", "0644", f"{SRC}/systemd/{unit}", "/etc/systemd/system/")
    box.run("systemctl", "daemon-reload")
    box.run("systemctl", "start", "mailhook.socket", "mailhook-http.socket")
    assert box.show("mailhook.service", "ActiveState")["ActiveState"] == "inactive"
    assert (_backlog(box, 25), _backlog(box, 8080)) == (["512"], ["512"])

    assert "250 2.0.0 OK delivery" in swaks(box, 3)  # the first connection starts the service

    assert box.show("mailhook.service", "ActiveState")["ActiveState"] == "active"
    assert (_backlog(box, 25), _backlog(box, 8080)) == (["512"], ["512"]), "mailhook changed the Backlog="
    assert "smtp listening on" in journal(box)
    posted = box.run("curl", "-sS", "--fail-with-body", "--data-binary",
                     f"@{SRC}/fixtures/seed/text-outbound.xml", "-H", "Content-Type: text/xml",
                     "http://127.0.0.1:8080/notifications")
    assert '"status": "duplicate"' in posted.stdout or '"status": "stored"' in posted.stdout, posted.stdout


def test_acknowledge_received_works_under_the_system_call_filter(box: nspawn.Container) -> None:
    box.run("sed", "-i", r's/^\[smtp\]$/[smtp]\nacknowledge = "received"/', "/etc/mailhook/mailhook.toml")
    assert 'acknowledge = "received"' in box.run("mailhook", "check-config").stdout
    box.run("systemctl", "restart", "mailhook.service", timeout=180)
    assert "250 2.0.0 OK delivery" in swaks(box, 4)
    wait_until(lambda: count(box, "SELECT count(*) FROM deliveries WHERE status = 'pending'") == 0, 60,
               "the received delivery extracted")
    row = box.run("sqlite3", f"file:{DB}?mode=ro", "SELECT status, event_count, error FROM deliveries "
                  "WHERE message_id = '<swaks-4@callfire.test>'").stdout
    assert row.startswith("stored|1|"), f"{row}\n{journal(box)[-4000:]}"
    # Extracted by worker processes from a fork server, beside the main one, all inside the unit's filter.
    processes = box.run("sh", "-c", "grep -l '/mailhook.service$' /proc/[0-9]*/cgroup", check=False).stdout.split()
    assert len(processes) >= 3, processes
    assert box.show("mailhook.service", "ActiveState")["ActiveState"] == "active"
    assert "SIGSYS" not in journal(box) and "Bad system call" not in journal(box)


def test_status_backup_and_prune_work_on_the_dynamic_users_state_directory(box: nspawn.Container) -> None:
    assert box.run("readlink", "/var/lib/mailhook").stdout.strip() == "private/mailhook"
    status = box.run("mailhook", "status", "--server")
    assert "healthy" in status.stdout, status.stdout
    box.run("mailhook", "backup", "/var/backups/mailhook/")
    (copy,) = box.run("sh", "-c", "ls /var/backups/mailhook/*.db").stdout.split()
    assert int(box.run("sqlite3", copy, "SELECT count(*) FROM deliveries").stdout) == count(
        box, "SELECT count(*) FROM deliveries")
    pruned = box.run("mailhook", "prune", "--older-than", "30m")
    assert pruned.returncode == 0
    # Root touched the database: the dynamic user must still be able to write it.
    assert "250 2.0.0 OK delivery" in swaks(box, 5)
    wait_until(lambda: count(box, "SELECT count(*) FROM deliveries WHERE message_id = '<swaks-5@callfire.test>'"
                             " AND status = 'stored'") == 1, 60, "a delivery stored after prune")
