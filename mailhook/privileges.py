"""What mailhook allows itself: the modes of the files it creates, running as root, secrets on the command line.

The database holds customer data (phone numbers, message texts), so the
database, its `-wal`/`-shm` and every backup are created without world access
whatever the umask: 0600, or 0640 with `storage.group_readable` for an
analysts' group. SQLite creates `-wal`/`-shm` with the main file's mode, so
setting the main file's mode before SQLite first opens it covers all three.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

log = logging.getLogger("mailhook.privileges")

FILE_MODE = 0o600
GROUP_READABLE_MODE = 0o640
# Directories mailhook creates (a state directory by hand, a backup folder): never world-accessible.
DIR_MODE = 0o750
# The commands that serve or write for a long time; the admin's one-off commands may run as root.
ROOT_REFUSED = ("serve", "imap", "ingest")
ALLOW_ROOT_HINT = "pass --allow-root, set MAILHOOK_ALLOW_ROOT=1 or service.allow_root = true to run as root anyway"


def file_mode(group_readable: bool) -> int:
    """Return the mode of the database files: owner only, or owner plus group read."""
    return GROUP_READABLE_MODE if group_readable else FILE_MODE


def create_private(path: Path, mode: int) -> None:
    """Create `path` empty with exactly `mode` (the umask cannot widen or narrow it), unless it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def make_directories(path: Path, mode: int = DIR_MODE) -> None:
    """Create `path` and every missing parent with `mode` (less what the umask takes away, never more).

    `Path.mkdir(parents=True)` gives the parents 0777 less the umask: 0777
    under umask 000. Existing directories are left as they are.
    """
    missing = []
    for folder in [path, *path.parents]:
        if folder.is_dir():
            break
        missing.append(folder)
    for folder in reversed(missing):
        try:
            os.mkdir(folder, mode)
        except FileExistsError:
            if not folder.is_dir():
                raise


def restrict(paths: Iterable[Path], mode: int) -> None:
    """Take world access away from existing database files (and give the group read when `mode` says so).

    Files created by an older mailhook (0644 under the usual umask) are fixed
    on the next open, with one log line each.
    """
    for path in paths:
        try:
            current = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue
        if current & 0o007:
            wanted = mode
        elif mode & 0o040 and not current & 0o040:
            wanted = current | 0o040
        else:
            continue
        try:
            path.chmod(wanted)
        except OSError as exc:
            log.warning("%s is mode %04o and cannot be changed to %04o: %s", path, current, wanted, exc.strerror)
            continue
        log.warning("%s was mode %04o; changed to %04o so it is not readable by everyone", path, current, wanted)


def database_files(path: Path) -> list[Path]:
    """Return the database file and its -wal and -shm companions."""
    return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


def root_refusal(command: str, allowed: bool, euid: int | None = None) -> str | None:
    """Return why `command` must not run as root (one line), or None when it may run."""
    if command not in ROOT_REFUSED or allowed:
        return None
    if (os.geteuid() if euid is None else euid) != 0:
        return None
    return (f"refusing to run `mailhook {command}` as root: it reads what strangers send; run it as an "
            f"unprivileged user (the systemd unit uses DynamicUser=), or {ALLOW_ROOT_HINT}")


def secret_flag_warnings(flags: Mapping[str, object], secrets: Mapping[str, str]) -> list[str]:
    """Return one warning per secret given as a command-line flag (every user sees flags in `ps`).

    `secrets` maps a secret's flag name to its environment variable.
    """
    return [
        f"--{flag} shows the secret to every user of this machine (ps, /proc); use --{flag}-file "
        f"(or {variable}_FILE, or systemd's LoadCredential=) or the environment variable {variable} instead"
        for flag, variable in secrets.items() if flag in flags
    ]
