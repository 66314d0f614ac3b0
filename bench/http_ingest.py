"""HTTP ingest of distinct notifications: mailhook beside a durable no-op and a no-op aiohttp handler.

    python bench/http_ingest.py [--requests 3000] [--repeats 3] [--connections 8] [--bodies mix,call-xml]
                                [--baseline OLD_CHECKOUT]

Every round, bench/distinct.py writes `--requests` distinct notifications as
CallFire would POST them (each its own ids), and bench/load.py, an asyncio
client in its own process, sends them over `--connections` HTTP/1.1
keep-alive connections to each server in turn, the same requests to every
server of a round (after one untimed warm-up turn each). Bodies: `mix`, the
realistic mix of v1.1 XML and JSON texts, calls and campaigns and v2 webhooks;
`call-xml`, only v1.1 XML call notifications. Servers: mailhook,
`durable_http.py` (aiohttp answering only once the body is committed to a
SQLite table by a group-commit thread, WAL and synchronous=FULL: the
durability floor of this disk) and `noop_http.py` (aiohttp answering at
once). The table gives median requests/s, CPU per request of each server's
process tree, peak RSS of its process group, and mailhook's per-round ratios.

`--wrk SECONDS` adds the earlier measurement: wrk (C, 2 threads) with a Lua
script alternating one XML and one JSON template with fresh ids.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import peers
from common import (
    HOST,
    ROOT,
    Table,
    free_port,
    machine,
    mailhook_serve,
    median,
    wait_port,
)
from distinct import http_file
from rounds import Contender, report, run_client, spawn, turn

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


def wrk_table(contenders: list[Contender], tmp: Path, seconds: int, repeats: int, connections: int) -> Table:
    """The earlier measurement: wrk against every server, round by round."""
    script = tmp / "post.lua"
    write_script(script)
    results: dict[str, list[float]] = {}
    for round_ in range(repeats):
        for c in contenders:
            rate, total, bad = run_wrk(c.port, script, seconds, connections)
            results.setdefault(c.name, []).append(rate)
            print(f"  wrk round {round_ + 1} {c.name:>24}: {rate:8,.0f} req/s ({bad} non-2xx of {total})",
                  file=sys.stderr, flush=True)
    table = Table(f"HTTP, wrk: {connections} connections, {seconds} s per turn, median of {repeats}")
    noop = results[NOOP]
    for name, rates in results.items():
        note = "" if name == NOOP else f"{median([a / b for a, b in zip(rates, noop, strict=True)]):.2f}x {NOOP}"
        table.add(name, f"{median(rates):,.0f}/s", note)
    return table


def bench(requests: int, repeats: int, workdir: Path, connections: int = CONNECTIONS,
          bodies: tuple[str, ...] = ("mix", "call-xml"), wrk_seconds: int = 0, warmup: int = 300,
          baselines: tuple[Path, ...] = ()) -> list[Table]:
    if wrk_seconds and not Path(WRK).exists():
        peers.skip("wrk", "apt-get install -y wrk")
        wrk_seconds = 0
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="http-", dir=workdir))
    py = sys.executable
    tables: list[Table] = []
    contenders: list[Contender] = []
    try:
        port = free_port()
        contenders.append(Contender("mailhook", mailhook_serve(
            tmp / "mailhook.db", smtp_port=None, http_port=port, log=tmp / "mailhook.log", new_session=True),
            port, mailhook=True))
        for root in baselines:  # another checkout (e.g. a worktree of main), beside this one
            port = free_port()
            contenders.append(Contender(f"mailhook ({root.name})", mailhook_serve(
                tmp / f"{root.name}.db", smtp_port=None, http_port=port, log=tmp / f"{root.name}.log",
                new_session=True, root=root), port, mailhook=True))
        port = free_port()
        contenders.append(Contender(DURABLE, spawn([py, str(ROOT / "bench" / "durable_http.py"), str(port),
                                                    str(tmp / "durable.db")]), port))
        port = free_port()
        contenders.append(Contender(NOOP, spawn([py, str(ROOT / "bench" / "noop_http.py"), str(port)]), port))
        for c in contenders:
            wait_port(c.port, proc=c.proc)
        if warmup:
            payloads = tmp / "warmup.bin"
            http_file(payloads, warmup, seed=199)
            for c in contenders:
                run_client("http", c.port, payloads, connections)
        for b, kind in enumerate(bodies):
            for c in contenders:
                c.samples.clear()
            for round_ in range(repeats):
                payloads = tmp / f"{kind}-r{round_}.bin"
                http_file(payloads, requests, seed=200 + 10 * b + round_, kind=kind)
                for c in contenders:
                    sample = turn(c, "http", payloads, connections)
                    print(f"  {kind} round {round_ + 1} {c.name:>16}: {sample.rate:8,.0f} req/s, "
                          f"{sample.cpu_ms:.3f} ms/req (client {sample.client_ms:.3f}), {sample.rss_mb:.0f} MB",
                          file=sys.stderr, flush=True)
                payloads.unlink()
            what = "the realistic mix of documents" if kind == "mix" else "v1.1 XML call notifications"
            tables.append(report(f"HTTP, distinct notifications ({what}): asyncio client, {connections} keep-alive "
                                 f"connections, {requests:,} requests per turn, median of {repeats} interleaved "
                                 "rounds", contenders, unit="req"))
        if wrk_seconds:
            tables.append(wrk_table(contenders, tmp, wrk_seconds, repeats, connections))
    finally:
        for c in contenders:
            c.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return tables


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="distinct requests per turn")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--connections", type=int, default=CONNECTIONS, help="keep-alive connections")
    parser.add_argument("--bodies", default="mix,call-xml", help="comma-separated: mix, call-xml")
    parser.add_argument("--wrk", type=int, default=0, metavar="SECONDS", help="also run wrk for SECONDS per turn")
    parser.add_argument("--warmup", type=int, default=300, help="untimed requests per server first")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mailhook-bench"))
    parser.add_argument("--baseline", type=Path, action="append", default=[],
                        help="another checkout of mailhook to run beside this one (e.g. a worktree of main)")
    args = parser.parse_args()
    bodies = tuple(b for b in args.bodies.split(",") if b)
    if set(bodies) - {"mix", "call-xml"}:
        parser.error("--bodies takes mix and/or call-xml")
    print(machine())
    tables = bench(args.requests, args.repeats, args.workdir, args.connections, bodies, args.wrk, args.warmup,
                   tuple(p.resolve() for p in args.baseline))
    print("\n\n".join(t.render() for t in tables))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
