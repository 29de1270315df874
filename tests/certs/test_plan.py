"""The custom domains' decisions (intunnel.certs.plan), table by table: step, outcome, backoff."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from intunnel.certs import plan
from intunnel.certs.plan import ACTIVE, CHECK, FAILED, ISSUING, PENDING_DNS, RENEW, WAIT, Row

NOW = datetime(2026, 12, 2, 18, 0, 0)
T = plan.Timing(renew_before=timedelta(days=30), retry_min=timedelta(minutes=1), retry_max=timedelta(hours=6))
SOON, LATER, PAST = NOW + timedelta(minutes=5), NOW + timedelta(days=60), NOW - timedelta(minutes=1)


@pytest.mark.parametrize("row, step", [
    (Row(PENDING_DNS), CHECK),                                                    # new: at once
    (Row(PENDING_DNS, attempts=2, next_attempt_at=SOON), WAIT),                   # backing off
    (Row(PENDING_DNS, attempts=2, next_attempt_at=PAST), CHECK),
    (Row(FAILED, "x", 1, SOON), WAIT),
    (Row(FAILED, "x", 1, NOW), CHECK),                                            # due exactly now
    (Row(ISSUING, next_attempt_at=SOON), CHECK),                                  # a run was interrupted
    (Row(ACTIVE, not_after=LATER, next_attempt_at=LATER - T.renew_before), WAIT),  # 60 days left
    (Row(ACTIVE, not_after=NOW + timedelta(days=30)), RENEW),                     # renew_before reached
    (Row(ACTIVE, not_after=NOW + timedelta(days=10)), RENEW),
    (Row(ACTIVE, "renewal failed: x", 1, SOON, NOW + timedelta(days=10)), WAIT),  # renewal backing off
    (Row(ACTIVE, "renewal failed: x", 1, PAST, NOW + timedelta(days=10)), RENEW),
    (Row(ACTIVE, not_after=None), CHECK),                                         # active without a cert
    (Row("something-newer"), CHECK),
])
def test_decide(row, step):
    assert plan.decide(row, NOW, T) == step


@pytest.mark.parametrize("attempts, wait", [
    (0, timedelta(minutes=1)), (1, timedelta(minutes=1)), (2, timedelta(minutes=2)), (3, timedelta(minutes=4)),
    (9, timedelta(minutes=256)), (10, timedelta(hours=6)), (500, timedelta(hours=6)),
])
def test_backoff_doubles_up_to_the_maximum(attempts, wait):
    assert plan.backoff(attempts, T) == wait


def test_outcomes():
    new = Row(PENDING_DNS)
    dns = plan.after_dns_mismatch(new, NOW, T, "app.example.org resolves to 192.0.2.1")
    assert dns == Row(PENDING_DNS, "app.example.org resolves to 192.0.2.1", 1, NOW + timedelta(minutes=1))
    assert plan.after_dns_mismatch(dns, NOW, T, "still").next_attempt_at == NOW + timedelta(minutes=2)

    issuing = plan.before_issue(dns)
    assert (issuing.state, issuing.reason, issuing.attempts) == (ISSUING, "", 1)
    failed = plan.after_issue_failed(issuing, NOW, T, "the CA could not connect")
    assert failed == Row(FAILED, "the CA could not connect", 2, NOW + timedelta(minutes=2))
    assert plan.status_text(failed.state, failed.reason) == "failed: the CA could not connect"

    active = plan.after_issued(failed, LATER, T)
    assert active == Row(ACTIVE, "", 0, LATER - timedelta(days=30), LATER)
    assert plan.status_text(active.state, active.reason) == "active"
    assert plan.before_issue(active) == active          # a renewal keeps it active (and routed)

    renewal = plan.after_issue_failed(active, NOW, T, "rate limited")
    assert (renewal.state, renewal.reason, renewal.not_after) == (ACTIVE, "renewal failed: rate limited", LATER)
    expired = plan.after_issue_failed(Row(ACTIVE, not_after=PAST), NOW, T, "rate limited")
    assert (expired.state, expired.reason) == (FAILED, "certificate expired; renewal failed: rate limited")
    moved = plan.after_dns_mismatch(active, NOW, T, "resolves elsewhere")
    assert (moved.state, moved.reason) == (ACTIVE, "renewal failed: resolves elsewhere")

    broken = plan.after_install_failed(active, NOW, T, "nginx rejected the vhost: bad key")
    assert (broken.state, broken.attempts, broken.next_attempt_at) == (FAILED, 1, NOW + timedelta(minutes=1))


def test_reasons_are_one_bounded_line():
    row = plan.after_issue_failed(Row(), NOW, T, "line one\n  line two " + "x" * 1000)
    assert "\n" not in row.reason and len(row.reason) == plan.REASON_MAX
    assert row.reason.startswith("line one line two x")
