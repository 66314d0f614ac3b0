"""Interleaved rounds: servers take turns (A B C, A B C, ...), each turn measured the same way.

Each server runs in its own process group (started with `spawn`), so its
whole tree is measured: CPU is user + system time of the server and every
descendant, live or reaped (`common.tree_cpu_seconds`); memory is the peak of
the summed RSS of the process group, sampled every 0.1 s during the turn.
The load client's own CPU per message (user + system of the reaped client
process) is reported beside each server's: on a machine whose cores the
client shares, it bounds what any server can reach. The report gives
medians over rounds, and each mailhook row's ratio to each
peer as the median (and range) of the per-round ratios, so a machine that
slows down in one round slows both sides of that round's ratio.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common import ROOT, PeakRss, Table, stop, tree_cpu_seconds

LOAD = ROOT / "bench" / "load.py"


def spawn(cmd: Sequence[str], log: Path | None = None, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a server in its own process group (so its peak RSS can be summed over the group)."""
    out = log.open("ab") if log else subprocess.DEVNULL
    return subprocess.Popen(list(cmd), stdout=out, stderr=out, cwd=cwd, start_new_session=True)


@dataclass
class Sample:
    """One turn of one server: rate, CPU per message, peak RSS of its group, and the rate until drained."""

    rate: float
    cpu_ms: float
    rss_mb: float
    drained_rate: float | None = None
    client_ms: float = float("nan")  # the load client's CPU per message in this turn


@dataclass
class Contender:
    """A server taking part in the rounds."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int = 0
    mailhook: bool = False
    drained: Callable[[], float] | None = None  # waits until all work is stored; returns perf_counter then
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rss = PeakRss(os.getpgid(self.proc.pid))

    def close(self) -> None:
        self.rss.close()
        stop(self.proc)


def run_client(kind: str, port: int, payloads: Path, parallel: int, mail_params: str = "") -> tuple[int, float, float]:
    """Run bench/load.py against `port`; return (messages answered, its seconds, perf_counter at its exit).

    `mail_params`: ESMTP parameters for every MAIL (load.py's --mail-params, e.g. "SIZE={size}").
    """
    extra = ["--mail-params", mail_params] if mail_params else []
    done = subprocess.run([sys.executable, str(LOAD), kind, str(port), str(payloads), "--sessions", str(parallel),
                           *extra], capture_output=True, text=True, timeout=1800)
    ended = time.perf_counter()
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"load client failed against port {port}: {done.stderr[-2000:]}") from None
    if result["errors"] or result["refused"]:
        raise RuntimeError(f"port {port}: {result['refused']} refused ({result['first_refusal']}), "
                           f"errors {result['errors'][:2]}")
    return int(result["messages"]), float(result["seconds"]), ended


def turn(contender: Contender, kind: str, payloads: Path, parallel: int, mail_params: str = "") -> Sample:
    """Measure one turn of `contender`: send every payload in `payloads` with `parallel` sessions (see run_client)."""
    pid = contender.proc.pid
    if contender.proc.poll() is not None:
        raise RuntimeError(f"{contender.name} exited with {contender.proc.returncode}")
    contender.rss.reset()
    before = tree_cpu_seconds(pid)
    client_before = _children_cpu_seconds()
    messages, seconds, ended = run_client(kind, contender.port, payloads, parallel, mail_params)
    client = _children_cpu_seconds() - client_before
    drained_rate = None
    if contender.drained is not None:
        drained_rate = messages / (seconds + contender.drained() - ended)
    used = tree_cpu_seconds(pid) - before
    sample = Sample(messages / seconds, used / messages * 1000, contender.rss.sample() / 1024, drained_rate,
                    client / messages * 1000)
    contender.samples.append(sample)
    return sample


def _children_cpu_seconds() -> float:
    """Return the user + system CPU of this process's reaped children (the load clients run so far)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _ratios(a: Contender, b: Contender) -> str:
    per_round = [x.rate / y.rate for x, y in zip(a.samples, b.samples, strict=True)]
    low, high = min(per_round), max(per_round)
    spread = f" ({low:.2f}-{high:.2f})" if len(per_round) > 1 else ""
    return f"{statistics.median(per_round):.2f}x{spread} {b.name}"


def report(title: str, contenders: list[Contender], unit: str = "msg") -> Table:
    """Build the table: medians per server; every mailhook row's ratios to every peer."""
    table = Table(title)
    peers = [c for c in contenders if not c.mailhook]
    for c in contenders:
        rate = statistics.median(s.rate for s in c.samples)
        cpu = statistics.median(s.cpu_ms for s in c.samples)
        rss = statistics.median(s.rss_mb for s in c.samples)
        client = statistics.median(s.client_ms for s in c.samples)
        note = f"CPU {cpu:.2f} ms/{unit} (client {client:.2f}), peak RSS {rss:.0f} MB"
        if c.mailhook:
            note += "; " + ", ".join(_ratios(c, p) for p in peers)
        table.add(c.name, f"{rate:,.0f}/s", note)
        drained = [s.drained_rate for s in c.samples if s.drained_rate is not None]
        if drained:
            ratios = []
            for p in peers:
                per_round = [d / s.rate for d, s in zip(drained, p.samples, strict=True)]
                ratios.append(f"{statistics.median(per_round):.2f}x {p.name}")
            table.add(f"{c.name}, until every event stored", f"{statistics.median(drained):,.0f}/s",
                      ", ".join(ratios))
    return table
