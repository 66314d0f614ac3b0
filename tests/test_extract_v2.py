"""v2 webhook envelopes become one event per entry, typed from the payload."""

from __future__ import annotations

import json

import pytest

from mailhook.errors import Unreadable
from mailhook.extract.document import read_document
from mailhook.extract.v2 import event_type_for, read_v2, upper_snake


def _envelope(*events: dict[str, object]) -> dict[str, object]:
    return {"timestamp": 1474563235000, "webhookId": 3, "webhookName": "w", "events": list(events)}


def _event(resource_type: str, event_type: str, **resource: object) -> dict[str, object]:
    return {"timestamp": 1474563235000, "webhookId": 3, "resourceType": resource_type,
            "eventType": event_type, "resource": {"id": 1, **resource}}  # fmt: skip


@pytest.mark.parametrize(
    ("resource_type", "event_name", "expected"),
    [
        ("OutboundCall", "Finished", "OUTBOUND_CALL_FINISHED"),
        ("InboundText", "Finished", "INBOUND_TEXT_FINISHED"),
        ("CallBroadcast", "Started", "CAMPAIGN_STARTED"),
        ("TextBroadcast", "Stopped", "CAMPAIGN_STOPPED"),
        ("CccCampaign", "Finished", "CAMPAIGN_FINISHED"),
        ("ContactList", "ValidationFinished", "CONTACT_LIST_VALIDATION_FINISHED"),
        ("ContactList", "ValidationFailed", "CONTACT_LIST_VALIDATION_FAILED"),
        ("OutboundTextDeliveryReport", "Received", "OUTBOUND_TEXT_DELIVERY_REPORT_RECEIVED"),
        ("MonthlyRenewal", "Failed", "MONTHLY_RENEWAL_FAILED"),
        ("LowBalance", "Finished", "LOW_BALANCE_FINISHED"),
    ],
)
def test_event_types_follow_resource_and_event_names(
    resource_type: str, event_name: str, expected: str
) -> None:
    assert event_type_for(resource_type, event_name) == expected


@pytest.mark.parametrize(
    ("resource_type", "event_name", "expected_type", "expected_resource"),
    [
        ("outboundcall", "finished", "OUTBOUND_CALL_FINISHED", "OutboundCall"),
        ("CALLBROADCAST", "start", "CAMPAIGN_STARTED", "CallBroadcast"),
        ("TextBroadcast", "STOP", "CAMPAIGN_STOPPED", "TextBroadcast"),
        ("contactlist", "validationfinished", "CONTACT_LIST_VALIDATION_FINISHED", "ContactList"),
    ],
)
def test_names_are_matched_case_insensitively(
    resource_type: str, event_name: str, expected_type: str, expected_resource: str
) -> None:
    [event] = read_v2(_envelope(_event(resource_type, event_name)))
    assert (event.event_type, event.resource_type, event.event_type_source) == (
        expected_type,
        expected_resource,
        "payload",
    )


def test_unknown_names_are_kept_as_sent_in_upper_snake_case() -> None:
    [event] = read_v2(_envelope(_event("HoloCall", "beamed-up")))
    assert (event.event_type, event.resource_type) == ("HOLO_CALL_BEAMED_UP", "HoloCall")


def test_upper_snake_splits_camel_case_and_acronyms() -> None:
    assert upper_snake("OutboundTextDeliveryReport") == "OUTBOUND_TEXT_DELIVERY_REPORT"
    assert upper_snake("CCCCampaign") == "CCC_CAMPAIGN"


def test_every_event_in_the_envelope_becomes_an_event_with_its_own_payload() -> None:
    envelope = _envelope(_event("OutboundCall", "Finished"), _event("InboundText", "Finished"))
    events = read_v2(envelope)
    assert [e.event_type for e in events] == ["OUTBOUND_CALL_FINISHED", "INBOUND_TEXT_FINISHED"]
    for event, item in zip(events, envelope["events"], strict=True):  # type: ignore[call-overload]
        assert event.payload == {
            "timestamp": 1474563235000,
            "webhookId": 3,
            "webhookName": "w",
            "events": [item],
        }


def test_modified_falls_back_to_the_event_timestamp() -> None:
    [event] = read_v2(_envelope(_event("ContactList", "ValidationFinished")))
    assert event.modified == "2016-09-22T16:53:55Z"


def test_resource_modified_wins_over_the_event_timestamp() -> None:
    [event] = read_v2(_envelope(_event("OutboundCall", "Finished", modified=1000)))
    assert event.modified == "1970-01-01T00:00:01Z"


def test_ids_above_2_pow_53_stay_exact_through_the_document_reader() -> None:
    body = json.dumps(_envelope(_event("OutboundText", "Finished", campaignId=2**60 + 1)))
    body = body.replace('"id": 1', f'"id": {2**53 + 1}')
    [event], _ = read_document(body.encode(), {})
    assert (event.resource_id, event.broadcast_id) == (2**53 + 1, 2**60 + 1)


def test_records_become_attempts_and_sum_into_the_event() -> None:
    records = [
        {"id": 10, "billedAmount": 0.5, "duration": 20, "callResult": "LA"},
        {"id": 11, "billedAmount": 1, "duration": 5, "callResult": "XFER_LEG"},
    ]
    body = json.dumps(_envelope(_event("OutboundCall", "Finished", records=records)))
    [event], _ = read_document(body, {})
    assert [(a.record_id, a.result) for a in event.attempts] == [(10, "LA"), (11, "XFER_LEG")]
    # Both legs are billed; the transferred leg's seconds are its own measure, not the customer's call.
    assert (str(event.billed_amount), event.duration, event.transfer_duration) == ("1.5", 20, 5)


def test_a_bare_v2_event_without_envelope_is_read() -> None:
    [event] = read_v2(_event("InboundCall", "Finished", inbound=True))
    assert (event.event_type, event.inbound) == ("INBOUND_CALL_FINISHED", True)


def test_an_envelope_without_events_holds_nothing() -> None:
    with pytest.raises(Unreadable, match="no notification event"):
        read_document(json.dumps(_envelope()), {})


def test_an_event_without_names_is_unreadable() -> None:
    with pytest.raises(Unreadable, match=r"events\[0\]: no resourceType or eventType"):
        read_v2({"events": [{"resource": {"id": 1}}]})


_BAD = {"campaignId": "x", "batchId": "x", "accountId": "x", "inbound": "maybe", "billedAmount": "x", "duration": "x",
        "created": "x", "modified": "x", "fromNumber": {"a": 1}, "labels": [{"Name": {"a": 1}}]}
_BAD_RECORD = {"id": "x", "finishTime": "x", "billedAmount": "x", "duration": "x", "originateTime": "x",
               "answerTime": "x", "result": {"a": 1}, "message": {"a": 1}}


@pytest.mark.parametrize("index", [0, 1, 63, 64, 70])  # past the cache of names (64 entries) too
def test_a_bad_field_is_named_by_its_whole_path_at_any_event_and_record(index: int) -> None:
    fine = _event("OutboundText", "Finished")
    for field, value in _BAD.items():
        events = [fine] * index + [_event("OutboundText", "Finished", **{field: value})]
        with pytest.raises(Unreadable, match=rf"^v2 events\[{index}\]\.resource\.{field}: "):
            read_v2(_envelope(*events))
    for field, value in _BAD_RECORD.items():
        records = [{"id": 1}] * index + [{field: value}]
        with pytest.raises(Unreadable, match=rf"^v2 events\[0\]\.resource\.records\[{index}\]\.{field}: "):
            read_v2(_envelope(_event("OutboundText", "Finished", records=records)))
    with pytest.raises(Unreadable, match=rf"^v2 events\[{index}\]\.resource\.id: "):
        read_v2(_envelope(*[fine] * index, _event("OutboundText", "Finished", id="x")))
    with pytest.raises(Unreadable, match=rf"^v2 events\[{index}\]\.webhookId: "):
        read_v2(_envelope(*[fine] * index, {**fine, "webhookId": "x"}))
