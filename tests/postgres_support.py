"""A throwaway PostgreSQL cluster from Debian's `postgresql` package, on a loopback port, for the tests.

`initdb` and `pg_ctl` refuse to run as root, and this machine and CI run the
tests as root: there the cluster runs as the `postgres` user the Debian
package creates (through `runuser`), in a directory that user owns. Run as
anyone else, it runs as that user. The superuser `mailhook` logs in with a
password over TCP (scram-sha-256), so the tests exercise the same
authentication a real deployment uses; each test gets a database of its own.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from outside import _missing
from process_support import free_port

PASSWORD = "mailhook-test-password"
USER = "mailhook"


def bindir() -> Path | None:
    """Return the directory of Debian's PostgreSQL server programs (initdb, pg_ctl), or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def require_postgres() -> Path:
    """Return the server programs' directory; skip the test (fail under CI) when PostgreSQL is missing."""
    found = bindir()
    if found is None:
        _missing("needs PostgreSQL's initdb and pg_ctl (Debian package postgresql; .ci/run installs it)")
        raise AssertionError("unreachable")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _missing("needs psycopg 3 (pip install -e '.[dev]' installs it with the postgres extra)")
    return found


@dataclass
class Cluster:
    """A running PostgreSQL cluster: where it listens, and how to make a fresh database on it."""

    bin: Path
    directory: Path
    port: int
    owner: str | None  # the OS user the server runs as when the tests run as root

    @property
    def admin_url(self) -> str:
        """The URL of the maintenance database `postgres`, as the superuser."""
        return self.url("postgres")

    def url(self, database: str) -> str:
        """The URL of `database` on this cluster, password included."""
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, ending whatever sessions are still connected to it."""
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run pg_ctl on this cluster (as its owner), e.g. `pg_ctl("stop", "-m", "fast")`."""
        return _run([str(self.bin / "pg_ctl"), "-D", str(self.directory / "data"), *args], self.owner, check=check)

    def start(self) -> None:
        """Start (or restart after `stop`) the server and wait until it accepts connections."""
        log = self.directory / "server.log"
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.directory}"
        self.pg_ctl("start", "-w", "-t", "60", "-l", str(log), "-o", options)

    def running(self) -> bool:
        """Whether the server is up (a test may have stopped it to see how mailhook copes)."""
        return self.pg_ctl("status", check=False).returncode == 0

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast`: disconnect clients and stop; `immediate`: like a crash)."""
        self.pg_ctl("stop", "-w", "-t", "60", "-m", mode, check=False)


def start_cluster(directory: Path) -> Cluster:
    """Create a new cluster in `directory` (initdb) and start it on a free loopback port."""
    bin = require_postgres()
    owner = "postgres" if os.geteuid() == 0 else None
    directory.mkdir(parents=True, exist_ok=True)
    if owner is not None:
        entry = pwd.getpwnam(owner)
        # Every directory above must be enterable by the server's user (pytest's tmp dirs are 0700).
        for parent in (directory, *directory.parents):
            if parent == Path("/"):
                break
            parent.chmod(parent.stat().st_mode | 0o011)
        os.chown(directory, entry.pw_uid, entry.pw_gid)
    pwfile = directory / "pwfile"
    pwfile.write_text(PASSWORD + "\n")
    if owner is not None:
        os.chown(pwfile, pwd.getpwnam(owner).pw_uid, -1)
    _run(
        [str(bin / "initdb"), "-D", str(directory / "data"), "-U", USER, f"--pwfile={pwfile}",
         "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
        owner,
    )
    cluster = Cluster(bin=bin, directory=directory, port=free_port(), owner=owner)
    cluster.start()
    return cluster


def _run(command: Sequence[str], owner: str | None, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    if owner is not None:
        command = ["runuser", "-u", owner, "--", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd="/")
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


# A node frozen in the middle of an exchange, holding a lock on `events` (as a batch holds its rows and keys):
# its session stays "active", which no server timeout ends; only its death (or pg_terminate_backend) frees it.
FROZEN_HOLDER = """
import os, signal, sys
import psycopg
conn = psycopg.connect(sys.argv[1], autocommit=False, application_name="mailhook")
conn.execute("LOCK TABLE events IN SHARE MODE")
conn.pgconn.enter_pipeline_mode()
conn.pgconn.send_query_params(b"SELECT 1", None)
conn.pgconn.flush()
print(conn.pgconn.backend_pid, flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
"""


@contextlib.contextmanager
def frozen_holders(url: str) -> Iterator[Callable[[], subprocess.Popen[str]]]:
    """Yield a function starting a process frozen (SIGSTOP) mid-exchange with a lock on `events`; kill -9 them after."""
    import psycopg
    from process_support import wait_until

    holders: list[subprocess.Popen[str]] = []

    def state(pid: int) -> str | None:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        return None if row is None else str(row[0])

    def start() -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", FROZEN_HOLDER, url], stdout=subprocess.PIPE, text=True)
        holders.append(proc)
        assert proc.stdout is not None
        pid = int(proc.stdout.readline())
        wait_until(lambda: state(pid) == "active", 30, "the holder's session to stay active")
        return proc

    try:
        yield start
    finally:
        for proc in holders:
            kill(proc)


def kill(proc: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    """Kill (-9) a process if it still runs, reap it and close its stdout pipe."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    if proc.stdout is not None:
        proc.stdout.close()
