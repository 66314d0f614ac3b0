"""How to reach one mailbox: its resolved settings, a verified connection and its close, a look into its read buffer.

The one module that touches imapclient's private internals (`PRIVATE_NAMES`), each use commented.
"""

from __future__ import annotations

import contextlib
import ssl
from dataclasses import dataclass, field
from urllib.parse import quote

from imapclient import IMAPClient, SocketTimeout

from mailhook.config.settings import ImapSettings, Settings
from mailhook.errors import ConfigError

CONNECT_TIMEOUT = 30.0
READ_TIMEOUT = 120.0
# imapclient's private names mailhook relies on (here only); tests/test_library_internals.py checks them against the
# installed imapclient, and pyproject.toml caps it.
PRIVATE_NAMES = ("IMAPClient._imap", "IMAP4.file")


@dataclass(frozen=True, slots=True)
class Account:
    """The resolved connection settings of one mailbox; the password never appears in repr or logs."""

    settings: ImapSettings = field(repr=False)  # holds the password too
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    max_size: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Account:
        """Check the [imap] settings and resolve the defaults; raises `ConfigError` naming the key."""
        imap = settings.imap
        if not imap.host:
            raise ConfigError("imap.host is not set (--imap-host, MAILHOOK_IMAP_HOST or [imap] host)")
        if not imap.user:
            raise ConfigError("imap.user is not set")
        if not imap.password:
            raise ConfigError("imap.password is not set (use imap.password_file or MAILHOOK_IMAP_PASSWORD)")
        if not imap.folders:
            raise ConfigError("imap.folders is empty")
        targets = {imap.move_to if imap.action == "move" else "", imap.quarantine_folder} - {""}
        if imap.action == "move" and not imap.move_to:
            raise ConfigError("imap.action = move needs imap.move_to")
        for folder in imap.folders:
            if folder in targets:
                raise ConfigError(f"imap.folders: {folder!r} is also where processed messages go")
        port = imap.port or (993 if imap.security == "ssl" else 143)
        return cls(imap, imap.host, port, imap.user, imap.password, settings.smtp.max_message_size)

    @property
    def key(self) -> str:
        """Return the account name folder positions are stored under."""
        return f"{self.user}@{self.host}"

    def url(self, folder: str, uidvalidity: int | None = None, uid: int | None = None) -> str:
        """Return the RFC 5092 IMAP URL of a folder or message (deliveries.source)."""
        text = f"imap://{quote(self.user, safe='')}@{self.host}/{quote(folder, safe='/')}"
        if uidvalidity is not None:
            text += f";UIDVALIDITY={uidvalidity}"
        if uid is not None:
            text += f"/;UID={uid}"
        return text


def connect(account: Account) -> IMAPClient:
    """Open a connection (IMAPS, STARTTLS or plain) and log in; certificates are verified."""
    imap = account.settings
    context = None
    if imap.security != "none":
        context = ssl.create_default_context(cafile=str(imap.ca_file) if imap.ca_file else None)
    client = IMAPClient(
        account.host,
        port=account.port,
        ssl=imap.security == "ssl",
        ssl_context=context,
        timeout=SocketTimeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT),
    )
    try:
        if imap.security == "starttls":
            client.starttls(context)
        client.login(account.user, account.password)
    except BaseException:
        with contextlib.suppress(Exception):
            client.shutdown()
        raise
    return client


def close(client: IMAPClient) -> None:
    """Log out, or where that fails (the connection may be gone already) just release the socket."""
    try:
        client.logout()
    except Exception:  # noqa: BLE001 - the connection may be gone already; just release the socket
        with contextlib.suppress(Exception):
            client.shutdown()


def buffered(client: IMAPClient) -> bool:
    """Say whether server data already waits in a read buffer, where select() cannot see it.

    The server may send EXISTS right behind its IDLE continuation, in one packet
    that imaplib's buffered reader swallows whole.
    """
    sock = client.socket()
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    sock.setblocking(False)
    try:
        # Private: IMAPClient._imap (its imaplib connection) and imaplib's .file (the buffered reader);
        # neither library offers a look at its read buffer.
        return bool(client._imap.file.peek(1))
    except (OSError, ValueError):
        return False  # nothing buffered and nothing (complete) on the socket yet
    finally:
        sock.settimeout(READ_TIMEOUT)
