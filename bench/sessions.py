"""Concurrency and memory: mailhook's RSS with 500 idle and 50 active SMTP sessions at once.

    python bench/sessions.py [--idle 500] [--active 50] [--seconds 15] [--workers N]

The idle sessions connect, say EHLO and then wait; the active ones deliver
generated notifications back to back over smtplib. The server's RSS is the sum
over its process group (parent, `--workers` processes, fork servers and
extraction processes), sampled from /proc every 0.25 s; target < 300 MB (issue
15). Without --workers, mailhook runs its default (one worker per core).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import smtplib
import socket
import tempfile
import threading
import time
from pathlib import Path

from common import HOST, Table, free_port, group_rss_kb, machine, mailhook_serve, stop
from corpus import Generator

TARGET_MB = 300


def bench(idle: int, active: int, seconds: float, workdir: Path, workers: int | None = None) -> Table:
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="sessions-", dir=workdir))
    port = free_port()
    # Each worker enforces its share of the caps (cap // workers) and the kernel need not spread the
    # connections evenly: room for all of them on one worker, so the bench measures memory, not refusals.
    limit = (idle + active + 10) * (workers or len(os.sched_getaffinity(0)))
    server = mailhook_serve(tmp / "mailhook.db", smtp_port=port, http_port=None, log=tmp / "mailhook.log",
                            extra=["--smtp-max-sessions", str(limit), "--smtp-max-per-ip", str(limit),
                                   *(["--workers", str(workers)] if workers else [])], new_session=True)
    time.sleep(3)  # the workers start after the parent listens
    baseline = group_rss_kb(server.pid)
    idle_socks: list[socket.socket] = []
    stop_at = time.monotonic() + seconds
    sent = [0] * active
    errors: list[str] = []
    gen = Generator(seed=11)
    messages = [gen.message() for _ in range(2000)]

    def deliver(k: int) -> None:
        try:
            with smtplib.SMTP(HOST, port, timeout=60) as smtp:
                i = k
                while time.monotonic() < stop_at:
                    smtp.sendmail("callfire@example.com", ["ops@example.com"], messages[i % len(messages)])
                    sent[k] += 1
                    i += active
        except (smtplib.SMTPException, OSError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    samples: list[int] = []
    try:
        for _ in range(idle):
            sock = socket.create_connection((HOST, port), timeout=30)
            f = sock.makefile("rb")
            if not f.readline().startswith(b"220"):
                raise RuntimeError("idle session refused")
            sock.sendall(b"EHLO idle.example.com\r\n")
            while f.readline()[3:4] == b"-":
                pass
            idle_socks.append(sock)
        with_idle = group_rss_kb(server.pid)
        threads = [threading.Thread(target=deliver, args=(k,), daemon=True) for k in range(active)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads) and time.monotonic() < stop_at + 60:
            samples.append(group_rss_kb(server.pid))
            time.sleep(0.25)
        for t in threads:
            t.join(timeout=60)
        peak = max(samples, default=0)
    finally:
        for sock in idle_socks:
            with contextlib.suppress(OSError):
                sock.close()
        stop(server)
    total = sum(sent)
    table = Table(f"Sessions: {idle} idle + {active} active SMTP sessions for {seconds:g} s, "
                  f"--workers {workers or 'default'}; RSS summed over the process group")
    table.add("rss at start", f"{baseline / 1024:.0f} MB")
    table.add(f"rss with {idle} idle", f"{with_idle / 1024:.0f} MB",
              f"{(with_idle - baseline) / max(idle, 1):.0f} KiB per idle session")
    verdict = "meets" if peak / 1024 < TARGET_MB else "MISSES"
    table.add(f"rss with {idle} idle + {active} active", f"{max(samples, default=0) / 1024:.0f} MB",
              f"peak {peak / 1024:.0f} MB ({verdict} target < {TARGET_MB} MB)")
    table.add("delivered meanwhile", f"{total / seconds:,.0f}/s",
              f"{total:,} messages, {len(errors)} session errors" + (f" ({errors[0]})" if errors else ""))
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=500)
    parser.add_argument("--active", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--workers", type=int, default=None, help="mailhook serve --workers (default: its own)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mailhook-bench"))
    args = parser.parse_args()
    print(machine())
    print(bench(args.idle, args.active, args.seconds, args.workdir, args.workers).render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
