"""`mailhook serve --db postgresql://...` as a user runs it: SMTP and HTTP store and acknowledge, the password
never shows, and while the database is down both doors say "try again later"."""

from __future__ import annotations

import smtplib
from pathlib import Path

import httpx
import psycopg
import pytest
from postgres_support import PASSWORD, USER, Cluster
from process_support import free_port, wait_until
from smtp_support import FIXTURES, ServerProcess, notification

pytestmark = pytest.mark.slow


def _count(url: str, sql: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def test_serve_on_postgresql_stores_and_acknowledges_over_smtp_and_http_and_waits_out_an_outage(
    postgres_cluster: Cluster, postgres_url: str, tmp_path: Path
) -> None:
    port = free_port()
    password_file = tmp_path / "db-password"
    password_file.write_text(PASSWORD + "\n")
    # The password from storage.password_file, not from the URL.
    url = postgres_url.replace(f"{USER}:{PASSWORD}@", f"{USER}@")
    server = ServerProcess(url, "--http-listen", f"127.0.0.1:{port}", "--storage-password-file", str(password_file))
    base = f"http://127.0.0.1:{port}"
    try:
        with smtplib.SMTP(*server.address, timeout=30) as smtp:
            smtp.sendmail("notifications@callfire.com", ["ops@example.com"], notification(71))
            # The same Message-ID again: acknowledged, stored as a duplicate, no second event.
            smtp.sendmail("notifications@callfire.com", ["ops@example.com"], notification(71))
        document = (FIXTURES / "documents").glob("*.xml")
        body = next(p for p in sorted(document) if "text" in p.name and "bare" not in p.name).read_bytes()
        with httpx.Client(timeout=30) as client:
            assert client.get(f"{base}/healthz").status_code == 200
            stored = client.post(f"{base}/notifications", content=body, headers={"Content-Type": "application/xml"})
            assert stored.status_code == 200, stored.text
        assert _count(postgres_url, "SELECT count(*) FROM deliveries WHERE channel = 'smtp'") == 2
        assert _count(postgres_url, "SELECT count(*) FROM deliveries WHERE status = 'duplicate'") == 1
        assert _count(postgres_url, "SELECT count(*) FROM deliveries WHERE channel = 'http'") == 1
        assert _count(postgres_url, "SELECT count(*) FROM events") == 2

        postgres_cluster.stop()
        with smtplib.SMTP(*server.address, timeout=30) as smtp:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                smtp.sendmail("notifications@callfire.com", ["ops@example.com"], notification(72))
            assert refused.value.smtp_code == 451
            assert refused.value.smtp_error.startswith(b"4.3.0")
        with httpx.Client(timeout=30) as client:
            unavailable = client.get(f"{base}/healthz")
            assert unavailable.status_code == 503
            assert "database unreachable" in unavailable.json()["reason"]
            assert client.post(f"{base}/notifications", content=body).status_code == 503

        postgres_cluster.start()
        with httpx.Client(timeout=30) as client:
            wait_until(lambda: client.get(f"{base}/healthz").status_code == 200, 60, "/healthz to recover")
        with smtplib.SMTP(*server.address, timeout=30) as smtp:
            smtp.sendmail("notifications@callfire.com", ["ops@example.com"], notification(72))
        assert _count(postgres_url, "SELECT count(*) FROM events") == 3
    finally:
        if not postgres_cluster.running():
            postgres_cluster.start()
        server.stop()
    log = "".join(server.log) + "".join(iter_rest(server))
    assert "delivery" in log
    assert PASSWORD not in log


def iter_rest(server: ServerProcess) -> list[str]:
    """The rest of the server's stderr, read after it ended."""
    rest = []
    while not server.lines.empty():
        rest.append(server.lines.get_nowait())
    return rest
