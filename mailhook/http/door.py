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
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import HttpVersion11, StreamReader, hdrs, web
from aiohttp.http_parser import RawRequestMessage
from multidict import CIMultiDictProxy
from yarl import URL

from mailhook.errors import Busy, Rejected, RetryLater, TimedOut, TooLarge, Unauthorized
from mailhook.http import connection as http_connection
from mailhook.http import gate as http_gate
from mailhook.http.intake import Intake, ProtocolLog
from mailhook.http.listener import Listener, listen
from mailhook.http.replies import answer, error, expect_any, named, send_continue
from mailhook.logs import Summary, logfmt
from mailhook.models import Delivery, utcnow

if TYPE_CHECKING:
    from mailhook.server import Runtime

log = logging.getLogger("mailhook.webhook")

PATH = "/notifications"
QUERIED = PATH + "?"  # the start of the target of a POST to PATH with a query
# Seconds `GET /healthz` waits for the writer to prove the database writable.
HEALTH_TIMEOUT = 10.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# Each refusal's answer, mapped once: the first class an exception is an instance of.
STATUS: tuple[tuple[type[Rejected], int], ...] = (
    (Unauthorized, 401), (TooLarge, 413), (TimedOut, 408), (Busy, 503), (Rejected, 400),
)


class WebhookDoor:
    """The running HTTP listener."""

    name = "http"

    def __init__(self, runner: web.AppRunner, listener: Listener) -> None:
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
    # The loop the door serves on (set at the application's startup): each notification's outcome is its future.
    loop: asyncio.AbstractEventLoop

    def __init__(self, runtime: Runtime) -> None:
        self.pipeline = runtime.pipeline
        self.metrics = runtime.metrics
        self.intake = Intake(runtime.settings.http, runtime.settings.smtp.max_message_size)
        # Guessing tokens or signatures gets one line for the first refusal and one per interval summing up the rest.
        self.auth_refusals = Summary(log, logging.WARNING, "HTTP requests refused for a missing or wrong token or "
                                     "signature", http_gate.LOG_INTERVAL)
        # Bytes of bodies still being received count here, with the SMTP door's messages (parsing.inflight_budget).
        self.inflight = runtime.inflight

    def app(self) -> web.Application:
        """Build the aiohttp application: three routes, served through `handle` (which makes errors JSON)."""
        # No middleware: any makes aiohttp run two coroutines per request (it adds its own with it).
        app = web.Application()
        app.router.add_post(PATH, self.notifications, expect_handler=self.expect)
        app.router.add_get("/healthz", self.healthz, allow_head=True, expect_handler=expect_any)
        app.router.add_get("/metrics", self.render_metrics, allow_head=True, expect_handler=expect_any)
        # Every answer names the service (`Server: mailhook`, not the library and Python versions behind
        # it) in its own headers, not in an on_response_prepare signal: that was two coroutines per request.
        app.on_startup.append(self._started)
        app.on_cleanup.append(self._close_logs)
        self.route = http_connection.application_handler(app)
        return app

    async def _started(self, app: web.Application) -> None:
        self.loop = asyncio.get_running_loop()

    async def _close_logs(self, app: web.Application) -> None:
        self.auth_refusals.close()

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """Answer `Expect: 100-continue`: refuse a bad token or a too-large body before it is sent."""
        try:
            self.intake.check_token(request.rel_url, request.headers)
            self.intake.check_length(request.headers)
        except Rejected as exc:
            response = self._refused(request.remote, exc)
            # The client has not sent the body; closing avoids waiting for one.
            response.force_close()
            return response
        if request.version != HttpVersion11:
            return None  # HTTP/1.0 has no interim responses: just read the body
        if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
            return error(417, "only Expect: 100-continue is supported")
        await send_continue(request)
        return None

    def quick(self, message: RawRequestMessage, content: StreamReader,
              remote: str | None) -> Awaitable[web.StreamResponse] | None:
        """Take a notification's POST whose body came whole with its head, before aiohttp makes a `Request` of it.

        Returns its answer to await (`ingest`'s), or None for any other
        request, which aiohttp's path brings to `handle`. These are requests
        `handle` would send straight to `notifications` (a POST without an
        `Expect` header, here also without `Upgrade`), told by their target as
        it came: `/notifications` with or without a query. Any other spelling
        aiohttp's router resolves there too goes to `handle`, answered alike.
        """
        if (message.method != hdrs.METH_POST or not content.is_eof() or message.headers.get(hdrs.EXPECT)
                or message.upgrade):  # aiohttp's finish_response goes on reading after an upgrade it declines
            return None
        target = message.path
        if target != PATH and not target.startswith(QUERIED):
            return None
        return self.ingest(message.url, message.headers, content, remote)

    async def notifications(self, request: web.Request) -> web.StreamResponse:
        """Store one POSTed notification body and say what became of it."""
        return await self.ingest(request.rel_url, request.headers, request.content, request.remote)

    async def ingest(self, url: URL, headers: CIMultiDictProxy[str], content: StreamReader,
                     remote: str | None) -> web.StreamResponse:
        """Store a notification's body (`content`) and say what became of it; a crash is a JSON 500, as in `handle`.

        `url` is the request's target, `headers` and `remote` its headers and
        the client's address.
        """
        try:
            # The body's bytes count in the server's in-flight budget from arrival until the answer.
            with self.inflight.hold() as hold:
                try:
                    self.intake.check_token(url, headers)
                    self.intake.check_length(headers)
                    body = self.intake.whole_body(content, hold)
                    if body is None:
                        body = await self.intake.read_body(content, hold)
                    self.intake.check_signature(headers, body)
                except Rejected as exc:
                    return self._refused(remote, exc)
                delivery = Delivery(
                    channel="http",
                    raw=body,
                    received_at=utcnow(),
                    kind="document",
                    remote_addr=remote,
                    content_type=headers.get(hdrs.CONTENT_TYPE),
                )
                del body
                try:
                    # As ingest_async, without its coroutine; the outcome is made here, on the door's loop,
                    # so the pipeline needs no `get_running_loop` (a getpid system call in Python 3.11).
                    receipt = await self.pipeline.ingest_soon(delivery, self.loop.create_future())
                except RetryLater:
                    return error(503, "storage unavailable; retry later", headers={hdrs.RETRY_AFTER: "30"})
                finally:
                    del delivery
            return answer(receipt)
        except ConnectionError:
            raise  # as in `handle`
        except Exception:  # the client gets a bare 500; the log gets the traceback
            log.exception("unexpected error handling %s %s", hdrs.METH_POST, PATH)
            return error(500, "internal error")

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        """Answer 200 only when the store takes writes now; a 503 says why in words ("disk full", ...)."""
        try:
            await asyncio.wait_for(self.pipeline.check(), HEALTH_TIMEOUT)
        except RetryLater as exc:
            return web.json_response({"status": "unavailable", "reason": str(exc)}, status=503, headers=named())
        except TimeoutError:
            return web.json_response({"status": "unavailable", "reason": "storage unavailable"}, status=503,
                                     headers=named())
        return web.json_response({"status": "ok"}, headers=named())

    async def render_metrics(self, request: web.Request) -> web.StreamResponse:
        """Serve the metrics in Prometheus text format (with `--workers N`, the whole group's)."""
        try:
            body, content_type = await self.metrics.scrape(request.headers.get(hdrs.ACCEPT))
        except RetryLater as exc:
            return error(503, f"metrics unavailable: {exc}", headers={hdrs.RETRY_AFTER: "30"})
        return web.Response(body=body, headers=named({hdrs.CONTENT_TYPE: content_type}))

    def _refused(self, remote: str | None, refusal: Rejected) -> web.Response:
        status = next(code for kind, code in STATUS if isinstance(refusal, kind))
        self.metrics.on_rejected("http", refusal.reason)
        args = ("request refused channel=http peer=%s status=%d reason=%s", remote or "-", status,
                logfmt(str(refusal)))
        if status == 401:
            self.auth_refusals.note(*args)
        else:
            log.warning(*args)
        headers = {"WWW-Authenticate": 'Basic realm="mailhook"'} if status == 401 else None
        if status == 503:
            headers = {hdrs.RETRY_AFTER: "30"}
        response = error(status, str(refusal), headers=headers)
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
            return error(exc.status, exc.reason, headers={"Allow": allow} if allow is not None else None)
        except ConnectionError:
            raise  # the client left mid `100 Continue` (no handler writes): aiohttp's own handling
        except Exception:  # the client gets a bare 500; the log gets the traceback
            log.exception("unexpected error handling %s %s", request.method, request.path)
            return error(500, "internal error")


async def start(runtime: Runtime) -> WebhookDoor:
    """Start listening in the running loop and return the door.

    Serves on the socket systemd passed for `http` when there is one
    (socket activation), otherwise binds `http.listen`; raises `ConfigError`
    when it cannot.
    """
    protocol_log = ProtocolLog(log, runtime.metrics)
    receiver = Receiver(runtime)
    runner = web.AppRunner(
        receiver.app(), access_log=None, handle_signals=False, shutdown_timeout=30.0, logger=protocol_log,
    )
    await runner.setup()
    try:
        listener = await listen(runner, runtime.settings.http, runtime.metrics, log, protocol_log,
                                runtime.sockets.get("http"), receiver.handle, receiver.quick)
    except BaseException:
        await runner.cleanup()
        raise
    return WebhookDoor(runner, listener)
