"""nginx's ``hash KEY consistent`` (ketama) in Python, to predict which relay nginx picks.

Tests start relays on random ports, and the ring depends on the server names as written
in the upstream: the tests pick tunnel names by this prediction (so every relay holds
one) and check that nginx really placed agents and visitors there.

nginx 1.22 ``ngx_http_upstream_hash_module``: every server ``HOST:PORT`` (weight 1) gets
160 points, ``crc32(HOST "\\0" PORT PREV_HASH)`` with the previous point's hash as 4
little-endian bytes (0 at first); points are sorted and duplicates dropped.  A key goes to
the first point whose hash is >= ``crc32(KEY)`` (past the last: the first).  A server that
is down (or already tried for the request) is skipped by moving on point by point; after
20 skips nginx falls back to round robin, which this does not predict (``None``); so does an
empty key (nginx 1.22 balances those round robin, never by the ring).
"""

from __future__ import annotations

import bisect
import zlib

POINTS_PER_SERVER = 160
MAX_TRIES = 20


class Ring:
    def __init__(self, servers: list[str]):
        points: dict[int, str] = {}
        for server in servers:
            host, _, port = server.rpartition(":")
            base = host.encode() + b"\0" + port.encode()
            prev = 0
            for _ in range(POINTS_PER_SERVER):
                point = zlib.crc32(base + prev.to_bytes(4, "little"))
                points.setdefault(point, server)  # sorted, duplicates dropped: the first one stays
                prev = point
        self.hashes = sorted(points)
        self.servers = [points[h] for h in self.hashes]

    def pick(self, key: str, down: frozenset[str] | set[str] = frozenset()) -> str | None:
        """The server nginx sends ``key`` to while the servers in ``down`` are skipped."""
        if not key:
            return None
        index = bisect.bisect_left(self.hashes, zlib.crc32(key.encode()))
        for tries in range(MAX_TRIES + 1):
            server = self.servers[(index + tries) % len(self.servers)]
            if server not in down:
                return server
        return None
