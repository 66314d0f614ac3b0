"""The HTTP door: receive CallFire's v1.1 XML/JSON/SOAP and v2 webhook POSTs on the server's loop.

aiohttp's web server runs inside an already running asyncio loop (an AppRunner
served through `mailhook.http.connection`, which adds the connection caps and
timeouts, on a socket of its own or one systemd passed), so SMTP and HTTP
share one loop and one writer. Bodies are streamed,
so the size limit is enforced while reading, and a request is authenticated
(token) before its body is read at all. The door only translates: it checks
credentials and size, hands the raw body to the pipeline as a `document`
delivery, and maps the outcome to a status code (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import BasicAuth, HttpVersion11, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from multidict import CIMultiDict

from mailhook.errors import Busy, Rejected, RetryLater, TimedOut, TooLarge, Unauthorized
from mailhook.extract.charset import charset_of
from mailhook.extract.document import is_v1
from mailhook.http import connection as http_connection
from mailhook.logs import Summary, logfmt
from mailhook.models import Delivery, Receipt, utcnow

if TYPE_CHECKING:
    from mailhook.budget import InflightHold
    from mailhook.metrics import Metrics
    from mailhook.server import Runtime

log = logging.getLogger("mailhook.webhook")

PATH = "/notifications"
SIGNATURE = "X-CallFire-Signature"
# Seconds `GET /healthz` waits for the writer to prove the database writable.
HEALTH_TIMEOUT = 10.0
_CHUNK = 64 * 1024
_ANSWER = b'{"delivery_id": %d, "status": "%s", "events": %d, "duplicates": %d}'
# The 200 answer's header lines before Content-Length, in the order Response(headers=...) would write them.
_JSON_FIELDS = b"Content-Type: application/json; charset=utf-8\r\nServer: " + http_connection.SERVER.encode() + b"\r\n"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# Each refusal's answer, mapped once: the first class an exception is an instance of.
# The in-flight budget is spent: the body is refused with 503, and the client retries.
NO_ROOM = "too many bodies being received; retry later"
STATUS: tuple[tuple[type[Rejected], int], ...] = (
    (Unauthorized, 401), (TooLarge, 413), (TimedOut, 408), (Busy, 503), (Rejected, 400),
)


class WebhookDoor:
    """The running HTTP listener."""

    name = "http"

    def __init__(self, runner: web.AppRunner, listener: http_connection.Listener) -> None:
        self.runner = runner
        self.listener = listener

    def addresses(self) -> list[str]:
        """Return the bound HOST:PORT of every listening socket (the real port when 0 was asked)."""
        return self.listener.addresses()

    async def close(self) -> None:
        """Stop accepting, let requests in flight get their answer, and release the socket."""
        self.listener.close()
        await self.runner.cleanup()


class Receiver:
    """The request handlers, bound to one server's pipeline, metrics and settings."""

    # aiohttp's own routing of a request through the application (set by `app`).
    route: Handler

    def __init__(self, runtime: Runtime) -> None:
        self.pipeline = runtime.pipeline
        self.metrics = runtime.metrics
        self.max_size = runtime.settings.smtp.max_message_size
        self.token = runtime.settings.http.token or None
        self.secret = runtime.settings.http.webhook_secret or None
        # Seconds a client may take to send one body; a stalled sender must not hold a connection forever.
        self.body_timeout = runtime.settings.http.body_timeout
        # Guessing tokens or signatures gets one line for the first refusal and one per interval summing up the rest.
        self.auth_refusals = Summary(log, logging.WARNING, "HTTP requests refused for a missing or wrong token or "
                                     "signature", http_connection.LOG_INTERVAL)
        # Bytes of bodies still being received count here, with the SMTP door's messages (parsing.inflight_budget).
        self.inflight = runtime.inflight

    def app(self) -> web.Application:
        """Build the aiohttp application: three routes, served through `handle` (which makes errors JSON)."""
        # No middleware: any makes aiohttp run two coroutines per request (it adds its own with it).
        app = web.Application()
        app.router.add_post(PATH, self.notifications, expect_handler=self.expect)
        app.router.add_get("/healthz", self.healthz, allow_head=True, expect_handler=_expect)
        app.router.add_get("/metrics", self.render_metrics, allow_head=True, expect_handler=_expect)
        # Every answer names the service (`Server: mailhook`, not the library and Python versions behind
        # it) in its own headers, not in an on_response_prepare signal: that was two coroutines per request.
        app.on_cleanup.append(self._close_logs)
        self.route = http_connection.application_handler(app)
        return app

    async def _close_logs(self, app: web.Application) -> None:
        self.auth_refusals.close()

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """Answer `Expect: 100-continue`: refuse a bad token or a too-large body before it is sent."""
        try:
            self._check_token(request)
            self._check_length(request)
        except Rejected as exc:
            response = self._refused(request, exc)
            # The client has not sent the body; closing avoids waiting for one.
            response.force_close()
            return response
        if request.version != HttpVersion11:
            return None  # HTTP/1.0 has no interim responses: just read the body
        if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
            return _error(417, "only Expect: 100-continue is supported")
        await _continue(request)
        return None

    async def notifications(self, request: web.Request) -> web.StreamResponse:
        """Store one POSTed notification body and say what became of it."""
        # The body's bytes count in the server's in-flight budget from arrival until the answer.
        with self.inflight.hold() as hold:
            try:
                self._check_token(request)
                self._check_length(request)
                body = await self._read_body(request, hold)
                self._check_signature(request, body)
            except Rejected as exc:
                return self._refused(request, exc)
            delivery = Delivery(
                channel="http",
                raw=body,
                received_at=utcnow(),
                kind="document",
                remote_addr=request.remote,
                content_type=request.headers.get(hdrs.CONTENT_TYPE),
            )
            del body
            try:
                receipt = await self.pipeline.ingest_soon(delivery)  # as ingest_async, without its coroutine
            except RetryLater:
                return _error(503, "storage unavailable; retry later", headers={hdrs.RETRY_AFTER: "30"})
            finally:
                del delivery
        return _answer(receipt)

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        """Answer 200 only when the store takes writes now; a 503 says why in words ("disk full", ...)."""
        try:
            await asyncio.wait_for(self.pipeline.check(), HEALTH_TIMEOUT)
        except RetryLater as exc:
            return web.json_response({"status": "unavailable", "reason": str(exc)}, status=503, headers=_named())
        except TimeoutError:
            return web.json_response({"status": "unavailable", "reason": "storage unavailable"}, status=503,
                                     headers=_named())
        return web.json_response({"status": "ok"}, headers=_named())

    async def render_metrics(self, request: web.Request) -> web.StreamResponse:
        """Serve the metrics in Prometheus text format (with `--workers N`, the whole group's)."""
        try:
            body, content_type = await self.metrics.scrape(request.headers.get(hdrs.ACCEPT))
        except RetryLater as exc:
            return _error(503, f"metrics unavailable: {exc}", headers={hdrs.RETRY_AFTER: "30"})
        return web.Response(body=body, headers=_named({hdrs.CONTENT_TYPE: content_type}))

    def _check_token(self, request: web.Request) -> None:
        if self.token is None:
            return
        offered = [*request.query.getall("token", []), _basic_password(request)]
        expected = self.token.encode()
        # Compare with every offered value (no early exit) so timing says nothing.
        matches = [hmac.compare_digest(value.encode(), expected) for value in offered if value is not None]
        if not any(matches):
            reason = "wrong token" if matches else "missing token: pass ?token= or the basic-auth password"
            raise Unauthorized(reason)

    def _check_length(self, request: web.Request) -> None:
        length = request.content_length
        if length is not None and length > self.max_size:
            raise TooLarge(f"body larger than {self.max_size} bytes")

    async def _read_body(self, request: web.Request, hold: InflightHold) -> bytes:
        content = request.content
        try:
            if content.is_eof():
                # The whole body came with the headers (a notification is a few KB): take it
                # as it is, without arming a timer or copying it through a buffer.
                whole = content.read_nowait()
                if len(whole) > self.max_size:
                    raise TooLarge(f"body larger than {self.max_size} bytes")
                if not hold.grow(len(whole)):
                    raise Busy(NO_ROOM)
                return whole
        except ConnectionError:
            raise Rejected("connection closed before the whole body arrived", "incomplete") from None
        except HttpProcessingError:
            raise Rejected("malformed request body framing") from None
        except RequestPayloadError as exc:  # e.g. Content-Encoding: gzip over bytes that are not gzip
            raise Rejected(f"request body cannot be decoded: {_first_line(exc)}") from None
        body = bytearray()
        try:
            async with asyncio.timeout(self.body_timeout):
                try:
                    while chunk := await request.content.read(_CHUNK):
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
        except ConnectionError:
            raise Rejected("connection closed before the whole body arrived", "incomplete") from None
        except HttpProcessingError:
            raise Rejected("malformed request body framing") from None
        except RequestPayloadError as exc:
            raise Rejected(f"request body cannot be decoded: {_first_line(exc)}") from None
        return bytes(body)

    def _check_signature(self, request: web.Request, body: bytes) -> None:
        """With a webhook secret, a signature must match; only v1.1 bodies may come unsigned."""
        if self.secret is None:
            return
        signature = request.headers.get(SIGNATURE)
        if signature is None:
            if is_v1(body, charset_of(request.headers.get(hdrs.CONTENT_TYPE))):
                return  # CallFire cannot sign v1.1 notifications; the token protects them.
            raise Unauthorized(f"missing {SIGNATURE}: only v1.1 bodies may be unsigned")
        if not signature_matches(self.secret, body, signature):
            raise Unauthorized(f"{SIGNATURE} does not match the body")

    def _refused(self, request: web.Request, refusal: Rejected) -> web.Response:
        status = next(code for kind, code in STATUS if isinstance(refusal, kind))
        self.metrics.on_rejected("http", refusal.reason)
        args = ("request refused channel=http peer=%s status=%d reason=%s", request.remote or "-", status,
                logfmt(str(refusal)))
        if status == 401:
            self.auth_refusals.note(*args)
        else:
            log.warning(*args)
        headers = {"WWW-Authenticate": 'Basic realm="mailhook"'} if status == 401 else None
        if status == 503:
            headers = {hdrs.RETRY_AFTER: "30"}
        response = _error(status, str(refusal), headers=headers)
        if status in (400, 408, 503):
            response.force_close()  # the rest of the body is not coming, cannot be framed, or is not wanted
        return response

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one request: a notification's POST straight to its handler, the rest through aiohttp's router.

        aiohttp's plain-text errors (404, 405, ...) and crashes become JSON
        without internals here rather than in a middleware, which costs two
        coroutines per request (its own and the one aiohttp adds with any).
        """
        try:
            if (request.method == hdrs.METH_POST and request.rel_url.path_safe == PATH
                    and not request.headers.get(hdrs.EXPECT)):
                # The route aiohttp's router resolves this request to (it matches `path_safe`), without its
                # coroutine and match info; a request with an Expect header goes through aiohttp for its handler.
                return await self.notifications(request)
            return await self.route(request)
        except web.HTTPException as exc:
            # A 417 comes only from an expect handler: aiohttp's own answer, as every expect handler's refusal.
            if exc.status < 400 or exc.status == 417:
                raise
            allow = exc.headers.get(hdrs.ALLOW)
            return _error(exc.status, exc.reason, headers={"Allow": allow} if allow is not None else None)
        except ConnectionError:
            raise  # the client left mid `100 Continue` (no handler writes): aiohttp's own handling
        except Exception:  # the client gets a bare 500; the log gets the traceback
            log.exception("unexpected error handling %s %s", request.method, request.path)
            return _error(500, "internal error")


def _first_line(exc: BaseException) -> str:
    """Return the reason an aiohttp protocol error gives, on one line."""
    if not isinstance(exc, HttpProcessingError) and isinstance(exc.__cause__, HttpProcessingError):
        exc = exc.__cause__  # a RequestPayloadError says only "400, message:"; its cause says why
    text = (exc.message if isinstance(exc, HttpProcessingError) else str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _ProtocolLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's log for requests it refuses itself: one refusal line for a malformed request, not a traceback.

    A hostile client sending broken HTTP would otherwise fill the journal with
    multi-line tracebacks, one per request.
    """

    def __init__(self, logger: logging.Logger, metrics: Metrics) -> None:
        super().__init__(logger, {})
        self.metrics = metrics
        # A client sending one broken request after another gets one line per interval, not one each.
        self.refusals = Summary(logger, logging.WARNING, "malformed HTTP requests refused",
                                http_connection.LOG_INTERVAL)

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, RequestPayloadError):
            return  # a body the door refused already (and logged): aiohttp meets it again draining it
        if isinstance(exc_info, HttpProcessingError) and 400 <= exc_info.code < 500:
            self.metrics.on_rejected("http", "malformed")
            self.refusals.note("request refused channel=http peer=%s status=%d reason=%s",
                               args[0] if args else "-", exc_info.code, _first_line(exc_info))
            return
        self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)


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


def _named(headers: dict[str, str] | None = None) -> CIMultiDict[str]:
    """Return `headers` with `Server: mailhook`, which names the service, not the library and Python behind it."""
    named: CIMultiDict[str] = CIMultiDict(headers or {})
    named[hdrs.SERVER] = http_connection.SERVER
    return named


async def _continue(request: web.Request) -> None:
    """Send the interim `100 Continue`, as aiohttp's default expect handler does."""
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the answer's own bytes are still to come


async def _expect(request: web.Request) -> None:
    """aiohttp's own answer to `Expect` on the GET routes, its 417 naming only mailhook as server."""
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version == HttpVersion11:
        if expect.lower() == "100-continue":
            await _continue(request)
        else:
            raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect}", headers=_named())


def _basic_password(request: web.Request) -> str | None:
    header = request.headers.get(hdrs.AUTHORIZATION)
    if not header:
        return None
    try:
        password: str = BasicAuth.decode(header).password
    except ValueError:
        return None
    return password


def _answer(receipt: Receipt) -> web.StreamResponse:
    if not receipt.error:
        # The common answer, formatted directly: the same bytes json.dumps gives (an int
        # and one of the fixed status words), without building a dict and encoding it.
        return http_connection.Answer(_JSON_FIELDS, _ANSWER % (
            receipt.delivery_id, receipt.status.encode(), receipt.events, receipt.duplicates,
        ))
    body: dict[str, Any] = {
        "delivery_id": receipt.delivery_id,
        "status": receipt.status,
        "events": receipt.events,
        "duplicates": receipt.duplicates,
    }
    body["error"] = _public_reason(receipt.error)
    return web.json_response(body, status=422, headers=_named())


def _public_reason(reason: str) -> str:
    """Keep a quarantine reason precise but never show the text of an unexpected Python exception."""
    if reason.startswith("internal error"):
        return "internal error while reading the document; it is stored for reprocessing"
    return reason


def _error(status: int, message: str, *, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps({"error": message}),
        content_type="application/json",
        headers=_named(headers),
    )


async def start(runtime: Runtime) -> WebhookDoor:
    """Start listening in the running loop and return the door.

    Serves on the socket systemd passed for `http` when there is one
    (socket activation), otherwise binds `http.listen`; raises `ConfigError`
    when it cannot.
    """
    protocol_log = _ProtocolLog(log, runtime.metrics)
    receiver = Receiver(runtime)
    runner = web.AppRunner(
        receiver.app(), access_log=None, handle_signals=False, shutdown_timeout=30.0, logger=protocol_log,
    )
    await runner.setup()
    try:
        listener = await http_connection.listen(runner, runtime.settings.http, runtime.metrics, log, protocol_log,
                                         runtime.sockets.get("http"), receiver.handle)
    except BaseException:
        await runner.cleanup()
        raise
    return WebhookDoor(runner, listener)
