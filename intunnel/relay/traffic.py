"""The dashboard's traffic view, the relay's half: recent requests per tunnel, metadata only.

When an exchange of a tunnel whose owner has the view on completes (or is upgraded), the
proxy state machine tells its ``journal`` (the visitor's ``Link``, relay/link) the facts it
knows: the request head, the status, when it began and ended.  The Link puts references and
numbers in the tunnel's ring (at most ``relay_traffic_ring``, the oldest dropped): the hot path
makes nothing.  A flusher task turns them into rows (method, path without the query string,
status, duration, bytes, visitor address, time: never a header or a body) and writes them to the
shared ``traffic_entry`` table every ``relay_traffic_flush`` seconds when there is something
(one INSERT, then one DELETE keeping ``traffic_rows_per_tunnel`` rows for the tunnels written),
so every relay sharing the database feeds the one view the web app reads (intunnel.web.api).

The INSERT keeps only the rows of tunnels whose view is on at that moment (relay/store), so a
request recorded just before the owner turned the view off (which deletes the stored rows)
never lands after the delete, whichever relay recorded it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from ..access import visitor_address

log = logging.getLogger("intunnel.relay")


class Bytes:
    """A data connection's ``netio.Conn.meter`` while a recorded visitor holds it: the bytes
    forwarded to the app (``tx``) and received from it (``rx``), kernel pumps included."""

    __slots__ = ("rx", "tx")

    def __init__(self):
        self.rx = self.tx = 0


def entry(tunnel_id: int, at: float, method: str, target: str, status: int, seconds: float,
          sent: int, received: int, visitor: str, path_max: int = 1024) -> tuple:
    """One stored row's values (the ``traffic_entry`` columns after ``id``, in order); the path
    without its query string, its first ``path_max`` characters."""
    cut = target.find("?")
    path = (target if cut < 0 else target[:cut])[:path_max]
    return (tunnel_id, int(at * 1000), method, path, status, max(0, int(seconds * 1000)), sent, received,
            visitor)


class Traffic:
    def __init__(self, relay):
        self.relay = relay
        self.ring_size = relay.settings.relay_traffic_ring
        self.rows = relay.settings.traffic_rows_per_tunnel
        self.interval = relay.settings.relay_traffic_flush
        self.trust_proxy = relay.settings.relay_trust_proxy
        self.path_max = relay.settings.traffic_path_max
        self.forwarded = self.trust_proxy   # the visitor's address may be in X-Forwarded-For
        # tunnel id -> what the Links recorded and was not written yet, as they put it (``raw``):
        #   (began, ended (loop clock), method, target, status, bytes sent, bytes received, peer,
        #    X-Forwarded-For or None, hop)
        self.rings: dict[int, deque] = {}
        self.wake = asyncio.Event()

    def ring(self, tunnel_id: int) -> deque:
        ring = self.rings[tunnel_id] = deque(maxlen=self.ring_size)
        self.wake.set()
        return ring

    def forget(self, tunnel_id: int) -> None:
        """The tunnel's view was turned off: what is held is never written."""
        self.rings.pop(tunnel_id, None)

    def take(self) -> list[tuple]:
        """The rows of what the rings hold (emptied)."""
        rings, self.rings = self.rings, {}
        wall = time.time() - asyncio.get_running_loop().time()   # loop clock -> epoch
        return [entry(tunnel_id, wall + began, method, target, status, ended - began, sent, received,
                      visitor_address(peer, forwarded, self.trust_proxy, hop), self.path_max)
                for tunnel_id, ring in rings.items()
                for began, ended, method, target, status, sent, received, peer, forwarded, hop in ring]

    async def flush(self) -> int:
        rows = self.take()
        if rows:
            await self.relay.store.write_traffic(rows, self.rows)
        return len(rows)

    async def run(self) -> None:
        """The flusher: at most one write per interval, none while nothing was recorded."""
        while True:
            await self.wake.wait()
            await asyncio.sleep(self.interval)
            self.wake.clear()
            try:
                await self.flush()
            except Exception:
                log.exception("could not write the traffic view's entries (dropped)")


async def refresh(relay, sessions) -> None:
    """Reload whether the view is on for ``sessions`` (the revocation checker's, on a change)."""
    live = [s for s in sessions if not s.closed]
    if not live:
        return
    stored = await relay.store.traffic_views([s.tunnel.id for s in live])
    for session in live:
        on = stored.get(session.tunnel.id, session.traffic_view)
        if on != session.traffic_view:
            log.info("tunnel %s: traffic view turned %s", session.subdomain, "on" if on else "off")
            session.traffic_view = on
            if not on:
                relay.traffic.forget(session.tunnel.id)
