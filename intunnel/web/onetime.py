"""Values to show exactly once (a new API token's secret), kept server-side.

    ref = store.put(owner, secret)     # owner: the login session's id hash
    ...                                # the flash cookie carries only ``ref``
    store.take(owner, ref)             # the secret, once; None after, for another
                                       # owner, or past ``ttl`` seconds

The values live in the memory of the web process, never in a cookie, a log or
the database: a restart forgets a secret nobody has looked at yet (its owner
makes a new token).  ``ref`` is random and useless without the owner's session.
"""

from __future__ import annotations

import secrets
import threading

from ..ratelimit import Clock


class OneTimeSecrets:
    def __init__(self, ttl: float, clock: Clock):
        self.ttl = ttl
        self.clock = clock
        self._values: dict[str, tuple[str, str, float]] = {}  # ref -> (owner, value, expires at)
        self._lock = threading.Lock()

    def put(self, owner: str, value: str) -> str:
        ref = secrets.token_urlsafe(16)
        now = self.clock()
        with self._lock:
            for old in [r for r, (_, _, expires) in self._values.items() if expires <= now]:
                del self._values[old]
            self._values[ref] = (owner, value, now + self.ttl)
        return ref

    def take(self, owner: str | None, ref: str) -> str | None:
        with self._lock:
            entry = self._values.get(ref)
            if entry is None or owner is None or not secrets.compare_digest(entry[0], owner):
                return None
            del self._values[ref]
        return entry[1] if entry[2] > self.clock() else None

    def __len__(self) -> int:
        return len(self._values)
