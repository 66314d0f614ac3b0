"""v1.1 notifications become events the same way whether they came as XML, SOAP or JSON."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from mailhook.errors import Unreadable
from mailhook.extract.document import read_document
from mailhook.extract.v1 import read_v1
from mailhook.models import to_json

SEED = Path(__file__).resolve().parent.parent / "fixtures" / "seed"

TEXT_XML = """<?xml version="1.0" encoding="UTF-8"?>
<n:TextNotification xmlns="http://api.callfire.com/data" xmlns:n="http://api.callfire.com/notification/xsd">
<n:SubscriptionId>41001</n:SubscriptionId>
<Text id="11111111111">
  <FromNumber>67076</FromNumber><ToNumber>11111111111</ToNumber>
  <Inbound>{inbound}</Inbound><FinalResult>SENT</FinalResult>
  <TextRecord id="1"><Result>SENT</Result><BilledAmount>0.03</BilledAmount>
    <Message>first</Message></TextRecord>
  <TextRecord id="2"><Result>SENT</Result><BilledAmount>0.03</BilledAmount>
    <Message>last</Message></TextRecord>
</Text>
</n:TextNotification>"""


def _broadcast(status: str) -> dict[str, object]:
    return {"SubscriptionId": 7, "Broadcast": {"@id": "5", "Status": status, "Type": "VOICE"}}


def test_xml_and_json_forms_of_the_same_text_give_the_same_columns() -> None:
    [from_xml], _ = read_document(TEXT_XML.format(inbound="false"), {})
    as_json = {
        "TextNotification": {
            "SubscriptionId": 41001,
            "Text": {
                "@id": "11111111111",
                "FromNumber": 67076,
                "ToNumber": 11111111111,
                "Inbound": False,
                "FinalResult": "SENT",
                "TextRecord": [
                    {"@id": 1, "Result": "SENT", "BilledAmount": 0.03, "Message": "first"},
                    {"@id": 2, "Result": "SENT", "BilledAmount": 0.03, "Message": "last"},
                ],
            },
        }
    }
    [from_json], _ = read_document(json.dumps(as_json), {})
    xml_row, json_row = from_xml.row(), from_json.row()
    assert (xml_row.pop("format"), json_row.pop("format")) == ("xml", "json")
    xml_row.pop("payload")
    json_row.pop("payload")
    assert xml_row == json_row


@pytest.mark.parametrize(
    ("inbound", "event_type"), [("true", "INBOUND_TEXT_FINISHED"), ("false", "OUTBOUND_TEXT_FINISHED")]
)
def test_text_event_type_is_inferred_from_inbound(inbound: str, event_type: str) -> None:
    [event], _ = read_document(TEXT_XML.format(inbound=inbound), {})
    assert (event.event_type, event.event_type_source) == (event_type, "inferred")


def test_subscription_map_wins_over_inference() -> None:
    [event], _ = read_document(TEXT_XML.format(inbound="true"), {41001: "OUTBOUND_TEXT_FINISHED"})
    assert (event.event_type, event.event_type_source) == ("OUTBOUND_TEXT_FINISHED", "config")


def test_subscription_map_for_another_subscription_does_not_apply() -> None:
    [event], _ = read_document(TEXT_XML.format(inbound="true"), {41002: "OUTBOUND_TEXT_FINISHED"})
    assert (event.event_type, event.event_type_source) == ("INBOUND_TEXT_FINISHED", "inferred")


def test_text_message_falls_back_to_the_last_records_message() -> None:
    [event], _ = read_document(TEXT_XML.format(inbound="false"), {})
    assert event.message == "last"


def test_billed_amount_is_summed_exactly_over_attempts() -> None:
    [event], _ = read_document(TEXT_XML.format(inbound="false"), {})
    assert event.billed_amount == Decimal("0.06")
    assert [a.record_id for a in event.attempts] == [1, 2]


@pytest.mark.parametrize(
    ("status", "event_type"),
    [
        ("RUNNING", "CAMPAIGN_STARTED"),
        ("START_PENDING", "CAMPAIGN_STARTED"),
        ("STOPPED", "CAMPAIGN_STOPPED"),
        ("FINISHED", "CAMPAIGN_FINISHED"),
        ("ARCHIVED", "CAMPAIGN_FINISHED"),
        ("VALIDATING_EMAIL", "CAMPAIGN_FINISHED"),
    ],
)
def test_campaign_event_type_is_inferred_from_status(status: str, event_type: str) -> None:
    event = read_v1("BroadcastNotification", _broadcast(status), "json", {})
    assert (event.event_type, event.event_type_source, event.broadcast_status) == (
        event_type,
        "inferred",
        status,
    )


def test_campaign_subscription_map_wins_over_status() -> None:
    event = read_v1("BroadcastNotification", _broadcast("FINISHED"), "json", {7: "CAMPAIGN_STARTED"})
    assert (event.event_type, event.event_type_source) == ("CAMPAIGN_STARTED", "config")


def test_unknown_enum_values_are_stored_as_they_come() -> None:
    notification = {"Call": {"@id": "1", "State": "TELEPORTED", "FinalResult": "ALIENS", "Inbound": False}}
    event = read_v1("CallFinished", notification, "json", {})
    assert (event.state, event.final_result) == ("TELEPORTED", "ALIENS")


def test_payload_keeps_the_whole_notification() -> None:
    raw = (SEED / "call-outbound.json").read_bytes()
    [event], _ = read_document(raw, {})
    assert json.loads(to_json(event.payload)) == json.loads(raw)


def test_ivr_dialplan_stays_an_escaped_string_in_the_payload() -> None:
    xml = (
        "<BroadcastNotification><Broadcast id='9'><Type>IVR</Type><IvrBroadcastConfig>"
        "<DialplanXml>&lt;dialplan&gt;&lt;hangup/&gt;&lt;/dialplan&gt;</DialplanXml>"
        "</IvrBroadcastConfig></Broadcast></BroadcastNotification>"
    )
    [event], _ = read_document(xml, {})
    config = event.payload["BroadcastNotification"]["Broadcast"]["IvrBroadcastConfig"]
    assert config["DialplanXml"] == "<dialplan><hangup/></dialplan>"


def test_call_durations_are_summed_over_records() -> None:
    notification = {
        "Call": {"@id": "1", "CallRecord": [{"@id": "2", "Duration": 10}, {"@id": "3", "Duration": "5"}]}
    }
    event = read_v1("CallFinished", notification, "json", {})
    assert event.duration == 15


def test_notification_without_its_resource_is_unreadable() -> None:
    with pytest.raises(Unreadable, match="no Text element"):
        read_v1("TextNotification", {"SubscriptionId": "1"}, "xml", {})


def test_json_id_may_be_a_string_or_a_number() -> None:
    by_string = read_v1("CallFinished", {"Call": {"@id": "974239899003"}}, "json", {})
    by_number = read_v1("CallFinished", {"Call": {"@id": 974239899003}}, "json", {})
    assert by_string.resource_id == by_number.resource_id == 974239899003
