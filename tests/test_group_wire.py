"""A delivery, its rows and its receipt cross the channel as plain tuples and come back equal."""

from __future__ import annotations

import pickle

from smtp_support import notification

from mailhook.extract import extract
from mailhook.group import wire
from mailhook.models import Delivery, Extraction, FolderPosition, Receipt
from mailhook.store.rows import Rows, worker_rows


def _crossed(value: object) -> object:
    return pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def _delivery() -> Delivery:
    return Delivery("imap", notification(7), "2026-12-05T12:00:00.000000Z", "email", "a@example.com",
                    ("ops@example.com", "b@example.com"), "127.0.0.1", "message/rfc822", "imap://acct/INBOX/9",
                    FolderPosition("acct", "INBOX", 3, 9))


def test_a_delivery_with_every_field_set_comes_back_equal_as_its_values() -> None:
    original = _delivery()
    values = _crossed(wire.delivery_values(original))
    assert type(values) is tuple
    assert wire.delivery(values) == original


def test_a_delivery_with_its_defaults_comes_back_equal() -> None:
    original = Delivery("http", b"<xml/>", "2026-12-05T12:00:00.000000Z", "document")
    assert wire.delivery(_crossed(wire.delivery_values(original))) == original  # type: ignore[arg-type]


def test_rows_come_back_as_rows_equal_and_an_extraction_or_none_as_itself() -> None:
    raw = notification(8)
    rows = worker_rows(extract(raw, "email", {}), len(raw))
    assert isinstance(rows, Rows) and rows.events
    values = _crossed(wire.found_values(rows))
    assert type(values) is tuple
    back = wire.found(values)  # type: ignore[arg-type]
    assert type(back) is Rows and back == rows
    refused = Extraction(reason="too many parts")
    assert wire.found(_crossed(wire.found_values(refused))) == refused  # type: ignore[arg-type]
    assert wire.found(wire.found_values(None)) is None


def test_a_receipt_comes_back_equal_as_its_values() -> None:
    original = Receipt(12, "stored", 2, 1, None, "<m@example.com>", ("text_sent", "text_failed"))
    values = _crossed(wire.receipt_values(original))
    assert type(values) is tuple
    assert wire.receipt(values) == original  # type: ignore[arg-type]


def test_the_values_pickle_without_naming_a_mailhook_class() -> None:
    # What makes them cheap: no class for pickle to look up and restore through Python.
    raw = notification(9)
    sent = ("submit", 0, wire.delivery_values(Delivery("smtp", raw, "2026-12-05T12:00:00.000000Z")),
            wire.found_values(worker_rows(extract(raw, "email", {}), len(raw))))
    assert b"mailhook" not in pickle.dumps(sent, protocol=pickle.HIGHEST_PROTOCOL)
    answer = ("receipt", 0, wire.receipt_values(Receipt(1, "stored", 1, 0, None, "<m@example.com>", ("text_sent",))))
    assert b"mailhook" not in pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
