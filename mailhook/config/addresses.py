"""Listen addresses: parsing HOST:PORT, and refusing an SMTP door that would be an open relay."""

from __future__ import annotations

import ipaddress

from mailhook.config.settings import (
    SmtpSettings,
)
from mailhook.errors import ConfigError


def parse_address(value: str, name: str) -> tuple[str, int]:
    """Split HOST:PORT (IPv6 as [::1]:25) into host and port, naming the setting on error."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{name}: {value!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def refuse_open_relay(smtp: SmtpSettings, addresses: list[str]) -> None:
    """Raise `ConfigError` when SMTP would take mail for anyone on a non-loopback address.

    Without `smtp.accept` only loopback may listen. A host name is let through:
    the door checks the IP addresses it really binds.
    """
    if smtp.accept:
        return
    for address in addresses:
        host = address.rpartition(":")[0].strip("[]") or "0.0.0.0"
        try:
            public = not ipaddress.ip_address(host).is_loopback
        except ValueError:
            public = False
        if public:
            raise ConfigError(
                f"smtp.listen is {', '.join(addresses)} but smtp.accept is empty: without a recipient "
                "allow-list mailhook accepts mail on a loopback address only; "
                "give --accept ADDR or --accept @DOMAIN (repeatable)"
            )
