"""What the HTTP door checks of a request: its token, size, body (read under the limits) and signature.

Also the log of the requests aiohttp refuses itself as malformed (`ProtocolLog`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
from typing import TYPE_CHECKING, Any, NoReturn

from aiohttp import BasicAuth, StreamReader, hdrs
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from multidict import CIMultiDictProxy
from yarl import URL

from mailhook.config.settings import HttpSettings
from mailhook.errors import Busy, Rejected, TimedOut, TooLarge, Unauthorized
from mailhook.extract.charset import charset_of
from mailhook.extract.document import is_v1
from mailhook.http import gate
from mailhook.logs import Summary

if TYPE_CHECKING:
    from mailhook.budget import InflightHold
    from mailhook.metrics import Metrics

SIGNATURE = "X-CallFire-Signature"
CHUNK = 64 * 1024
# The in-flight budget is spent: the body is refused with 503, and the client retries.
NO_ROOM = "too many bodies being received; retry later"



# What reading a body can raise for what the client sent (or did not): each refused by `reject_body`.
BODY_ERRORS = (ConnectionError, HttpProcessingError, RequestPayloadError)


def reject_body(exc: BaseException) -> NoReturn:
    """Refuse a body that could not be read: the client left, its framing, or its encoding."""
    if isinstance(exc, ConnectionError):
        raise Rejected("connection closed before the whole body arrived", "incomplete") from None
    if isinstance(exc, HttpProcessingError):
        raise Rejected("malformed request body framing") from None
    # RequestPayloadError, e.g. Content-Encoding: gzip over bytes that are not gzip.
    raise Rejected(f"request body cannot be decoded: {first_line(exc)}") from None


class Intake:
    """The checks of one door's requests, under its settings (token, webhook secret, sizes, body timeout)."""

    def __init__(self, settings: HttpSettings, max_size: int) -> None:
        self.max_size = max_size
        self.token = settings.token or None
        self.secret = settings.webhook_secret or None
        # Seconds a client may take to send one body; a stalled sender must not hold a connection forever.
        self.body_timeout = settings.body_timeout

    def check_token(self, url: URL, headers: CIMultiDictProxy[str]) -> None:
        """Raise `Unauthorized` unless the query's `token` or the basic-auth password is the door's token.

        `url` is the request's target (its `rel_url`), `headers` its headers.
        """
        if self.token is None:
            return
        offered = [*url.query.getall("token", []), basic_password(headers)]
        expected = self.token.encode()
        # Compare with every offered value (no early exit) so timing says nothing.
        matches = [hmac.compare_digest(value.encode(), expected) for value in offered if value is not None]
        if not any(matches):
            reason = "wrong token" if matches else "missing token: pass ?token= or the basic-auth password"
            raise Unauthorized(reason)

    def check_length(self, headers: CIMultiDictProxy[str]) -> None:
        """Raise `TooLarge` when the request's Content-Length says its body is over the size limit."""
        length = headers.get(hdrs.CONTENT_LENGTH)  # read as `BaseRequest.content_length` reads it
        if length is not None and int(length) > self.max_size:
            raise TooLarge(f"body larger than {self.max_size} bytes")

    def whole_body(self, content: StreamReader, hold: InflightHold) -> bytes | None:
        """Return the body `content` if all of it came with the head, counted in `hold`; None while more is to come.

        A notification is a few KB and comes whole with its head: taken as it
        is, with no coroutine, timer or copy through a buffer (`read_body`).
        """
        try:
            if not content.is_eof():
                return None
            whole = content.read_nowait()
        except BODY_ERRORS as exc:
            reject_body(exc)
        if len(whole) > self.max_size:
            raise TooLarge(f"body larger than {self.max_size} bytes")
        if not hold.grow(len(whole)):
            raise Busy(NO_ROOM)
        return whole

    async def read_body(self, content: StreamReader, hold: InflightHold) -> bytes:
        """Return the rest of a body `whole_body` did not find whole, read within the limits and `hold`'s room."""
        body = bytearray()
        try:
            async with asyncio.timeout(self.body_timeout):
                try:
                    while chunk := await content.read(CHUNK):
                        if not hold.grow(len(chunk)):
                            hold.close()
                            raise Busy(NO_ROOM)
                        body += chunk
                        if len(body) > self.max_size:
                            raise TooLarge(f"body larger than {self.max_size} bytes")
                except BaseException:
                    # Freed now: the exception's traceback keeps this frame, maybe until the next garbage collection.
                    body = bytearray()
                    raise
        except TimeoutError:
            raise TimedOut(f"body not received within {self.body_timeout:g} seconds") from None
        except BODY_ERRORS as exc:
            reject_body(exc)
        return bytes(body)

    def check_signature(self, headers: CIMultiDictProxy[str], body: bytes) -> None:
        """With a webhook secret, a signature must match; only v1.1 bodies may come unsigned."""
        if self.secret is None:
            return
        signature = headers.get(SIGNATURE)
        if signature is None:
            if is_v1(body, charset_of(headers.get(hdrs.CONTENT_TYPE))):
                return  # CallFire cannot sign v1.1 notifications; the token protects them.
            raise Unauthorized(f"missing {SIGNATURE}: only v1.1 bodies may be unsigned")
        if not signature_matches(self.secret, body, signature):
            raise Unauthorized(f"{SIGNATURE} does not match the body")


def signature_matches(secret: str, body: bytes, signature: str) -> bool:
    """Say whether `signature` is the HMAC-SHA1 of `body` under `secret`, as hex or base64."""
    expected = hmac.new(secret.encode(), body, hashlib.sha1).digest()
    value = signature.strip()
    if value[:5].lower() == "sha1=":
        value = value[5:]
    try:
        # 40 characters is hex; base64 of 20 bytes is 28, so the two never collide.
        offered = bytes.fromhex(value) if len(value) == 40 else base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(offered, expected)


def basic_password(headers: CIMultiDictProxy[str]) -> str | None:
    """Return the password of the basic-auth credentials in a request's `headers`, if it has readable ones."""
    header = headers.get(hdrs.AUTHORIZATION)
    if not header:
        return None
    try:
        password: str = BasicAuth.decode(header).password
    except ValueError:
        return None
    return password


def first_line(exc: BaseException) -> str:
    """Return the reason an aiohttp protocol error gives, on one line."""
    if not isinstance(exc, HttpProcessingError) and isinstance(exc.__cause__, HttpProcessingError):
        exc = exc.__cause__  # a RequestPayloadError says only "400, message:"; its cause says why
    text = (exc.message if isinstance(exc, HttpProcessingError) else str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ProtocolLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's log for requests it refuses itself: one refusal line for a malformed request, not a traceback.

    A hostile client sending broken HTTP would otherwise fill the journal with
    multi-line tracebacks, one per request.
    """

    def __init__(self, logger: logging.Logger, metrics: Metrics) -> None:
        super().__init__(logger, {})
        self.metrics = metrics
        # A client sending one broken request after another gets one line per interval, not one each.
        self.refusals = Summary(logger, logging.WARNING, "malformed HTTP requests refused", gate.LOG_INTERVAL)

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, RequestPayloadError):
            return  # a body the door refused already (and logged): aiohttp meets it again draining it
        if isinstance(exc_info, HttpProcessingError) and 400 <= exc_info.code < 500:
            self.metrics.on_rejected("http", "malformed")
            self.refusals.note("request refused channel=http peer=%s status=%d reason=%s",
                               args[0] if args else "-", exc_info.code, first_line(exc_info))
            return
        self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)
