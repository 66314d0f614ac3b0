"""Several `mailhook serve` nodes as subprocesses on one database, and clients that count what they acknowledge.

A `Node` is one `python -m mailhook serve` on fixed loopback ports (so a
restarted node comes back where its clients look). A `Feeder` delivers a
corpus over SMTP or HTTP the way a sending MTA or CallFire's webhook does:
each item is retried until a node acknowledges it (250, or HTTP 2xx),
moving on to the next node after a refusal or a dropped connection, as an
MTA does with two MX hosts; it counts what was acknowledged, what was
refused for now (451 / 503) and what was refused for good.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from process_support import ALLOW_ROOT, free_port, listening, wait_until

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


@dataclass(frozen=True)
class Item:
    """One notification to deliver: by email over SMTP, or as a document over HTTP."""

    key: str
    channel: str  # "smtp" or "http"
    payload: bytes
    content_type: str = "text/xml; charset=UTF-8"


# Every node process started, so that a failed test leaves none running (`reap`).
STARTED: list[subprocess.Popen[bytes]] = []


def reap() -> None:
    """Kill and wait for every node process still running (after a test, whatever its outcome)."""
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            with suppress(OSError):
                os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.wait()


class Node:
    """`python -m mailhook serve` on one database, with fixed SMTP and HTTP ports; restartable after a kill."""

    def __init__(self, name: str, db: str, log: Path, *, acknowledge: str = "stored",
                 env: dict[str, str] | None = None, doors: bool = True) -> None:
        self.name, self.db, self.log, self.acknowledge = name, db, log, acknowledge
        self.smtp_port, self.http_port = (free_port(), free_port()) if doors else (0, 0)
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start the node and wait until both doors listen (or, without doors, until it runs)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOOK_")} | ALLOW_ROOT
        env |= {"MAILHOOK_CONFIG": "", **self.extra_env}
        listen = (["--smtp-listen", f"127.0.0.1:{self.smtp_port}", "--http-listen", f"127.0.0.1:{self.http_port}"]
                  if self.smtp_port else ["--smtp-listen", "", "--http-listen", ""])
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailhook", "serve", "--db", self.db, *listen,
                 "--smtp-acknowledge", self.acknowledge],
                cwd=ROOT, env=env, stdout=log, stderr=log,
            )
        STARTED.append(self.proc)
        if self.smtp_port:
            wait_until(self._up, timeout, f"node {self.name} listening")

    def _up(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, f"node {self.name} exited with {self.proc.returncode}:\n{self.tail()}"
        return listening(self.smtp_port) and listening(self.http_port)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """Kill the node with SIGKILL (as a crash or the OOM killer would) and reap it."""
        assert self.proc is not None and self.proc.poll() is None, f"node {self.name} died on its own:\n{self.tail()}"
        self.proc.kill()
        self.proc.wait(timeout=10)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def terminate(self) -> int:
        """Stop the node as systemd would (SIGTERM) and return its exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        return self.proc.wait(timeout=60)

    def healthz(self) -> tuple[int, dict[str, Any]]:
        """Return /healthz's status and JSON body."""
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
        try:
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        try:
            return response.status, json.loads(body)
        except ValueError:
            return response.status, {"text": body.decode(errors="replace")}

    def tail(self, size: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-size:] if self.log.exists() else ""


@dataclass
class Tally:
    """What one feeder saw."""

    acked: list[str] = field(default_factory=list)
    temporary: dict[str, int] = field(default_factory=dict)  # reply code (or "connection") -> how many
    permanent: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)

    def refused(self, what: str) -> None:
        self.temporary[what] = self.temporary.get(what, 0) + 1


class Feeder(threading.Thread):
    """Deliver items one after another to the nodes, each until acknowledged; try the next node after a failure."""

    def __init__(self, nodes: Sequence[Node], items: Sequence[Item], deadline: float, *, first: int = 0,
                 pause: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.nodes, self.items, self.deadline, self.at, self.pause = list(nodes), list(items), deadline, first, pause
        self.tally = Tally()
        self._smtp: dict[int, smtplib.SMTP] = {}
        self._http: dict[int, http.client.HTTPConnection] = {}

    def run(self) -> None:
        try:
            for n, item in enumerate(self.items):
                if not self._deliver(item):
                    self.tally.unfinished += [i.key for i in self.items[n:]]
                    return
        finally:
            for smtp in self._smtp.values():
                with suppress(Exception):
                    smtp.close()
            for conn in self._http.values():
                conn.close()

    def _deliver(self, item: Item) -> bool:
        while time.monotonic() < self.deadline:
            node = self.at % len(self.nodes)
            outcome = self._smtp_send(node, item) if item.channel == "smtp" else self._http_send(node, item)
            if outcome == "acked":
                self.tally.acked.append(item.key)
                return True
            if outcome == "permanent":
                self.tally.permanent.append(item.key)
                return True
            self.at += 1  # the next MX host, the next HTTP receiver
            time.sleep(self.pause)
        return False

    def _smtp_send(self, node: int, item: Item) -> str:
        try:
            smtp = self._smtp.get(node)
            if smtp is None:
                smtp = self._smtp[node] = smtplib.SMTP("127.0.0.1", self.nodes[node].smtp_port, timeout=30)
            smtp.sendmail("notifications@callfire.com", ["ops@example.com"], item.payload)
        except smtplib.SMTPResponseException as exc:
            self._drop_smtp(node)
            if exc.smtp_code >= 500:
                self.tally.permanent.append(f"{item.key}: {exc.smtp_code} {exc.smtp_error!r}")
                return "permanent"
            self.tally.refused(f"{exc.smtp_code} {exc.smtp_error.decode(errors='replace')[:40]}")
            return "retry"
        except smtplib.SMTPRecipientsRefused as exc:
            self._drop_smtp(node)
            self.tally.refused(f"rcpt {exc.recipients!r}"[:60])
            return "retry"
        except (smtplib.SMTPException, OSError):
            self._drop_smtp(node)
            self.tally.refused("connection")
            return "retry"
        return "acked"

    def _drop_smtp(self, node: int) -> None:
        smtp = self._smtp.pop(node, None)
        if smtp is not None:
            with suppress(Exception):
                smtp.close()

    def _http_send(self, node: int, item: Item) -> str:
        try:
            conn = self._http.get(node)
            if conn is None:
                conn = self._http[node] = http.client.HTTPConnection("127.0.0.1", self.nodes[node].http_port,
                                                                     timeout=30)
            conn.request("POST", "/notifications", body=item.payload, headers={"Content-Type": item.content_type})
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            broken = self._http.pop(node, None)
            if broken is not None:
                broken.close()
            self.tally.refused("connection")
            return "retry"
        if 200 <= response.status < 300 or response.status == 422:  # 422: stored, quarantined
            return "acked"
        if response.status in (503, 429) or response.status >= 500:
            self.tally.refused(str(response.status))
            return "retry"
        self.tally.permanent.append(f"{item.key}: HTTP {response.status}")
        return "permanent"


def fixture_items() -> list[Item]:
    """Every fixture email (over SMTP) and fixture document (over HTTP), as CallFire sends them."""
    items = [Item(f"fixture:{path.name}", "smtp", re.sub(rb"\r?\n", b"\r\n", path.read_bytes()))
             for path in sorted((FIXTURES / "email").glob("*.eml"))]
    for path in sorted((FIXTURES / "documents").glob("*")):
        if path.suffix in (".xml", ".json") and not path.name.endswith(".expected.json"):
            kind = "text/xml; charset=UTF-8" if path.suffix == ".xml" else "application/json; charset=UTF-8"
            items.append(Item(f"fixture:{path.name}", "http", path.read_bytes(), kind))
    return items


def distinct_items(emails: int, documents: int, seed: int) -> list[Item]:
    """Distinct generated notifications (bench/distinct.py, bench/notifications.py): emails and HTTP documents."""
    bench = str(ROOT / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    from distinct import Emails
    from notifications import Documents

    mails, docs = Emails(seed), Documents(seed + 1)
    items = [Item(f"email:{seed}:{n}", "smtp", mails.message().replace(b"\n", b"\r\n")) for n in range(emails)]
    for n in range(documents):
        note = docs.next()
        kind = "text/xml; charset=UTF-8" if note.format == "xml" else "application/json; charset=UTF-8"
        items.append(Item(f"doc:{seed}:{n}", "http", note.body.encode(), kind))
    return items


def shuffled(items: Sequence[Item], seed: int) -> list[Item]:
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


def feed(feeders: Sequence[Feeder]) -> None:
    for feeder in feeders:
        feeder.start()


def join(feeders: Sequence[Feeder], deadline: float) -> None:
    for feeder in feeders:
        feeder.join(timeout=max(1.0, deadline - time.monotonic()))


def expected_keys(items: Sequence[Item]) -> set[str]:
    """Return the dedupe key of every event the items carry, as extraction finds them (no subscriptions)."""
    from mailhook.extract import extract

    keys: set[str] = set()
    for item in items:
        kind = "email" if item.channel == "smtp" else "document"
        extraction = extract(item.payload, kind, {}, content_type=None if kind == "email" else item.content_type)
        keys |= {event.dedupe_key for event in extraction.events}
    return keys


def split(items: Sequence[Item], nodes: Sequence[Node], deadline: float) -> list[Feeder]:
    """Two clients per channel, each sending half of that channel's items, one to each node first."""
    feeders = []
    for channel in ("smtp", "http"):
        mine = [i for i in items if i.channel == channel]
        feeders += [Feeder(nodes, mine[0::2], deadline, first=0), Feeder(nodes, mine[1::2], deadline, first=1)]
    return feeders


def acked(feeders: Sequence[Feeder]) -> int:
    return sum(len(f.tally.acked) for f in feeders)
