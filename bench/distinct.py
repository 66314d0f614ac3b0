"""Generate distinct CallFire notification emails and HTTP requests, in a realistic mix of shapes.

Every email has its own Message-ID and carries its own notification (its own
Text/Call/Broadcast id, from bench/notifications.py), so a server that stores
them inserts every delivery and every event: nothing is a duplicate. The
email shapes follow fixtures/email: a v1.1 XML or JSON document in a plain
body, a base64 attachment, HTML-escaped in the HTML part of an alternative,
quoted-printable; `Field: value` text; an HTML table of fields; forwarded
(inline, and as a message/rfc822 attachment) and quoted replies. With Received
and DKIM headers, prose and a footer, a typical email is about 2.2 KB.
The output depends only on the seed.

    python bench/distinct.py --count 20000 --mbox corpus.mbox    # an mbox (mboxrd)
    python bench/distinct.py --count 50 --dir out/                # one .eml per message
    python bench/distinct.py --count 2000 --smtp-file m.bin       # the SMTP client's input
    python bench/distinct.py --count 2000 --http-file r.bin       # the HTTP client's input
"""

from __future__ import annotations

import argparse
import base64
import html
import quopri
import random
import re
import statistics
import struct
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

from notifications import Documents, Notification

_PROSE = (
    "Hello,\n\nA CallFire notification for your account follows. You receive this message because an email "
    "endpoint is configured for the subscription below.\n"
)
_FOOTER = (
    "\n--\nCallFire, Inc. | 1410 2nd St, Santa Monica, CA 90401\n"
    "Manage notifications: https://www.callfire.com/ui/settings/notifications\n"
)
_PEOPLE = ("Dan Ops <dan@example.com>", "Alice Admin <alice@example.com>", "Eve <eve@example.com>")


class Emails:
    """Build numbered, distinct notification emails in a weighted mix of shapes."""

    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.docs = Documents(seed)
        self.n = 0
        self.ids: list[int] = []  # the resource id of every event sent so far, in order
        self.start = datetime(2026, 11, 1, tzinfo=UTC)
        self.shapes: list[tuple[Callable[[], bytes], int]] = [
            (self._plain_body, 22),
            (self._attachment, 16),
            (self._escaped_html, 10),
            (self._quoted_printable, 8),
            (self._text_fields, 14),
            (self._html_table, 10),
            (self._forwarded_inline, 6),
            (self._forwarded_rfc822, 6),
            (self._quoted_reply, 8),
        ]
        self._weights = [w for _, w in self.shapes]

    def message(self) -> bytes:
        """Return the next email (LF line ends), of a shape drawn from the mix."""
        self.n += 1
        return self.rng.choices([s for s, _ in self.shapes], self._weights)[0]()

    def __iter__(self) -> Iterator[bytes]:
        while True:
            yield self.message()

    # --- pieces -----------------------------------------------------------

    def _take(self, *, readable: bool = False) -> Notification:
        note = self.docs.readable() if readable else self.docs.next()
        self.ids.extend(note.ids)
        return note

    def _date(self) -> str:
        return format_datetime(self.start + timedelta(seconds=self.n * 7))

    def _headers(self, subject: str, content_type: str, extra: str = "", sender: str = "") -> str:
        n, date, rng = self.n, self._date(), self.rng
        relay = rng.randrange(1, 250)
        dkim = base64.b64encode(rng.randbytes(96)).decode()
        return (
            "Return-Path: <bounce@callfire.com>\n"
            f"Received: from mx{relay % 4}.example.com (mx{relay % 4}.example.com [192.0.2.{relay}])\n"
            f"\tby mailhook.example.com with ESMTPS id {n:08X}; {date}\n"
            f"Received: from mail.callfire.com (mail.callfire.com [198.51.100.{relay}])\n"
            f"\tby mx{relay % 4}.example.com with ESMTPS id {n:010d}; {date}\n"
            "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=callfire.com; s=mail;\n"
            f"\th=from:to:subject:date:message-id; bh={dkim[:44]};\n"
            f"\tb={dkim[44:]}\n"
            f"From: {sender or 'CallFire <notifications@callfire.com>'}\n"
            "To: ops@example.com\n"
            f"Subject: {subject}\n"
            f"Date: {date}\n"
            f"Message-ID: <{self.docs.seed}.{n}.{rng.randrange(10**9)}.notify@callfire.com>\n"
            "MIME-Version: 1.0\n"
            f"{extra}"
            f"Content-Type: {content_type}\n"
        )

    @staticmethod
    def _lines(note: Notification, prefix: str = "") -> str:
        return "".join(f"{prefix}{k}: {v}\n" for k, v in note.fields)

    # --- shapes -----------------------------------------------------------

    def _plain_body(self) -> bytes:
        note = self._take()
        head = self._headers(note.subject, "text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit\n")
        return f"{head}\n{_PROSE}\n{note.body}{_FOOTER}".encode()

    def _attachment(self) -> bytes:
        note = self._take()
        boundary = f"mix-{self.n}-{self.rng.randrange(10**6)}"
        ext, mime = ("xml", "application/xml") if note.format == "xml" else ("json", "application/json")
        b64 = base64.encodebytes(note.body.encode()).decode()
        head = self._headers(note.subject, f'multipart/mixed; boundary="{boundary}"')
        body = (
            f"\nThis is a multi-part message in MIME format.\n--{boundary}\n"
            "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 7bit\n\n"
            f"{_PROSE}\nSee the attached file.\n{_FOOTER}\n--{boundary}\n"
            f'Content-Type: {mime}; name="notification.{ext}"\nContent-Transfer-Encoding: base64\n'
            f'Content-Disposition: attachment; filename="notification.{ext}"\n\n'
            f"{b64}\n--{boundary}--\n"
        )
        return (head + body).encode()

    def _escaped_html(self) -> bytes:
        note = self._take()
        boundary = f"alt-{self.n}-{self.rng.randrange(10**6)}"
        page = (
            "<html><body><p>" + html.escape(_PROSE).replace("\n", "<br>") + "</p><pre>"
            + html.escape(note.body) + "</pre></body></html>"
        )
        qp = quopri.encodestring(page.encode()).decode()
        head = self._headers(note.subject, f'multipart/alternative; boundary="{boundary}"')
        body = (
            f"\n--{boundary}\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 7bit\n\n"
            f"{_PROSE}\nOpen the HTML part to read the notification.\n--{boundary}\n"
            "Content-Type: text/html; charset=utf-8\n"
            f"Content-Transfer-Encoding: quoted-printable\n\n{qp}\n--{boundary}--\n"
        )
        return (head + body).encode()

    def _quoted_printable(self) -> bytes:
        note = self._take()
        qp = quopri.encodestring(f"{_PROSE}\n{note.body}{_FOOTER}".encode()).decode()
        head = self._headers(note.subject, "text/plain; charset=utf-8", "Content-Transfer-Encoding: quoted-printable\n")
        return f"{head}\n{qp}".encode()

    def _text_fields(self) -> bytes:
        note = self._take(readable=True)
        head = self._headers(note.subject, "text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit\n")
        intro = f"Your {note.kind} notification:\n\n"
        return f"{head}\n{_PROSE}\n{intro}{self._lines(note)}{_FOOTER}".encode()

    def _html_table(self) -> bytes:
        note = self._take(readable=True)
        rows = "".join(f"<tr><td><b>{html.escape(k)}</b></td><td>{html.escape(v)}</td></tr>\n" for k, v in note.fields)
        page = (
            '<html><head><style>td{padding:4px;font-family:Arial}</style></head><body>'
            f"<h2>{html.escape(note.subject)}</h2>\n<p>" + html.escape(_PROSE).replace("\n", "<br>\n")
            + "</p>\n<table border=\"1\">\n" + rows + "</table>\n<p>"
            + html.escape(_FOOTER).replace("\n", "<br>\n") + "</p></body></html>\n"
        )
        qp = quopri.encodestring(page.encode()).decode()
        head = self._headers(note.subject, "text/html; charset=utf-8", "Content-Transfer-Encoding: quoted-printable\n")
        return f"{head}\n{qp}".encode()

    def _forwarded_inline(self) -> bytes:
        note = self._take(readable=True)
        head = self._headers(f"Fwd: {note.subject}", "text/plain; charset=utf-8",
                             "Content-Transfer-Encoding: 8bit\n", sender=self.rng.choice(_PEOPLE))
        body = (
            "\nFYI, see below.\n\n---------- Forwarded message ---------\n"
            f"From: CallFire <notifications@callfire.com>\nDate: {self._date()}\n"
            f"Subject: {note.subject}\nTo: ops@example.com\n\n{_PROSE}\n{self._lines(note)}{_FOOTER}"
        )
        return (head + body).encode()

    def _forwarded_rfc822(self) -> bytes:
        note = self._take()
        boundary = f"fwd-{self.n}-{self.rng.randrange(10**6)}"
        head = self._headers(f"Fwd: {note.subject}", f'multipart/mixed; boundary="{boundary}"',
                             sender=self.rng.choice(_PEOPLE))
        inner = (
            f"From: CallFire <notifications@callfire.com>\nTo: sms@example.com\nSubject: {note.subject}\n"
            f"Date: {self._date()}\nMessage-ID: <inner-{self.n}.{self.rng.randrange(10**9)}@callfire.com>\n"
            "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
            f"{note.body}"
        )
        body = (
            f"\nThis is a multi-part message in MIME format.\n--{boundary}\n"
            "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 7bit\n\n"
            f"FYI, forwarding the notification.\n\n--{boundary}\nContent-Type: message/rfc822\n"
            f'Content-Disposition: attachment; filename="notification.eml"\n\n{inner}\n--{boundary}--\n'
        )
        return (head + body).encode()

    def _quoted_reply(self) -> bytes:
        note = self._take(readable=True)
        head = self._headers(f"Re: {note.subject}", "text/plain; charset=utf-8",
                             "Content-Transfer-Encoding: 8bit\n", sender=self.rng.choice(_PEOPLE))
        body = (
            f"\nNoted, thanks. Following up with the customer today.\n\nOn {self._date()}, CallFire "
            f"<notifications@callfire.com> wrote:\n> {_PROSE.replace(chr(10), chr(10) + '> ')}\n"
            f"{self._lines(note, '> ')}"
        )
        return (head + body).encode()


def mbox_chunk(raw: bytes) -> bytes:
    """Return one email as an mboxrd entry (From_ line, `>From ` quoting, blank line after)."""
    raw = re.sub(rb"^(>*From )", rb">\1", raw, flags=re.MULTILINE)
    return b"From bounce@callfire.com Fri Nov 27 10:00:00 2026\n" + raw.rstrip(b"\n") + b"\n\n"


def write_mbox(path: Path, count: int, seed: int = 1) -> int:
    """Write `count` distinct emails as an mbox; return the bytes written."""
    emails = Emails(seed)
    written = 0
    with path.open("wb") as fh:
        for _ in range(count):
            written += fh.write(mbox_chunk(emails.message()))
    return written


def smtp_payload(raw: bytes) -> bytes:
    """Return an email as SMTP DATA: CRLF line ends, dot-stuffed, ending in CRLF . CRLF."""
    data = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    data = re.sub(rb"(?m)^\.", b"..", data)
    return data + b".\r\n"


def http_request(note: Notification, host: str = "127.0.0.1") -> bytes:
    """Return a notification as one HTTP/1.1 keep-alive POST /notifications, as CallFire sends it."""
    body = note.body.encode()
    kind = "text/xml; charset=UTF-8" if note.format == "xml" else "application/json; charset=UTF-8"
    return (f"POST /notifications HTTP/1.1\r\nHost: {host}\r\nUser-Agent: CallFire-HTTP/1.0\r\n"
            f"Content-Type: {kind}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def write_records(path: Path, records: Iterator[bytes] | list[bytes]) -> int:
    """Write byte strings, each after its 4-byte big-endian length (the clients' input); return the count."""
    count = 0
    with path.open("wb") as fh:
        for record in records:
            fh.write(struct.pack(">I", len(record)) + record)
            count += 1
    return count


def read_records(path: Path) -> list[bytes]:
    """Read what write_records wrote."""
    data = path.read_bytes()
    out, at = [], 0
    while at < len(data):
        (size,) = struct.unpack_from(">I", data, at)
        out.append(data[at + 4:at + 4 + size])
        at += 4 + size
    return out


def smtp_file(path: Path, count: int, seed: int) -> int:
    """Write `count` distinct emails as the SMTP client's input."""
    emails = Emails(seed)
    return write_records(path, [smtp_payload(emails.message()) for _ in range(count)])


def http_file(path: Path, count: int, seed: int, kind: str = "mix") -> int:
    """Write `count` distinct notifications as HTTP requests: the realistic mix, or only v1.1 XML calls."""
    docs = Documents(seed)
    if kind == "call-xml":
        notes = [docs.call(inbound=False, fmt="xml") for _ in range(count)]
    else:
        notes = [docs.next() for _ in range(count)]
    return write_records(path, [http_request(note) for note in notes])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mbox", type=Path)
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--smtp-file", type=Path)
    parser.add_argument("--http-file", type=Path)
    parser.add_argument("--stats", action="store_true", help="print the size distribution of the emails")
    args = parser.parse_args()
    if args.mbox:
        size = write_mbox(args.mbox, args.count, args.seed)
        print(f"{args.mbox}: {args.count} messages, {size / args.count:.0f} bytes each on average")
    if args.dir:
        args.dir.mkdir(parents=True, exist_ok=True)
        emails = Emails(args.seed)
        for i in range(args.count):
            (args.dir / f"{i:06d}.eml").write_bytes(emails.message())
    if args.smtp_file:
        smtp_file(args.smtp_file, args.count, args.seed)
    if args.http_file:
        http_file(args.http_file, args.count, args.seed)
    if args.stats:
        emails = Emails(args.seed)
        sizes = sorted(len(emails.message()) for _ in range(args.count))
        print(f"{args.count} emails: median {statistics.median(sizes):.0f} B, mean {statistics.mean(sizes):.0f} B, "
              f"10th {sizes[len(sizes) // 10]} B, 90th {sizes[len(sizes) * 9 // 10]} B")
    if not (args.mbox or args.dir or args.smtp_file or args.http_file or args.stats):
        sys.stdout.buffer.write(Emails(args.seed).message())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
