"""Generate distinct CallFire notification documents (v1.1 XML/JSON, v2 webhooks) in a realistic mix.

Every document gets resource and attempt ids no other document has (built
from the seed and a counter, not chance), so a server that stores them must insert
every event: nothing is a duplicate. The shapes follow fixtures/seed,
fixtures/documents and the CallFire notes the extractors follow: texts and
calls with one or more TextRecord/CallRecord attempts (retries, transfers
with XFER + XFER_LEG, recordings, question responses), inbound and outbound,
campaign (broadcast) notifications, and v2 webhooks carrying one to three
events. The output depends only on the seed.

    python bench/notifications.py --count 5      # print five documents
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from xml.sax.saxutils import escape

_NS = 'xmlns="http://api.callfire.com/data" xmlns:n="http://api.callfire.com/notification/xsd"'
_TEXTS = (
    "Your appointment is confirmed for {t:%b %d} at {t:%H:%M}. Reply C to cancel.",
    "Order #{n} has shipped & will arrive Friday. Track: https://ex.co/t/{n}",
    "Your verification code is {code}. It expires in 10 minutes.",
    "Reminder: payment of ${amount} is due on {t:%m/%d}. Reply STOP to opt out.",
    "AT&T customers: reply HELP for help, STOP to end. Msg&data rates may apply.",
)
_REPLIES = ("YES", "STOP", "C", "Thanks!", "Can I move it to 3pm?", "HELP", "ok see you then")
_CALL_RESULTS = ("LA", "LA", "LA", "AM", "AM", "BUSY", "NO_ANS", "NO_ANS", "CARRIER_TEMP_ERROR", "INVALID_NUMBER")
_TEXT_RESULTS = ("SENT", "SENT", "SENT", "SENT", "DNT", "CARRIER_ERROR", "UNDIALED")
_LABELS = ("billing", "support", "priority", "reminders", "q4", "retail", "survey", "vip")
_CAMPAIGNS = ("Fall promo", "Black Friday & More", "Appointment reminders", "Renewal drive", "Survey Q4")
_STATUS = {"STARTED": "RUNNING", "STOPPED": "STOPPED", "FINISHED": "FINISHED"}


@dataclass(frozen=True)
class Notification:
    """One generated notification: its document, how it reads as `Field: value` lines, and its ids."""

    kind: str  # "text", "call", "campaign" or "v2"
    format: str  # "xml" or "json"
    body: str
    subject: str
    fields: tuple[tuple[str, str], ...]  # empty for v2 webhooks (no human-readable form)
    ids: tuple[int, ...]  # resource ids, one per event


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


class Documents:
    """Build numbered, distinct notification documents, deterministic from `seed`."""

    def __init__(self, seed: int = 1) -> None:
        if not 0 <= seed < 10**5:
            raise ValueError("seed must be in 0..99999 (it is part of every id)")
        self.rng = random.Random(seed)
        self.seed = seed
        self.n = 0
        self.start = datetime(2026, 11, 1, tzinfo=UTC)
        self.kinds: list[tuple[Callable[[], Notification], int]] = [
            (lambda: self.text(inbound=False, fmt="xml"), 20),
            (lambda: self.text(inbound=False, fmt="json"), 9),
            (lambda: self.text(inbound=True, fmt="xml"), 5),
            (lambda: self.text(inbound=True, fmt="json"), 4),
            (lambda: self.call(inbound=False, fmt="xml"), 16),
            (lambda: self.call(inbound=False, fmt="json"), 8),
            (lambda: self.call(inbound=True, fmt="xml"), 4),
            (lambda: self.call(inbound=False, fmt="xml", transfer=True), 4),
            (lambda: self.campaign(fmt="xml"), 4),
            (lambda: self.campaign(fmt="json"), 2),
            (self.v2, 24),
        ]
        self._weights = [w for _, w in self.kinds]

    def next(self) -> Notification:
        """Return the next document, of a kind drawn from the realistic mix."""
        build = self.rng.choices([k for k, _ in self.kinds], self._weights)[0]
        return build()

    def readable(self) -> Notification:
        """Return the next document of a kind a person reads as fields (a v1.1 text, call or campaign)."""
        while True:
            note = self.next()
            if note.fields:
                return note

    # --- pieces ------------------------------------------------------------

    def _id(self, slot: int) -> int:
        """An id unique to this seed and document (`self.n`, below 10**7) and its `slot` (0 resource, 1.. records)."""
        return 10**11 + (self.seed * 10**7 + self.n) * 16 + slot

    def _phone(self) -> str:
        return f"1{self.rng.choice((213, 310, 323, 415, 646, 818))}555{self.rng.randrange(10000):04d}"

    def _when(self) -> datetime:
        return self.start + timedelta(seconds=self.n * 7 + self.rng.randrange(7))

    def _begin(self) -> tuple[int, datetime]:
        self.n += 1
        return self.n, self._when()

    # --- v1.1 texts and calls ----------------------------------------------

    def text(self, *, inbound: bool, fmt: str) -> Notification:
        n, t = self._begin()
        rng = self.rng
        short = str(rng.choice((67076, 99000, 33733)))
        phone = self._phone()
        frm, to = (phone, short) if inbound else (short, phone)
        if inbound:
            message = rng.choice(_REPLIES)
            results = ["RECEIVED"]
        else:
            message = rng.choice(_TEXTS).format(t=t, n=n, code=rng.randrange(10**6), amount=rng.randrange(20, 400))
            results = [rng.choice(_TEXT_RESULTS)]
            if results[0] == "CARRIER_ERROR" and rng.random() < 0.7:
                results.append("SENT")  # a retry
        records = []
        for i, result in enumerate(results):
            finish = t + timedelta(seconds=4 + 60 * i)
            records.append({"id": self._id(1 + i), "Result": result, "FinishTime": _iso(finish),
                            "BilledAmount": "0.03" if result in ("SENT", "RECEIVED") else "0", "Message": message})
        resource = self._action(t, frm, to, inbound, results[-1], labels=not inbound)
        if not inbound:
            resource["Message"] = message
        fields = [("Text ID", str(self._id(0))), ("From Number", frm), ("To Number", to), ("State", "FINISHED"),
                  ("Final Result", results[-1]), ("Message", message),
                  ("Billed Amount", str(records[-1]["BilledAmount"])), ("Created", _iso(t)),
                  ("Modified", _iso(t + timedelta(seconds=9)))]
        subject = f"{'Inbound' if inbound else 'Outbound'} Text Finished"
        body = self._v1("TextNotification", "Text", "TextRecord", resource, records, fmt)
        return Notification("text", fmt, body, subject, tuple(fields), (self._id(0),))

    def call(self, *, inbound: bool, fmt: str, transfer: bool = False) -> Notification:
        n, t = self._begin()
        del n
        rng = self.rng
        phone, ours = self._phone(), self._phone()
        frm, to = (phone, ours) if inbound else (ours, phone)
        if transfer:
            results = ["XFER", "XFER_LEG"]
        else:
            results = [rng.choice(_CALL_RESULTS)]
            while results[-1] in ("BUSY", "NO_ANS") and len(results) < 3 and rng.random() < 0.5:
                results.append(rng.choice(_CALL_RESULTS))  # retries
        records = []
        for i, result in enumerate(results):
            origin = t + timedelta(seconds=5 + 90 * i)
            answered = result in ("LA", "AM", "XFER", "XFER_LEG")
            duration = rng.randrange(8, 300) if answered else 0
            record: dict[str, Any] = {
                "id": self._id(1 + i), "Result": result,
                "FinishTime": _iso(origin + timedelta(seconds=duration + 6)),
                "BilledAmount": rng.choice(("1", "1.1667", "1.6667", "2")) if answered else "0",
                "OriginateTime": _iso(origin),
            }
            if answered:
                record["AnswerTime"] = _iso(origin + timedelta(seconds=5))
            record["Duration"] = str(duration)
            if answered and rng.random() < 0.25:
                record["RecordingMeta"] = {
                    "id": self._id(8 + i), "Name": "call-recording", "Created": record["FinishTime"],
                    "LengthInSeconds": str(duration), "Link": f"https://www.callfire.com/cloudstorage/recordings/"
                                                              f"{self._id(8 + i)}.mp3"}
            if result == "LA" and rng.random() < 0.3:
                record["QuestionResponse"] = {"Question": "Press 1 to confirm", "Response": rng.choice("12")}
            records.append(record)
        final = "XFER" if transfer else results[-1]
        resource = self._action(t, frm, to, inbound, final, labels=True)
        fields = [("Call ID", str(self._id(0))), ("From Number", frm), ("To Number", to), ("State", "FINISHED"),
                  ("Result", final), ("Duration", f"{records[-1]['Duration']} seconds"),
                  ("Billed Amount", records[-1]["BilledAmount"]), ("Created", _iso(t))]
        subject = f"{'Inbound' if inbound else 'Outbound'} Call Finished"
        body = self._v1("CallFinished", "Call", "CallRecord", resource, records, fmt, agent_call=True)
        return Notification("call", fmt, body, subject, tuple(fields), (self._id(0),))

    def _action(self, t: datetime, frm: str, to: str, inbound: bool, final: str, *, labels: bool) -> dict[str, Any]:
        resource: dict[str, Any] = {"id": self._id(0), "FromNumber": frm, "ToNumber": to, "State": "FINISHED"}
        if not inbound:
            resource["BatchId"] = self._id(12)
            resource["BroadcastId"] = self._id(13)
        resource.update({"ContactId": self._id(14), "Inbound": "true" if inbound else "false", "Created": _iso(t),
                         "Modified": _iso(t + timedelta(seconds=9)), "FinalResult": final})
        if labels and self.rng.random() < 0.4:
            resource["Label"] = self.rng.sample(_LABELS, self.rng.randrange(1, 3))
        return resource

    def _v1(self, root: str, child: str, record_name: str, resource: dict[str, Any], records: list[dict[str, Any]],
            fmt: str, *, agent_call: bool = False) -> str:
        subscription = 41000 + self.rng.randrange(40)
        if fmt == "xml":
            inner = "".join(self._xml_field(k, v, "    ") for k, v in resource.items() if k != "id")
            for record in records:
                parts = "".join(self._xml_field(k, v, "      ") for k, v in record.items() if k != "id")
                inner += f'    <{record_name} id="{record["id"]}">\n{parts}    </{record_name}>\n'
            if agent_call:
                inner += "    <AgentCall>false</AgentCall>\n"
            return (f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<n:{root} {_NS}>\n'
                    f"  <n:SubscriptionId>{subscription}</n:SubscriptionId>\n"
                    f'  <{child} id="{resource["id"]}">\n{inner}  </{child}>\n</n:{root}>\n')
        body: dict[str, Any] = {"@id": str(resource["id"])}
        for key, value in resource.items():
            if key == "id":
                continue
            if key == "Label":
                value = [{"Name": name} for name in value]
            elif key in ("FromNumber", "ToNumber") and self.rng.random() < 0.5:
                value = int(value)  # JSON senders often lose the quotes on phone numbers
            elif key in ("BatchId", "BroadcastId", "ContactId"):
                value = int(value)
            elif key == "Inbound":
                value = value == "true"
            body[key] = value
        json_records = []
        for record in records:
            item: dict[str, Any] = {"@id": str(record["id"])}
            for key, value in record.items():
                if key == "id":
                    continue
                if key in ("BilledAmount", "Duration"):
                    value = json.loads(value)
                elif isinstance(value, dict):
                    value = {("@id" if k == "id" else k): (str(v) if k == "id" else v) for k, v in value.items()}
                item[key] = value
            json_records.append(item)
        # A single attempt arrives as a bare object, several as a list.
        body[record_name] = json_records[0] if len(json_records) == 1 else json_records
        if agent_call:
            body["AgentCall"] = False
        document = {root: {"SubscriptionId": subscription, "AccountId": 146076003, child: body}}
        return json.dumps(document, indent=4) + "\n"

    @staticmethod
    def _xml_field(key: str, value: Any, indent: str) -> str:
        if isinstance(value, list):
            return "".join(f"{indent}<{key}><Name>{escape(v)}</Name></{key}>\n" for v in value)
        if isinstance(value, dict):
            attrs = f' id="{value["id"]}"' if "id" in value else ""
            inner = "".join(f"{indent}  <{k}>{escape(str(v))}</{k}>\n" for k, v in value.items() if k != "id")
            return f"{indent}<{key}{attrs}>\n{inner}{indent}</{key}>\n"
        return f"{indent}<{key}>{escape(str(value))}</{key}>\n"

    # --- campaigns -----------------------------------------------------------

    def campaign(self, *, fmt: str) -> Notification:
        n, t = self._begin()
        rng = self.rng
        event = rng.choice(("STARTED", "STARTED", "STOPPED", "FINISHED", "FINISHED"))
        status = _STATUS[event]
        kind = rng.choice(("VOICE", "TEXT", "TEXT", "IVR"))
        name = f"{rng.choice(_CAMPAIGNS)} {n}"
        labels = rng.sample(_LABELS, 2)
        bid = self._id(0)
        config_name = {"VOICE": "VoiceBroadcastConfig", "TEXT": "TextBroadcastConfig",
                       "IVR": "IvrBroadcastConfig"}[kind]
        config: dict[str, Any] = {"@id": str(self._id(1)), "Created": _iso(t - timedelta(days=2)),
                                  "FromNumber": self._phone()}
        if kind == "TEXT":
            config["Message"] = rng.choice(_TEXTS).format(t=t, n=n, code=0, amount=99)
        elif kind == "VOICE":
            config.update({"AnsweringMachineConfig": "AM_AND_LIVE", "LiveSoundText": "Hello from CallFire",
                           "MachineSoundText": "Please call us back"})
        else:
            config["DialplanXml"] = '<dialplan name="Root"><play type="tts">Press 1</play></dialplan>'
        retry = {"MaxAttempts": 2, "MinutesBetweenAttempts": 60, "RetryResults": "BUSY NO_ANS",
                 "RetryPhoneTypes": "FIRST_NUMBER"}
        if fmt == "xml":
            cfg = "".join(f"      <{k}>{escape(str(v))}</{k}>\n" for k, v in config.items() if k != "@id")
            label_xml = "".join(f"    <Label>{escape(v)}</Label>\n" for v in labels)
            retry_xml = "".join(f"      <{k}>{v}</{k}>\n" for k, v in retry.items())
            body = (f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<n:BroadcastNotification {_NS}>\n'
                    f"  <n:SubscriptionId>{52000 + rng.randrange(20)}</n:SubscriptionId>\n"
                    f'  <Broadcast id="{bid}">\n    <Name>{escape(name)}</Name>\n    <Status>{status}</Status>\n'
                    f"    <LastModified>{_iso(t)}</LastModified>\n    <Type>{kind}</Type>\n{label_xml}"
                    f"    <ResumeNextDay>false</ResumeNextDay>\n"
                    f'    <{config_name} id="{config["@id"]}">\n{cfg}      <RetryConfig>\n{retry_xml}'
                    f"      </RetryConfig>\n    </{config_name}>\n  </Broadcast>\n</n:BroadcastNotification>\n")
        else:
            config["RetryConfig"] = retry
            document = {"BroadcastNotification": {
                "SubscriptionId": 52000 + rng.randrange(20), "AccountId": 146076003,
                "Broadcast": {"@id": str(bid), "Name": name, "Status": status, "LastModified": _iso(t),
                              "Type": kind, "Label": labels, "ResumeNextDay": False, config_name: config}}}
            body = json.dumps(document, indent=4) + "\n"
        fields = (("Campaign Name", name), ("Campaign Id", str(bid)), ("Broadcast Status", status),
                  ("Broadcast Type", kind), ("Labels", ", ".join(labels)), ("Last Modified", _iso(t)))
        return Notification("campaign", fmt, body, f"Campaign {event.title()}: {name}", fields, (bid,))

    # --- v2 webhooks -----------------------------------------------------------

    def v2(self) -> Notification:
        n, t = self._begin()
        del n
        rng = self.rng
        count = rng.choices((1, 2, 3), (70, 20, 10))[0]
        events, ids = [], []
        for slot in range(count):
            kind = rng.choices(("OutboundCall", "OutboundText", "InboundText", "TextBroadcast",
                                "OutboundTextDeliveryReport"), (35, 35, 10, 5, 15))[0]
            rid = self._id(slot * 4)
            ids.append(rid)
            when = _ms(t) + slot * 1000
            resource: dict[str, Any]
            event = "Finished"
            if kind == "OutboundCall":
                result = rng.choice(_CALL_RESULTS)
                resource = {"id": rid, "fromNumber": self._phone(), "toNumber": self._phone(), "state": "FINISHED",
                            "campaignId": 900 + rng.randrange(50), "batchId": rid + 1,
                            "contact": {"id": rid + 2, "homePhone": self._phone()}, "inbound": False,
                            "created": when - 40000, "modified": when, "finalCallResult": result,
                            "labels": rng.sample(_LABELS, 1),
                            "records": [{"id": rid + 3, "billedAmount": 1.1667, "finishTime": when,
                                         "callResult": result, "originateTime": when - 35000,
                                         "answerTime": when - 30000, "duration": rng.randrange(300),
                                         "recordings": []}],
                            "agentCall": False, "notes": []}
            elif kind in ("OutboundText", "InboundText"):
                inbound = kind == "InboundText"
                message = rng.choice(_REPLIES) if inbound else rng.choice(_TEXTS).format(
                    t=t, n=rid, code=rng.randrange(10**6), amount=rng.randrange(20, 400))
                result = "RECEIVED" if inbound else rng.choice(_TEXT_RESULTS)
                resource = {"id": rid, "fromNumber": self._phone() if inbound else "67076",
                            "toNumber": "67076" if inbound else self._phone(), "state": "FINISHED",
                            "contact": {"id": rid + 2}, "inbound": inbound, "created": when - 4000,
                            "modified": when, "message": message, "finalTextResult": result,
                            "records": [{"id": rid + 3, "billedAmount": 0.03, "finishTime": when,
                                         "textResult": result, "message": message}]}
                if not inbound:
                    resource.update({"campaignId": 900 + rng.randrange(50), "batchId": rid + 1, "media": []})
            elif kind == "TextBroadcast":
                event = rng.choice(("Started", "Stopped", "Finished"))
                resource = {"id": rid, "name": f"{rng.choice(_CAMPAIGNS)} {rid}", "status": _STATUS[event.upper()],
                            "lastModified": when, "fromNumber": "67076", "labels": rng.sample(_LABELS, 1),
                            "retryConfig": {"maxAttempts": 1, "minutesBetweenAttempts": 60, "retryResults": [],
                                            "retryPhoneTypes": ["MOBILE_PHONE"]},
                            "message": "Sale this weekend"}
            else:
                event = "Received"
                resource = {"id": rid, "actionId": rid + 1, "campaignId": 900 + rng.randrange(50),
                            "toNumber": self._phone(), "fromNumber": "67076", "timestamp": when,
                            "deliveryState": rng.choice(("DELIVERED", "DELIVERED", "UNDELIVERED")),
                            "deliveryCategory": "DELIVERED_TO_HANDSET"}
            events.append({"timestamp": when, "webhookId": 10001, "resourceType": kind,
                           "eventType": event, "resource": resource})
        document = {"timestamp": _ms(t), "webhookId": 10001, "webhookName": "all events",
                    "resourceType": events[0]["resourceType"], "events": events}
        return Notification("v2", "json", json.dumps(document, indent=2) + "\n", "Webhook event", (), tuple(ids))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    docs = Documents(args.seed)
    for _ in range(args.count):
        print(docs.next().body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
