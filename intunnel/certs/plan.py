"""What the reconciler does with one custom hostname now, and the status that follows (pure).

A hostname's row carries ``state``, ``reason``, ``attempts``, ``next_attempt_at`` and the
certificate's ``not_after``.  ``decide`` picks the step; the ``after_*`` functions give the row's
next values for each outcome.  Times are aware or naive UTC datetimes, as the caller keeps them.

    state        due?                        step
    -----------  --------------------------  -----------------------------------------------
    pending-dns  next_attempt_at <= now      CHECK (DNS, then issue if it points here)
    failed       next_attempt_at <= now      CHECK
    issuing      always (a run interrupted)  CHECK
    active       now >= not_after - renew    RENEW (after a failed renewal: once next_attempt_at <= now)
    any          otherwise                   WAIT  (active: its vhost is kept as it is)

    outcome                      next state   reason                         attempts  next_attempt_at
    ---------------------------  -----------  -----------------------------  --------  -------------------------
    DNS not pointing here        pending-dns  what it resolves to            +1        now + backoff
    about to ask the CA          issuing      ""                             same      same
    certificate obtained         active       ""                             0         not_after - renew_before
    issuance failed              failed       the CA's or certbot's words    +1        now + backoff
    renewal failed, still valid  active       "renewal failed: ..."          +1        now + backoff
    renewal failed, expired      failed       "certificate expired; ..."     +1        now + backoff
    vhost rejected by nginx -t   failed       nginx's words                  +1        now + backoff

Backoff doubles from ``retry_min`` up to ``retry_max`` with each consecutive failure.  Only an
``active`` hostname is served and routed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

PENDING_DNS, ISSUING, ACTIVE, FAILED = "pending-dns", "issuing", "active", "failed"
STATES = (PENDING_DNS, ISSUING, ACTIVE, FAILED)
WAIT, CHECK, RENEW = "wait", "check", "renew"
REASON_MAX = 300   # characters of a reason kept (the CA's detail can be long)


@dataclass(frozen=True)
class Row:
    state: str = PENDING_DNS
    reason: str = ""
    attempts: int = 0
    next_attempt_at: datetime | None = None
    not_after: datetime | None = None


@dataclass(frozen=True)
class Timing:
    renew_before: timedelta
    retry_min: timedelta
    retry_max: timedelta


def status_text(state: str, reason: str) -> str:
    """What the API and the dashboard show: ``failed: <reason>`` or the state itself."""
    return f"{FAILED}: {reason}" if state == FAILED else state


def backoff(attempts: int, timing: Timing) -> timedelta:
    """The wait after ``attempts`` consecutive failures (1: retry_min, doubling, at most retry_max)."""
    factor = 2 ** min(max(attempts - 1, 0), 30)
    return min(timing.retry_min * factor, timing.retry_max)


def decide(row: Row, now: datetime, timing: Timing) -> str:
    due = row.next_attempt_at is None or row.next_attempt_at <= now
    if row.state == ISSUING:
        return CHECK
    if row.state in (PENDING_DNS, FAILED):
        return CHECK if due else WAIT
    if row.state == ACTIVE:
        if row.not_after is None:
            return CHECK
        backing_off = row.attempts > 0 and not due   # a renewal failed: retry after the backoff only
        return RENEW if not backing_off and now >= row.not_after - timing.renew_before else WAIT
    return CHECK   # an unknown state (a newer release's): start over


def _clip(reason: str) -> str:
    reason = " ".join(reason.split())
    return reason if len(reason) <= REASON_MAX else reason[:REASON_MAX - 1] + "…"


def after_dns_mismatch(row: Row, now: datetime, timing: Timing, detail: str) -> Row:
    if row.state == ACTIVE:   # a renewal whose name moved away: keep serving while valid
        return after_issue_failed(row, now, timing, detail)
    attempts = row.attempts + 1
    return replace(row, state=PENDING_DNS, reason=_clip(detail), attempts=attempts,
                   next_attempt_at=now + backoff(attempts, timing))


def before_issue(row: Row) -> Row:
    """The state shown while the CA works: ``issuing`` for a first certificate; a renewal stays active."""
    return row if row.state == ACTIVE else replace(row, state=ISSUING, reason="")


def after_issued(row: Row, not_after: datetime, timing: Timing) -> Row:
    return Row(state=ACTIVE, reason="", attempts=0, next_attempt_at=not_after - timing.renew_before,
               not_after=not_after)


def after_issue_failed(row: Row, now: datetime, timing: Timing, reason: str) -> Row:
    attempts = row.attempts + 1
    later = now + backoff(attempts, timing)
    if row.state == ACTIVE and row.not_after is not None:
        if row.not_after > now:
            return replace(row, reason=_clip(f"renewal failed: {reason}"), attempts=attempts, next_attempt_at=later)
        return replace(row, state=FAILED, reason=_clip(f"certificate expired; renewal failed: {reason}"),
                       attempts=attempts, next_attempt_at=later)
    return replace(row, state=FAILED, reason=_clip(reason), attempts=attempts, next_attempt_at=later)


def after_install_failed(row: Row, now: datetime, timing: Timing, reason: str) -> Row:
    """nginx would not take the name's vhost (a broken certificate): not served, retried later."""
    attempts = row.attempts + 1
    return replace(row, state=FAILED, reason=_clip(reason), attempts=attempts,
                   next_attempt_at=now + backoff(attempts, timing))
