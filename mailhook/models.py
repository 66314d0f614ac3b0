"""The frozen data that flows between the pipeline's stages."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass, field, fields
from decimal import Decimal
from typing import Any, Literal, TypeVar

_Frozen = TypeVar("_Frozen", bound=type)


class _Factory:
    """The default of a parameter whose field has a `default_factory` (shown as dataclasses shows it)."""

    def __repr__(self) -> str:
        return "<factory>"


def quick_init(cls: _Frozen) -> _Frozen:
    """Give a frozen, slotted dataclass an `__init__` that stores its fields as a plain class's would.

    The frozen `__init__` dataclasses writes stores each field through
    `object.__setattr__` (a descriptor call with an argument tuple, ~0.3 µs a
    field: 28 of them make an `Event` cost ~8 µs). This one turns the new
    instance into a twin class with the same slots and no frozen
    `__setattr__`, stores each field with a plain attribute store, and turns it
    back: the same instance, fields and values (tests/test_models_init.py compares
    the two on every class it decorates). A subclass (another slot layout)
    keeps the dataclass's own `__init__`.
    """
    frozen_init = cls.__dict__["__init__"]
    # CPython lets `__class__` move between heap types with the same base and the same slots.
    twin = type(f"_Open{cls.__name__}", (), {"__slots__": cls.__dict__["__slots__"]})
    names: dict[str, Any] = {"_cls": cls, "_twin": twin, "_frozen_init": frozen_init,
                             "_set": object.__setattr__, "_factory": _Factory()}
    params, values = [], []
    for item in fields(cls):
        if not item.init or item.kw_only:
            raise TypeError(f"quick_init: {cls.__name__}.{item.name} is not a plain positional field")
        name = item.name
        if item.default is not MISSING:
            names[f"_default_{name}"] = item.default
            params.append(f"{name}=_default_{name}")
            values.append(name)
        elif item.default_factory is not MISSING:
            names[f"_make_{name}"] = item.default_factory
            params.append(f"{name}=_factory")
            values.append(f"(_make_{name}() if {name} is _factory else {name})")
        else:
            params.append(name)
            values.append(name)
    # Generated from the fields, as dataclasses generates its own, so that it cannot drift from them.
    source = (
        f"def __init__(self, {', '.join(params)}):\n"
        f"    if type(self) is not _cls:\n"
        f"        return _frozen_init(self, {', '.join(values)})\n"
        f"    _set(self, '__class__', _twin)\n"
        + "".join(f"    self.{item.name} = {value}\n" for item, value in zip(fields(cls), values, strict=True))
        + "    self.__class__ = _cls\n"
    )
    exec(source, names)
    init = names["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = frozen_init.__doc__
    init.__module__ = cls.__module__
    cls.__init__ = init  # type: ignore[misc]
    return cls


Channel = Literal["smtp", "imap", "http", "file"]
Kind = Literal["email", "document"]


def kind_of(raw: bytes) -> Kind:
    """Say whether raw bytes are a bare notification document or an email, from the first non-blank byte."""
    return "document" if raw.lstrip()[:1] in (b"<", b"{", b"[") else "email"


def stored_kind(channel: str, raw: bytes) -> Kind:
    """Say how a stored delivery's raw bytes are read: emails, or bare documents (HTTP, .xml/.json)."""
    if channel in ("smtp", "imap"):
        return "email"
    if channel == "http":
        return "document"
    return kind_of(raw)


def utcnow() -> str:
    """Return the current UTC time as ISO 8601 with milliseconds and a Z."""
    now = time.time()
    second = int(now)
    return f"{_utc_second(second)}.{int((now - second) * 1000):03d}Z"


@functools.lru_cache(maxsize=2)
def _utc_second(second: int) -> str:
    # Called twice per delivery: each second is formatted once (docs/performance.md).
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
# `pending`: the raw bytes are stored and acknowledged, their events not yet extracted.
Status = Literal["stored", "duplicate", "quarantined", "pending"]
TypeSource = Literal["payload", "config", "inferred"]

# The event types each figure and report groups by; the store's triggers and the reports read them here.
CALL_TYPES = ("OUTBOUND_CALL_FINISHED", "INBOUND_CALL_FINISHED")
TEXT_TYPES = ("OUTBOUND_TEXT_FINISHED", "INBOUND_TEXT_FINISHED")
CAMPAIGN_TYPES = ("CAMPAIGN_STARTED", "CAMPAIGN_STOPPED", "CAMPAIGN_FINISHED")


@dataclass(frozen=True, slots=True)
class FolderPosition:
    """How far an IMAP folder has been read; stored in the same transaction as the delivery."""

    account: str
    folder: str
    uidvalidity: int
    uid: int


@quick_init
@dataclass(frozen=True, slots=True)
class Delivery:
    """One thing received: an email, an HTTP body or a file, with its envelope.

    `kind` says how to read `raw`: `email` is an RFC 5322 message (SMTP, IMAP,
    .eml, mbox), `document` is a bare notification body (HTTP POST, .xml/.json).
    """

    channel: Channel
    raw: bytes
    received_at: str
    kind: Kind = "email"
    envelope_from: str | None = None
    envelope_to: tuple[str, ...] = ()
    remote_addr: str | None = None
    content_type: str | None = None
    source: str | None = None
    position: FolderPosition | None = None

    @property
    def sha256(self) -> str:
        """Return the hex SHA-256 of the raw bytes."""
        return hashlib.sha256(self.raw).hexdigest()


@quick_init
@dataclass(frozen=True, slots=True)
class Attempt:
    """One dial or send attempt: a TextRecord, CallRecord or v2 record."""

    record_id: int | None = None
    result: str | None = None
    finish_time: str | None = None
    billed_amount: Decimal | None = None
    duration: int | None = None
    originate_time: str | None = None
    answer_time: str | None = None
    message: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """Return the `attempts` table columns (without ids) for this attempt."""
        return {
            "record_id": self.record_id,
            "result": self.result,
            "finish_time": self.finish_time,
            "billed_amount": _number(self.billed_amount),
            "duration": self.duration,
            "originate_time": self.originate_time,
            "answer_time": self.answer_time,
            "message": self.message,
            "payload": to_json(self.payload),
        }


def to_json(value: Any) -> str:
    """Serialize a payload to compact JSON, writing each Decimal as no longer than it was sent.

    A number whose plain integer or float form says the same value in about as
    many characters is written that way (what nearly every notification holds);
    any other (`1e300`'s 301 digits, `1e-999` that a float turns into 0.0) is
    written as its own exponent form, `1E+300`, so a payload never grows past
    the text it was read from.
    """
    try:
        return _ENCODE(value)
    except _ExactNumber:
        return "".join(_encode(value))


# A Decimal's integer form is written only up to this exponent: "1e3" (3 characters) is at most "1000".
_MAX_PLAIN_EXPONENT = 3


class _ExactNumber(Exception):
    """A Decimal that neither an int nor a float writes as it was sent: the payload is encoded by `_encode`."""


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return _plain_number(value)
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def json_encoder(
    *, default: Callable[[Any], Any], ensure_ascii: bool, separators: tuple[str, str]
) -> Callable[[Any], str]:
    """Return what `json.JSONEncoder(ensure_ascii=…, separators=…, default=…).encode` does, its encoder made once.

    The encoder object builds the standard library's C encoder anew on every
    call (a fifth of encoding a payload); this builds it once. Without
    circular-reference markers: what is encoded here is a tree (a payload a
    parser read, a log line's fields), and a shared markers dict would keep
    stale ids after an exception left a container half written.
    """
    # json.encoder.c_make_encoder is the C accelerator's undocumented constructor, touched only here;
    # tests/test_models.py compares its output with json's own encoder, and with it absent.
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator (another Python): the encoder object's own encode
        return json.JSONEncoder(ensure_ascii=ensure_ascii, separators=separators, default=default).encode
    item_separator, key_separator = separators
    strings = json.encoder.encode_basestring_ascii if ensure_ascii else json.encoder.encode_basestring
    # (markers, default, encoder, indent, key_separator, item_separator, sort_keys, skipkeys, allow_nan)
    chunks = make(None, default, strings, None, key_separator, item_separator, False, False, True)

    def encode(value: Any) -> str:
        return "".join(chunks(value, 0))

    return encode


_ENCODE = json_encoder(default=_json_default, ensure_ascii=False, separators=(",", ":"))


def _plain_number(value: Decimal) -> int | float:
    """Return the int or float json writes for `value`; raise `_ExactNumber` if neither is exact and short."""
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and 0 <= exponent <= _MAX_PLAIN_EXPONENT:
        return int(value)  # integral amounts stay ints
    # Others as the shortest float that round-trips (e.g. 1.6667), when that is the very value sent.
    number = float(value)
    if math.isfinite(number) and Decimal(repr(number)) == value:
        return number
    raise _ExactNumber


def _encode(value: Any) -> Iterator[str]:
    """Yield `value` as the compact JSON `to_json` writes, each Decimal in the form `_number_text` gives."""
    if isinstance(value, dict):
        yield "{"
        for i, (key, item) in enumerate(value.items()):
            yield ("," if i else "") + json.dumps(key if isinstance(key, str) else str(key), ensure_ascii=False) + ":"
            yield from _encode(item)
        yield "}"
    elif isinstance(value, list | tuple | set | frozenset):
        yield "["
        for i, item in enumerate(value):
            if i:
                yield ","
            yield from _encode(item)
        yield "]"
    elif isinstance(value, Decimal):
        yield _number_text(value)
    else:
        yield json.dumps(value, ensure_ascii=False, default=_json_default)


def _number_text(value: Decimal) -> str:
    try:
        return json.dumps(_plain_number(value))
    except _ExactNumber:
        # Decimal's own exponent form: the digits and exponent as sent, valid JSON (NaN and
        # infinities never get here: the JSON reader refuses them).
        return str(value)


def _number(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


@quick_init
@dataclass(frozen=True, slots=True)
class Event:
    """One CallFire notification event, with the columns of the `events` table."""

    event_type: str
    event_type_source: TypeSource
    api_version: str
    format: str
    resource_type: str | None = None
    resource_id: int | None = None
    subscription_id: int | None = None
    account_id: int | None = None
    webhook_id: int | None = None
    from_number: str | None = None
    to_number: str | None = None
    inbound: bool | None = None
    state: str | None = None
    final_result: str | None = None
    message: str | None = None
    billed_amount: Decimal | None = None
    duration: int | None = None
    batch_id: int | None = None
    broadcast_id: int | None = None
    contact_id: int | None = None
    broadcast_name: str | None = None
    broadcast_status: str | None = None
    broadcast_type: str | None = None
    labels: tuple[str, ...] | None = None
    created: str | None = None
    modified: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    attempts: tuple[Attempt, ...] = ()

    def row(self) -> dict[str, Any]:
        """Return the `events` table columns this event fills (not ids or times of storage)."""
        return {
            "dedupe_key": self.dedupe_key,
            "event_type": self.event_type,
            "event_type_source": self.event_type_source,
            "api_version": self.api_version,
            "format": self.format,
            "resource_type": self.resource_type,
            "resource_id": self.resource_id,
            "subscription_id": self.subscription_id,
            "account_id": self.account_id,
            "webhook_id": self.webhook_id,
            "from_number": self.from_number,
            "to_number": self.to_number,
            "inbound": None if self.inbound is None else int(self.inbound),
            "state": self.state,
            "final_result": self.final_result,
            "message": self.message,
            "billed_amount": _number(self.billed_amount),
            "duration": self.duration,
            "batch_id": self.batch_id,
            "broadcast_id": self.broadcast_id,
            "contact_id": self.contact_id,
            "broadcast_name": self.broadcast_name,
            "broadcast_status": self.broadcast_status,
            "broadcast_type": self.broadcast_type,
            "labels": None if self.labels is None else to_json(list(self.labels)),
            "created": self.created,
            "modified": self.modified,
            "payload": to_json(self.payload),
            "transfer_duration": self.transfer_duration,
        }

    @property
    def transfer_duration(self) -> int | None:
        """Return the seconds of the transferred legs (XFER_LEG attempts), None for a call never transferred."""
        legs = [a.duration for a in self.attempts if a.result == "XFER_LEG" and a.duration is not None]
        return sum(legs) if legs else None

    @property
    def dedupe_key(self) -> str:
        """Return what makes two notifications the same event (docs/schema.md).

        Texts and calls finish once: event type + resource id. Campaign and
        other resource events can recur, so their last-modified time (or the
        status, or v2 timestamp) joins the key. Without a resource id the key
        is the hash of the canonical payload.
        """
        if self.resource_id is None:
            canonical = json.dumps(self.payload, sort_keys=True, default=str)
            return f"{self.event_type}:sha256:{hashlib.sha256(canonical.encode()).hexdigest()}"
        key = f"{self.event_type}:{self.resource_type or ''}:{self.resource_id}"
        if self.event_type.startswith("CAMPAIGN_") or self.resource_type in RECURRING:
            key += f":{self.modified or self.broadcast_status or ''}"
        return key


# v2 resource types whose events can happen more than once per resource id.
RECURRING = frozenset(
    {
        "Broadcast",
        "CallBroadcast",
        "TextBroadcast",
        "CccCampaign",
        "ContactList",
        "MonthlyRenewal",
        "LowBalance",
    }
)


@quick_init
@dataclass(frozen=True, slots=True)
class Extraction:
    """What the extractor read from one delivery: events, or why there are none.

    Exactly one of `events` (non-empty) and `reason` is set. `notes` records
    anything done to read the input that an analyst should know about, such as
    a recovered malformed XML document.
    """

    events: tuple[Event, ...] = ()
    reason: str | None = None
    notes: tuple[str, ...] = ()
    message_id: str | None = None
    subject: str | None = None


@quick_init
@dataclass(frozen=True, slots=True)
class Receipt:
    """The durable outcome of one delivery, handed back to the door that sent it."""

    delivery_id: int
    status: Status
    events: int = 0
    duplicates: int = 0
    error: str | None = None
    message_id: str | None = None
    # The event types of the new events, in order (for metrics by type).
    event_types: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MailLimits:
    """How much structure one email may have; past a limit it is quarantined unparsed, with the limit named.

    Checked on the raw bytes before the email reaches the parser (lines,
    parts, containers: a count in C over the bytes), or by the parser's policy
    as each header is read (header fields), so a hostile email costs a scan,
    not a parse. The settings are `[parsing]` in mailhook.toml; mailhook.extract.mail enforces them.
    """

    # Multipart and message/rfc822 containers: they bound how deep parts nest (Postfix mime_nesting_limit).
    max_containers: int = 100
    # MIME parts: delimiter lines of the declared boundaries.
    max_parts: int = 1000
    # Lines in the whole email: the standard library's parser makes an object of each.
    max_lines: int = 250_000
    # Header fields in all the email's parts (its own top-level ones, which mailhook trims to six first, included).
    max_header_fields: int = 10_000
    # Bytes one header field keeps; the excess is discarded (Postfix header_size_limit).
    header_size_limit: int = 102_400
