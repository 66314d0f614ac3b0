"""The SMTP door's per-address tables: connection rate, AUTH penalty, refusal summary, and their bounds."""

from __future__ import annotations

import pytest

from mailhook.smtp import limits as smtplimits
from mailhook.smtp.limits import AUTH_PENALTY_MEMORY, RATE_UNIT, AuthPenalty, ConnectionRate, RefusalSummary


def test_connections_up_to_the_rate_pass_and_past_it_are_too_fast_until_the_unit_ends() -> None:
    rate = ConnectionRate(3)
    assert [rate.too_fast("192.0.2.1", t) for t in (0.0, 1.0, 2.0, 3.0, 4.0)] == [False] * 3 + [True] * 2
    assert not rate.too_fast("192.0.2.2", 5.0)  # each address has its own count
    assert not rate.too_fast("192.0.2.1", RATE_UNIT)  # a new unit
    assert not ConnectionRate(0).too_fast("192.0.2.1", 0.0)  # 0: no limit


def test_auth_delays_double_per_failure_from_an_address_up_to_the_longest() -> None:
    penalty = AuthPenalty(2.0, 15.0)
    assert [penalty.failed("192.0.2.1", t) for t in range(6)] == [
        (2.0, 1), (4.0, 2), (8.0, 3), (15.0, 4), (15.0, 5), (15.0, 6)]
    assert penalty.failed("192.0.2.2", 6.0) == (2.0, 1)
    assert penalty.failed("192.0.2.1", 6.0 + AUTH_PENALTY_MEMORY + 1) == (2.0, 1)  # forgotten
    penalty.failed("192.0.2.1", 700.0)
    penalty.forgive("192.0.2.1")
    assert penalty.failed("192.0.2.1", 701.0) == (2.0, 1)
    assert AuthPenalty(2.0, 15.0).failed("x", 0.0) == (2.0, 1)
    assert all(AuthPenalty(1.0, 30.0).failed("x", 0.0)[0] <= 30.0 for _ in range(100))


def test_the_tables_remember_a_bounded_number_of_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smtplimits, "MAX_REMEMBERED", 4)
    rate, penalty, summary = ConnectionRate(1), AuthPenalty(1.0, 8.0), RefusalSummary()
    for i in range(100):
        rate.too_fast(f"192.0.2.{i}", float(i))
        penalty.failed(f"192.0.2.{i}", float(i))
        summary.add(f"192.0.2.{i}", "too_many_sessions")
    assert len(rate.seen) <= 4 and len(penalty.failures) <= 4 and len(summary.peers) <= 4
    assert rate.too_fast("192.0.2.99", 99.5)  # the newest are kept
    assert sum(summary.reasons.values()) == 100  # every refusal is still counted
    line = summary.take(60.0)
    assert line is not None and (line[0] % line[1]).startswith(
        "refused 100 connections in the last 60 s: 100 at smtp.max_sessions, 0 at smtp.max_per_ip, "
        "0 at smtp.max_connection_rate; from 4 addresses+, most from")


def test_a_refusal_summary_counts_reasons_and_addresses_then_starts_afresh() -> None:
    summary = RefusalSummary()
    assert summary.take(60.0) is None
    assert summary.add("192.0.2.1", "too_many_from_address") is True  # the first: plan a summary
    assert summary.add("192.0.2.1", "too_many_from_address") is False
    summary.add("192.0.2.2", "too_many_sessions")
    summary.add("192.0.2.3", "too_fast")
    line = summary.take(60.0)
    assert line is not None
    assert line[0] % line[1] == (
        "refused 4 connections in the last 60 s: 1 at smtp.max_sessions, 2 at smtp.max_per_ip, "
        "1 at smtp.max_connection_rate; from 3 addresses, most from 192.0.2.1 (2)")
    assert summary.take(60.0) is None
    assert summary.add("192.0.2.1", "too_fast") is True
