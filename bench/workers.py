"""Every core: `mailhook serve --workers 1` against `--workers N` on distinct notifications, in one interleaved run.

    python bench/workers.py [--workers 2] [--messages 3000] [--requests 4000] [--repeats 5] [--before OLD_CHECKOUT]
                            [--mail-params "SIZE={size}"]

Three comparisons, each round giving every server a turn with the same payloads
(bench/distinct.py, the asyncio client bench/load.py, 8 sessions or keep-alive
connections): SMTP in the default mode (`stored`), SMTP with
`--smtp-acknowledge received` (the rate until every event is stored too), and
HTTP. The no-op aiosmtpd and aiohttp servers run beside as the yardstick. CPU
is user + system of each server's whole process tree (parent, workers, fork
servers, extraction processes); memory is the peak of its process group's
summed RSS. The ratios are medians of per-round ratios. With `--before` (a
checkout of an older mailhook, e.g. `git archive main | tar -x -C /tmp/base`)
that checkout's `--workers N` takes its turn in every round too, and each
table gives this checkout's ratio to it. `--mail-params` adds ESMTP parameters
to every SMTP MAIL, as smtplib and aiosmtplib clients send them (bench/load.py).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from common import ROOT, Table, free_port, machine, mailhook_serve, wait_port
from distinct import http_file, smtp_file
from rounds import Contender, run_client, spawn, turn
from smtp import wait_drained

SESSIONS = 8


def _mailhook(tmp: Path, name: str, workers: int, door: str, *extra: str,
              drained: Callable[[Path], float] | None = None, root: Path = ROOT) -> Contender:
    port = free_port()
    db = tmp / f"{name}.db"
    proc = mailhook_serve(db, smtp_port=port if door == "smtp" else None, http_port=port if door == "http" else None,
                          log=tmp / f"{name}.log", extra=("--workers", str(workers), *extra), new_session=True,
                          root=root)
    return Contender(name, proc, port, mailhook=True,
                     drained=(lambda: drained(db)) if drained is not None else None)


def _ratio(a: Contender, b: Contender, what: Callable[[Contender, int], float]) -> str:
    per_round = [what(a, i) / what(b, i) for i in range(len(a.samples))]
    return f"{statistics.median(per_round):.2f}x ({min(per_round):.2f}-{max(per_round):.2f})"


def bench(workers: int, messages: int, requests: int, repeats: int, workdir: Path,
          before: Path | None = None, mail_params: str = "") -> list[Table]:
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="workers-", dir=workdir))
    py = sys.executable
    groups: dict[str, list[Contender]] = {"smtp": [], "received": [], "http": []}
    try:
        for n in (1, workers):
            groups["smtp"].append(_mailhook(tmp, f"smtp-w{n}", n, "smtp"))
            groups["received"].append(_mailhook(tmp, f"received-w{n}", n, "smtp", "--smtp-acknowledge", "received",
                                                drained=wait_drained))
            groups["http"].append(_mailhook(tmp, f"http-w{n}", n, "http"))
        if before is not None:  # third in each group, before the no-op yardstick
            groups["smtp"].append(_mailhook(tmp, f"smtp-w{workers}-before", workers, "smtp", root=before))
            groups["received"].append(_mailhook(tmp, f"received-w{workers}-before", workers, "smtp",
                                                "--smtp-acknowledge", "received", drained=wait_drained, root=before))
            groups["http"].append(_mailhook(tmp, f"http-w{workers}-before", workers, "http", root=before))
        port = free_port()
        groups["smtp"].append(Contender("no-op aiosmtpd", spawn([py, str(ROOT / "bench" / "noop_smtp.py"),
                                                                 str(port)]), port))
        port = free_port()
        groups["http"].append(Contender("no-op aiohttp", spawn([py, str(ROOT / "bench" / "noop_http.py"),
                                                                str(port)]), port))
        everyone = [c for group in groups.values() for c in group]
        for c in everyone:
            wait_port(c.port, proc=c.proc)
        warm_smtp, warm_http = tmp / "warm-smtp.bin", tmp / "warm-http.bin"
        smtp_file(warm_smtp, 200, seed=99)
        http_file(warm_http, 300, seed=199)
        for kind, group in groups.items():
            for c in group:
                run_client("http" if kind == "http" else "smtp", c.port, warm_http if kind == "http" else warm_smtp,
                           SESSIONS, mail_params)
                if c.drained is not None:
                    c.drained()
        for round_ in range(repeats):
            smtp_payloads, http_payloads = tmp / f"smtp-r{round_}.bin", tmp / f"http-r{round_}.bin"
            smtp_file(smtp_payloads, messages, seed=300 + round_)
            http_file(http_payloads, requests, seed=400 + round_)
            for kind, group in groups.items():
                for c in group:
                    # A database per server: the same distinct payloads go to each one once.
                    sample = turn(c, "http" if kind == "http" else "smtp",
                                  http_payloads if kind == "http" else smtp_payloads, SESSIONS, mail_params)
                    print(f"  round {round_ + 1} {c.name:>16}: {sample.rate:8,.0f}/s, {sample.cpu_ms:.2f} ms, "
                          f"{sample.rss_mb:.0f} MB" + (f", drained {sample.drained_rate:,.0f}/s"
                                                       if sample.drained_rate else ""),
                          file=sys.stderr, flush=True)
            smtp_payloads.unlink()
            http_payloads.unlink()
    finally:
        for group in groups.values():
            for c in group:
                c.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return [_table(kind, group, workers, messages if kind != "http" else requests, repeats, before is not None)
            for kind, group in groups.items()]


def _table(kind: str, group: list[Contender], workers: int, count: int, repeats: int, before: bool) -> Table:
    title = {"smtp": "SMTP, default (stored)", "received": "SMTP, acknowledge=received",
             "http": "HTTP, the mix of documents"}[kind]
    table = Table(f"{title}: --workers 1 vs --workers {workers}, {SESSIONS} sessions, {count:,} per turn, "
                  f"median of {repeats} interleaved rounds")
    for c in group:
        rate = statistics.median(s.rate for s in c.samples)
        note = (f"CPU {statistics.median(s.cpu_ms for s in c.samples):.2f} ms/msg, "
                f"peak RSS {statistics.median(s.rss_mb for s in c.samples):.0f} MB (group)")
        drained = [s.drained_rate for s in c.samples if s.drained_rate]
        if drained:
            note += f"; until every event stored {statistics.median(drained):,.0f}/s"
        table.add(c.name, f"{rate:,.0f}/s", note)
    one, many = group[0], group[1]
    table.add(f"--workers {workers} / --workers 1", _ratio(many, one, lambda c, i: c.samples[i].rate),
              "rate; CPU per msg " + _ratio(many, one, lambda c, i: c.samples[i].cpu_ms))
    if before:
        old = group[2]
        table.add(f"--workers {workers} / before", _ratio(many, old, lambda c, i: c.samples[i].rate),
                  "rate; CPU per msg " + _ratio(many, old, lambda c, i: c.samples[i].cpu_ms))
    if len(group) > 2 + before:
        noop = group[2 + before]
        table.add(f"÷ {noop.name}", f"w1 {_ratio(one, noop, lambda c, i: c.samples[i].rate)}",
                  f"w{workers} {_ratio(many, noop, lambda c, i: c.samples[i].rate)}")
    if drained:
        table.add(f"until stored, --workers {workers} / 1",
                  _ratio(many, one, lambda c, i: c.samples[i].drained_rate or float("nan")), "")
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mailhook-bench"))
    parser.add_argument("--before", type=Path, help="an older checkout whose --workers N runs in every round too")
    parser.add_argument("--mail-params", default="",
                        help='ESMTP parameters on every SMTP MAIL, as smtplib sends: "size={size}" (bench/load.py)')
    args = parser.parse_args()
    print(machine())
    for table in bench(args.workers, args.messages, args.requests, args.repeats, args.workdir, args.before,
                       args.mail_params):
        print(table.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
