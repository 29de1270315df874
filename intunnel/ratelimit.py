"""Rate-limit arithmetic (pure; no I/O): fixed windows per key, injectable clock.

A window opens at a key's first hit and lasts ``period`` seconds; up to ``limit``
hits are allowed in it.  A refused hit is not counted, so a client that keeps
hammering is let in again as soon as the window ends.  State lives in memory of
one process (the web app): a restart forgets it, and several web processes would
each count on their own.  That is the documented trade-off on SQLite (one VPS);
on PostgreSQL the web app counts in the database instead (``sharedlimits``, the
same semantics), so every web process shares one budget.

    limiter = RateLimiter(limit=100, period=60, clock=time.time)
    decision = limiter.hit("user:1")
    decision.allowed, decision.remaining, decision.reset_at, decision.retry_after
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable

Clock = Callable[[], float]

# Expired windows are swept when the table grows past this many keys, so memory
# stays bounded by the number of clients active within one period.
SWEEP_THRESHOLD = 4096


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_at: float  # clock time at which the current window ends

    def retry_after(self, now: float) -> int:
        """Whole seconds until the window ends (at least 1): the Retry-After value."""
        return max(1, math.ceil(self.reset_at - now))


class RateLimiter:
    """``limit`` hits per ``period`` seconds per key.  Thread-safe."""

    def __init__(self, limit: int, period: float, clock: Clock = time.time):
        if limit < 0 or period <= 0:
            raise ValueError("limit must be >= 0 and period > 0")
        self.limit = limit
        self.period = period
        self.clock = clock
        self._windows: dict[str, tuple[float, int]] = {}  # key -> (window start, hits)
        self._lock = threading.Lock()

    def _current(self, key: str, now: float) -> tuple[float, int]:
        start, hits = self._windows.get(key, (now, 0))
        if now >= start + self.period or now < start:  # window over (or clock went back)
            return now, 0
        return start, hits

    def hit(self, key: str) -> Decision:
        """Count one hit for ``key`` if the limit allows it."""
        now = self.clock()
        with self._lock:
            start, hits = self._current(key, now)
            allowed = hits < self.limit
            if allowed:
                hits += 1
            self._windows[key] = (start, hits)
            if len(self._windows) > SWEEP_THRESHOLD:
                self._sweep(now)
        return Decision(allowed, self.limit, max(0, self.limit - hits), start + self.period)

    def peek(self, key: str) -> Decision:
        """The state for ``key`` without counting a hit (allowed = another hit would be)."""
        now = self.clock()
        with self._lock:
            start, hits = self._current(key, now)
        return Decision(hits < self.limit, self.limit, max(0, self.limit - hits), start + self.period)

    def reset(self, key: str) -> None:
        with self._lock:
            self._windows.pop(key, None)

    def _sweep(self, now: float) -> None:
        expired = [k for k, (start, _) in self._windows.items() if now >= start + self.period]
        for k in expired:
            del self._windows[k]


class ManualClock:
    """A clock for tests and benchmarks: time moves only when told to."""

    def __init__(self, start: float = 1_800_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
