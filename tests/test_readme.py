"""The README's first screen: its commands are the ones CI runs, and name what they promise."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def first_screen_commands() -> list[str]:
    """Return the shell blocks before the README's first rule (---), one string each."""
    head = README.split("\n---\n", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", head, re.S)]


def test_install_and_run_is_one_command_with_runtime_dependencies_only() -> None:
    install = first_screen_commands()[0]
    assert "\n" not in install
    assert "pip install -e . " in install and "[dev]" not in install and install.endswith("mailhook serve")


def test_ci_runs_exactly_the_readmes_test_command() -> None:
    tests = first_screen_commands()[1]
    assert "\n" not in tests and "pip install -e '.[dev]'" in tests and tests.endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert tests in ci, "the README's test command is not a line of .ci/run"


def test_the_first_screen_says_where_to_send_mail_and_where_to_post() -> None:
    send = first_screen_commands()[2].splitlines()
    assert send[0].startswith("swaks --server 127.0.0.1:2525 ")
    assert send[1].startswith("curl ") and send[1].endswith(" http://127.0.0.1:8080/notifications")
    for path in re.findall(r"@(fixtures/\S+)", "\n".join(send)):
        assert (ROOT / path).is_file(), path
