"""Outside programs the end-to-end tests talk to: skipped where missing locally, a failure in CI."""

from __future__ import annotations

import os
import shutil

import pytest


def require(command: str, package: str) -> None:
    """Skip the test when `command` is not installed, or fail it under CI, where `.ci/run` installs it."""
    if shutil.which(command) is not None:
        return
    message = f"needs {command} (Debian package {package}; .ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
