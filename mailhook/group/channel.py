"""Pickled messages over a Unix stream socket between the `serve` parent and one of its workers.

Each message is a tuple, sent as a 4-byte length and its pickle. Only the
two processes of one `mailhook serve` hold the socket (a socketpair made by
the parent), so a pickle comes from mailhook's own code, never from a peer.
"""

from __future__ import annotations

import contextlib
import pickle
import socket
import struct
import threading
from typing import Any

_HEADER = struct.Struct("!I")


class Channel:
    """Sends messages from any thread (one at a time) and receives them on one thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._sending = threading.Lock()
        self._reader = sock.makefile("rb", buffering=256 * 1024)

    def send(self, message: tuple[Any, ...]) -> None:
        """Send one message; raises OSError when the other side is gone."""
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with self._sending:
            self.sock.sendall(_HEADER.pack(len(data)) + data)

    def receive(self) -> tuple[Any, ...] | None:
        """Return the next message, or None once the other side closed its end (or died)."""
        try:
            header = self._reader.read(_HEADER.size)
            if len(header) < _HEADER.size:
                return None
            (size,) = _HEADER.unpack(header)
            data = self._reader.read(size)
        except (OSError, ValueError):  # ValueError: read after close()
            return None
        if len(data) < size:
            return None
        message: tuple[Any, ...] = pickle.loads(data)  # from our own other process only
        return message

    def close(self) -> None:
        """Close this end: the other side's `receive()` returns None."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
