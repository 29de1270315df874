"""Rate limits every web process shares: the counters in the database (PostgreSQL).

``DatabaseRateLimiter`` is a drop-in for ``ratelimit.RateLimiter`` (``hit``,
``peek``, ``reset``; the same ``Decision``) with exactly its semantics: a fixed
window opens at a key's first hit and lasts ``period`` seconds, up to ``limit``
hits are allowed in it, a refused hit is not counted, a clock that went back
opens a new window.  One row per (scope, key) in ``rate_limit``; a hit is one
statement, ``INSERT ... ON CONFLICT (scope, key_hash) DO UPDATE ... RETURNING``,
so two web processes counting the same key at once queue on the row and each
sees the other's hit.  Every expression in the update reads the row as it was
before it, which is what makes ``allowed`` (was *this* hit counted?) exact.

Keys are stored as their SHA-256 (a login throttle's key holds whatever name
was typed at the login form, sometimes a password).  Times are the web
process's clock (``time.time`` or a test's ManualClock), not the server's.
Rows whose window ended are deleted by the web processes themselves, at most
once per ``PRUNE_INTERVAL`` each.

``limiter_for(settings, ...)`` picks the store: this one on PostgreSQL, the
in-memory ``RateLimiter`` on SQLite (one web process; a restart resets it).
"""

from __future__ import annotations

import threading
import time

import peewee as pw

from .models import BaseModel, database
from .ratelimit import Clock, Decision, RateLimiter
from .security import sha256_hex
from .sqlcache import cached_sql

PRUNE_INTERVAL = 60.0


class RateLimit(BaseModel):
    """A rate-limit window (migration 2).  Not data: backups and ``db copy`` may ignore it."""
    scope = pw.CharField(max_length=32)
    key_hash = pw.CharField(max_length=64)
    window_start = pw.DoubleField()
    hits = pw.IntegerField()
    allowed = pw.BooleanField()   # whether the last hit was counted
    expires_at = pw.DoubleField(index=True)

    class Meta:
        table_name = "rate_limit"
        primary_key = pw.CompositeKey("scope", "key_hash")


class _Pruner:
    """Deletes ended windows, at most once per PRUNE_INTERVAL per process."""

    def __init__(self):
        self.lock = threading.Lock()
        self.last = float("-inf")

    def maybe(self, now: float) -> None:
        with self.lock:
            if self.last <= now < self.last + PRUNE_INTERVAL:
                return
            self.last = now
        RateLimit.delete().where(RateLimit.expires_at <= now).execute()


_pruner = _Pruner()


class DatabaseRateLimiter:
    """``limit`` hits per ``period`` seconds per key, counted in the database."""

    def __init__(self, scope: str, limit: int, period: float, clock: Clock = time.time):
        if limit < 0 or period <= 0:
            raise ValueError("limit must be >= 0 and period > 0")
        if not scope or len(scope) > 32:
            raise ValueError("scope must be 1 to 32 characters")
        self.scope = scope
        self.limit = limit
        self.period = period
        self.clock = clock

    def _where(self, key: str):
        return (RateLimit.scope == self.scope) & (RateLimit.key_hash == sha256_hex(key))

    def hit(self, key: str) -> Decision:
        """Count one hit for ``key`` if the limit allows it (one statement).

        Every API request makes one, so peewee writes its SQL once (``cached_sql``: 1.7 ms a
        time on a loaded 2-core machine, more than PostgreSQL takes to run it)."""
        now, limit, period = self.clock(), self.limit, self.period
        _pruner.maybe(now)
        first = 1 if limit > 0 else 0
        key_hash = sha256_hex(key)
        # The parameters in the order peewee writes them (cached_sql checks it at the first build).
        params = [self.scope, key_hash, now, first, limit > 0, now + period,
                  period, now, now, now, period, now, now, now + period,
                  period, now, now, first, limit, 1, period, now, now, limit > 0, limit, True, False]
        sql = cached_sql("rate limit hit", lambda: self._upsert(now, first, key_hash), params)
        start, hits, allowed = database.execute_sql(sql, params).fetchone()
        return Decision(bool(allowed), limit, max(0, limit - hits), start + period)

    def _upsert(self, now: float, first: int, key_hash: str) -> pw.Query:
        limit = self.limit
        over = (RateLimit.window_start + self.period <= now) | (RateLimit.window_start > now)
        return (RateLimit
                .insert(scope=self.scope, key_hash=key_hash, window_start=now, hits=first,
                        allowed=limit > 0, expires_at=now + self.period)
                .on_conflict(conflict_target=[RateLimit.scope, RateLimit.key_hash], update={
                    RateLimit.window_start: pw.Case(None, [(over, now)], RateLimit.window_start),
                    RateLimit.expires_at: pw.Case(None, [(over, now + self.period)], RateLimit.expires_at),
                    RateLimit.hits: pw.Case(None, [(over, first), (RateLimit.hits < limit, RateLimit.hits + 1)],
                                            RateLimit.hits),
                    RateLimit.allowed: pw.Case(None, [(over, limit > 0), (RateLimit.hits < limit, True)], False),
                })
                .returning(RateLimit.window_start, RateLimit.hits, RateLimit.allowed))

    def peek(self, key: str) -> Decision:
        """The state for ``key`` without counting a hit (allowed = another hit would be)."""
        now = self.clock()
        row = (RateLimit.select(RateLimit.window_start, RateLimit.hits)
               .where(self._where(key)).tuples().first())
        start, hits = row or (now, 0)
        if now >= start + self.period or now < start:
            start, hits = now, 0
        return Decision(hits < self.limit, self.limit, max(0, self.limit - hits), start + self.period)

    def reset(self, key: str) -> None:
        RateLimit.delete().where(self._where(key)).execute()


def limiter_for(settings, scope: str, limit: int, period: float, clock: Clock):
    """The shared (database) limiter on PostgreSQL, the in-memory one on SQLite."""
    if settings.db_backend == "postgresql":
        return DatabaseRateLimiter(scope, limit, period, clock)
    return RateLimiter(limit, period, clock)
