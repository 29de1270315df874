"""The relay's database access: token checks, live status, revocation checks.

Every call runs on one dedicated thread so SQLite never blocks the event loop.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from ..models import Tunnel, open_database
from ..timeutil import utcnow


@dataclass(frozen=True)
class TunnelInfo:
    id: int
    subdomain: str
    local_port: int
    token: str


@dataclass(frozen=True)
class LiveSession:
    """What the revocation check needs to know about a connected agent."""
    tunnel_id: int
    token: str
    started_at: datetime


class Store:
    def __init__(self, db_path):
        self.db_path = db_path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-db")
        self._db = None

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- run on the DB thread ---
    def _open(self):
        self._db = open_database(self.db_path)
        self._db.connect(reuse_if_open=True)
        Tunnel.update(status="inactive").where(Tunnel.status != "inactive").execute()

    def _find_by_token(self, token: str) -> TunnelInfo | None:
        row = Tunnel.get_or_none(Tunnel.token == token)
        return row and TunnelInfo(row.id, row.subdomain, row.local_port, row.token)

    def _exists(self, subdomain: str) -> bool:
        return Tunnel.select().where(Tunnel.subdomain == subdomain).exists()

    def _set_status(self, tunnel_id: int, active: bool) -> None:
        changes = {"status": "active" if active else "inactive"}
        if active:
            changes["last_connected"] = utcnow()
        Tunnel.update(**changes).where(Tunnel.id == tunnel_id).execute()

    def _revoked(self, live: list[LiveSession]) -> list[tuple[int, str]]:
        rows = {r.id: r for r in Tunnel.select(Tunnel.id, Tunnel.token, Tunnel.disconnect_requested_at)
                .where(Tunnel.id.in_([s.tunnel_id for s in live]))}
        out = []
        for s in live:
            row = rows.get(s.tunnel_id)
            if row is None:
                out.append((s.tunnel_id, "the tunnel was deleted"))
            elif row.token != s.token:
                out.append((s.tunnel_id, "the token was regenerated"))
            elif row.disconnect_requested_at and row.disconnect_requested_at >= s.started_at.replace(microsecond=0):
                out.append((s.tunnel_id, "disconnected by an administrator"))
        return out

    def _close(self):
        if self._db is not None and not self._db.is_closed():
            self._db.close()

    # --- async API ---
    async def open(self) -> None:
        """Open the database and mark every tunnel inactive (no agent is connected yet)."""
        await self._run(self._open)

    async def find_by_token(self, token: str) -> TunnelInfo | None:
        return await self._run(self._find_by_token, token)

    async def exists(self, subdomain: str) -> bool:
        return await self._run(self._exists, subdomain)

    async def set_status(self, tunnel_id: int, active: bool) -> None:
        await self._run(self._set_status, tunnel_id, active)

    async def revoked(self, live: list[LiveSession]) -> list[tuple[int, str]]:
        """(tunnel id, reason) for each live session that must be cut."""
        if not live:
            return []
        return await self._run(self._revoked, live)

    async def close(self) -> None:
        await self._run(self._close)
        self._executor.shutdown(wait=True)


def now_naive() -> datetime:
    return datetime.utcnow()
