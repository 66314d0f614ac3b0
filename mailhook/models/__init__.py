"""The frozen data that flows between the pipeline's stages: the pure core's public surface.

Each family lives in its own module (a delivery and its receipt, an event and
its attempts, the mail limits, payload JSON, `quick_init`); they are
re-exported here on purpose, so that `from mailhook.models import X` keeps
working for every importer, inside mailhook and out.
"""

from mailhook.models.delivery import (
    Channel,
    Delivery,
    FolderPosition,
    Kind,
    Receipt,
    Status,
    kind_of,
    stored_kind,
    utcnow,
)
from mailhook.models.event import (
    CALL_TYPES,
    CAMPAIGN_TYPES,
    RECURRING,
    TEXT_TYPES,
    Attempt,
    Event,
    Extraction,
    TypeSource,
)
from mailhook.models.json_text import json_encoder, to_json
from mailhook.models.mail_limits import MailLimits
from mailhook.models.quick_init import quick_init

__all__ = [
    "CALL_TYPES",
    "CAMPAIGN_TYPES",
    "RECURRING",
    "TEXT_TYPES",
    "Attempt",
    "Channel",
    "Delivery",
    "Event",
    "Extraction",
    "FolderPosition",
    "Kind",
    "MailLimits",
    "Receipt",
    "Status",
    "TypeSource",
    "json_encoder",
    "kind_of",
    "quick_init",
    "stored_kind",
    "to_json",
    "utcnow",
]
