"""Pickled messages over a Unix stream socket between the `serve` parent and one of its workers.

Each frame is a 4-byte length and a pickle: of one message (a tuple), or of a
list of messages sent together (`send_all`: one pickle, one system call and
one wake-up of the reader for all of them). Only the two processes of one
`mailhook serve` hold the socket (a socketpair made by the parent), so a
pickle comes from mailhook's own code, never from a peer.
"""

from __future__ import annotations

import contextlib
import pickle
import socket
import struct
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

_HEADER = struct.Struct("!I")
_CHUNK = 256 * 1024  # read at most this much at a time (a large delivery takes several reads)


class Channel:
    """Sends messages from any thread (one frame at a time) and receives them on one thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._sending = threading.Lock()
        self._received = bytearray()  # read from the socket, not yet taken as messages
        self._frames: deque[list[tuple[Any, ...]]] = deque()

    def send(self, message: tuple[Any, ...]) -> None:
        """Send one message; raises OSError when the other side is gone."""
        self._send(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))

    def send_all(self, messages: Sequence[tuple[Any, ...]]) -> None:
        """Send several messages in one frame, received together and in order; OSError if the other side is gone."""
        if len(messages) == 1:
            self.send(messages[0])
        elif messages:
            self._send(pickle.dumps(list(messages), protocol=pickle.HIGHEST_PROTOCOL))

    def _send(self, data: bytes) -> None:
        with self._sending:
            self.sock.sendall(_HEADER.pack(len(data)) + data)

    def receive(self) -> tuple[Any, ...] | None:
        """Return the next frame's first message (for frames of one), or None once the other side closed its end."""
        messages = self.receive_all()
        return None if messages is None else messages[0]

    def receive_all(self) -> list[tuple[Any, ...]] | None:
        """Return the messages of the next frame, or None once the other side closed its end (or died)."""
        while not self._frames:
            try:
                data = self.sock.recv(_CHUNK)
            except OSError:  # closed here, or reset
                return None
            if not data:
                return None
            self._split(data)
        return self._frames.popleft()

    def receive_ready(self) -> list[list[tuple[Any, ...]]] | None:
        """Return the frames complete now, reading only what has arrived (never waits); None once the other side closed.

        For an event loop's reader callback; sends may still block (the socket stays blocking for them).
        """
        try:
            data = self.sock.recv(_CHUNK, socket.MSG_DONTWAIT)
        except BlockingIOError:
            data = None
        except OSError:
            return None
        if data is not None:
            if not data and not self._frames:
                return None
            self._split(data)
        frames = list(self._frames)
        self._frames.clear()
        return frames

    def _split(self, data: bytes) -> None:
        """Add what was read; take every whole frame out of it."""
        received = self._received
        received += data
        start = 0
        # Unpickled from a view, not a copy: a frame of large deliveries is held once, not twice.
        with memoryview(received) as view:
            while len(view) - start >= _HEADER.size:
                (size,) = _HEADER.unpack_from(view, start)
                end = start + _HEADER.size + size
                if end > len(view):
                    break
                with view[start + _HEADER.size:end] as frame:
                    message: tuple[Any, ...] | list[tuple[Any, ...]] = pickle.loads(frame)  # from our own process
                self._frames.append(message if isinstance(message, list) else [message])
                start = end
        del received[:start]

    def close(self) -> None:
        """Close this end: the other side's `receive()` returns None."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
