"""Find the outside peers the benchmarks compare mailhook with: MailDev (npm) and mbox-to-sqlite (PyPI).

They are installed outside the repository (docs/performance.md, "Reproduce"), by default under
/opt/mailhook-bench-peers, or wherever
`BENCH_PEERS` points:

    npm install --prefix "$BENCH_PEERS/node" maildev@3
    python3 -m venv "$BENCH_PEERS/venv" && "$BENCH_PEERS/venv/bin/pip" install mbox-to-sqlite

or anywhere on PATH. A benchmark skips a peer that is missing, with one line
saying so and how to install it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

PEERS = Path(os.environ.get("BENCH_PEERS", "/opt/mailhook-bench-peers"))


def _find(candidates: list[Path], name: str) -> Path | None:
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    found = shutil.which(name)
    return Path(found) if found else None


def maildev() -> tuple[Path, str] | None:
    """Return MailDev's command and version, or None (after saying so) when it is not installed."""
    path = _find([PEERS / "node" / "node_modules" / ".bin" / "maildev"], "maildev")
    if path is None:
        skip("MailDev", f'npm install --prefix "{PEERS}/node" maildev@3')
        return None
    package = path.resolve().parent.parent / "package.json"
    try:
        version = json.loads(package.read_text())["version"]
    except (OSError, ValueError, KeyError):
        version = subprocess.run([str(path), "--version"], capture_output=True, text=True).stdout.strip()
    return path, str(version)


def mbox_to_sqlite() -> tuple[Path, str] | None:
    """Return mbox-to-sqlite's command and version, or None (after saying so) when it is not installed."""
    path = _find([PEERS / "venv" / "bin" / "mbox-to-sqlite"], "mbox-to-sqlite")
    if path is None:
        skip("mbox-to-sqlite", f'python3 -m venv "{PEERS}/venv" && "{PEERS}/venv/bin/pip" install mbox-to-sqlite')
        return None
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True).stdout.strip()
    return path, out.rsplit(" ", 1)[-1] or "?"


def skip(name: str, install: str) -> None:
    print(f"  skipped: {name} is not installed (looked in {PEERS} and on PATH); to compare with it: {install}",
          file=sys.stderr, flush=True)
