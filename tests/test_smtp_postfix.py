"""mailhook behind a real Postfix relay that retries while mailhook is killed and restarted."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from outside import require
from process_support import free_port, wait_until
from smtp_support import FIXTURES, ServerProcess, notification, rows

pytestmark = pytest.mark.slow

MASTER_CF = Path("/usr/share/postfix/master.cf.dist")  # shipped by the package, whatever debconf chose


class Postfix:
    """A private Postfix instance (own config and queue under tmp) relaying everything to one address."""

    def __init__(self, where: Path, relay_port: int) -> None:
        self.config = where / "etc"
        self.queue = where / "queue"
        data = where / "data"
        for path in (self.config, self.queue, data):
            path.mkdir()
        shutil.chown(data, "postfix")
        # Only the services a relay needs: no smtpd listener of its own.
        master = "\n".join(line for line in MASTER_CF.read_text().splitlines()
                           if not line.startswith(("smtp      inet", "submission", "smtps")))
        (self.config / "master.cf").write_text(master + "\n")
        (self.config / "main.cf").write_text(f"""
compatibility_level = 3.6
queue_directory = {self.queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = relay.test
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
relayhost = [127.0.0.1]:{relay_port}
alias_maps =
alias_database =
local_transport = error:no local delivery
smtp_tls_security_level = none
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
""")
        self._postfix("start")

    def _postfix(self, command: str) -> None:
        subprocess.run(["postfix", "-c", str(self.config), command], check=True, capture_output=True, timeout=60)

    def send(self, raw: bytes, recipient: str = "ops@hooks.example.com") -> None:
        """Hand one message to Postfix as a local program would (sendmail), queued at once."""
        subprocess.run(["sendmail", "-C", str(self.config), "-f", "notifications@callfire.com", recipient],
                       input=raw, check=True, timeout=60)

    def queue_is_empty(self) -> bool:
        done = subprocess.run(["postqueue", "-c", str(self.config), "-j"], capture_output=True, text=True,
                              check=True, timeout=60)
        return not done.stdout.strip()

    def flush(self) -> None:
        """Ask Postfix to try every queued message now, as an admin would after an outage."""
        subprocess.run(["postqueue", "-c", str(self.config), "-f"], check=True, capture_output=True, timeout=60)

    def queue_listing(self) -> str:
        """Postfix's own account of what it still holds and why (for a failure's message)."""
        done = subprocess.run(["postqueue", "-c", str(self.config), "-p"], capture_output=True, text=True,
                              timeout=60)
        return done.stdout

    def stop(self) -> None:
        self._postfix("stop")


@pytest.fixture
def relay() -> Iterator[tuple[Postfix, int]]:
    require("postfix", "postfix")
    # Postfix's unprivileged processes must reach its directories, which pytest's
    # private tmp_path does not allow; this directory is world-traversable.
    where = Path(tempfile.mkdtemp(prefix="mailhook-postfix-"))
    where.chmod(0o755)
    port = free_port()
    try:
        postfix = Postfix(where, port)
        try:
            yield postfix, port
        finally:
            postfix.stop()
    finally:
        shutil.rmtree(where, ignore_errors=True)


def test_every_message_relayed_by_postfix_is_stored_exactly_once_across_a_crash(
    relay: tuple[Postfix, int], tmp_path: Path
) -> None:
    postfix, port = relay
    db = tmp_path / "mailhook.db"
    fixtures = sorted((FIXTURES / "email").glob("*.eml"))
    expected = [json.loads(sample.with_suffix(".expected.json").read_text()) for sample in fixtures]
    config = tmp_path / "mailhook.toml"
    subscriptions = {sub: event for e in expected for sub, event in e.get("subscriptions", {}).items()}
    config.write_text("[subscriptions]\n" + "".join(f'{sub} = "{event}"\n' for sub, event in subscriptions.items()))
    flags = ("--config", str(config))
    first = ServerProcess(db, *flags, listen=f"127.0.0.1:{port}")
    try:
        for n in range(20):
            postfix.send(notification(500 + n))
        first.proc.kill()  # wherever Postfix is: mid-transaction, between messages, or done
        first.proc.wait(timeout=30)
        for n in range(20, 40):
            postfix.send(notification(500 + n))
        for sample in fixtures:
            postfix.send(sample.read_bytes())
    finally:
        first.stop()
    second = ServerProcess(db, *flags, listen=f"127.0.0.1:{port}")
    try:
        # Postfix may have marked the destination dead while mailhook was down; a flush
        # makes it try again at once rather than after its back-off (slow on a loaded machine).
        postfix.flush()
        try:
            wait_until(postfix.queue_is_empty, 120, "Postfix's queue empty (it holds messages mailhook did not accept)")
        except AssertionError as failure:
            raise AssertionError(f"{failure}\n{postfix.queue_listing()}") from None
    finally:
        second.proc.terminate()
        assert second.proc.wait(timeout=30) == 0
        second.stop()

    texts = rows(db, "SELECT resource_id, count(*) FROM events WHERE resource_id BETWEEN 500 AND 539 "
                     "GROUP BY resource_id")
    assert texts == [(500 + n, 1) for n in range(40)]
    expected_keys = {event["dedupe_key"] for e in expected for event in e["events"]}
    stored_keys = {key for (key,) in rows(db, "SELECT dedupe_key FROM events")}
    assert expected_keys <= stored_keys
    message_ids = {mid for (mid,) in rows(db, "SELECT DISTINCT message_id FROM deliveries")}
    assert {f"<{500 + n}.notify@callfire.test>" for n in range(40)} <= message_ids
