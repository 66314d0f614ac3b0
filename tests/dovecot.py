"""A throwaway Dovecot IMAP server for tests: its own config, maildir, log and port on 127.0.0.1.

Dovecot's master runs as root (as in the tests); mail processes may not, so
the maildir belongs to the `dovecot` system user and lives in a world-
traversable temporary directory (pytest's tmp_path is private to root).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from imapclient import IMAPClient
from outside import Certificate
from process_support import free_port, wait_until

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
DOVEADM = shutil.which("doveadm") or "/usr/bin/doveadm"
MAIL_USER = "dovecot"

CONFIG = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
default_internal_user = dovecot
default_internal_group = dovecot
default_login_user = dovenull
first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:{root}/mail/%u
# IDLE learns of new mail through inotify; where that is unavailable, check every second.
mailbox_idle_check_interval = 1 secs
{extra}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
  }}
}}
# No growing delay after failed logins: the tests fail logins on purpose.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/passwd
}}
userdb {{
  driver = static
  args = uid={mail_user} gid={mail_user} home={root}/mail/%u
}}
"""


def available() -> bool:
    """Say whether Dovecot is installed and this process may start it (it must run as root)."""
    return os.path.exists(DOVECOT) and os.geteuid() == 0 and _has_user(MAIL_USER) and _has_user("dovenull")


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@dataclass
class Dovecot:
    """A running Dovecot with one user; helpers act on the mailbox as a mail client would."""

    root: Path
    conf: Path
    port: int
    tls_port: int
    process: subprocess.Popen[bytes]
    ca_file: Path | None = None
    user: str = "alice"
    password: str = "secret"

    @contextlib.contextmanager
    def client(self) -> Iterator[IMAPClient]:
        """Yield a logged-in plain-text connection, logged out afterwards."""
        client = IMAPClient("127.0.0.1", port=self.port, ssl=False, timeout=10)
        try:
            client.login(self.user, self.password)
            yield client
        finally:
            try:
                client.logout()
            except Exception:  # noqa: BLE001 - the server may have dropped us on purpose
                client.shutdown()

    def append(self, folder: str, *messages: bytes) -> None:
        """Append messages to a folder (created if missing), in order."""
        with self.client() as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            for raw in messages:
                client.append(folder, raw)

    def messages(self, folder: str) -> dict[int, tuple[bytes, tuple[bytes, ...]]]:
        """Return {uid: (raw, flags)} of a folder; empty if the folder does not exist."""
        with self.client() as client:
            if not client.folder_exists(folder):
                return {}
            client.select_folder(folder, readonly=True)
            uids = client.search(["ALL"])
            if not uids:
                return {}
            data = client.fetch(uids, ["BODY.PEEK[]", "FLAGS"])
            return {uid: (bytes(d[b"BODY[]"]), tuple(d[b"FLAGS"])) for uid, d in data.items()}

    def kick(self) -> None:
        """Drop every connection of the user, as an admin or a restarting server would."""
        subprocess.run([DOVEADM, "-c", str(self.conf), "kick", self.user], check=True, capture_output=True)

    def log(self) -> str:
        """Return Dovecot's log so far."""
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop Dovecot and remove its files."""
        # Signalling the whole group at once ends it in milliseconds; the master alone waits a second.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def start(*, capabilities: str | None = None, tls: Certificate | None = None) -> Dovecot:
    """Start Dovecot in the foreground on free loopback ports and wait until it greets.

    `capabilities` replaces the advertised IMAP capabilities (to hide MOVE or
    IDLE); `tls` (the session's self-signed certificate) adds IMAPS and STARTTLS.
    """
    root = Path(tempfile.mkdtemp(prefix="mailhook-dovecot-"))
    root.chmod(0o755)
    (root / "mail").mkdir()
    entry = pwd.getpwnam(MAIL_USER)
    os.chown(root / "mail", entry.pw_uid, entry.pw_gid)
    (root / "passwd").write_text("alice:{PLAIN}secret\n")
    extra = []
    ca_file = None
    if tls:
        # Copies, readable by Dovecot's own users, of the session's certificate (its own CA file).
        ca_file = Path(shutil.copy(tls.cert, root / "cert.pem"))
        shutil.copy(tls.key, root / "key.pem")
        extra += ["ssl = yes", f"ssl_cert = <{root}/cert.pem", f"ssl_key = <{root}/key.pem"]
    else:
        extra.append("ssl = no")
    if capabilities is not None:
        extra.append(f"imap_capability = {capabilities}")
    port, tls_port = free_port(), free_port() if tls else 0
    conf = root / "dovecot.conf"
    conf.write_text(CONFIG.format(root=root, port=port, tls_port=tls_port, mail_user=MAIL_USER,
                                  extra="\n".join(extra)))
    process = subprocess.Popen([DOVECOT, "-c", str(conf), "-F"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    server = Dovecot(root, conf, port, tls_port, process, ca_file)
    try:
        _wait_for_greeting(server)
    except (AssertionError, RuntimeError):
        log = server.log()
        server.stop()
        raise RuntimeError(f"dovecot did not start:\n{log}") from None
    return server


def _wait_for_greeting(server: Dovecot, timeout: float = 15.0) -> None:
    def greeted() -> bool:
        if server.process.poll() is not None:
            raise RuntimeError("dovecot exited")
        with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
            return sock.recv(100).startswith(b"* OK")

    wait_until(greeted, timeout, "dovecot's greeting")
