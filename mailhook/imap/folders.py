"""The server's folders: their names in its hierarchy, creating one, and moving or flagging stored messages."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

log = logging.getLogger("mailhook.imap")

SEEN = b"\\Seen"
DELETED = b"\\Deleted"


def delimiter(client: IMAPClient) -> str | None:
    """Return the server's hierarchy delimiter, or None when it names none."""
    with contextlib.suppress(IMAPClientError, IndexError):
        found = client.list_folders("", "")[0][1]
        if found:
            return found.decode() if isinstance(found, bytes) else str(found)
    return None


def server_name(name: str, delimiter: str | None) -> str:
    """Translate a configured folder name, with / between levels, into the server's hierarchy."""
    if not name or delimiter is None or delimiter == "/":
        return name
    return name.replace("/", delimiter)


def ensure_folder(client: IMAPClient, name: str) -> None:
    """Create (and subscribe to) the folder `name` unless it exists."""
    if client.folder_exists(name):
        return
    try:
        client.create_folder(name)
    except IMAPClientError:
        if not client.folder_exists(name):  # another client may have created it meanwhile
            raise
    log.info("created folder %s", name)
    with contextlib.suppress(IMAPClientError):
        client.subscribe_folder(name)


def act(client: IMAPClient, caps: frozenset[bytes], action: str, outcome: Mapping[int, str],
        targets: Mapping[str, str]) -> None:
    """Move or flag messages whose deliveries are committed (never before), as `imap.action` says."""
    if action == "leave":
        return
    quarantine = targets["quarantined"]
    quarantined = sorted(uid for uid, status in outcome.items() if status == "quarantined" and quarantine)
    processed = sorted(uid for uid in outcome if uid not in quarantined)
    if quarantined:
        move(client, caps, quarantined, quarantine)
    if processed and action == "move":
        move(client, caps, processed, targets["processed"])
    elif processed and action == "seen":
        client.add_flags(processed, [SEEN], silent=True)


def move(client: IMAPClient, caps: frozenset[bytes], uids: list[int], folder: str) -> None:
    """Move messages to `folder`: with MOVE where the server has it, else COPY, flag deleted and expunge."""
    if b"MOVE" in caps:
        client.move(uids, folder)
        return
    # Without MOVE a crash between COPY and EXPUNGE leaves a copy behind; the next run copies again.
    client.copy(uids, folder)
    client.add_flags(uids, [DELETED], silent=True)
    if b"UIDPLUS" in caps:
        client.uid_expunge(uids)
    else:
        client.expunge()
