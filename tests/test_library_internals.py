"""The private names of aiosmtpd, mail-parser, imapclient and SQLite's WAL index mailhook uses still mean the same.

Each library's internals are touched in one module, which lists them in
`PRIVATE_NAMES`; pyproject.toml caps each library below its next release.
When an upgrade renames or changes one, these tests say which, and where
mailhook relies on it, before a single SMTP DATA turns into a 451.
(aiohttp's names, used in mailhook/http/connection.py, request_loop.py and answer.py, are checked in
tests/test_http_connection.py; the behaviour their overrides must keep, here.)
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import imaplib
import inspect
import logging
import re
import socket
import sqlite3
import ssl
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import imapclient
import pytest
from aiohttp import web
from aiosmtpd.smtp import SMTP
from conftest import StartServer
from mailparser.core import MailParser
from multidict import CIMultiDict
from outside import Certificate
from process_support import wait_until
from smtp_support import client, notification, rows

from mailhook.extract import slow_mail
from mailhook.http import answer as http_answer
from mailhook.http import door as http_door
from mailhook.imap import account
from mailhook.server import Runtime
from mailhook.smtp import body_at_once, command_loop, mail_rcpt, session
from mailhook.smtp import connection as smtp_connection
from mailhook.smtp import reader as smtp_reader
from mailhook.smtp.door import SmtpDoor

# The sha256 of aiosmtpd 1.4.6's SMTP.smtp_DATA source, which mailhook/smtp/session.py's `Connection.smtp_DATA` copies.
SMTP_DATA_SHA256 = "3a33f30d3fd6d02f39c7d78a08288bffea9170525b62e2161568041ae7e018df"
# The sha256 of aiosmtpd 1.4.6's SMTP._handle_client source, which mailhook/smtp/command_loop.py's `_handle_client`
# copies.
HANDLE_CLIENT_SHA256 = "0e4d096403af6c74c87b2fe722c213884e2140a9388e95feb05aec2f39e05556"
# The sha256 of aiosmtpd 1.4.6's SMTP.smtp_MAIL, SMTP._getparams and SMTP.smtp_RCPT sources, whose common cases
# mailhook/smtp/mail_rcpt.py's smtp_MAIL and smtp_RCPT answer themselves (with fastpath.plain_mail_options).
MAIL_AND_RCPT_SHA256 = {
    "smtp_MAIL": "80dd938e7791acfb31bc6eef174b9c1af96d7bac54fe103198ec6ce3440e8043",
    "_getparams": "ca3dd15943d34dccee26fbd87750f880f50f43e41007da98fedcf18c525165da",
    "smtp_RCPT": "a0d6605883c0e608df4fe4376f284be97e36a9b257d6401dd0116ec972c3e0ea",
}
# The sha256 of aiosmtpd 1.4.6's SMTP.connection_made and SMTP.smtp_STARTTLS sources: at STARTTLS they switch the
# session's `transport` and its StreamWriter's (the private SMTP._writer) together, so the session's `sent` writes
# its replies to the transport itself, where aiosmtpd's push writes them through the StreamWriter.
TRANSPORT_SWITCH_SHA256 = {
    "connection_made": "77a45df5065bba343a040b6f6c88de8907b40c80bc03727e7f18ede20d19f4bf",
    "smtp_STARTTLS": "6565289f4131fa132ad3c517e8f2933a490043fc11da08a5be5dd73efc491bec",
}
# The modules of the SMTP session that touch aiosmtpd's or asyncio's private names, each listing those it relies on.
SESSION_MODULES = (smtp_connection, command_loop, mail_rcpt, body_at_once, session)
ASYNCIO_MODULES = (smtp_reader, smtp_connection, command_loop, mail_rcpt, body_at_once)
TEXT_XML = (Path(__file__).resolve().parent.parent / "fixtures" / "seed" / "text-outbound.xml").read_bytes()


def _advice(library: str, name: str, module: str) -> str:
    return (f"{library} {version(library)} changed {name}, which {module} relies on: re-check every override "
            f"listed in its PRIVATE_NAMES before raising the {library} cap in pyproject.toml")


def _assigned(cls: type, attribute: str) -> bool:
    """Say whether some class in `cls`'s MRO sets `self.<attribute>`."""
    for klass in cls.__mro__:
        if klass is object:
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        if f"self.{attribute} =" in source or f"self.{attribute}:" in source:
            return True
    return False


def _where(name: str, modules: tuple[object, ...], names: str) -> str:
    """Name the modules of the SMTP session that list `name` among their private names."""
    return ", ".join(f"{m.__name__.replace('.', '/')}.py" for m in modules if name in getattr(m, names))


def test_the_private_aiosmtpd_names_the_smtp_session_relies_on_still_exist() -> None:
    methods = {
        "_getaddr": ["self", "arg"],
        "_syntax_available": ["self", "method"],
        "_reset_timeout": ["self", "duration"],
        "_timeout_cb": ["self"],
        "_set_post_data_state": ["self"],
        "_call_handler_hook": ["self", "command", "args"],
        "_handle_client": ["self"],
    }
    for name, parameters in methods.items():
        where = _where(f"SMTP.{name}", SESSION_MODULES, "PRIVATE_NAMES")
        assert callable(getattr(SMTP, name, None)), _advice("aiosmtpd", f"SMTP.{name}", where)
        assert list(inspect.signature(getattr(SMTP, name)).parameters) == parameters, (
            _advice("aiosmtpd", f"SMTP.{name}'s parameters", where))
    attributes = ("_timeout_handle", "_timeout_duration", "_reader", "_writer", "_proxy_timeout",
                  "_enforce_call_limit", "_call_limit_default", "_call_limit_base", "_tls_handshake_okay",
                  "_tls_protocol", "_smtp_methods", "_auth_required", "_decode_data")
    for attribute in attributes:
        where = _where(f"SMTP.{attribute}", SESSION_MODULES, "PRIVATE_NAMES")
        assert _assigned(SMTP, attribute), _advice("aiosmtpd", f"SMTP.{attribute}", where)
    assert {n.split(".")[1] for m in SESSION_MODULES for n in m.PRIVATE_NAMES} == {*methods, *attributes}


def test_aiosmtpd_data_is_still_the_version_the_session_copies() -> None:
    digest = hashlib.sha256(inspect.getsource(SMTP.smtp_DATA).encode()).hexdigest()
    assert digest == SMTP_DATA_SHA256, (
        _advice("aiosmtpd", "SMTP.smtp_DATA", "mailhook/smtp/session.py (`Connection.smtp_DATA` is a copy of it)")
        + "; port its change into `Connection.smtp_DATA`, then record the new digest here")


def test_aiosmtpd_command_loop_is_still_the_version_the_session_copies() -> None:
    digest = hashlib.sha256(inspect.getsource(SMTP._handle_client).encode()).hexdigest()
    assert digest == HANDLE_CLIENT_SHA256, (
        _advice("aiosmtpd", "SMTP._handle_client",
                "mailhook/smtp/command_loop.py (`CommandLoop._handle_client` is a copy of it)")
        + "; port its change into the copy, then record the new digest here")


def test_aiosmtpd_mail_and_rcpt_are_still_the_versions_whose_common_case_the_session_answers() -> None:
    for name, expected in MAIL_AND_RCPT_SHA256.items():
        digest = hashlib.sha256(inspect.getsource(getattr(SMTP, name)).encode()).hexdigest()
        assert digest == expected, (
            _advice("aiosmtpd", f"SMTP.{name}",
                    "mailhook/smtp/mail_rcpt.py (smtp_MAIL and smtp_RCPT answer its common case themselves, "
                    "MAIL's parameters read by fastpath.plain_mail_options)")
            + "; check that they still give its envelope and replies for every case tests/test_smtp_mail_params.py "
              "covers, then record the new digest here")


def test_aiosmtpd_still_switches_the_sessions_transport_and_its_writers_together() -> None:
    for name, expected in TRANSPORT_SWITCH_SHA256.items():
        digest = hashlib.sha256(inspect.getsource(getattr(SMTP, name)).encode()).hexdigest()
        assert digest == expected, (
            _advice("aiosmtpd", f"SMTP.{name}", "mailhook/smtp/command_loop.py (`sent` writes to the session's "
                                                "transport, which must stay the one its StreamWriter writes to)")
            + "; check that both still change together at STARTTLS, then record the new digest here")


def test_replies_the_session_writes_itself_after_starttls_go_over_tls_and_the_message_is_stored(
    start_server: StartServer, certificate: Certificate,
) -> None:
    runtime = start_server(smtp={"tls_cert": certificate.cert, "tls_key": certificate.key})
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with client(runtime) as smtp:
        smtp.ehlo()
        smtp.starttls(context=context)
        smtp.ehlo()
        # MAIL's, RCPT's, DATA's 354 and the final 250: the four replies `sent` writes, each over TLS.
        assert smtp.mail("notifications@callfire.com")[0] == 250
        assert smtp.rcpt("ops@example.com")[0] == 250
        code, text = smtp.data(notification(930_000_001))
        assert code == 250 and text.startswith(b"2.0.0 OK delivery "), text
        assert smtp.noop()[0] == 250
        # All of it read through the session's own reader, whose transport aiosmtpd's STARTTLS switched.
        door = next(d for d in runtime.doors if isinstance(d, SmtpDoor))
        (connection,) = list(door.sessions)
        assert isinstance(connection._reader, smtp_reader.SessionReader)
        assert connection._stream_reader is connection._reader is connection.fed
        # Between commands what arrives goes to `command_received`, which feeds that reader what it does not answer.
        wait_until(lambda: connection.data_received == connection.command_received, 10, "the loop waiting")
    assert rows(runtime.settings.storage.db, "SELECT count(*) FROM events") == [(1,)]  # type: ignore[arg-type]


def test_the_private_asyncio_names_the_sessions_reader_relies_on_still_exist() -> None:
    loop = asyncio.new_event_loop()
    try:
        reader = asyncio.StreamReader(limit=5, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, client_connected_cb=lambda r, w: None, loop=loop)
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        transport = loop._make_socket_transport(ours, asyncio.Protocol())  # type: ignore[attr-defined]
        assert type(transport) is command_loop.SOCKET_TRANSPORT  # what `Connection.sent` reads directly
        # The two reads `sent` makes are still what the methods they stand in for return.
        assert (transport._buffer, transport._closing) == (bytearray(), False)
        transport.write(b"x" * (1 << 22))  # the peer is not reading: most of it stays in the write buffer
        assert bool(transport._buffer) == bool(transport.get_write_buffer_size()) is True
        transport.abort()
        assert transport._closing is transport.is_closing() is True
        loop.run_until_complete(asyncio.sleep(0))  # the transport's connection_lost closes its socket
        theirs.close()
        owners = {"StreamReader": reader, "StreamReaderProtocol": protocol, "_SelectorSocketTransport": transport}
        for name in {n for m in ASYNCIO_MODULES for n in m.ASYNCIO_PRIVATE_NAMES}:
            owner, attribute = name.split(".")
            where = _where(name, ASYNCIO_MODULES, "ASYNCIO_PRIVATE_NAMES")
            assert hasattr(owners[owner], attribute), f"Python changed asyncio's {name}, which {where} relies on"
        assert protocol._stream_reader_wr() is reader and protocol._strong_reader is reader
        # The methods the reader overrides, and those it stands in for, are still there to be replaced.
        for method in ("feed_data", "readuntil", "readexactly", "_wait_for_data", "_wakeup_waiter",
                       "_maybe_resume_transport"):
            assert callable(getattr(asyncio.StreamReader, method, None)), f"asyncio changed StreamReader.{method}"
        # A session's data_received is its reader's feed_data until the connection is lost, then the protocol's own.
        assert session.Connection.data_received is asyncio.StreamReaderProtocol.data_received
    finally:
        loop.close()


@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO])
def test_the_copied_command_loop_still_writes_aiosmtpd_log_lines_when_its_logger_is_enabled(
    server: Runtime, caplog: pytest.LogCaptureFixture, level: int,
) -> None:
    aiosmtpd_log = logging.getLogger("mail.log")
    aiosmtpd_log.setLevel(level)
    try:
        with caplog.at_level(level, logger="mail.log"), client(server) as smtp:
            smtp.ehlo("client.example.com")
            assert smtp.mail("a@example.com")[0] == 250
            assert smtp.rcpt("ops@example.com")[0] == 250
    finally:
        aiosmtpd_log.setLevel(logging.ERROR)
    lines = [r.getMessage() for r in caplog.records if r.name == "mail.log"]
    readline = any("_handle_client readline: b'mail FROM:<a@example.com>\\r\\n'" in line for line in lines)
    assert readline == (level == logging.DEBUG)  # the DEBUG line only at DEBUG, the INFO line at both
    assert any(line.endswith(">> b'mail FROM:<a@example.com>'") for line in lines)
    # The session's own MAIL and RCPT write aiosmtpd's INFO lines as its methods do.
    assert any(line.endswith(" sender: a@example.com") for line in lines)
    assert any(line.endswith(" recip: ops@example.com") for line in lines)


def test_the_session_writes_no_aiosmtpd_info_line_when_its_logger_is_at_error(
    server: Runtime, caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="mailhook"), client(server) as smtp:
        smtp.ehlo("client.example.com")
        assert smtp.mail("a@example.com")[0] == 250
        assert smtp.rcpt("ops@example.com")[0] == 250
    assert logging.getLogger("mail.log").getEffectiveLevel() == logging.ERROR
    assert not [r for r in caplog.records if r.name == "mail.log"]


def test_the_private_mail_parser_names_extraction_relies_on_still_exist() -> None:
    where = "mailhook/extract/slow_mail.py"
    expected = {
        "_make_mail": ["self", "complete"],
        "_decode_body_payload": ["self", "part", "charset", "part_index"],
        "_parse_guarded": ["build_message"],
    }
    for name, parameters in expected.items():
        assert callable(getattr(MailParser, name, None)), _advice("mail-parser", f"MailParser.{name}", where)
        assert list(inspect.signature(getattr(MailParser, name)).parameters) == parameters, (
            _advice("mail-parser", f"MailParser.{name}'s parameters", where))
    assert "_make_mail" in inspect.getsource(MailParser), _advice("mail-parser", "calls of _make_mail", where)
    assert "_decode_body_payload" in inspect.getsource(MailParser), (
        _advice("mail-parser", "calls of _decode_body_payload", where))
    assert {n.split(".")[1] for n in slow_mail.PRIVATE_NAMES} == set(expected)


def test_the_private_imapclient_names_the_account_relies_on_still_exist() -> None:
    where = "mailhook/imap/account.py"
    assert "self._imap" in inspect.getsource(imapclient.IMAPClient), _advice("IMAPClient", "IMAPClient._imap", where)
    assert _assigned(imaplib.IMAP4, "file"), (
        f"imaplib (Python) changed IMAP4.file, which {where} relies on (its buffered reader)")
    assert set(account.PRIVATE_NAMES) == {"IMAPClient._imap", "IMAP4.file"}


# --- aiohttp: mailhook/http/connection.py resumes reading only when aiohttp paused it -------------------


def _http_door(start_server: StartServer) -> tuple[Runtime, str]:
    runtime = start_server(http={"listen": "127.0.0.1:0"}, smtp={"listen": ""})
    door = next(d for d in runtime.doors if d.name == "http")
    return runtime, door.addresses()[0]


def test_a_body_large_enough_for_aiohttp_to_pause_reading_arrives_whole_and_the_connection_serves_on(
    start_server: StartServer,
) -> None:
    runtime, address = _http_door(start_server)
    # Far over aiohttp's 128 KiB high-water mark: reading pauses, and each read must resume it.
    body = TEXT_XML + b"<!--" + b"x" * 3_000_000 + b"-->\n"
    with httpx.Client(timeout=60) as client:  # one kept-alive connection for both
        large = client.post(f"http://{address}/notifications", content=body)
        small = client.post(f"http://{address}/notifications", content=TEXT_XML)
    assert large.status_code in (200, 422) and small.status_code == 200, (large.text, small.text)
    conn = sqlite3.connect(runtime.writer.store.path)
    try:
        lengths = [row[0] for row in conn.execute("SELECT length(raw) FROM deliveries ORDER BY id")]
    finally:
        conn.close()
    assert lengths == [len(body), len(TEXT_XML)]


def test_pipelined_requests_past_aiohttps_message_queue_are_all_answered_in_order(start_server: StartServer) -> None:
    _, address = _http_door(start_server)
    host, _, port = address.rpartition(":")
    count = 3 * 32  # aiohttp queues 32 parsed requests, then pauses reading until start() drains them
    requests = b"".join(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" for _ in range(count - 1))
    requests += b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(requests)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", reply)  # each body ends without a line break
    assert statuses == [b"200"] * (count - 1) + [b"404"]


def test_pipelined_requests_after_a_body_sent_apart_from_its_head_are_all_answered(
    start_server: StartServer,
) -> None:
    # A body that arrives after its request is taken up leaves aiohttp's parser counting one queued
    # request more than there are: with 31 queued it holds the rest back, and only a parse of b"" after
    # a body is read (resume_reading) takes them up while no more bytes come.
    _, address = _http_door(start_server)
    host, _, port = address.rpartition(":")
    post = b"POST /notifications HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(TEXT_XML)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        answers = _Answers(sock)
        sock.sendall(post)
        time.sleep(0.2)  # the request is taken up before its body comes
        sock.sendall(TEXT_XML)
        assert answers.next().startswith(b"HTTP/1.1 200 ")
        sock.sendall((post + TEXT_XML) * 34)
        statuses = [answers.next()[:13] for _ in range(34)]
    assert statuses == [b"HTTP/1.1 200 "] * 34


# --- aiohttp: mailhook/http/connection.py serves every request through the door's own handler -------------


def test_every_request_reaches_the_doors_handler_which_routes_the_rest_through_aiohttp(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The door's handler replaces the server's request_handler (Application._handle) on each connection and
    # passes what it does not route itself to Application._handle; only it answers a crash with this JSON
    # (aiohttp's own answer says "internal server error" and closes the connection).
    runtime, address = _http_door(start_server)

    def crash() -> None:
        raise RuntimeError("crash")

    monkeypatch.setattr(runtime.pipeline, "check", crash)
    with httpx.Client(timeout=30) as client:
        crashed = client.get(f"http://{address}/healthz")
        missing = client.get(f"http://{address}/nowhere")
        stored = client.post(f"http://{address}/notifications", content=TEXT_XML)
    advice = _advice("aiohttp", "Server.request_handler or Application._handle", "mailhook/http/connection.py")
    assert (crashed.status_code, crashed.json()) == (500, {"error": "internal error"}), advice
    assert (missing.status_code, missing.json()) == (404, {"error": "Not Found"}), advice
    assert stored.status_code == 200, advice


def test_the_route_the_door_takes_itself_is_the_one_aiohttps_router_has_for_it(start_server: StartServer) -> None:
    # Receiver.handle sends a POST whose path_safe is exactly PATH to `notifications` without the router:
    # aiohttp's router must have that route as a plain resource (matched by equality with path_safe) and no other.
    runtime, _ = _http_door(start_server)
    receiver = http_door.Receiver(runtime)
    app = receiver.app()
    routes = [(route.method, route.resource) for route in app.router.routes()
              if route.resource is not None and route.resource.canonical == http_door.PATH]
    assert len(routes) == 1, routes
    method, resource = routes[0]
    assert method == "POST" and type(resource) is web.PlainResource, _advice(
        "aiohttp", "its router's plain resources", "mailhook/http/door.py (Receiver.handle)")
    assert resource.raw_match(http_door.PATH) and not resource.raw_match(http_door.PATH + "/")
    assert not app.router._matched_sub_app_resources  # nothing resolved before the path


# Each request's version and Connection header, with what the answer must say about keeping the connection.
_KEEP_ALIVE_CASES = (b"HTTP/1.1\r\n", b"HTTP/1.1\r\nConnection: close\r\n", b"HTTP/1.0\r\n",
                     b"HTTP/1.0\r\nConnection: keep-alive\r\n")


async def _answers_of(route: str) -> list[bytes]:
    """Serve two routes with plain aiohttp; return the raw answers to one POST per keep-alive case on `route`."""
    body = b'{"delivery_id": 7, "status": "stored", "events": 1, "duplicates": 0}'
    headers = CIMultiDict({"Content-Type": "application/json; charset=utf-8", "Server": "mailhook"})

    async def aiohttps(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, headers=headers)

    async def mailhooks(request: web.Request) -> web.StreamResponse:
        return http_answer.Answer(b"Content-Type: application/json; charset=utf-8\r\nServer: mailhook\r\n", body)

    app = web.Application()
    app.router.add_post("/aiohttp", aiohttps)
    app.router.add_post("/mailhook", mailhooks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None
    port = site._server.sockets[0].getsockname()[1]
    answers = []
    try:
        for head in _KEEP_ALIVE_CASES:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST " + route.encode() + b" " + head + b"Host: x\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
            answer = await reader.readuntil(b"\r\n\r\n")
            answer += await reader.readexactly(len(body))
            answers.append(re.sub(rb"\r\nDate: [^\r]+", b"\r\nDate: -", answer))
            writer.close()
    finally:
        await runner.cleanup()
    return answers


def test_the_doors_200_answer_is_byte_for_byte_what_aiohttps_response_writes() -> None:
    # http_answer.Answer formats the head prepare() would build and writes it with the body in one go.
    ours, theirs = asyncio.run(_answers_of("/mailhook")), asyncio.run(_answers_of("/aiohttp"))
    assert ours == theirs, _advice("aiohttp", "what StreamResponse.prepare writes", "mailhook/http/answer.py "
                                   "(Answer)")
    assert [b"Connection: " in answer for answer in ours] == [False, True, False, True]


class _Answers:
    """HTTP answers with a Content-Length body, read one by one from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.data = b""

    def next(self) -> bytes:
        """Return the next whole answer."""
        while b"\r\n\r\n" not in self.data:
            self._more()
        head, _, rest = self.data.partition(b"\r\n\r\n")
        found = re.search(rb"(?i)content-length: *(\d+)", head)
        assert found is not None, head
        while len(rest) < int(found.group(1)):
            self._more()
            head, _, rest = self.data.partition(b"\r\n\r\n")
        end = len(head) + 4 + int(found.group(1))
        answer, self.data = self.data[:end], self.data[end:]
        return answer

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, "the server closed the connection"
        self.data += chunk


# --- aiohttp: mailhook/http/request_loop.py handles each request in its connection's task --------------------

# The sha256 of aiohttp 3.14.5's RequestHandler.start source, which mailhook/http/request_loop.py's
# `RequestLoop.start` copies, awaiting each request's handling where aiohttp runs it in a Task of its own.
REQUEST_HANDLER_START_SHA256 = "2e565fd40c8e04fb3afb481d5ba52691a61d28396573b4b8a4cf3b168782288e"


def test_aiohttps_request_loop_is_still_the_version_the_connection_copies() -> None:
    from aiohttp.web_protocol import RequestHandler

    digest = hashlib.sha256(inspect.getsource(RequestHandler.start).encode()).hexdigest()
    assert digest == REQUEST_HANDLER_START_SHA256, (
        _advice("aiohttp", "RequestHandler.start",
                "mailhook/http/request_loop.py (`RequestLoop.start` is a copy of it)")
        + "; port its change into the copy, then record the new digest here")


async def _served_in_one_task() -> tuple[list[bool], list[bytes], bool, bool]:
    """Serve through `listen`: three kept-alive requests, a fourth whose client leaves mid handler, then the rest."""
    from mailhook.config.settings import HttpSettings
    from mailhook.http import listener as http_listener
    from mailhook.metrics import Metrics

    tasks: list[bool] = []
    release, started, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        tasks.append(asyncio.current_task() is request.task)
        if request.path == "/slow":
            started.set()
            await release.wait()  # the client is gone meanwhile: the handler still runs to its end
            finished.set()
        body = await request.read()
        return web.Response(body=b"%d" % len(body))

    runner = web.AppRunner(web.Application(), access_log=None, handle_signals=False)
    await runner.setup()
    log = logging.getLogger("mailhook.test")
    listener = await http_listener.listen(runner, HttpSettings(listen="127.0.0.1:0"), Metrics(), log, log,
                                         handler=handler)
    host, _, port = listener.addresses()[0].rpartition(":")
    answers = []
    try:
        reader, writer = await asyncio.open_connection(host, int(port))
        for body in (b"", b"ab", b"abcd"):
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            head = await reader.readuntil(b"\r\n\r\n")
            answers.append(head.split(b"\r\n")[0] + b" " + await reader.readexactly(1))
        _, gone = await asyncio.open_connection(host, int(port))
        gone.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        await started.wait()
        gone.transport.abort()
        await asyncio.sleep(0.1)
        waiting = not finished.is_set()  # held by `release`, not ended by the lost connection
        release.set()
        await asyncio.wait_for(finished.wait(), 10)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answers.append((await reader.read()).split(b"\r\n")[0])
        writer.close()
    finally:
        listener.close()
        await runner.cleanup()
    return tasks, answers, waiting, finished.is_set()


def test_each_request_is_handled_in_its_connections_task_and_a_client_leaving_does_not_cancel_it() -> None:
    # Connection.start awaits each request's handling itself (aiohttp's start runs it in a Task of its own):
    # kept-alive requests are answered in order, each body read, and a handler whose client vanished runs on.
    tasks, answers, waiting, finished = asyncio.run(_served_in_one_task())
    advice = _advice("aiohttp", "RequestHandler.start", "mailhook/http/request_loop.py (RequestLoop.start)")
    assert tasks == [True] * 5, advice
    assert answers == [b"HTTP/1.1 200 OK 0", b"HTTP/1.1 200 OK 2", b"HTTP/1.1 200 OK 4", b"HTTP/1.1 200 OK"], advice
    assert waiting and finished, advice


# The sha256 of aiohttp 3.14.5's RequestHandler._handle_request and StreamWriter.drain sources, whose bookkeeping
# (a request in progress for shutdown, a 500 for a crash; draining a paused transport) Connection._quickly mirrors
# for a request the door takes itself.
HANDLE_REQUEST_SHA256 = "a88a34ee65a2714c6b392d23963ba9a80e7d50d4889905cd949a94d479102d8f"
DRAIN_SHA256 = "3c8995114497133d95b40c25757fd58aaec41b6384f3ba9c7d2986ed68eab7d0"


def test_aiohttps_request_handling_is_still_the_version_the_connections_quick_path_mirrors() -> None:
    from aiohttp.http_writer import StreamWriter
    from aiohttp.web_protocol import RequestHandler

    for function, digest in ((RequestHandler._handle_request, HANDLE_REQUEST_SHA256),
                             (StreamWriter.drain, DRAIN_SHA256)):
        assert hashlib.sha256(inspect.getsource(function).encode()).hexdigest() == digest, (
            _advice("aiohttp", function.__qualname__, "mailhook/http/request_loop.py (`RequestLoop._quickly`)")
            + "; port its change into _quickly, then record the new digest here")


class _Quick:
    """A door's quick path for `/quick` targets: each request's `X-Answer` header says what it answers."""

    def __init__(self) -> None:
        self.release, self.started, self.finished = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self.tasks: list[bool] = []

    def __call__(self, message: Any, payload: Any, remote: str | None) -> Any:
        if not message.path.startswith("/quick") or not payload.is_eof():
            return None
        return self.answer(message, payload.read_nowait(), remote)

    async def answer(self, message: Any, body: bytes, remote: str | None) -> web.StreamResponse:
        self.tasks.append(asyncio.current_task() is not None and remote == "127.0.0.1")
        kind = message.headers.get("X-Answer", "200")
        if kind == "slow":
            self.started.set()
            await self.release.wait()  # the client may be gone meanwhile: the handling still runs to its end
            self.finished.set()
        elif kind == "crash":
            raise RuntimeError("internal-detail")
        elif kind == "422":
            return web.json_response({"quick": len(body)}, status=422, headers={"Server": "mailhook"})
        size = int(message.headers.get("X-Size", "0"))
        return http_answer.Answer(b"Content-Type: application/json; charset=utf-8\r\nServer: mailhook\r\n",
                                      b"%d" % len(body) + b" " * size)


async def _aiohttps(request: web.Request) -> web.StreamResponse:
    """aiohttp's path: the answers _Quick gives, by aiohttp's Response (or a crash, as _Quick's)."""
    body = await request.read()
    kind = request.headers.get("X-Answer", "200")
    if kind == "crash":
        raise RuntimeError("internal-detail")
    if kind == "422":
        return web.json_response({"quick": len(body)}, status=422, headers={"Server": "mailhook"})
    size = int(request.headers.get("X-Size", "0"))
    headers = CIMultiDict({"Content-Type": "application/json; charset=utf-8", "Server": "mailhook"})
    return web.Response(body=b"%d" % len(body) + b" " * size, headers=headers)


async def _quick_server(quick: _Quick) -> tuple[web.AppRunner, Any, str, int]:
    """Serve through `listen` with `quick`: `/quick` targets taken by it, the rest by `_aiohttps`."""
    from mailhook.config.settings import HttpSettings
    from mailhook.http import listener as http_listener
    from mailhook.metrics import Metrics

    runner = web.AppRunner(web.Application(), access_log=None, handle_signals=False)
    await runner.setup()
    log = logging.getLogger("mailhook.test")
    listener = await http_listener.listen(runner, HttpSettings(listen="127.0.0.1:0"), Metrics(), log, log,
                                         handler=_aiohttps, quick=quick)
    host, _, port = listener.addresses()[0].rpartition(":")
    return runner, listener, host, int(port)


def _post(target: bytes, head: bytes = b"HTTP/1.1\r\n", body: bytes = b"{}", fields: bytes = b"") -> bytes:
    return b"POST %s %sHost: x\r\n%sContent-Length: %d\r\n\r\n%s" % (target, head, fields, len(body), body)


async def _read_answers(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    answers = []
    for _ in range(count):
        head = await reader.readuntil(b"\r\n\r\n")
        found = re.search(rb"(?i)content-length: *(\d+)", head)
        assert found is not None, head
        answer = head + await reader.readexactly(int(found.group(1)))
        answers.append(re.sub(rb"\r\nDate: [^\r]+", b"\r\nDate: -", answer))
    return answers


async def _quick_and_aiohttps_answers() -> tuple[list[bytes], list[bytes], list[bool]]:
    """One connection per keep-alive case and kind of answer, on `/quick` then `/aiohttp`; each raw answer (Date
    masked) followed by b"closed" or b"kept" for what the server did with the connection after it."""
    quick = _Quick()
    runner, listener, host, port = await _quick_server(quick)
    answers: dict[bytes, list[bytes]] = {b"/quick": [], b"/aiohttp": []}
    try:
        for target, found in answers.items():
            for head in _KEEP_ALIVE_CASES:
                for fields in (b"", b"X-Answer: 422\r\n", b"X-Answer: crash\r\n"):
                    reader, writer = await asyncio.open_connection(host, port)
                    writer.write(_post(target, head, b"abc", fields))
                    [answer] = await _read_answers(reader, 1)
                    try:
                        after = b"closed" if await asyncio.wait_for(reader.read(), 0.3) == b"" else b"more"
                    except TimeoutError:
                        after = b"kept"
                    found.append(answer + b" " + after)
                    writer.close()
    finally:
        listener.close()
        await runner.cleanup()
    return answers[b"/quick"], answers[b"/aiohttp"], quick.tasks


def test_an_answer_the_door_takes_itself_is_byte_for_byte_aiohttps_for_every_keep_alive_case_and_kind() -> None:
    # RequestLoop._quickly writes a 200 Answer itself, and hands a 422 or a crash (aiohttp's 500) to aiohttp's
    # finish_response with a Request made for it: each exactly as aiohttp's own path answers it.
    quick, theirs, tasks = asyncio.run(_quick_and_aiohttps_answers())
    advice = _advice("aiohttp", "RequestHandler._handle_request or finish_response", "mailhook/http/request_loop.py "
                     "(RequestLoop._quickly)")
    assert quick == theirs and len(quick) == 3 * len(_KEEP_ALIVE_CASES), advice
    assert [answer.split(b" ", 2)[1] for answer in quick[:3]] == [b"200", b"422", b"500"], quick
    assert [answer.endswith(b" kept") for answer in quick[::3]] == [True, False, False, True], quick
    assert tasks == [True] * (3 * len(_KEEP_ALIVE_CASES)), "the quick path ran outside a task or without the address"


async def _pipelined(count: int, size: int) -> list[bytes]:
    """Send `count` requests in one write, alternating the quick path and aiohttp's, then read every answer."""
    quick = _Quick()
    runner, listener, host, port = await _quick_server(quick)
    try:
        reader, writer = await asyncio.open_connection(host, port)
        fields = b"X-Size: %d\r\n" % size
        writer.write(b"".join(_post(b"/quick" if n % 2 else b"/aiohttp", body=b"x" * n, fields=fields)
                              for n in range(count)))
        await asyncio.sleep(0.5 if size else 0)  # with large answers, the server's writes pause meanwhile
        answers = await asyncio.wait_for(_read_answers(reader, count), 60)
        writer.close()
    finally:
        listener.close()
        await runner.cleanup()
    return [answer.rpartition(b"\r\n\r\n")[2].rstrip() for answer in answers]


@pytest.mark.parametrize("size", [0, 256 * 1024], ids=["small-answers", "answers-past-the-send-buffer"])
def test_pipelined_requests_the_door_takes_itself_are_answered_in_order_among_aiohttps(size: int) -> None:
    # With large answers and a client that reads only later, the transport pauses writing: the quick path
    # drains it before the next request, as aiohttp's write_eof does.
    count = 40
    assert asyncio.run(_pipelined(count, size)) == [b"%d" % n for n in range(count)]


async def _quick_client_gone_and_shutdown() -> tuple[bool, bool, bytes]:
    """A quick request whose client leaves mid handling; then one in flight while the server shuts down."""
    quick = _Quick()
    runner, listener, host, port = await _quick_server(quick)
    try:
        _, gone = await asyncio.open_connection(host, port)
        gone.write(_post(b"/quick", fields=b"X-Answer: slow\r\n"))
        await asyncio.wait_for(quick.started.wait(), 10)
        gone.transport.abort()
        gone.close()
        await asyncio.sleep(0.1)
        waiting = not quick.finished.is_set()  # held by `release`, not ended by the lost connection
        quick.release.set()
        await asyncio.wait_for(quick.finished.wait(), 10)
        finished = quick.finished.is_set()
        quick.started.clear()
        quick.release.clear()
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(_post(b"/quick", fields=b"X-Answer: slow\r\n"))
        await asyncio.wait_for(quick.started.wait(), 10)
        listener.close()
        cleanup = asyncio.ensure_future(runner.cleanup())  # waits for the request in progress
        await asyncio.sleep(0.2)
        quick.release.set()
        [answer] = await asyncio.wait_for(_read_answers(reader, 1), 10)
        await asyncio.wait_for(cleanup, 30)
        writer.close()
    finally:
        listener.close()
        await runner.cleanup()
    return waiting, finished, answer


def test_a_request_the_door_takes_itself_runs_to_its_end_when_its_client_leaves_and_is_answered_at_shutdown() -> None:
    waiting, finished, answer = asyncio.run(_quick_client_gone_and_shutdown())
    advice = _advice("aiohttp", "RequestHandler.shutdown or _handle_request", "mailhook/http/request_loop.py "
                     "(RequestLoop._quickly)")
    assert waiting and finished, advice
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\n2"), advice


def test_the_doors_200_answer_reads_as_a_fresh_stream_response_before_and_after_it_is_written() -> None:
    # Answer keeps what StreamResponse.__init__ would set as class attributes; aiohttp's server reads its
    # keep_alive, and anything else may read the rest, as of a fresh 200 response.
    ours = http_answer.Answer(b"Server: mailhook\r\n", b"{}")
    theirs = web.StreamResponse()
    names = ("status", "reason", "keep_alive", "prepared", "chunked", "compression", "body_length", "task")
    advice = _advice("aiohttp", "StreamResponse.__init__", "mailhook/http/answer.py (Answer)")
    assert [getattr(ours, name) for name in names] == [getattr(theirs, name) for name in names], advice
    assert dict(ours.headers) == dict(theirs.headers) == {} and len(ours) == len(theirs) == 0, advice
    # Written, it is what aiohttp's Response writes: test_the_doors_200_answer_is_byte_for_byte_...


def test_the_sqlite3_modules_own_file_leads_to_the_sqlite_it_uses_and_its_load_extension() -> None:
    # mailhook/store/walbuf.py loads its extension through SQLite's C API, looked up from _sqlite3's file, where
    # this Python's sqlite3 has no enable_load_extension (pyenv builds it without).
    import _sqlite3

    sqlite = ctypes.CDLL(_sqlite3.__file__)
    sqlite.sqlite3_libversion.restype = ctypes.c_char_p
    advice = "_sqlite3.__file__ no longer leads to SQLite's C API: mailhook/store/walbuf.py (_load_without_the_module)"
    assert sqlite.sqlite3_libversion().decode() == sqlite3.sqlite_version, advice
    assert all(hasattr(sqlite, name) for name in (
        "sqlite3_open_v2", "sqlite3_enable_load_extension", "sqlite3_load_extension", "sqlite3_free", "sqlite3_close"
    )), advice


def test_sqlites_wal_index_still_holds_the_frames_and_the_copied_frames_where_the_checkpointer_reads_them(
    tmp_path: Path,
) -> None:
    from mailhook.store.wal_index import WalIndex

    db = tmp_path / "w.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA page_size=2048")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (x)")
    assert WalIndex.open(db, 4096) is None  # not the file's page size: not read as a WAL index
    index = WalIndex.open(db, 2048)
    assert index is not None, f"SQLite {sqlite3.sqlite_version}'s WAL index no longer starts as walformat.html says"
    try:
        conn.executemany("INSERT INTO t VALUES (?)", [(b"x" * 1500,) for _ in range(40)])
        waiting = index.pending()
        assert waiting == index.frames() > 20
        # What a checkpoint reports, from SQLite's own counts: the WAL's frames, and how many it copied back.
        busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert (busy, frames, copied) == (0, waiting, waiting)
        assert (index.frames(), index.backfilled(), index.pending()) == (frames, copied, 0)
        conn.execute("INSERT INTO t VALUES (1)")  # begins the WAL anew
        assert index.backfilled() == 0 and 0 < index.frames() == index.pending() < frames
    finally:
        conn.close()


def test_no_wal_index_is_read_where_the_database_has_none(tmp_path: Path) -> None:
    from mailhook.store.wal_index import WalIndex

    db = tmp_path / "r.db"
    conn = sqlite3.connect(db)  # a rollback journal, as SQLite makes a file by default: no -shm
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    assert not Path(f"{db}-shm").exists()
    assert WalIndex.open(db, 4096) is None
    conn.close()
