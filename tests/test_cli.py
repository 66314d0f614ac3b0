"""`mailhook --help` and each command's `--help`: every option's default and variable, exit codes."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from process_support import ALLOW_ROOT

from mailhook.cli import COMMAND_SECTIONS, build_parser, main
from mailhook.config.load import options

COMMANDS = build_parser()[1].choices


def helped(argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """Return what `mailhook ARGV --help` prints, with its line wrapping undone."""
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"], env={})
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_shows_its_default_and_its_environment_variable(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = helped([command], capsys, monkeypatch)
    for opt in options():
        if opt.section in COMMAND_SECTIONS.get(command, ()):
            assert f"--{opt.flag}" in text and f"env {opt.env})" in text, (command, opt.flag)
    # A command's own flags: where leaving one out means a value (not "off" or "no filter"), the help says which.
    for action in COMMANDS[command]._actions:
        if action.dest.startswith("opt:") or action.default not in (None, False, [], argparse.SUPPRESS):
            assert action.help and "default" in action.help, (command, action.option_strings)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_config_names_its_default_file_and_variable(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = helped([command], capsys, monkeypatch)
    assert "--config FILE TOML config file (default: /etc/mailhook/mailhook.toml," in text
    assert "env MAILHOOK_CONFIG)" in text


def test_serve_help_shows_the_ports_and_what_an_empty_accept_means(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = helped(["serve"], capsys, monkeypatch)
    assert "(default: 127.0.0.1:2525; env MAILHOOK_SMTP_LISTEN)" in text
    assert "(default: 127.0.0.1:8080; env MAILHOOK_HTTP_LISTEN)" in text
    assert "empty accepts any recipient, but then SMTP may listen on loopback addresses only" in text
    assert "(default: stored; env MAILHOOK_SMTP_ACKNOWLEDGE)" in text


def test_ingest_help_lists_its_environment_variables_and_exit_codes(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = helped(["ingest"], capsys, monkeypatch)
    assert "--max-message-size BYTES largest message or body in bytes (default: 10485760; " \
           "env MAILHOOK_MAX_MESSAGE_SIZE)" in text
    assert "environment: MAILHOOK_CONFIG, MAILHOOK_DB, MAILHOOK_MAX_MESSAGE_SIZE" in text
    assert "exit codes: 0 every input stored" in text
    for code, meaning in ((65, "could not be read"), (75, "storage unavailable"), (78, "configuration error")):
        assert f" {code} " in text and meaning in text, code


def test_an_ingest_exit_code_in_the_help_is_the_one_it_returns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = helped(["ingest"], capsys, monkeypatch)
    missing = f"{tmp_path}/nothing-here.eml"
    code = main(["ingest", "--quiet", "--db", f"{tmp_path}/m.db", missing], env={"MAILHOOK_CONFIG": ""} | ALLOW_ROOT)
    assert f" {code} an input could not be read at all" in text


def test_the_root_refusal_exit_code_in_the_ingest_help_is_the_one_it_returns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    if os.geteuid() != 0:
        pytest.skip("the refusal applies to root only")
    text = helped(["ingest"], capsys, monkeypatch)
    code = main(["ingest", "--quiet", "--db", f"{tmp_path}/m.db", "-"], env={"MAILHOOK_CONFIG": ""})
    assert f" {code} run as root without --allow-root" in text
    assert not (tmp_path / "m.db").exists()
