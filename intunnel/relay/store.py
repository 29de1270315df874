"""The relay's database access: token checks, live status, revocation checks, routes.

Every call runs on one dedicated thread so the database never blocks the event loop.

Routes (PostgreSQL only; ``routes`` is False on SQLite and none of it runs): the
``route`` row of a tunnel names the relay and session holding its agent until
``lease_expires_at``, on the database's clock so relays' clocks don't matter.
Lock order, so claims, releases and expiries never deadlock: the tunnel row first
(``UPDATE``/``SELECT ... FOR UPDATE``), then its route.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from ..wire import protocol as p
import peewee as pw

from .. import domains, ephemeral, memberpass, traffic
from ..changes import tunnel_changed
from ..models import RelayNode, Route, Tunnel, User, open_database
from ..sqlcache import cached_sql
from ..timeutil import utcnow

log = logging.getLogger("intunnel.relay")

# The database's clock (UTC, naive like every stored time): one clock for every relay.
DB_NOW = pw.SQL("(now() AT TIME ZONE 'UTC')")


def _db_later(seconds: float):
    return pw.SQL("((now() AT TIME ZONE 'UTC') + make_interval(secs => %s))", (float(seconds),))


@dataclass(frozen=True)
class TunnelInfo:
    id: int
    subdomain: str
    local_port: int
    token: str
    owner_disabled: bool = False
    owner_id: int | None = None
    access: str | None = None   # the stored access policy (intunnel.access; relay/access): None = public
    traffic_view: bool = True   # the dashboard's traffic view is on (relay/traffic)
    remote_port: int | None = None   # a TCP tunnel's public port (relay/tcp_listeners); None: HTTP


@dataclass(frozen=True)
class LiveSession:
    """What the revocation check needs to know about a connected agent."""
    tunnel_id: int
    token: str
    started_at: datetime
    session_id: str = ""
    routed: bool = False   # its route was claimed (only then can it be found replaced)


class Store:
    def __init__(self, settings):
        self.settings = settings
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-db")
        self._db = None
        self.routes = False     # PostgreSQL: route and relay rows are kept
        self.relay_id = ""
        self.lease = float(settings.relay_route_lease)
        # Status writes waiting for the writer (set_status), and the writer task while it runs.
        self._statuses: list[tuple[int, bool, str | None, asyncio.Future]] = []
        self._status_writer: asyncio.Task | None = None

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- run on the DB thread ---
    def _open(self):
        self._db = open_database(self.settings)
        self._db.connect(reuse_if_open=True)
        self.routes = isinstance(self._db, pw.PostgresqlDatabase)
        # disconnected_at from now: an ephemeral tunnel's client gets the grace to reconnect after a restart
        inactive = Tunnel.update(status="inactive", session_access=None, disconnected_at=self._now()).where(
            Tunnel.status != "inactive")
        if self.routes:  # tunnels held by other relays stay active
            inactive = inactive.where(~pw.fn.EXISTS(self._valid_route(Tunnel.id)))
        inactive.execute()

    def _now(self):
        """When an agent left (``disconnected_at``): on PostgreSQL the database's clock, which the
        reaper compares it with in every relay, so relays' clocks don't matter."""
        return DB_NOW if self.routes else utcnow()

    def _find_by_token(self, token: str) -> TunnelInfo | None:
        # Every agent's handshake: peewee writes the SQL once (0.3 ms a time otherwise, on the
        # thread that shares the GIL with the event loop; 1,000 agents reconnect after a restart).
        sql = cached_sql("relay: tunnel by token", lambda: (
            Tunnel.select(Tunnel.id, Tunnel.subdomain, Tunnel.local_port, Tunnel.token, User.disabled, User.id,
                          Tunnel.access, Tunnel.traffic_view, Tunnel.protocol, Tunnel.remote_port)
            .join(User).where(Tunnel.token == token).limit(1)), [token, 1])
        row = self._db.execute_sql(sql, [token, 1]).fetchone()
        return row and TunnelInfo(row[0], row[1], row[2], row[3], bool(row[4]), row[5], row[6], bool(row[7]),
                                  row[9] if row[8] == "tcp" else None)

    def _tcp_ports(self) -> dict[int, str]:
        return dict(Tunnel.select(Tunnel.remote_port, Tunnel.subdomain)
                    .where((Tunnel.protocol == "tcp") & Tunnel.remote_port.is_null(False)).tuples())

    def _policies(self, tunnel_ids: list[int]) -> dict[int, str | None]:
        return dict(Tunnel.select(Tunnel.id, Tunnel.access).where(Tunnel.id.in_(tunnel_ids)).tuples())

    def _traffic_views(self, tunnel_ids: list[int]) -> dict[int, bool]:
        return {i: bool(on) for i, on in Tunnel.select(Tunnel.id, Tunnel.traffic_view)
                .where(Tunnel.id.in_(tunnel_ids)).tuples()}

    def _write_traffic(self, rows: list[tuple], keep: int) -> None:
        traffic.write(self._db, rows, keep)

    def _redeem(self, ticket: str, tunnel_id: int):
        return memberpass.redeem(ticket, tunnel_id, self.settings.access_grant_max_age)

    def _grants(self, token_hashes: list[str]) -> dict[str, memberpass.Grant]:
        found: dict[str, memberpass.Grant] = {}
        for i in range(0, len(token_hashes), 500):   # bounded IN lists (SQLite's variable limit)
            found.update(memberpass.grants(token_hashes[i:i + 500]))
        return found

    def _exists(self, subdomain: str) -> bool:
        return Tunnel.select().where(Tunnel.subdomain == subdomain).exists()

    def _set_statuses(self, rows: list[tuple[int, bool, str | None]]) -> None:
        """(tunnel id, active, narrowed) in order; narrowed: the live session's own access rules
        as the dashboard shows them (JSON, no password).  A tunnel's last row wins, and one that
        connected in the batch gets ``last_connected``; the tunnels that end alike are written by
        one UPDATE (1,000 one-row UPDATEs cost peewee half a second), all in one transaction."""
        final: dict[int, tuple[bool, str | None]] = {}
        connected: set[int] = set()
        for tunnel_id, active, narrowed in rows:
            final[tunnel_id] = (active, narrowed if active else None)
            if active:
                connected.add(tunnel_id)
        groups: dict[tuple, list[int]] = {}
        for tunnel_id, (active, narrowed) in final.items():
            groups.setdefault((active, narrowed, tunnel_id in connected), []).append(tunnel_id)
        now = utcnow()
        with self._db.atomic():   # one commit (on SQLite one fsync) for the batch
            for (active, narrowed, touched), ids in groups.items():
                changes = {"status": "active" if active else "inactive", "session_access": narrowed,
                           # an ephemeral tunnel's grace starts when it is left (intunnel.ephemeral)
                           "disconnected_at": None if active else self._now()}
                if touched:
                    changes["last_connected"] = now
                for i in range(0, len(ids), 500):   # bounded IN lists (SQLite's variable limit)
                    Tunnel.update(**changes).where(Tunnel.id.in_(ids[i:i + 500])).execute()

    def _revoked(self, live: list[LiveSession]) -> list[tuple[int, p.Revoked]]:
        holders = self._holders([s.tunnel_id for s in live if s.routed])
        rows = {r[0]: r for r in Tunnel.select(Tunnel.id, Tunnel.token, Tunnel.disconnect_requested_at,
                                               User.disabled).join(User)
                .where(Tunnel.id.in_([s.tunnel_id for s in live])).tuples()}
        out = []
        for s in live:
            row = rows.get(s.tunnel_id)
            if row is None:
                out.append((s.tunnel_id, p.Revoked("the tunnel was deleted", p.REVOKED_DELETED)))
            elif row[1] != s.token:
                out.append((s.tunnel_id, p.Revoked("the token was regenerated", p.REVOKED_TOKEN)))
            elif row[3]:  # checked before the disconnect request that disabling also makes
                out.append((s.tunnel_id, p.Revoked("the owner's account was disabled", p.REVOKED_DISABLED)))
            elif row[2] and row[2] >= s.started_at.replace(microsecond=0):
                out.append((s.tunnel_id, p.Revoked("disconnected by an administrator", p.REVOKED_DISCONNECTED)))
            elif s.routed and s.tunnel_id in holders and holders[s.tunnel_id] != (self.relay_id, s.session_id):
                other = holders[s.tunnel_id][0]
                where = "" if other == self.relay_id else f" (relay {other})"
                out.append((s.tunnel_id, p.Revoked("replaced: another client connected with this tunnel's "
                                                   f"token{where}", p.REVOKED_REPLACED)))
        return out

    # --- routes (PostgreSQL) ---
    @staticmethod
    def _valid_route(tunnel_id):
        return Route.select(Route.tunnel).where((Route.tunnel == tunnel_id) & (Route.lease_expires_at > DB_NOW))

    def _holders(self, tunnel_ids) -> dict[int, tuple[str, str]]:
        """{tunnel id: (relay id, session id)} of the valid routes among ``tunnel_ids``."""
        if not self.routes or not tunnel_ids:
            return {}
        return {t: (r, s) for t, r, s in Route.select(Route.tunnel, Route.relay_id, Route.session_id)
                .where(Route.tunnel.in_(list(tunnel_ids)) & (Route.lease_expires_at > DB_NOW)).tuples()}

    def _route_of(self, subdomain: str) -> tuple[int, str, str] | None:
        """(tunnel id, relay id, relay address) of the valid route of ``subdomain``'s tunnel."""
        if not self.routes:
            return None
        return (Route.select(Route.tunnel, Route.relay_id, RelayNode.address)
                .join(Tunnel, on=(Route.tunnel == Tunnel.id))
                .switch(Route).join(RelayNode, on=(Route.relay_id == RelayNode.relay_id))
                .where((Tunnel.subdomain == subdomain) & (Route.lease_expires_at > DB_NOW))
                .tuples().first())

    def _register(self, relay_id: str, address: str) -> None:
        """At start: forget this relay id's routes of an earlier run (that process is gone), be listed."""
        self.relay_id = relay_id
        if not self.routes:
            return
        with self._db.atomic():
            self._free(Route.relay_id == relay_id)
            RelayNode.insert(relay_id=relay_id, address=address, started_at=DB_NOW, last_heartbeat=DB_NOW,
                             agents=0).on_conflict(
                conflict_target=[RelayNode.relay_id],
                update={RelayNode.address: address, RelayNode.started_at: DB_NOW,
                        RelayNode.last_heartbeat: DB_NOW, RelayNode.agents: 0}).execute()

    def _free(self, condition) -> list[int]:
        """Delete the routes matching ``condition``; their tunnels become inactive.  Inside a transaction."""
        ids = [t for (t,) in Route.select(Route.tunnel).where(condition).tuples()]
        if not ids:
            return []
        list(Tunnel.select(Tunnel.id).where(Tunnel.id.in_(ids)).order_by(Tunnel.id).for_update().tuples())
        gone = [t for (t,) in Route.delete().where(condition & Route.tunnel.in_(ids))
                .returning(Route.tunnel).tuples().execute()]
        if gone:
            Tunnel.update(status="inactive", disconnected_at=DB_NOW).where(Tunnel.id.in_(gone)).execute()
        return gone

    def _claim(self, tunnel_id: int, session_id: str, narrowed: str | None = None) -> str | None:
        """The newest session wins: take the tunnel's route whoever held it; tell every relay.
        Returns the relay that held a valid route before, if another session did."""
        with self._db.atomic():
            Tunnel.update(status="active", last_connected=utcnow(), session_access=narrowed,
                          disconnected_at=None).where(
                Tunnel.id == tunnel_id).execute()
            before = self._holders([tunnel_id]).get(tunnel_id)
            Route.insert(tunnel=tunnel_id, relay_id=self.relay_id, session_id=session_id, claimed_at=DB_NOW,
                         lease_expires_at=_db_later(self.lease)).on_conflict(
                conflict_target=[Route.tunnel],
                update={Route.relay_id: self.relay_id, Route.session_id: session_id,
                        Route.claimed_at: DB_NOW, Route.lease_expires_at: _db_later(self.lease)}).execute()
            tunnel_changed(tunnel_id)  # the holder before re-checks its session: replaced
        return before[0] if before and before != (self.relay_id, session_id) else None

    def _release(self, tunnel_id: int, session_id: str, mark_inactive: bool) -> None:
        """The session ended: its route goes; the tunnel is inactive unless another relay holds it."""
        with self._db.atomic():
            list(Tunnel.select(Tunnel.id).where(Tunnel.id == tunnel_id).for_update().tuples())
            Route.delete().where((Route.tunnel == tunnel_id) & (Route.relay_id == self.relay_id)
                                 & (Route.session_id == session_id)).execute()
            if mark_inactive:
                Tunnel.update(status="inactive", session_access=None, disconnected_at=DB_NOW).where(
                    (Tunnel.id == tunnel_id) & ~pw.fn.EXISTS(self._valid_route(tunnel_id))).execute()

    def _renew(self, live: dict[int, str]) -> list[int]:
        """Every heartbeat tick: extend this relay's leases, retake lapsed ones that nobody took,
        expire other relays' lapsed routes, record the heartbeat.  Returns the live tunnels that
        another relay holds now (their sessions are to be re-checked: replaced)."""
        renewed = dict(Route.update(lease_expires_at=_db_later(self.lease))
                       .where(Route.relay_id == self.relay_id)
                       .returning(Route.tunnel, Route.session_id).tuples().execute())
        stale = [t for t, s in renewed.items() if live.get(t) != s]
        for tunnel_id in stale:  # a session that ended without its release (the release failed)
            with self._db.atomic():
                self._free((Route.tunnel == tunnel_id) & (Route.relay_id == self.relay_id)
                           & (Route.session_id == renewed[tunnel_id]))
        lost = []
        missing = [t for t, s in live.items() if renewed.get(t) != s]
        for tunnel_id in missing:  # our lease lapsed (the database was unreachable) or was taken
            with self._db.atomic():
                list(Tunnel.select(Tunnel.id).where(Tunnel.id == tunnel_id).for_update().tuples())
                taken = (Route.insert(tunnel=tunnel_id, relay_id=self.relay_id, session_id=live[tunnel_id],
                                      claimed_at=DB_NOW, lease_expires_at=_db_later(self.lease))
                         .on_conflict(conflict_target=[Route.tunnel],
                                      update={Route.relay_id: self.relay_id, Route.session_id: live[tunnel_id],
                                              Route.claimed_at: DB_NOW,
                                              Route.lease_expires_at: _db_later(self.lease)},
                                      where=(Route.lease_expires_at <= DB_NOW))
                         .returning(Route.tunnel).tuples().execute())
                if list(taken):
                    Tunnel.update(status="active").where(Tunnel.id == tunnel_id).execute()
                else:
                    lost.append(tunnel_id)
        with self._db.atomic():
            expired = self._free((Route.lease_expires_at <= DB_NOW) & (Route.relay_id != self.relay_id))
        if expired:
            log.info("route leases expired (their relay stopped renewing): %d tunnel(s) free", len(expired))
        RelayNode.update(last_heartbeat=DB_NOW, agents=len(live)).where(
            RelayNode.relay_id == self.relay_id).execute()
        return lost

    def _unregister(self) -> None:
        """A clean stop: this relay's routes and row go."""
        with self._db.atomic():
            self._free(Route.relay_id == self.relay_id)
            RelayNode.delete().where(RelayNode.relay_id == self.relay_id).execute()

    def _reap(self) -> int:
        return ephemeral.reap(self.settings.relay_ephemeral_grace, self.routes)

    def _close(self):
        if self._db is not None and not self._db.is_closed():
            self._db.close()

    # --- async API ---
    @property
    def database(self):
        """The opened peewee database (after ``open``): the LISTEN connection copies its parameters."""
        return self._db

    async def open(self) -> None:
        """Open the database and mark every tunnel inactive (no agent is connected yet)."""
        await self._run(self._open)

    async def find_by_token(self, token: str) -> TunnelInfo | None:
        return await self._run(self._find_by_token, token)

    async def redeem(self, ticket: str, tunnel_id: int):
        """A members-only ticket turned into an access token (memberpass.redeem), once."""
        return await self._run(self._redeem, ticket, tunnel_id)

    async def grants(self, token_hashes: list[str]) -> dict[str, memberpass.Grant]:
        """The live access grants among ``token_hashes`` (memberpass.grants)."""
        return await self._run(self._grants, token_hashes)

    async def custom_routes(self) -> dict[str, str]:
        """{hostname: subdomain} of the active custom domains (intunnel.domains)."""
        return await self._run(domains.active_routes)

    async def tcp_ports(self) -> dict[int, str]:
        """{public port: subdomain} of every TCP tunnel (relay/tcp_listeners)."""
        return await self._run(self._tcp_ports)

    async def exists(self, subdomain: str) -> bool:
        return await self._run(self._exists, subdomain)

    async def set_status(self, tunnel_id: int, active: bool, narrowed: str | None = None) -> None:
        """Record an agent (dis)connected; returns once written.  Writes made while an earlier
        batch is being written go together in the next one, in order, in one transaction: 1,000
        agents reconnecting after a restart (or leaving at a stop) cost a few commits, not 1,000."""
        done = asyncio.get_running_loop().create_future()
        self._statuses.append((tunnel_id, active, narrowed, done))
        if self._status_writer is None:
            self._status_writer = asyncio.ensure_future(self._write_statuses())
        await done

    async def _write_statuses(self) -> None:
        try:
            while self._statuses:
                batch, self._statuses = self._statuses, []
                try:
                    await self._run(self._set_statuses, [row[:3] for row in batch])
                except Exception as e:
                    for *_, done in batch:
                        if not done.done():
                            done.set_exception(e)
                else:
                    for *_, done in batch:
                        if not done.done():
                            done.set_result(None)
        finally:
            self._status_writer = None

    async def policies(self, tunnel_ids: list[int]) -> dict[int, str | None]:
        """{tunnel id: its stored access policy} of those that still exist (relay/access.refresh)."""
        return await self._run(self._policies, tunnel_ids)

    async def revoked(self, live: list[LiveSession]) -> list[tuple[int, p.Revoked]]:
        """(tunnel id, the Revoked message to send) for each live session that must be cut."""
        if not live:
            return []
        return await self._run(self._revoked, live)

    async def traffic_views(self, tunnel_ids: list[int]) -> dict[int, bool]:
        return await self._run(self._traffic_views, tunnel_ids)

    async def write_traffic(self, rows: list[tuple], keep: int) -> None:
        """The traffic view's new entries (relay/traffic), for tunnels whose view is still on."""
        await self._run(self._write_traffic, rows, keep)

    async def route_of(self, subdomain: str) -> tuple[int, str, str] | None:
        return await self._run(self._route_of, subdomain)

    async def register(self, relay_id: str, address: str) -> None:
        await self._run(self._register, relay_id, address)

    async def claim(self, tunnel_id: int, session_id: str, narrowed: str | None = None) -> str | None:
        return await self._run(self._claim, tunnel_id, session_id, narrowed)

    async def release(self, tunnel_id: int, session_id: str, mark_inactive: bool) -> None:
        await self._run(self._release, tunnel_id, session_id, mark_inactive)

    async def renew(self, live: dict[int, str]) -> list[int]:
        return await self._run(self._renew, live)

    async def unregister(self) -> None:
        await self._run(self._unregister)

    async def reap(self) -> int:
        """Delete the ephemeral tunnels abandoned by a killed client (intunnel.ephemeral)."""
        return await self._run(self._reap)

    async def close(self) -> None:
        await self._run(self._close)
        self._executor.shutdown(wait=True)
