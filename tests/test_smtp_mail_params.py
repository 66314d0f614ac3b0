"""MAIL with ESMTP parameters (SIZE, BODY, SMTPUTF8, others): the door answers and fills the envelope as aiosmtpd.

The door answers MAIL's common case itself (mailhook/smtp/mail_rcpt.py); every
case here is sent over real sessions twice, once to the door as it runs and
once with that shortcut turned off, so that aiosmtpd's own smtp_MAIL answers,
and the replies (bytes on the wire) and the envelopes must be the same.
"""

from __future__ import annotations

import logging
import smtplib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import StartServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smtp_support import client, notification, raw_session, rows, say

from mailhook.server import Runtime
from mailhook.smtp.door import SmtpDoor
from mailhook.smtp.session import Connection

LIMIT = 50_000  # smtp.max_message_size of the door under test
FROM = "MAIL FROM:<notifications@callfire.com>"
EHLO = "EHLO c.test"

CASES = [
    # What clients send: smtplib size=, aiosmtplib size= BODY=8BITMIME, Postfix SIZE= BODY=8BITMIME, SMTPUTF8.
    [EHLO, f"{FROM} size=2200"],
    [EHLO, f"{FROM} size=2200 BODY=8BITMIME"],
    [EHLO, f"{FROM} SIZE=2200"],
    [EHLO, f"{FROM} SIZE=2200 BODY=8BITMIME"],
    [EHLO, f"{FROM} size=2200 body=8bitmime smtputf8"],
    [EHLO, f"{FROM} BODY=7BIT"],
    [EHLO, f"{FROM} SMTPUTF8"],
    [EHLO, f"{FROM} SMTPUTF8 BODY=8BITMIME SIZE=1"],
    [EHLO, f"{FROM}\tSIZE=10 \t BODY=8BITMIME"],
    [EHLO, f"{FROM}SIZE=10"],
    [EHLO, f"{FROM} SIZE=10\x0bBODY=8BITMIME"],
    # SIZE at, past and around the limit, and malformed.
    [EHLO, f"{FROM} SIZE=0"],
    [EHLO, f"{FROM} SIZE={LIMIT}"],
    [EHLO, f"{FROM} SIZE={LIMIT + 1}"],
    [EHLO, f"{FROM} SIZE=0000000000000000000000000000000000001"],
    [EHLO, f"{FROM} SIZE=99999999999999999999999999999999999999"],
    [EHLO, f"{FROM} SIZE="],
    [EHLO, f"{FROM} SIZE"],
    [EHLO, f"{FROM} SIZE=abc"],
    [EHLO, f"{FROM} SIZE=-1"],
    [EHLO, f"{FROM} SIZE=1.5"],
    [EHLO, f"{FROM} SIZE=1=2"],
    [EHLO, f"{FROM} SIZE=\u00b2"],  # a digit to str.isdigit() that int() refuses
    # BODY and SMTPUTF8 with values aiosmtpd refuses.
    [EHLO, f"{FROM} BODY=BINARYMIME"],
    [EHLO, f"{FROM} BODY="],
    [EHLO, f"{FROM} BODY"],
    [EHLO, f"{FROM} SMTPUTF8=YES"],
    # Parameters aiosmtpd does not know, alone or beside known ones (SIZE is checked first).
    [EHLO, f"{FROM} X=1"],
    [EHLO, f"{FROM} RET=HDRS ENVID=abc"],
    [EHLO, f"{FROM} AUTH=<>"],
    [EHLO, f"{FROM} SIZE=10 X=1"],
    [EHLO, f"{FROM} X=1 SIZE={LIMIT + 1}"],
    [EHLO, f"{FROM} =1"],
    [EHLO, f"{FROM} SIZE=10 \u00c9=1"],
    # Each parameter twice: aiosmtpd keeps the last.
    [EHLO, f"{FROM} SIZE=10 SIZE=20"],
    [EHLO, f"{FROM} SIZE=10 SIZE=x"],
    [EHLO, f"{FROM} SIZE=x SIZE=10"],
    [EHLO, f"{FROM} SIZE={LIMIT + 1} SIZE=10"],
    [EHLO, f"{FROM} BODY=8BITMIME BODY=7BIT"],
    [EHLO, f"{FROM} BODY=X BODY=7BIT"],
    [EHLO, f"{FROM} SMTPUTF8 SMTPUTF8"],
    # Around the transaction: no greeting, HELO (no parameters allowed), nested MAIL, odd senders.
    ["MAIL FROM:<a@example.com> SIZE=10"],
    ["HELO c.test", "MAIL FROM:<a@example.com> SIZE=10"],
    ["HELO c.test", "MAIL FROM:<a@example.com>"],
    [EHLO, f"{FROM} SIZE=10", f"{FROM} SIZE=10"],
    [EHLO, "MAIL FROM:<> SIZE=10"],
    [EHLO, "MAIL FROM:<a@example.com> (comment) SIZE=10"],
    [EHLO, "MAIL FROM:<a\x01@example.com> SIZE=10"],
    [EHLO, "MAIL FROM: <a@example.com> SIZE=10 BODY=8BITMIME"],
    [EHLO, "mail from:<a@example.com> size=10"],
    # RCPT refuses every parameter.
    [EHLO, f"{FROM} SIZE=10", "RCPT TO:<ops@example.com> SIZE=10"],
    [EHLO, f"{FROM} SIZE=10", "RCPT TO:<ops@example.com>"],
]


@pytest.fixture
def door(start_server: StartServer) -> Runtime:
    """A running server whose SMTP door takes messages up to `LIMIT` bytes."""
    return start_server(smtp={"max_message_size": LIMIT})


@pytest.fixture
def general_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Turn off the door's own MAIL and RCPT in new sessions: each then goes through aiosmtpd's method."""
    with monkeypatch.context() as patch:
        yield patch


def _talk(runtime: Runtime, commands: list[str]) -> tuple[list[bytes], tuple[Any, ...]]:
    """Send `commands` in a new session; return every reply's bytes and the envelope the session then holds."""
    door = next(d for d in runtime.doors if isinstance(d, SmtpDoor))
    sock, f = raw_session(runtime)
    with sock, f:
        replies = [say(f, command.encode("utf-8")) for command in commands]
        # A copy first (made in one step under the GIL): the server's thread may be releasing an earlier session.
        (session,) = [s for s in tuple(door.sessions) if s.session and s.session.peer == sock.getsockname()]
        envelope = session.envelope
        assert envelope is not None
        held = (envelope.mail_from, list(envelope.mail_options), envelope.smtp_utf8, list(envelope.rcpt_tos),
                list(envelope.rcpt_options))
        say(f, b"QUIT")
    return replies, held


def _both(runtime: Runtime, patch: pytest.MonkeyPatch, commands: list[str]) -> tuple[Any, Any]:
    """Return what the door answers to `commands`, and what aiosmtpd's own MAIL and RCPT answer."""
    ours = _talk(runtime, commands)
    patch.setattr(Connection, "_plain_address", lambda self, arg, keyword: None)
    try:
        theirs = _talk(runtime, commands)
    finally:
        patch.undo()
    return ours, theirs


@pytest.mark.parametrize("commands", CASES)
def test_mail_with_parameters_is_answered_and_kept_in_the_envelope_as_aiosmtpd_does(
    door: Runtime, general_path: pytest.MonkeyPatch, commands: list[str],
) -> None:
    ours, theirs = _both(door, general_path, commands)
    assert ours == theirs


def test_the_common_parameters_are_taken_into_the_envelope(door: Runtime) -> None:
    replies, envelope = _talk(door, [EHLO, f"{FROM} size=2200 BODY=8bitmime SMTPUTF8"])
    assert replies[1] == b"250 2.1.0 OK\r\n"
    assert envelope[:3] == ("notifications@callfire.com", ["SIZE=2200", "BODY=8BITMIME", "SMTPUTF8"], True)


def test_a_size_at_the_limit_is_taken_and_one_byte_more_refused(door: Runtime) -> None:
    sock, f = raw_session(door)
    with sock, f:
        assert say(f, b"EHLO c.test").startswith(b"250 ")
        assert say(f, f"{FROM} SIZE={LIMIT + 1}".encode()) == (
            b"552 Error: message size exceeds fixed maximum message size\r\n")
        assert say(f, f"{FROM} SIZE={LIMIT}".encode()) == b"250 2.1.0 OK\r\n"
        assert say(f, b"RCPT TO:<ops@example.com>") == b"250 2.1.5 OK\r\n"
        assert say(f, b"DATA").startswith(b"354 ")
        f.write(notification(1).replace(b"\n", b"\r\n") + b".\r\n")
        f.flush()
        assert f.readline().startswith(b"250 2.0.0 OK delivery ")
    assert len(rows(door.settings.storage.db, "SELECT id FROM deliveries")) == 1


def test_smtplib_sends_size_and_its_message_is_stored(door: Runtime) -> None:
    with client(door) as smtp:
        smtp.ehlo("c.test")
        assert smtp.has_extn("size")  # so sendmail adds SIZE= to MAIL
        assert smtp.sendmail("notifications@callfire.com", ["ops@example.com"], notification(2)) == {}
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            smtp.sendmail("notifications@callfire.com", ["ops@example.com"], b"x" * (LIMIT + 1))
        assert refused.value.smtp_code == 552
    stored = rows(door.settings.storage.db, "SELECT envelope_from FROM deliveries")
    assert stored == [("notifications@callfire.com",)]


PARAMETERS = st.sampled_from(["SIZE=10", "SIZE=", "SIZE", f"SIZE={LIMIT}", f"SIZE={LIMIT + 1}", "size=7", "SIZE=x",
                              "BODY=8BITMIME", "BODY=7bit", "BODY=X", "BODY", "SMTPUTF8", "smtputf8", "SMTPUTF8=1",
                              "X=1", "X", "=", "\u00e9", "\t", " ", "  "])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(PARAMETERS, max_size=5))
def test_any_mix_of_mail_parameters_is_answered_as_aiosmtpd_answers_it(
    door: Runtime, general_path: pytest.MonkeyPatch, parts: list[str],
) -> None:
    commands = [EHLO, f"{FROM} {' '.join(parts)}".rstrip()]
    ours, theirs = _both(door, general_path, commands)
    assert ours == theirs


@pytest.mark.parametrize("size", ["\u00b2", "\u2460", "1\u00b2"])
def test_a_size_whose_digits_int_cannot_read_gets_a_syntax_error_not_a_logged_traceback(
    door: Runtime, caplog: pytest.LogCaptureFixture, size: str,
) -> None:
    # str.isdigit() takes superscripts and circled digits, int() does not: aiosmtpd's MAIL answered 451 and
    # logged a traceback at ERROR, a log line any client could repeat at will.
    sock, f = raw_session(door)
    with sock, f:
        assert say(f, b"EHLO c.test").startswith(b"250 ")
        assert say(f, f"{FROM} SIZE={size}".encode()) == b"501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n"
        assert say(f, f"{FROM} SIZE=10".encode()) == b"250 2.1.0 OK\r\n"  # the session goes on
        say(f, b"QUIT")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


# A session's commands pipelined (RFC 2920), plain and not, taken and refused by the door's own MAIL and RCPT
# and by aiosmtpd's; QUIT ends it.
PIPELINED = (
    f"{EHLO}\r\n{FROM} SIZE=2200\r\nRCPT TO:<ops@example.com>\r\nRCPT TO:<a\x01@example.com>\r\n"
    "RCPT TO:<ops@example.com> NOTIFY=NEVER\r\nRCPT TO:ops@example.com\r\nRSET\r\n"
    f"{FROM}\r\n{FROM}\r\nMAIL FROM:<a@example.com> (comment)\r\nRCPT TO:<ops@example.com>\r\nRSET\r\n"
    "MAIL FROM:<a@example.com> SIZE=x\r\nmail from:<a@example.com>\r\nrcpt to:<ops@example.com>\r\nQUIT\r\n"
).encode()


def _pipelined(runtime: Runtime, first: bytes, second: bytes) -> bytes:
    """Send a session's commands in two writes, the second once the first was answered in part; return all replies."""
    sock, f = raw_session(runtime)
    with sock, f:
        sock.sendall(first)
        time.sleep(0.002)
        sock.sendall(second)
        replies = b""
        while chunk := sock.recv(65536):
            replies += chunk
    return replies


def test_pipelined_mail_and_rcpt_cut_at_every_place_get_the_replies_aiosmtpd_gives(
    door: Runtime, general_path: pytest.MonkeyPatch,
) -> None:
    ours = [_pipelined(door, PIPELINED[:cut], PIPELINED[cut:]) for cut in range(len(PIPELINED) + 1)]
    general_path.setattr(Connection, "_plain_address", lambda self, arg, keyword: None)
    theirs = [_pipelined(door, PIPELINED[:cut], PIPELINED[cut:]) for cut in range(len(PIPELINED) + 1)]
    assert ours[0].count(b"\r\n") == 20  # every command answered: EHLO in five lines
    for cut, (mine, aiosmtpd) in enumerate(zip(ours, theirs, strict=True)):
        assert mine == aiosmtpd, cut
