"""`mailhook --help` and each command's `--help`: every option's default and variable, exit codes."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from process_support import ALLOW_ROOT

from mailhook.cli import _OTHER_THAN_ANALYSIS, COMMAND_SECTIONS, build_parser, main
from mailhook.config.options import options

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


def test_the_analysts_commands_are_left_out_exactly_for_the_other_commands_whose_flags_stay_the_same() -> None:
    assert set(COMMANDS) - {"stats", "export", "migrate-to"} == _OTHER_THAN_ANALYSIS
    for command in sorted(COMMANDS):
        choices = build_parser(command)[1].choices
        assert command in choices
        assert ({"stats", "export", "migrate-to"} <= set(choices)) == (command not in _OTHER_THAN_ANALYSIS)
        flags = [action.option_strings for action in choices[command]._actions]
        assert flags == [action.option_strings for action in COMMANDS[command]._actions], command


def test_an_unknown_command_is_refused_with_every_command_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["sats"], env={})
    assert done.value.code == 2
    assert "invalid choice: 'sats'" in (err := capsys.readouterr().err) and "'stats'" in err and "'ingest'" in err


def test_an_age_is_read_when_given_and_a_bad_one_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert build_parser("prune")[0].parse_args(["prune", "--older-than", "2w"]).older_than == timedelta(weeks=2)
    with pytest.raises(SystemExit) as done:
        main(["prune", "--older-than", "ninety days"], env={})
    assert done.value.code == 2
    assert "'ninety days' is not an age like 90d" in capsys.readouterr().err


def test_ingest_starts_without_the_admins_or_analysts_modules(tmp_path: Path) -> None:
    # mailhook.admin (urllib.request, http.client, asyncio), export and stats: ~75 ms of every backfill's start.
    code = ("import sys; from mailhook.cli import main; code = main(['ingest', '-q', sys.argv[1]]);"
            "print(sorted(m for m in ('mailhook.admin', 'mailhook.export', 'mailhook.stats.command')"
            " if m in sys.modules)); sys.exit(code)")
    env = {**os.environ, **ALLOW_ROOT, "MAILHOOK_CONFIG": "", "MAILHOOK_DB": str(tmp_path / "m.db")}
    xml = Path(__file__).parent.parent / "fixtures" / "seed" / "text-outbound.xml"
    result = subprocess.run([sys.executable, "-c", code, str(xml)], capture_output=True, text=True, timeout=120,
                            check=False, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
