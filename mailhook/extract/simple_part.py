"""Read one leaf part of a simple email (a text part or a document attachment) as mail-parser would, or decline.

`mailhook.extract.simple_mail` cuts an email into its parts and hands each
leaf here with its header fields read; what a leaf may be is listed there.
"""

from __future__ import annotations

import base64
import binascii
import quopri
import re
import unicodedata

from mailhook.extract.flowed import unflow
from mailhook.extract.header_fields import parameters

# Charsets whose codec decodes any bytes the same way every time (or fails the
# same way, caught as mail-parser catches it); any other name is left to the slow path.
_CHARSETS = frozenset(
    {"us-ascii", "ascii", "utf-8", "utf8", "latin1", "latin-1", "cp1252"}
    | {f"iso-8859-{n}" for n in (1, 2, 3, 4, 5, 7, 9, 13, 15)}
    | {f"windows-{n}" for n in range(1250, 1259)}
)
# A quoted value may hold `=` (email.generator quotes its `===============N==` boundaries); get_param unquotes it.
_TOKEN = r'(?:"[A-Za-z0-9._:=+-]+"|[A-Za-z0-9._:+-]+)'
_PARAMETERS = rf"((?:;[ \t]*[A-Za-z]+[ \t]*=[ \t]*{_TOKEN}[ \t]*)*)"
MEDIA_TYPE = re.compile(rf"([A-Za-z]+)/([A-Za-z]+)[ \t]*{_PARAMETERS}")
DISPOSITION = re.compile(rf"(attachment)[ \t]*{_PARAMETERS}", re.IGNORECASE)
_ENCODINGS = frozenset({"", "7bit", "8bit", "quoted-printable", "base64"})
_DOCUMENT_TYPES = frozenset({"application/xml", "application/json"})
# The parameters each field may have here.
_TEXT_PARAMETERS = frozenset({"charset", "format", "delsp"})
_NAME_PARAMETERS = frozenset({"name"})
FILENAME_PARAMETERS = frozenset({"filename"})


def add_part(
    fields: dict[str, str], body: bytes, plain: list[str], html: list[str], attachments: list[dict[str, object]]
) -> bool:
    """Add a leaf part's text or attachment as mail-parser's parse() would; False when the slow path must read it."""
    media = MEDIA_TYPE.fullmatch(fields.get("content-type", "text/plain"))
    cte = fields.get("content-transfer-encoding", "").lower()
    if media is None or cte not in _ENCODINGS:
        return False
    ctype = f"{media.group(1)}/{media.group(2)}".lower()
    disposition = fields.get("content-disposition")
    if ctype in _DOCUMENT_TYPES:
        return _add_attachment(ctype, media.group(3), cte, disposition, body, attachments)
    params = parameters(media.group(3), _TEXT_PARAMETERS)
    if params is None or disposition is not None or ctype not in ("text/plain", "text/html"):
        return False
    charset = params.get("charset", "utf-8").lower()
    if charset not in _CHARSETS:
        return False
    text = _body_text(body, cte, charset)
    if text is None:
        return False
    if ctype == "text/plain" and params.get("format", "").lower() == "flowed":
        text = unflow(text, delsp=params.get("delsp", "").lower() == "yes")
    if text:
        (html if ctype == "text/html" else plain).append(text)
    return True


def _add_attachment(
    ctype: str, media_params: str, cte: str, disposition: str | None, body: bytes, attachments: list[dict[str, object]]
) -> bool:
    """Add a base64 document attachment as mail-parser lists it (the keys mail._read reads)."""
    params = parameters(media_params, _NAME_PARAMETERS)
    match = DISPOSITION.fullmatch(disposition or "")
    disposition_params = parameters(match.group(2), FILENAME_PARAMETERS) if match is not None else None
    if (
        params is None
        or disposition_params is None
        or cte != "base64"
        or "filename" not in disposition_params
        or not body.isascii()
    ):
        return False
    attachments.append(
        {
            "filename": disposition_params["filename"],
            "payload": body.decode("ascii"),
            "binary": True,
            "mail_content_type": ctype,
            "charset": None,
        }
    )
    return True


def _body_text(body: bytes, cte: str, charset: str) -> str | None:
    """Decode the body as mail-parser's _decode_body_payload does, or None when base64 needs repair."""
    if cte in ("", "7bit", "8bit"):
        if body.isascii():
            return body.decode("ascii")
        payload = body
    elif cte == "quoted-printable":
        payload = quopri.decodestring(body)
    else:
        joined = b"".join(body.splitlines())
        try:
            payload = base64.b64decode(joined, validate=True)
        except binascii.Error:
            return None
    if not payload:
        return ""
    try:
        text = payload.decode(charset)
        text.encode("utf-8")
    except (LookupError, UnicodeError):
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            text = payload.decode("utf-8", "replace")
    # mail-parser returns this text through its ported_string, which normalises it to NFC.
    return text if text.isascii() else unicodedata.normalize("NFC", text)
