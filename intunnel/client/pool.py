"""How many data connections the agent keeps warm: pure arithmetic, no sockets, no clock.

The relay hands each visitor one of the agent's idle data connections; a warm pool hides the
round trip of dialing one.  The policy only decides; the session (session.py) dials and
closes, and always passes the counts of what is live at that moment (``idle``: connected,
waiting for a Bind; ``dialing``: on the way), computed from its set of live connections,
so nothing here can drift when a dial is cancelled or fails.

Rules:

1. A session starts with the Welcome's ``pool_size`` (clamped to 0..MAX_POOL_SIZE) as both its
   base and its current size, and dials up to the size.
2. When a visitor takes a connection (a Bind), dial back up to the size:
   ``size - idle - dialing``, never below 0.
3. A failed dial, or an idle connection the relay closes, is not replaced at once: a relay
   that refuses data connections must not be hammered; the next Bind tops up.
4. ``OpenData(count)``: the relay's pool ran dry.  Dial ``count`` (clamped to
   0..MAX_OPEN_DATA_BATCH) at once, whatever is on the way (each is for a visitor waiting
   now), and grow the size by as much, up to MAX_POOL_SIZE, for the burst.
5. ``POOL_SHRINK_AFTER`` seconds after the last OpenData, back to the base size, closing the
   idle connections beyond it: an idle agent should cost the relay little memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..wire import protocol as p


@dataclass
class PoolPolicy:
    base: int          # the Welcome's pool size
    size: int          # the size now (above base during a burst)
    last_burst: float = 0.0

    @classmethod
    def welcomed(cls, pool_size: int) -> PoolPolicy:
        """Rule 1."""
        size = max(0, min(pool_size, p.MAX_POOL_SIZE))
        return cls(base=size, size=size)

    def top_up(self, idle: int, dialing: int) -> int:
        """Rules 1 and 2: how many to dial now."""
        return max(0, self.size - idle - dialing)

    def open_data(self, count: int, now: float) -> int:
        """Rule 4: how many to dial for an OpenData asking for ``count``."""
        count = max(0, min(count, p.MAX_OPEN_DATA_BATCH))
        self.size = min(p.MAX_POOL_SIZE, self.size + count)
        self.last_burst = now
        return count

    def calm(self, now: float, idle: int) -> int:
        """Rule 5, asked every tick: how many idle connections to close now."""
        if self.size <= self.base or now - self.last_burst <= p.POOL_SHRINK_AFTER:
            return 0
        self.size = self.base
        return max(0, idle - self.base)
