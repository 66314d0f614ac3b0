"""`MailLimits`: how much structure one email may have before it is quarantined unparsed."""

from __future__ import annotations

from dataclasses import dataclass


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
