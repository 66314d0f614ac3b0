"""The private names of aiosmtpd, mail-parser and imapclient that mailhook relies on still mean what they did.

Each library's internals are touched in one module, which lists them in
`PRIVATE_NAMES`; pyproject.toml caps each library below its next release.
When an upgrade renames or changes one, these tests say which, and where
mailhook relies on it, before a single SMTP DATA turns into a 451.
(aiohttp's are checked in tests/test_http_connection.py.)
"""

from __future__ import annotations

import hashlib
import imaplib
import inspect
import logging
from importlib.metadata import version

import imapclient
import pytest
from aiosmtpd.smtp import SMTP
from mailparser.core import MailParser
from smtp_support import client

from mailhook.extract import mail
from mailhook.imap import account
from mailhook.server import Runtime
from mailhook.smtp import session

# The sha256 of aiosmtpd 1.4.6's SMTP.smtp_DATA source, which mailhook/smtp/session.py's `_receive` copies.
SMTP_DATA_SHA256 = "3a33f30d3fd6d02f39c7d78a08288bffea9170525b62e2161568041ae7e018df"
# The sha256 of aiosmtpd 1.4.6's SMTP._handle_client source, which mailhook/smtp/session.py's `_handle_client` copies.
HANDLE_CLIENT_SHA256 = "0e4d096403af6c74c87b2fe722c213884e2140a9388e95feb05aec2f39e05556"


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


def test_the_private_aiosmtpd_names_the_smtp_session_relies_on_still_exist() -> None:
    where = "mailhook/smtp/session.py"
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
        assert callable(getattr(SMTP, name, None)), _advice("aiosmtpd", f"SMTP.{name}", where)
        assert list(inspect.signature(getattr(SMTP, name)).parameters) == parameters, (
            _advice("aiosmtpd", f"SMTP.{name}'s parameters", where))
    attributes = ("_timeout_handle", "_timeout_duration", "_reader", "_writer", "_proxy_timeout",
                  "_enforce_call_limit", "_call_limit_default", "_call_limit_base", "_tls_handshake_okay",
                  "_tls_protocol", "_smtp_methods", "_auth_required")
    for attribute in attributes:
        assert _assigned(SMTP, attribute), _advice("aiosmtpd", f"SMTP.{attribute}", where)
    assert {n.split(".")[1] for n in session.PRIVATE_NAMES} == {*methods, *attributes}


def test_aiosmtpd_data_is_still_the_version_the_session_copies() -> None:
    digest = hashlib.sha256(inspect.getsource(SMTP.smtp_DATA).encode()).hexdigest()
    assert digest == SMTP_DATA_SHA256, (
        _advice("aiosmtpd", "SMTP.smtp_DATA", "mailhook/smtp/session.py (`_receive` is a copy of it)")
        + "; port its change into `_receive`, then record the new digest here")


def test_aiosmtpd_command_loop_is_still_the_version_the_session_copies() -> None:
    digest = hashlib.sha256(inspect.getsource(SMTP._handle_client).encode()).hexdigest()
    assert digest == HANDLE_CLIENT_SHA256, (
        _advice("aiosmtpd", "SMTP._handle_client", "mailhook/smtp/session.py (`_handle_client` is a copy of it)")
        + "; port its change into the copy, then record the new digest here")


def test_the_copied_command_loop_still_writes_aiosmtpd_log_lines_when_its_logger_is_enabled(
    server: Runtime, caplog: pytest.LogCaptureFixture,
) -> None:
    aiosmtpd_log = logging.getLogger("mail.log")
    aiosmtpd_log.setLevel(logging.DEBUG)
    try:
        with caplog.at_level(logging.DEBUG, logger="mail.log"), client(server) as smtp:
            smtp.ehlo("client.example.com")
            assert smtp.mail("a@example.com")[0] == 250
    finally:
        aiosmtpd_log.setLevel(logging.ERROR)
    lines = [r.getMessage() for r in caplog.records if r.name == "mail.log"]
    assert any("_handle_client readline: b'mail FROM:<a@example.com>\\r\\n'" in line for line in lines)
    assert any(line.endswith(">> b'mail FROM:<a@example.com>'") for line in lines)


def test_the_private_mail_parser_names_extraction_relies_on_still_exist() -> None:
    where = "mailhook/extract/mail.py"
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
    assert {n.split(".")[1] for n in mail.PRIVATE_NAMES} == set(expected)


def test_the_private_imapclient_names_the_account_relies_on_still_exist() -> None:
    where = "mailhook/imap/account.py"
    assert "self._imap" in inspect.getsource(imapclient.IMAPClient), _advice("IMAPClient", "IMAPClient._imap", where)
    assert _assigned(imaplib.IMAP4, "file"), (
        f"imaplib (Python) changed IMAP4.file, which {where} relies on (its buffered reader)")
    assert set(account.PRIVATE_NAMES) == {"IMAPClient._imap", "IMAP4.file"}
