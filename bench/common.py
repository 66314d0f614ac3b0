"""Helpers the benchmark scripts share: free ports, RSS from /proc, medians, starting servers, tables."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


@dataclass
class Row:
    """One line of a results table: a scenario, its measured value and a comment."""

    scenario: str
    value: str
    note: str = ""


@dataclass
class Table:
    """Results printed as an aligned text table."""

    title: str
    rows: list[Row] = field(default_factory=list)

    def add(self, scenario: str, value: str, note: str = "") -> None:
        self.rows.append(Row(scenario, value, note))
        print(f"  {scenario}: {value} {note}", file=sys.stderr, flush=True)

    def render(self) -> str:
        w1 = max([len(r.scenario) for r in self.rows] + [8])
        w2 = max([len(r.value) for r in self.rows] + [5])
        lines = [f"## {self.title}", f"{'scenario':<{w1}}  {'value':>{w2}}  note"]
        lines += [f"{r.scenario:<{w1}}  {r.value:>{w2}}  {r.note}" for r in self.rows]
        return "\n".join(lines)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {HOST}:{port} after {timeout}s")


def rss_kb(pid: int) -> int:
    """Return the resident set size of process `pid` in KiB (VmRSS from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def tree_rss_kb(pid: int) -> int:
    """Return the RSS of `pid` plus its direct children (a process pool's workers)."""
    total = rss_kb(pid)
    for child in children(pid):
        with contextlib.suppress(OSError):
            total += rss_kb(child)
    return total


def descendants(pid: int) -> list[int]:
    """Return the children of `pid`, their children and so on (a fork server's workers are grandchildren)."""
    found = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


def children(pid: int) -> list[int]:
    """Return the direct children of `pid`."""
    found = []
    task = Path(f"/proc/{pid}/task")
    for t in task.iterdir():
        with contextlib.suppress(OSError):
            found += [int(c) for c in (t / "children").read_text().split()]
    return found


def cpu_seconds(pid: int) -> float:
    """Return the CPU time (user + system) used so far by `pid` and its live descendants (pool workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for proc in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{proc}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def tree_cpu_seconds(pid: int) -> float:
    """Return the CPU time (user + system) of `pid` and all its descendants, live or already reaped.

    Live processes count their own utime + stime; a descendant that exited and
    was waited for is in its parent's cutime + cstime, so nothing is missed.
    """
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for proc in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{proc}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return total / tick


def group_rss_kb(pgid: int) -> int:
    """Return the summed RSS (KiB) of every live process in process group `pgid`."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry.name}/stat").read_text().rpartition(")")[2].split()
            if int(fields[2]) == pgid:
                total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE") // 1024  # rss in pages
        except (OSError, IndexError, ValueError):
            continue
    return total


class PeakRss:
    """Sample the summed RSS of a process group every `interval` s in a thread; keep the peak.

    Use `reset()` at the start of a round and `peak_kb` at its end.
    """

    def __init__(self, pgid: int, interval: float = 0.1) -> None:
        self.pgid = pgid
        self.interval = interval
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pgid}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, group_rss_kb(self.pgid))
            self._stop.wait(self.interval)

    def reset(self) -> None:
        self.peak_kb = group_rss_kb(self.pgid)

    def sample(self) -> int:
        """Take one sample now (also at the end of a round, so a short round has at least one); return the peak."""
        self.peak_kb = max(self.peak_kb, group_rss_kb(self.pgid))
        return self.peak_kb

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def mailhook_serve(db: Path, *, smtp_port: int | None, http_port: int | None,
                   extra: Sequence[str] = (), log: Path | None = None,
                   new_session: bool = False, root: Path = ROOT) -> subprocess.Popen[bytes]:
    """Start `python -m mailhook serve` on the given ports (None turns a door off) and wait for it.

    With `new_session` it leads its own process group (for PeakRss); `root` is the checkout it runs.
    """
    smtp = f"{HOST}:{smtp_port}" if smtp_port else ""
    http = f"{HOST}:{http_port}" if http_port else ""
    env = {**os.environ, "MAILHOOK_CONFIG": "", "PYTHONPATH": str(root)}
    env = {k: v for k, v in env.items() if not k.startswith("MAILHOOK_") or k == "MAILHOOK_CONFIG"}
    env["MAILHOOK_ALLOW_ROOT"] = "1"  # benchmarks may run as root
    out = log.open("ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailhook", "serve", "--db", str(db), "--smtp-listen", smtp,
         "--http-listen", http, *extra],
        cwd=root, env=env, stdout=out, stderr=out, start_new_session=new_session,
    )
    for port in (smtp_port, http_port):
        if port:
            wait_port(port, proc=proc)
    return proc


def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Ask a server to stop (SIGTERM), and kill it if it does not within `timeout`."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def child_json(module: str, call: str) -> object:
    """Run `module.call` (a call in Python source) in a fresh interpreter and return the JSON it prints.

    The child imports `module` from bench/ without this process's PYTHONPATH, so the tree it
    measures is the one the call puts first on `sys.path`, not this one.
    """
    code = (f"import sys, json, pathlib; sys.path.insert(0, {str(ROOT / 'bench')!r}); import {module}; "
            f"print(json.dumps({module}.{call}))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    """Describe the machine: CPU model and core count."""
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return f"{model}, {os.cpu_count()} cores, Python {sys.version.split()[0]}, load average {load} at start"
