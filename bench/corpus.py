"""Generate realistic CallFire notification emails (2-4 KB, mixed shapes) for the benchmarks.

Every message carries fresh ids, so each one is a new notification with new
events: a benchmark measures real inserts, never the duplicate shortcut.
The documents come from fixtures/seed and fixtures/documents; the email
shapes follow fixtures/email (plain body, attachment, HTML-escaped,
quoted-printable, Field: value text, HTML table).

    python bench/corpus.py --count 1000 --mbox out.mbox     # an mbox
    python bench/corpus.py --count 50 --dir out/            # one .eml per message
"""

from __future__ import annotations

import argparse
import base64
import html
import quopri
import random
import re
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"

_LONG_NUMBER = re.compile(r"(?<![\d.])\d{5,}(?![\d.])")
_PROSE = (
    "Hello,\n\nA CallFire notification for your account follows. You receive this message because "
    "an email endpoint is configured for the subscription below. To change where notifications are "
    "sent, open the notification settings of your account.\n"
)
_FOOTER = (
    "\n--\nCallFire, Inc. | 1410 2nd St, Santa Monica, CA 90401\n"
    "Manage notifications: https://www.callfire.com/ui/settings/notifications\n"
    "This message was sent to you because of a subscription on your CallFire account. "
    "Replies to this address are not monitored.\n"
)


def _documents() -> dict[str, str]:
    """Load the document templates the emails embed."""
    names = {
        "text-xml": "seed/text-outbound.xml",
        "call-json": "seed/call-outbound.json",
        "campaign-json": "seed/campaign.json",
        "text-json": "seed/text-outbound-json.json",
        "inbound-json": "seed/text-inbound.json",
        "v2-json": "documents/v2-outbound-text-delivery-report.json",
        "transfer-xml": "documents/call-transfer-two-records.xml",
        "broadcast-xml": "documents/broadcast-voice-running.xml",
    }
    return {key: (FIXTURES / path).read_text(encoding="utf-8") for key, path in names.items()}


class Generator:
    """Build numbered, unique notification emails from the fixture templates."""

    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.docs = _documents()
        self.counter = 0
        self.start = datetime(2026, 11, 1, tzinfo=UTC)
        self.shapes: list[Callable[[int], bytes]] = [
            self._xml_plain_body,
            self._xml_attachment,
            self._json_attachment,
            self._xml_escaped_html,
            self._text_fields,
            self._html_table,
            self._json_quoted_printable,
            self._v2_body,
        ]

    def message(self) -> bytes:
        """Return the next email (a different shape each time, in a random but seeded order)."""
        self.counter += 1
        shape = self.shapes[self.rng.randrange(len(self.shapes))]
        return shape(self.counter)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            yield self.message()

    # --- pieces -----------------------------------------------------------

    def _fresh(self, document: str, n: int) -> str:
        """Give every long id in a document a new value unique to message `n`."""

        def repl(match: re.Match[str]) -> str:
            digits = len(match.group(0))
            width = max(digits, 11)
            return str(10 ** (width - 1) + n * 1000 + self.rng.randrange(1000))

        return _LONG_NUMBER.sub(repl, document)

    def _headers(self, n: int, subject: str, content_type: str, extra: str = "") -> str:
        when = self.start + timedelta(seconds=n)
        date = format_datetime(when)
        relay = self.rng.randrange(1, 250)
        dkim = base64.b64encode(self.rng.randbytes(128)).decode()
        return (
            "Return-Path: <bounce@callfire.com>\n"
            f"Received: from mx{relay % 4}.example.com (mx{relay % 4}.example.com [192.0.2.{relay}])\n"
            f"\tby mailhook.example.com with ESMTPS id {n:08X}; {date}\n"
            f"Received: from mail.callfire.com (mail.callfire.com [198.51.100.{relay}])\n"
            f"\tby mx{relay % 4}.example.com with ESMTPS id {n:010d}; {date}\n"
            f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=callfire.com; s=mail;\n"
            f"\th=from:to:subject:date:message-id; bh={dkim[:44]};\n"
            f"\tb={dkim[44:]}\n"
            "From: CallFire <notifications@callfire.com>\n"
            "To: ops@example.com\n"
            f"Subject: {subject}\n"
            f"Date: {date}\n"
            f"Message-ID: <{n}.{self.rng.randrange(10**9)}.notify@callfire.com>\n"
            "MIME-Version: 1.0\n"
            f"{extra}"
            f"Content-Type: {content_type}\n"
        )

    # --- shapes -----------------------------------------------------------

    def _xml_plain_body(self, n: int) -> bytes:
        doc = self._fresh(self.docs["text-xml"], n)
        head = self._headers(n, "CallFire notification", "text/plain; charset=utf-8",
                             "Content-Transfer-Encoding: 8bit\n")
        return f"{head}\n{_PROSE}\n{doc}\n{_FOOTER}".encode()

    def _xml_attachment(self, n: int) -> bytes:
        key = ("transfer-xml", "broadcast-xml", "text-xml")[n % 3]
        doc = self._fresh(self.docs[key], n)
        boundary = f"mix-{n}"
        b64 = base64.encodebytes(doc.encode()).decode()
        head = self._headers(n, "CallFire notification", f'multipart/mixed; boundary="{boundary}"')
        body = (
            f"\nThis is a multi-part message in MIME format.\n--{boundary}\n"
            "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 7bit\n\n"
            f"{_PROSE}\nSee the attached file.\n{_FOOTER}\n--{boundary}\n"
            'Content-Type: application/xml; name="notification.xml"\nContent-Transfer-Encoding: base64\n'
            'Content-Disposition: attachment; filename="notification.xml"\n\n'
            f"{b64}\n--{boundary}--\n"
        )
        return (head + body).encode()

    def _json_attachment(self, n: int) -> bytes:
        key = ("call-json", "campaign-json", "text-json", "inbound-json")[n % 4]
        doc = self._fresh(self.docs[key], n)
        boundary = f"mix-{n}"
        b64 = base64.encodebytes(doc.encode()).decode()
        head = self._headers(n, "CallFire notification", f'multipart/mixed; boundary="{boundary}"')
        body = (
            f"\n--{boundary}\nContent-Type: text/plain; charset=utf-8\n\n{_PROSE}{_FOOTER}\n--{boundary}\n"
            'Content-Type: application/json; name="notification.json"\nContent-Transfer-Encoding: base64\n'
            'Content-Disposition: attachment; filename="notification.json"\n\n'
            f"{b64}\n--{boundary}--\n"
        )
        return (head + body).encode()

    def _xml_escaped_html(self, n: int) -> bytes:
        doc = self._fresh(self.docs["text-xml"], n)
        boundary = f"alt-{n}"
        text = f"{_PROSE}\n{doc}\n{_FOOTER}"
        page = (
            "<html><body><p>" + html.escape(_PROSE).replace("\n", "<br>") + "</p><pre>"
            + html.escape(doc) + "</pre><p>" + html.escape(_FOOTER).replace("\n", "<br>") + "</p></body></html>"
        )
        qp = quopri.encodestring(page.encode()).decode()
        head = self._headers(n, "CallFire notification", f'multipart/alternative; boundary="{boundary}"')
        body = (
            f"\n--{boundary}\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
            f"{text}\n--{boundary}\nContent-Type: text/html; charset=utf-8\n"
            f"Content-Transfer-Encoding: quoted-printable\n\n{qp}\n--{boundary}--\n"
        )
        return (head + body).encode()

    def _text_fields(self, n: int) -> bytes:
        rid = 44400000000 + n
        when = self.start + timedelta(seconds=n)
        head = self._headers(n, "Outbound Text Finished", "text/plain; charset=utf-8",
                             "Content-Transfer-Encoding: 7bit\n")
        body = (
            f"\n{_PROSE}\nYour outbound text has finished.\n\n"
            f"Text ID: {rid}\nFrom Number: 67076\nTo Number: +1 818 555 {n % 10000:04d}\n"
            "State: FINISHED\nFinal Result: SENT\n"
            f"Message: Your appointment #{n} is at 10:30 tomorrow\nBilled Amount: 0.03\n"
            f"Created: {when:%Y-%m-%d %H:%M:%S} UTC\nModified: {when:%Y-%m-%dT%H:%M:%SZ}\n"
            f"Subscription: outbound texts to ops@example.com\n{_FOOTER}{_FOOTER}"
        )
        return (head + body).encode()

    def _html_table(self, n: int) -> bytes:
        rid = 55500000000 + n
        when = self.start + timedelta(seconds=n)
        rows = [
            ("Call ID", str(rid)), ("From Number", f"+1 (310) 555-{n % 10000:04d}"),
            ("To Number", "18185550100"), ("Result", "LA"), ("Duration", f"{n % 300} seconds"),
            ("Created", f"{when:%Y-%m-%dT%H:%M:%SZ}"),
        ]
        table = "".join(f'<tr><th style="text-align:left">{k}</th><td>{v}</td></tr>\n' for k, v in rows)
        page = (
            '<html><head><style>td,th{padding:4px;font-family:Arial}</style></head><body>'
            "<h2>Inbound call finished</h2>\n<p>" + html.escape(_PROSE).replace("\n", "<br>\n")
            + '</p>\n<table border="1">\n' + table + "</table>\n<p>"
            + html.escape(_FOOTER).replace("\n", "<br>\n") + "</p></body></html>\n"
        )
        qp = quopri.encodestring(page.encode()).decode()
        head = self._headers(n, "Inbound call finished", "text/html; charset=utf-8",
                             "Content-Transfer-Encoding: quoted-printable\n")
        return f"{head}\n{qp}".encode()

    def _json_quoted_printable(self, n: int) -> bytes:
        doc = self._fresh(self.docs["call-json"], n)
        qp = quopri.encodestring(f"{_PROSE}\n{doc}\n{_FOOTER}".encode()).decode()
        head = self._headers(n, "Call finished", "text/plain; charset=utf-8",
                             "Content-Transfer-Encoding: quoted-printable\n")
        return f"{head}\n{qp}".encode()

    def _v2_body(self, n: int) -> bytes:
        doc = self._fresh(self.docs["v2-json"], n)
        # v2 resource ids are short in the fixture; make them unique too.
        doc = doc.replace('"id": 77001', f'"id": {770000000 + n}')
        head = self._headers(n, "Webhook event", "text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit\n")
        return f"{head}\n{_PROSE}\n{doc}\n{_FOOTER}".encode()


def write_mbox(path: Path, count: int, seed: int = 1) -> int:
    """Write `count` messages as an mbox (mboxrd quoting); return the bytes written."""
    gen = Generator(seed)
    written = 0
    with path.open("wb") as fh:
        for i in range(count):
            raw = gen.message()
            raw = re.sub(rb"^(>*From )", rb">\1", raw, flags=re.MULTILINE)
            chunk = b"From bounce@callfire.com Fri Nov 27 10:00:00 2026\n" + raw.rstrip(b"\n") + b"\n\n"
            fh.write(chunk)
            written += len(chunk)
            del i
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mbox", type=Path)
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args()
    if args.mbox:
        size = write_mbox(args.mbox, args.count, args.seed)
        print(f"{args.mbox}: {args.count} messages, {size / args.count:.0f} bytes each on average")
    if args.dir:
        args.dir.mkdir(parents=True, exist_ok=True)
        gen = Generator(args.seed)
        for i in range(args.count):
            (args.dir / f"{i:06d}.eml").write_bytes(gen.message())
    if not (args.mbox or args.dir):
        sys.stdout.buffer.write(Generator(args.seed).message())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
