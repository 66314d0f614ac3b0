"""File modes of the database and backups, the refusal to run as root, and warnings for secrets on flags."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from process_support import ALLOW_ROOT

from mailhook.cli import EX_NOPERM, main
from mailhook.models import Delivery
from mailhook.privileges import root_refusal
from mailhook.store.writer import Writer

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = (ROOT / "fixtures" / "seed" / "text-inbound.json").read_bytes()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def delivery() -> Delivery:
    return Delivery(channel="http", raw=SAMPLE, received_at="2024-01-01T00:00:00.000Z", kind="document")


def written(db: Path, file_mode: int | None = None) -> Writer:
    """Open a writer on `db` and commit one delivery, so the -wal and -shm exist."""
    writer = Writer(db, checkpoint_interval=0, **({} if file_mode is None else {"mode": file_mode}))
    writer.submit(delivery(), None).result()
    return writer


def mailhook(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOOK_")} | {"MAILHOOK_CONFIG": ""}
    return subprocess.run([sys.executable, "-m", "mailhook", *args], env=base | env, cwd=cwd, capture_output=True,
                          text=True, timeout=60, check=False)


# --- file modes -------------------------------------------------------------------------------------


def test_database_wal_and_shm_are_created_0600_even_under_umask_0(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    with umask(0):
        writer = written(db)
    try:
        files = [db, tmp_path / "m.db-wal", tmp_path / "m.db-shm"]
        assert {path.name: mode(path) for path in files} == {path.name: 0o600 for path in files}
    finally:
        writer.close()


def test_group_readable_makes_database_wal_shm_and_backup_0640(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "m.db"
    env = {"MAILHOOK_CONFIG": "", "MAILHOOK_DB": str(db), "MAILHOOK_STORAGE_GROUP_READABLE": "true"}
    with umask(0o077):  # the narrowest umask still gives the analysts' group its read
        writer = written(db, 0o640)
        try:
            files = [db, tmp_path / "m.db-wal", tmp_path / "m.db-shm"]
            assert {path.name: mode(path) for path in files} == {path.name: 0o640 for path in files}
            assert main(["backup", str(tmp_path / "copy.db")], env) == 0
        finally:
            writer.close()
    assert mode(tmp_path / "copy.db") == 0o640
    capsys.readouterr()


def test_backups_are_0600_whatever_the_umask(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "m.db"
    written(db).close()
    env = {"MAILHOOK_CONFIG": "", "MAILHOOK_DB": str(db)}
    with umask(0):
        assert main(["backup", str(tmp_path / "copy.db")], env) == 0
        assert main(["backup", f"{tmp_path}/dated/"], env) == 0
    dated = Path(capsys.readouterr().out.splitlines()[-1])
    assert (mode(tmp_path / "copy.db"), mode(dated)) == (0o600, 0o600)


def test_missing_parent_directories_are_created_0750_under_umask_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "state" / "sub" / "m.db"
    with umask(0):
        written(db).close()  # what `serve --db /new/sub/m.db` does first
        env = {"MAILHOOK_CONFIG": "", "MAILHOOK_DB": str(db)}
        assert main(["backup", f"{tmp_path}/backups/x/y/"], env) == 0
    capsys.readouterr()
    made = [tmp_path / "state", tmp_path / "state" / "sub", tmp_path / "backups", tmp_path / "backups" / "x",
            tmp_path / "backups" / "x" / "y"]
    assert {str(path): mode(path) for path in made} == {str(path): 0o750 for path in made}


def test_world_readable_files_of_an_older_mailhook_are_restricted_on_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "m.db"
    writer = written(db)
    files = [db, tmp_path / "m.db-wal", tmp_path / "m.db-shm"]
    for path in files:
        path.chmod(0o644)  # as mailhook 0.x left them under the usual umask 022
    with caplog.at_level(logging.WARNING, logger="mailhook"):
        again = Writer(db, checkpoint_interval=0)
    try:
        assert {path.name: mode(path) for path in files} == {path.name: 0o600 for path in files}
        for path in files:
            assert f"{path} was mode 0644; changed to 0600" in caplog.text
        assert again.submit(delivery(), None).result().status == "pending"
    finally:
        again.close()
        writer.close()
    # Without world access a file is left as the admin set it (here: the group may read).
    db.chmod(0o640)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mailhook"):
        Writer(db, checkpoint_interval=0).close()
    assert mode(db) == 0o640
    assert "changed to" not in caplog.text


# --- running as root --------------------------------------------------------------------------------


def test_root_refusal_covers_the_serving_commands_only() -> None:
    for command in ("serve", "imap", "ingest"):
        refusal = root_refusal(command, allowed=False, euid=0)
        assert refusal is not None and "--allow-root" in refusal and "MAILHOOK_ALLOW_ROOT=1" in refusal
        assert "\n" not in refusal
        assert root_refusal(command, allowed=True, euid=0) is None
        assert root_refusal(command, allowed=False, euid=1000) is None
    for command in ("status", "backup", "prune", "check-config", "stats", "export"):
        assert root_refusal(command, allowed=False, euid=0) is None


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the refusal is only seen when running as root")


@needs_root
@pytest.mark.parametrize("command", [
    ["serve", "--smtp-listen", "127.0.0.1:0", "--http-listen", ""],
    ["ingest", str(ROOT / "fixtures" / "seed" / "campaign.json")],
    ["imap", "--imap-host", "127.0.0.1"],
])
def test_serve_imap_and_ingest_refuse_to_run_as_root_with_exit_77_and_one_line(
    tmp_path: Path, command: list[str]
) -> None:
    done = mailhook(*command, "--db", str(tmp_path / "m.db"), env={}, cwd=tmp_path)
    assert done.returncode == EX_NOPERM == 77
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"mailhook: refusing to run `mailhook {command[0]}` as root")
    assert "--allow-root" in lines[0] and "MAILHOOK_ALLOW_ROOT=1" in lines[0]
    assert not (tmp_path / "m.db").exists()  # refused before anything was opened or created


@needs_root
def test_root_is_allowed_by_flag_environment_or_config_file(tmp_path: Path) -> None:
    document = str(ROOT / "fixtures" / "seed" / "campaign.json")
    config = tmp_path / "m.toml"
    config.write_text("[service]\nallow_root = true\n")
    for number, (flags, env) in enumerate([
        (["--allow-root"], {}),
        ([], ALLOW_ROOT),
        (["--config", str(config)], {}),
    ]):
        done = mailhook("ingest", "-q", "--db", str(tmp_path / f"m{number}.db"), *flags, document, env=env,
                        cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "refusing" not in done.stderr


# --- secrets on the command line ---------------------------------------------------------------------


def test_secrets_given_as_flags_are_warned_about_and_never_echoed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["check-config", "--http-token", "tok-s3cret", "--webhook-secret", "hook-s3cret",
                 "--imap-password", "imap-s3cret"], {"MAILHOOK_CONFIG": ""})
    assert code == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("WARNING") and "ps" in line]
    assert len(warnings) == 3, err
    for flag, variable in (("http-token", "MAILHOOK_HTTP_TOKEN"), ("webhook-secret", "MAILHOOK_WEBHOOK_SECRET"),
                           ("imap-password", "MAILHOOK_IMAP_PASSWORD")):
        line = next(w for w in warnings if f"--{flag} " in w)
        assert f"--{flag}-file" in line and variable in line
    assert "s3cret" not in err
    # Secrets from the environment or a file (invisible to other users) get no warning.
    secret = tmp_path / "token"
    secret.write_text("tok-s3cret\n")
    code = main(["check-config", "--http-token-file", str(secret)],
                {"MAILHOOK_CONFIG": "", "MAILHOOK_WEBHOOK_SECRET": "hook-s3cret"})
    assert code == 0
    assert "shows the secret" not in capsys.readouterr().err


def test_the_warning_is_a_log_record_in_the_json_format_too(tmp_path: Path) -> None:
    done = mailhook("check-config", "--http-token", "tok-s3cret", "--log-format", "json", env={}, cwd=tmp_path)
    assert done.returncode == 0
    record = json.loads(next(line for line in done.stderr.splitlines() if "http-token" in line))
    assert record["level"] == "warning" and "--http-token-file" in record["message"]
