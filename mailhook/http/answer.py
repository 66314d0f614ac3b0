"""The door's 200 answer, formatted and written with its body at once: the bytes aiohttp's `Response` writes.

Relies on aiohttp's private internals (listed in `PRIVATE_NAMES`, checked by
tests/test_http_connection.py; the bytes compared with aiohttp's own by
tests/test_library_internals.py): the state `StreamResponse.prepare` and
`write_eof` leave in a response, which aiohttp's server reads afterwards, and
the state `StreamResponse.__init__` makes, kept in the class.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from aiohttp import HttpVersion, HttpVersion10, HttpVersion11, web
from aiohttp.helpers import rfc822_formatted_time
from multidict import CIMultiDict, CIMultiDictProxy

# aiohttp's private names this module relies on (checked by tests/test_http_connection.py):
#   StreamResponse._eof_sent, StreamResponse._keep_alive, StreamResponse._body_length
#                                the state aiohttp's prepare and write_eof leave in a response
#   helpers.rfc822_formatted_time
#                                the Date header's value, as aiohttp's prepare writes it
#   StreamResponse.__init__      not called: the state it sets is class attributes of Answer
PRIVATE_NAMES = ("StreamResponse._eof_sent", "StreamResponse._keep_alive", "StreamResponse._body_length",
                 "helpers.rfc822_formatted_time", "StreamResponse.__init__")


class Answer(web.StreamResponse):
    """A 200 answer whose head is formatted and written with its body at once: the bytes aiohttp's Response writes.

    aiohttp's `Response` copies its headers into a new CIMultiDict, then
    `prepare` runs six coroutines (headers, the prepare signal, the status
    line), adds Content-Length, Date and Connection to that copy and
    serializes it, and `write_eof` three more to write head and body
    together. `fields` are the header lines that come before Content-Length
    (as `Response(headers=...)` orders them); the rest is added here as
    `prepare` adds it. Only for a body of bytes, without cookies,
    compression, chunking or a prepare signal (`app.on_response_prepare`
    runs only for requests the router matched), on a status that has a body.
    Private: the state `prepare` and `write_eof` leave (`_keep_alive`,
    `_eof_sent`, `_body_length`), which aiohttp's server reads afterwards,
    and the state `StreamResponse.__init__` makes, kept in the class.
    """

    __slots__ = ("_answer", "_fields")

    # What StreamResponse.__init__ would set per answer (a dict, an empty CIMultiDict, the status through
    # `_set_status`), as class attributes: nothing reads them but the properties, the headers read-only.
    _state: dict[Any, Any] = MappingProxyType({})  # type: ignore[assignment]
    _headers: CIMultiDict[str] = CIMultiDictProxy(CIMultiDict())  # type: ignore[assignment]
    _status = 200
    _reason = "OK"

    def __init__(self, fields: bytes, body: bytes) -> None:
        # Private: StreamResponse.__init__ is not called (see the class attributes above).
        self._fields = fields
        self._answer = body

    async def prepare(self, request: web.BaseRequest) -> None:
        """Write the whole answer, as `prepare` followed by `write_eof` write it (which is left with nothing to do)."""
        if self._eof_sent:
            return
        keep_alive = self._keep_alive
        if keep_alive is None:
            keep_alive = self._keep_alive = request.keep_alive
        writer = request.writer
        await writer.write_eof(self.encode(request.version, keep_alive))
        self._eof_sent = True
        self._body_length = writer.output_size

    def encode(self, version: HttpVersion, keep_alive: bool) -> bytes:
        """Return the whole answer's bytes, head and body, for a request of `version` and a connection kept or not."""
        if keep_alive:
            connection = b"Connection: keep-alive\r\n" if version == HttpVersion10 else b""
        else:
            connection = b"Connection: close\r\n" if version == HttpVersion11 else b""
        body = self._answer
        return b"HTTP/%d.%d 200 OK\r\n%sContent-Length: %d\r\nDate: %s\r\n%s\r\n%s" % (
            version[0], version[1], self._fields, len(body), rfc822_formatted_time().encode(), connection, body)
