"""read_text turns `Field: value` lines and HTML field tables into the same events the XML path builds."""

from __future__ import annotations

import json
import re
from datetime import datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailhook.errors import Unreadable
from mailhook.extract import extract
from mailhook.extract.document import read_document
from mailhook.extract.text import read_text, read_text_noted
from mailhook.extract.text_lines import _LINE, norm
from mailhook.extract.text_v1 import time_value
from mailhook.models import Event

NO_SUBS: dict[int, str] = {}


def read(text: str, subject: str | None = None, *, html: bool = False, subs: dict[int, str] = NO_SUBS) -> list[Event]:
    return read_text(text, subject=subject, subscriptions=subs, html=html)


def one(text: str, subject: str | None = None, *, html: bool = False, subs: dict[int, str] = NO_SUBS) -> Event:
    events = read(text, subject, html=html, subs=subs)
    assert len(events) == 1, events
    return events[0]


@pytest.mark.parametrize("label", ["From Number", "FromNumber", "from_number", "FROM NUMBER", "from-number"])
def test_field_names_match_in_any_spacing_case_or_punctuation(label: str) -> None:
    event = one(f"Text ID: 10\n{label}: +1 818 555 0100\nMessage: hi", "Outbound Text Finished")
    assert event.from_number == "+1 818 555 0100"


@pytest.mark.parametrize("separator", [": ", " = ", " - ", ":\t"])
def test_colon_equals_and_dash_separate_known_fields(separator: str) -> None:
    event = one(f"Call Id{separator}77\nTo Number{separator}13105550100\nResult{separator}LA", "Outbound call finished")
    assert (event.resource_id, event.to_number, event.final_result) == (77, "13105550100", "LA")


def test_a_dash_in_prose_is_not_a_field() -> None:
    event = one("Text ID: 10\nMessage: hi\nThanks - the CallFire team", "Outbound Text Finished")
    assert "Thanks" not in event.payload["fields"]


def test_html_table_rows_with_th_or_td_labels_are_fields() -> None:
    table = (
        "<table><tr><th>Text ID</th><td>55</td></tr><tr><td><b>To Number:</b></td><td>131 0555</td></tr>"
        "<tr><td>Message</td><td>Caf&eacute; &amp; bar</td></tr></table>"
    )
    event = one(table, "Outbound Text Finished", html=True)
    assert (event.resource_id, event.to_number, event.message, event.format) == (55, "131 0555", "Café & bar", "html")


def test_html_header_row_table_is_read_column_by_column() -> None:
    table = (
        "<table><tr><th>Broadcast Name</th><th>Broadcast Id</th><th>Status</th></tr>"
        "<tr><td>Spring</td><td>900</td><td>STOPPED</td></tr></table>"
    )
    event = one(table, "Campaign stopped", html=True)
    assert (event.broadcast_name, event.resource_id, event.broadcast_status) == ("Spring", 900, "STOPPED")


def test_html_lines_with_bold_labels_are_fields() -> None:
    event = one("<p><b>Call ID:</b> 5<br><b>Duration:</b> 1:05<br><b>Result:</b> LA</p>", html=True)
    assert (event.resource_type, event.duration, event.final_result) == ("Call", 65, "LA")


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Outbound Text Finished", "OUTBOUND_TEXT_FINISHED"),
        ("OUTBOUND_TEXT_FINISHED", "OUTBOUND_TEXT_FINISHED"),
        ("Inbound SMS received: inbound text", "INBOUND_TEXT_FINISHED"),
        ("Fwd: Inbound call finished", "INBOUND_CALL_FINISHED"),
        ("Outbound Call Finished", "OUTBOUND_CALL_FINISHED"),
        ("Campaign started", "CAMPAIGN_STARTED"),
        ("Campaign stopped", "CAMPAIGN_STOPPED"),
        ("CAMPAIGN_FINISHED", "CAMPAIGN_FINISHED"),
    ],
)
def test_event_named_in_the_subject_is_the_payload_event(subject: str, expected: str) -> None:
    fields = "Broadcast Id: 4\nName: X" if "AMPAIGN" in subject.upper() else "Id: 4\nTo Number: 1"
    event = one(fields, subject)
    assert (event.event_type, event.event_type_source) == (expected, "payload")


def test_event_line_wins_over_the_subject() -> None:
    event = one("Trigger Event: Inbound Text Finished\nText ID: 3\nMessage: STOP", "Outbound Text Finished")
    assert (event.event_type, event.inbound) == ("INBOUND_TEXT_FINISHED", True)


def test_configured_subscription_wins_over_the_named_event() -> None:
    event = one(
        "Subscription Id: 12\nText ID: 3\nMessage: x", "Inbound Text Finished", subs={12: "OUTBOUND_TEXT_FINISHED"}
    )
    assert (event.event_type, event.event_type_source, event.subscription_id) == (
        "OUTBOUND_TEXT_FINISHED",
        "config",
        12,
    )


def test_without_a_named_event_the_type_is_inferred() -> None:
    event = one("Text ID: 3\nInbound: yes\nMessage: hi")
    assert (event.event_type, event.event_type_source) == ("INBOUND_TEXT_FINISHED", "inferred")


def test_payload_keeps_every_field_read_even_unknown_ones() -> None:
    event = one("Text ID: 3\nMessage: hi\nCarrier: Verizon\nFrom Number: 1", "Outbound Text Finished")
    assert event.payload["fields"] == {"Text ID": "3", "Message": "hi", "Carrier": "Verizon", "From Number": "1"}
    assert event.payload["subject"] == "Outbound Text Finished"


def test_record_fields_become_one_attempt_like_a_text_record() -> None:
    event = one("Text ID: 3\nResult: SENT\nBilled Amount: 0.03 credits\nFinish Time: 2026-11-27T10:00:00Z")
    assert [(a.result, a.billed_amount, a.finish_time) for a in event.attempts] == [
        ("SENT", Decimal("0.03"), "2026-11-27T10:00:00Z")
    ]
    assert event.billed_amount == Decimal("0.03")


def test_text_path_builds_the_same_event_as_the_xml_path() -> None:
    xml = (
        '<n:TextNotification xmlns="http://api.callfire.com/data" xmlns:n="http://api.callfire.com/notification/xsd">'
        '<n:SubscriptionId>9</n:SubscriptionId><Text id="31"><FromNumber>67076</FromNumber>'
        "<ToNumber>13105550100</ToNumber><State>FINISHED</State><Inbound>false</Inbound>"
        "<Created>2026-11-27T10:00:00Z</Created><FinalResult>SENT</FinalResult>"
        "<TextRecord><Result>SENT</Result><BilledAmount>0.03</BilledAmount><Message>hi</Message></TextRecord>"
        "</Text></n:TextNotification>"
    )
    text = (
        "Subscription Id: 9\nText ID: 31\nFrom Number: 67076\nTo Number: 13105550100\nState: FINISHED\n"
        "Inbound: false\nCreated: 2026-11-27T10:00:00Z\nFinal Result: SENT\nBilled Amount: 0.03\nMessage: hi\n"
    )
    from_xml = read_document(xml.encode(), NO_SUBS)[0][0].row()
    from_text = one(text).row()
    for row in (from_xml, from_text):
        del row["format"], row["payload"]
    assert from_text == from_xml


@pytest.mark.parametrize(
    ("value", "seconds"), [("45", 45), ("45 seconds", 45), ("1:05", 65), ("0:01:05", 65), ("2m 5s", 125)]
)
def test_call_durations_are_read_as_seconds(value: str, seconds: int) -> None:
    assert one(f"Call ID: 1\nDuration: {value}").duration == seconds


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-27 05:00:00 -05:00",
        "2026-11-27T10:00:00Z",
        "2026-11-27 10:00:00 UTC",
        "Fri, 27 Nov 2026 10:00:00 +0000",
    ],
)
def test_created_times_are_normalized_to_utc(value: str) -> None:
    assert one(f"Text ID: 1\nMessage: x\nCreated: {value}").created == "2026-11-27T10:00:00Z"


def test_an_unrecognised_time_stays_only_in_the_payload() -> None:
    event = one("Text ID: 1\nMessage: x\nCreated: last tuesday-ish")
    assert event.created is None
    assert event.payload["fields"]["Created"] == "last tuesday-ish"


def test_ids_keep_every_digit_and_ignore_grouping() -> None:
    assert one("Text ID: #9,007,199,254,740,993\nMessage: x").resource_id == 9_007_199_254_740_993


def test_campaign_fields_fill_the_broadcast_columns() -> None:
    event = one(
        "Campaign Name: Fall\nCampaign Id: 70\nStatus: running\nType: text\nLabels: a, b\n"
        "Last Modified: 2026-11-27T12:00:00Z\nFrom Number: 67076",
        "Campaign started",
    )
    assert (
        event.resource_type,
        event.broadcast_id,
        event.broadcast_status,
        event.broadcast_type,
        event.labels,
        event.from_number,
    ) == ("Broadcast", 70, "RUNNING", "TEXT", ("a", "b"), "67076")
    assert json.loads(event.row()["labels"]) == ["a", "b"]


def test_a_repeated_id_starts_the_next_notification() -> None:
    events = read("Text ID: 1\nResult: SENT\n\nText ID: 2\nResult: DNT\n", "Outbound Text Finished")
    assert [(e.resource_id, e.final_result) for e in events] == [(1, "SENT"), (2, "DNT")]


@pytest.mark.parametrize(
    "text",
    [
        "Hello,\n\nYour invoice is ready.\nAmount: $20\n",
        "From Number: 1\nResult: SENT\n",
        "",
        "Date: Fri, 27 Nov 2026\nTo: ops@example.com\n",
    ],
    ids=["prose", "two-fields", "empty", "header-like"],
)
def test_text_without_a_notification_gives_no_events(text: str) -> None:
    assert read(text) == []


def test_known_fields_without_text_call_or_campaign_sign_are_unreadable_with_the_fields_named() -> None:
    with pytest.raises(Unreadable, match="from, result, to"):
        read("From Number: 1\nTo Number: 2\nResult: SENT\n")


def test_an_id_that_is_not_a_number_stays_only_in_the_payload() -> None:
    event = one("Text ID: 1\nMessage: x\nBatch Id: 12abc", "Outbound Text Finished")
    assert event.batch_id is None
    assert event.payload["fields"]["Batch Id"] == "12abc"


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "text",
    ["<tr><td>" * 50_000, "<script>" * 50_000, "<tr" * 100_000, "a: " + " \t" * 500_000 + "x", "Text ID: 1\n" * 50_000],
    ids=["rows", "scripts", "unclosed-tags", "whitespace", "many-ids"],
)
def test_pathological_text_is_read_in_linear_time(text: str) -> None:
    assert isinstance(read(text, html=True), list)


def test_an_id_field_holding_junk_is_no_sign_of_a_notification() -> None:
    lines = "".join(f"Text ID: \ufffd\x00junk{i}\n" for i in range(5))
    assert read_text(lines, subject="x", subscriptions={}, html=False) == []
    assert read_text("Text ID: abc\nFrom Number: 123\n", subject=None, subscriptions={}, html=False) == []


def test_an_email_of_junk_id_lines_is_quarantined_not_stored_as_events() -> None:
    body = b"".join(b"Text ID: \xff\xfe\x00j%d\r\n" % i for i in range(5))
    raw = b"Subject: x\r\nMessage-ID: <junk@x>\r\n\r\n" + body
    result = extract(raw, "email")
    assert result.events == ()
    assert result.reason == "no CallFire notification found in any part"


def test_short_from_and_to_labels_read_numbers_but_not_email_addresses() -> None:
    event = one("Call ID: 9\nFrom: CallFire <noreply@callfire.com>\nTo: (818) 555-1212\nResult: LA", None)
    assert (event.from_number, event.to_number) == (None, "(818) 555-1212")


def test_a_status_names_the_state_or_the_result_of_a_text() -> None:
    assert one("Text ID: 5\nStatus: SENT\nMessage: hi", None).final_result == "SENT"
    assert one("Text ID: 5\nStatus: finished\nMessage: hi", None).state == "FINISHED"


def test_us_time_zone_names_are_converted_to_utc() -> None:
    event = one("Text ID: 5\nMessage: hi\nSent At: 2020-03-03 09:58:00 PST", None)
    assert event.created == "2020-03-03T17:58:00Z"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_a_label_is_normalized_to_its_lower_case_letters_and_digits_in_any_script(label: str) -> None:
    assert norm(label) == "".join(ch for ch in label.lower() if ch.isalnum())


WRAPPED = (
    "Text ID: 44400000001\nFrom Number: +1 213 555 0142\nTo Number: 67076\nState: FINISHED\n"
    "Message: This is a long reply that the phone sent and the mail client\n"
    "wrapped at seventy-two columns, so it spans several lines: none of it\n"
    "may be lost.\nBilled Amount: 0.03\n"
)
WHOLE = ("This is a long reply that the phone sent and the mail client wrapped at seventy-two columns, so it spans"
         " several lines: none of it may be lost.")


def test_a_hard_wrapped_value_is_joined_to_its_continuation_lines() -> None:
    event = one(WRAPPED, "Inbound Text Finished")
    assert event.message == WHOLE
    assert event.billed_amount == Decimal("0.03")
    assert event.payload["fields"]["Message"] == WHOLE


def test_a_wrapped_value_in_html_br_runs_and_source_lines_is_joined() -> None:
    markup = "<p>" + WRAPPED.replace("\n", "<br>\n", 4).replace("client\n", "client<br>") + "</p>"
    assert one(markup, "Inbound Text Finished", html=True).message == WHOLE
    paragraphs = "".join(f"<p>{line}</p>\n" for line in WRAPPED.splitlines())
    assert one(paragraphs, "Inbound Text Finished", html=True).message == WHOLE


def test_a_value_on_the_lines_after_its_label_is_read() -> None:
    text = "Text ID: 1\nFrom Number: 67076\nTo Number: 5551234\nMessage:\nSee you\nat five\n\nThanks"
    assert one(text, "Outbound Text Finished").message == "See you at five"


def test_a_folded_line_continues_any_field() -> None:
    text = "Text ID: 1\nFrom Number: 67076\nTo Number: 5551234\nCreated: Dec 4, 2026\n  10:15 AM\nMessage: hi\n"
    assert one(text, "Outbound Text Finished").created == "2026-12-04T10:15:00Z"


def test_prose_after_a_short_typed_value_is_not_taken_into_it() -> None:
    text = "Text ID: 1\nFrom Number: 67076\nTo Number: 5551234\nFinal Result: SENT\nThank you for using us\n"
    event = one(text, "Outbound Text Finished")
    assert event.final_result == "SENT"
    assert event.payload["fields"]["Final Result"] == "SENT"


def test_a_line_nothing_marks_is_kept_in_a_free_text_value_and_noted() -> None:
    events, notes = read_text_noted(
        "Text ID: 1\nFrom Number: 67076\nTo Number: 5551234\nMessage: Running late\nsee you at 5\n",
        subject="Inbound Text Finished", subscriptions={}, html=False,
    )
    assert [e.message for e in events] == ["Running late see you at 5"]
    assert notes == ["line 'see you at 5' joined to field 'Message' as its continuation:"
                     " nothing marks it as one or as separate text"]


def test_a_wrapped_line_with_a_colon_continues_the_message_instead_of_becoming_a_field() -> None:
    text = ("Text ID: 1\nFrom Number: 67076\nTo Number: 5551234\n"
            "Message: Your appointment with Dr. Rivera is confirmed for Monday at 10:30\n"
            "AM. Note: bring your insurance card.\nBilled Amount: 0.03\n")
    assert one(text, "Outbound Text Finished").message == (
        "Your appointment with Dr. Rivera is confirmed for Monday at 10:30 AM. Note: bring your insurance card."
    )


def test_a_wrapped_line_that_reads_like_a_dash_field_continues_the_message() -> None:
    # Found by test_extract_properties: a link too long to wrap, then "From - the" on the next line, lost
    # the line as a field "From" (a dash separates a known field) instead of continuing the message.
    link = "https://example.com/reservations/confirm/AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
    text = f"Text ID: 1\nFrom Number: 67076\nTo Number: 5551234\nMessage:\n{link}\nFrom - the\nBilled Amount: 0.03\n"
    event = one(text, "Inbound Text Finished")
    assert (event.message, event.billed_amount) == (f"{link} From - the", Decimal("0.03"))
    # After a line that was not wrapped, a known field with a dash is still a field.
    text = "Text ID: 1\nMessage: hi\nTo Number - 5551234\n"
    assert one(text, "Inbound Text Finished").to_number == "5551234"


def test_a_blank_line_ends_a_value() -> None:
    text = "Text ID: 1\nFrom Number: 67076\nTo Number: 5551234\nMessage: hi there\n\nCallFire, Inc.\n"
    assert one(text, "Outbound Text Finished").message == "hi there"


# The field line as matched before the greedy value and the separator check: the lazy value tried `\s*$`
# after every character.
_LAZY_LINE = re.compile(r"^[ \t*•-]*([A-Za-z][A-Za-z0-9 _./#()-]{0,40}?)[ \t*]*(?:[:=]|\s-\s)[ \t]*(.*?)\s*$")
_LINE_PARTS = st.lists(
    st.sampled_from(["Text ID", "From", "a", "Z9", " ", "\t", ":", "=", " - ", "-", "*", "•", "#", "(", ".", "_",
                     "1", "x" * 41, "\u00a0", "\u2003", "\x0b", "\x0c", "\x1f", "é", "//", "http:", "value"])
    | st.text(max_size=4),
    max_size=12,
).map("".join)


@settings(max_examples=3000, deadline=None)
@given(_LINE_PARTS)
def test_a_field_line_is_read_as_the_lazy_pattern_read_it(line: str) -> None:
    """The greedy value stripped after the match, and the lines skipped for want of a separator, read alike."""
    for part in line.splitlines() or [line]:
        old = _LAZY_LINE.match(part)
        new = _LINE.match(part) if ":" in part or "=" in part or "-" in part else None
        assert (old is None) == (new is None)
        if old is not None and new is not None:
            assert (old.group(1), old.group(2)) == (new.group(1), new.group(2).rstrip())



@settings(max_examples=2000, deadline=None)
@given(st.one_of(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)).map(
        lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ").rjust(20, "0")),
    st.text(alphabet="0123456789-:TZ. ", min_size=18, max_size=22).map(lambda s: s[:-1] + "Z"),
))
def test_a_utc_text_time_is_read_as_parsing_and_formatting_read_it(value: str) -> None:
    """The shortcut for a `…Z` time gives what fromisoformat and isoformat give, so attempt payloads keep their form."""
    text = value.strip()
    try:
        expected: str | None = datetime.fromisoformat(text[:-1] + "+00:00").isoformat()
    except ValueError:
        return  # not that form: the shortcut does not take it (to_time's own tests cover what follows)
    if len(text) == 20 and not text.startswith("0"):
        assert time_value(value) == expected


def test_a_text_event_keeps_its_attempt_times_with_their_offset_as_before() -> None:
    event = one("Call ID: 5\nResult: LA\nFinish Time: 2026-11-27T10:10:00Z\nDuration: 42", "Outbound Call Finished")
    assert event.attempts[0].payload["FinishTime"] == "2026-11-27T10:10:00+00:00"
    assert event.attempts[0].finish_time == "2026-11-27T10:10:00Z"


def test_an_html_part_read_twice_reads_the_same() -> None:
    markup = ("<html><head><style>td{x}</style></head><body><table><tr><td>Text ID</td><td>7</td></tr>"
              "<tr><td>Message</td><td>hi &amp; bye</td></tr><tr><td>From</td><td>67076</td></tr>"
              "</table></body></html>")
    assert read(markup, "Outbound Text Finished", html=True) == read(markup, "Outbound Text Finished", html=True)
