"""HTTP ingest: wrk POSTing notifications to mailhook, a durable no-op and a no-op aiohttp handler.

    python bench/http_ingest.py [--seconds 10] [--repeats 3] [--connections 8]

wrk (Debian package `wrk`) keeps `--connections` connections (8 by default)
busy from 2 threads; a Lua script gives every request new ids, so each POST
is a new notification (v1.1 XML and v1.1 JSON in turn). Three servers take
turns, round by round: mailhook, `durable_http.py` (aiohttp that answers only
once the body is committed to a SQLite table, WAL and synchronous=FULL, by a
group-commit thread: the durability floor of this disk) and `noop_http.py`
(aiohttp answering at once). The table shows the median requests/s and server
CPU per request of each, and mailhook's ratio to both baselines.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import (
    HOST,
    ROOT,
    Table,
    cpu_seconds,
    free_port,
    machine,
    mailhook_serve,
    median,
    stop,
    wait_port,
)

FIXTURES = ROOT / "fixtures"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
CONNECTIONS = 8
NOOP = "no-op aiohttp"
DURABLE = "durable no-op"

_LUA = r"""
local templates = {%s}
local counter = 0
local prefix = 0
function setup(thread)
  prefix = prefix + 1
  thread:set("prefix", prefix)
end
function request()
  counter = counter + 1
  local id = tostring(prefix * 100000000 + counter)
  local body = templates[(counter %% #templates) + 1]:gsub("__ID__", id)
  return wrk.format("POST", "/notifications", {["Content-Type"] = "application/octet-stream"}, body)
end
"""


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


def write_script(path: Path) -> None:
    """Write the wrk script with the XML and JSON templates, their ids replaced by __ID__ placeholders."""
    xml = (FIXTURES / "seed" / "text-outbound.xml").read_text(encoding="utf-8")
    xml = re.sub(r'id="\d+"', 'id="__ID__"', xml)
    js = (FIXTURES / "seed" / "call-outbound.json").read_text(encoding="utf-8")
    js = re.sub(r'"@id": "\d+"', '"@id": "__ID__"', js)
    path.write_text(_LUA % ", ".join(_lua_string(t) for t in (xml, js)))


def run_wrk(port: int, script: Path, seconds: int, connections: int = CONNECTIONS) -> tuple[float, int, int]:
    """Run wrk against 127.0.0.1:port; return (requests/s, requests, non-2xx responses)."""
    out = subprocess.run(
        [WRK, "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--timeout", "30s", "-s", str(script),
         f"http://{HOST}:{port}/notifications"],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rate, total, int(bad.group(1)) if bad else 0


def bench(seconds: int, repeats: int, workdir: Path, connections: int = CONNECTIONS) -> Table:
    if not Path(WRK).exists():
        raise SystemExit("wrk not found: apt-get install -y wrk (see docs/performance.md)")
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="http-", dir=workdir))
    script = tmp / "post.lua"
    write_script(script)
    ports = {"mailhook": free_port(), DURABLE: free_port(), NOOP: free_port()}
    servers = [
        mailhook_serve(tmp / "mailhook.db", smtp_port=None, http_port=ports["mailhook"], log=tmp / "mailhook.log"),
        subprocess.Popen([sys.executable, str(ROOT / "bench" / "durable_http.py"), str(ports[DURABLE]),
                          str(tmp / "durable.db")]),
        subprocess.Popen([sys.executable, str(ROOT / "bench" / "noop_http.py"), str(ports[NOOP])]),
    ]
    results: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    failures: dict[str, int] = {}
    pids = dict(zip(ports, (proc.pid for proc in servers), strict=True))
    try:
        for port in ports.values():
            wait_port(port)
        for round_ in range(repeats):
            for name, port in ports.items():
                before = cpu_seconds(pids[name])
                rate, total, bad = run_wrk(port, script, seconds, connections)
                cpu.setdefault(name, []).append((cpu_seconds(pids[name]) - before) / max(total, 1) * 1000)
                results.setdefault(name, []).append(rate)
                failures[name] = failures.get(name, 0) + bad
                print(f"  round {round_ + 1} {name:>14}: {rate:8,.0f} req/s ({bad} non-2xx)", file=sys.stderr)
    finally:
        for proc in servers:
            stop(proc)
    table = Table(f"HTTP ingest: wrk, {connections} connections, {seconds} s per run, median of {repeats}")
    noop, durable = median(results[NOOP]), median(results[DURABLE])
    for name in ports:
        rate = median(results[name])
        note = f"server CPU {median(cpu[name]):.3f} ms/req; {failures[name]} non-2xx"
        if name == "mailhook":
            note += f"; {rate / durable:.2f}x the durable no-op, {rate / noop:.2f}x the no-op server"
        elif name == DURABLE:
            note += f"; {rate / noop:.2f}x the no-op server"
        table.add(f"http POST: {name}", f"{rate:,.0f}/s", note)
    shutil.rmtree(tmp, ignore_errors=True)
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--connections", type=int, default=CONNECTIONS,
                        help="connections wrk keeps busy (default %(default)s); e.g. 8, 32, 64 for a sweep")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mailhook-bench"))
    args = parser.parse_args()
    print(machine())
    print(bench(args.seconds, args.repeats, args.workdir, args.connections).render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
