"""Outside programs the end-to-end tests talk to: skipped where missing locally, a failure in CI."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


def require(command: str, package: str) -> None:
    """Skip the test when `command` is not installed, or fail it under CI, where `.ci/run` installs it."""
    if shutil.which(command) is not None:
        return
    _missing(f"needs {command} (Debian package {package}; .ci/run installs it)")


def require_swaks_starttls() -> None:
    """Skip (or fail under CI) unless swaks is installed *and* can speak STARTTLS and AUTH LOGIN.

    swaks installs without its TLS modules (they are only recommended), and then says
    "TLS not available: requires Net::SSLeay" at the first `-tls`. `swaks --support` lists what it can
    do (Debian's swaks 20201014 takes no feature name there, and exits 0 either way).
    """
    require("swaks", "swaks")
    support = subprocess.run(["swaks", "--support"], capture_output=True, text=True, timeout=60)
    answer = support.stdout + support.stderr
    missing = [line for line in ("=== TLS supported", "=== Basic AUTH supported") if line not in answer]
    if missing:
        _missing(f"needs swaks with STARTTLS (Debian packages libnet-ssleay-perl libio-socket-ssl-perl; "
                 f".ci/run installs them); `swaks --support` lacks {missing}:\n{answer.strip()}")


def _missing(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate (its own CA file) and its unencrypted key, as PEM files."""

    cert: Path
    key: Path


NAMES = "DNS:mx.hooks.test,DNS:localhost,IP:127.0.0.1"


def self_signed(where: Path) -> Certificate:
    """Make a self-signed P-256 certificate for mx.hooks.test, localhost and 127.0.0.1, valid for two days."""
    require("openssl", "openssl")
    made = Certificate(where / "cert.pem", where / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "2", "-subj", "/CN=mx.hooks.test", "-addext", f"subjectAltName={NAMES}",
         "-keyout", str(made.key), "-out", str(made.cert)],
        check=True, capture_output=True,
    )
    return made
