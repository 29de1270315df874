"""Which relay holds which tunnel, when several relays share one PostgreSQL database.

On PostgreSQL every registered agent session gets a ``route`` row (tunnel, relay
id, session id, lease expiry; ``Store``).  The relay:

  * claims the route once the session is welcomed: an upsert, so the newest
    session wins whatever relay held the tunnel, and a ``t:<tunnel>`` NOTIFY on
    ``intunnel.changes``'s channel in the same transaction.  The relay that held
    it hears that (``revocations``), finds the route is no longer its session's,
    and cuts that session as replaced (measured: a few ms); its reconcile timer
    and this module's renewals (which report routes lost to another relay) are
    the safety nets for a lost notification;
  * renews its leases on every heartbeat tick (1 s) and records its heartbeat and
    agent count in its ``relay`` row (``intunnel-admin relay list``); the same
    tick frees routes whose lease lapsed (their relay died): those tunnels are
    inactive again and any relay may take them;
  * releases a session's route when it ends, and on a clean stop deletes all of
    its routes and its ``relay`` row.

On SQLite (one host, one relay) none of this runs: the relay's memory is the
truth, as before.
"""

from __future__ import annotations

import logging

log = logging.getLogger("intunnel.relay")


class Routes:
    def __init__(self, relay):
        self.relay = relay
        self.store = relay.store
        self._renewing = False
        self._failing = False

    @property
    def enabled(self) -> bool:
        return self.store.routes

    async def start(self) -> None:
        """Be listed: with forwarding, at the address the other relays dial (relay/peers)."""
        host, port = self.relay.address
        peers = self.relay.peers
        await self.store.register(self.relay.relay_id, peers.dial_address if peers else f"{host}:{port}")

    async def claim(self, session) -> None:
        """``session`` was welcomed: its tunnel's route is now this relay's."""
        before = await self.store.claim(session.tunnel.id, session.session_id, session.narrowed)
        session.routed = True
        if before is not None and before != self.relay.relay_id:
            log.info("tunnel %s: taken over from relay %s (a newer agent session)", session.subdomain, before)

    async def release(self, session, mark_inactive: bool) -> None:
        await self.store.release(session.tunnel.id, session.session_id, mark_inactive)

    def tick(self) -> None:
        """From the heartbeat timer: renew the leases, unless the last renewal is still running."""
        if self.enabled and not self._renewing and not self.relay.stopping:
            self._renewing = True
            self.relay.spawn(self._renew())

    async def _renew(self) -> None:
        live = {s.tunnel.id: s.session_id for s in self.relay.sessions.values() if s.routed and not s.closed}
        try:
            lost = await self.store.renew(live)
        except Exception as e:
            if not self._failing:
                log.warning("could not renew route leases (%s); retrying every tick", type(e).__name__)
            self._failing = True
            return
        finally:
            self._renewing = False
        if self._failing:
            log.info("route leases renewed again")
            self._failing = False
        for tunnel_id in lost:  # another relay holds it now: have the session checked (replaced)
            self.relay.revocations.check_tunnel(tunnel_id)

    async def stop(self) -> None:
        if self.enabled:
            await self.store.unregister()
