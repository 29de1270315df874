"""The relay's database access: token checks, live status, revocation checks.

Every call runs on one dedicated thread so the database never blocks the event loop.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from ..wire import protocol as p
from ..models import Tunnel, User, open_database
from ..timeutil import utcnow


@dataclass(frozen=True)
class TunnelInfo:
    id: int
    subdomain: str
    local_port: int
    token: str
    owner_disabled: bool = False
    owner_id: int | None = None


@dataclass(frozen=True)
class LiveSession:
    """What the revocation check needs to know about a connected agent."""
    tunnel_id: int
    token: str
    started_at: datetime


class Store:
    def __init__(self, settings):
        self.settings = settings
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-db")
        self._db = None

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- run on the DB thread ---
    def _open(self):
        self._db = open_database(self.settings)
        self._db.connect(reuse_if_open=True)
        Tunnel.update(status="inactive").where(Tunnel.status != "inactive").execute()

    def _find_by_token(self, token: str) -> TunnelInfo | None:
        row = (Tunnel.select(Tunnel.id, Tunnel.subdomain, Tunnel.local_port, Tunnel.token, User.disabled, User.id)
               .join(User).where(Tunnel.token == token).tuples().first())
        return row and TunnelInfo(row[0], row[1], row[2], row[3], bool(row[4]), row[5])

    def _exists(self, subdomain: str) -> bool:
        return Tunnel.select().where(Tunnel.subdomain == subdomain).exists()

    def _set_status(self, tunnel_id: int, active: bool) -> None:
        changes = {"status": "active" if active else "inactive"}
        if active:
            changes["last_connected"] = utcnow()
        Tunnel.update(**changes).where(Tunnel.id == tunnel_id).execute()

    def _revoked(self, live: list[LiveSession]) -> list[tuple[int, p.Revoked]]:
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
        return out

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

    async def exists(self, subdomain: str) -> bool:
        return await self._run(self._exists, subdomain)

    async def set_status(self, tunnel_id: int, active: bool) -> None:
        await self._run(self._set_status, tunnel_id, active)

    async def revoked(self, live: list[LiveSession]) -> list[tuple[int, p.Revoked]]:
        """(tunnel id, the Revoked message to send) for each live session that must be cut."""
        if not live:
            return []
        return await self._run(self._revoked, live)

    async def close(self) -> None:
        await self._run(self._close)
        self._executor.shutdown(wait=True)
