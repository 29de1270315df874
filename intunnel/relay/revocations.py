"""Cutting agents whose right to their tunnel ended: pushed on PostgreSQL, polled on SQLite.

What ends it: a regenerated token, a deleted tunnel, a disconnect request
(``intunnel-admin tunnel disconnect``), a disabled or deleted account.  The
store's ``revoked()`` decides from the rows; this module only decides *when*
to ask it, and about *which* sessions.  The sessions that survive a check have
their tunnels' access policies reloaded the same way (``access.refresh``): a
policy change is a ``t:<tunnel id>`` notification too.  Members-only visitors' access
grants are re-read on every full check and on ``u:<user id>`` (``members.refresh``).

SQLite: every ``relay_revocation_poll`` seconds (0.25), every live session.

PostgreSQL: the writers ``NOTIFY`` (``intunnel.changes``) in the transaction of
the change; the relay ``LISTEN``s on a dedicated connection of its own and
re-checks only the sessions a notification names, a few ms after the commit.
Besides that:
  * every ``relay_reconcile_interval`` seconds (30) a full re-check, the safety
    net for a writer that bypassed ``intunnel.changes``;
  * while the LISTEN connection is down the relay polls as on SQLite, tries
    again with backoff (0.1 s doubling to 5 s), and once listening again does
    a full re-check (what was notified meanwhile is lost);
  * an agent that authenticated before a notification for its tunnel or owner
    but registered after it (the handshake sits in between) is re-checked
    (``joined``).

The LISTEN connection is served by the event loop itself (``add_reader`` on
its socket, psycopg2's non-blocking ``poll()``): no thread, no lock, and a
notification is handled where the sessions live.  Only connecting (DNS, TCP,
TLS, password: blocking in libpq) runs in the default executor.  libpq TCP
keepalives make a silently dead server connection fail within about 25 s.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

from ..changes import CHANNEL, TUNNEL, USER, parse
from ..wire.netio import wait_for
from . import access, members, traffic

log = logging.getLogger("intunnel.relay")

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
# Notifications remembered for ``joined``: longer than any handshake can take.
RECENT_FOR = 60.0
# libpq's TCP keepalives on the LISTEN connection (unless database_url sets them).
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
APPLICATION_NAME = "intunnel-relay-listen"


def _is_postgresql(db) -> bool:
    import peewee as pw
    return isinstance(db, pw.PostgresqlDatabase)


class Revocations:
    def __init__(self, relay):
        self.relay = relay
        self.db = getattr(relay.store, "database", None)
        self.push = _is_postgresql(self.db)
        self.listening = False
        self.conn = None                      # the LISTEN connection (psycopg2), while up
        self._fd: int | None = None           # its socket, while the loop watches it
        self._lost: asyncio.Future | None = None
        self._full = False
        self._tunnels: set[int] = set()
        self._users: set[int] = set()
        self._wake = asyncio.Event()          # something to check
        self._mode = asyncio.Event()          # listening started or stopped
        self._recent: collections.deque = collections.deque()  # (monotonic, kind, id)

    # --- what the relay calls ---
    def start(self) -> None:
        spawn = self.relay.spawn
        spawn(self._checker())
        spawn(self._timer())
        if self.push:
            spawn(self._listen_forever())

    def joined(self, session, authenticated_at: float) -> None:
        """``session`` was registered; it was authenticated at ``authenticated_at`` (monotonic)."""
        if not self.push:
            return
        tunnel_id, owner_id = session.tunnel.id, session.tunnel.owner_id
        for at, kind, ident in self._recent:
            if at >= authenticated_at and ((kind == TUNNEL and ident == tunnel_id)
                                           or (kind == USER and ident == owner_id)):
                self._queue(TUNNEL, tunnel_id)
                return

    def check_tunnel(self, tunnel_id: int) -> None:
        """Re-check the sessions of ``tunnel_id`` soon (routes: another relay took it)."""
        self._queue(TUNNEL, tunnel_id)

    # --- what to check ---
    def _queue(self, kind: str | None, ident: int = 0) -> None:
        if kind == TUNNEL:
            self._tunnels.add(ident)
        elif kind == USER:
            self._users.add(ident)
        else:
            self._full = True
        self._wake.set()

    def _heard(self, payload: str) -> None:
        parsed = parse(payload)
        if parsed is None:
            log.warning("unexpected notification on %s; checking every session", CHANNEL)
            self._queue(None)
            return
        if parsed[0] == TUNNEL and self.relay.peers is not None:
            self.relay.peers.forget(parsed[1])   # its route may have moved: look it up anew
        now = time.monotonic()
        self._recent.append((now, *parsed))
        while self._recent and self._recent[0][0] < now - RECENT_FOR:
            self._recent.popleft()
        self._queue(*parsed)

    async def _checker(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            full, tunnels, users = self._full, self._tunnels, self._users
            self._full, self._tunnels, self._users = False, set(), set()
            if full or users:   # logged out, disabled: members-only visitors' access ends too
                try:
                    await members.refresh(self.relay, None if full else users)
                except Exception:
                    log.exception("members-only access check failed")
                    self._full = True
            sessions = [s for s in self.relay.sessions.values()
                        if full or s.tunnel.id in tunnels or s.tunnel.owner_id in users]
            if not sessions:
                continue
            try:
                cut = dict(await self.relay.store.revoked([s.live for s in sessions]))
            except Exception:
                log.exception("revocation check failed")
                self._full = True  # with the timer's next check, not at once: no spinning on a dead database
                continue
            for session in sessions:
                revoked = cut.get(session.tunnel.id)
                if revoked and not session.closed:
                    log.info("tunnel %s: cutting the agent: %s", session.subdomain, revoked.reason)
                    session.end(revoked)
                    session.on_closed()
            try:  # the same change may be a new access policy: the survivors' next requests get it
                await access.refresh(self.relay, sessions)
            except Exception:
                log.exception("access policy check failed")
                self._full = True
            try:  # or the traffic view turned on or off (relay/traffic)
                await traffic.refresh(self.relay, sessions)
            except Exception:
                log.exception("traffic view check failed")
                self._full = True

    async def _timer(self) -> None:
        """Full checks: every relay_revocation_poll while not listening, every
        relay_reconcile_interval while listening."""
        settings = self.relay.settings
        last = time.monotonic()
        while True:
            interval = settings.relay_reconcile_interval if self.listening else settings.relay_revocation_poll
            delay = last + interval - time.monotonic()
            if delay > 0:
                self._mode.clear()
                try:
                    await wait_for(self._mode.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                continue  # the mode may have changed: recompute the interval
            last = time.monotonic()
            self._queue(None)

    # --- the LISTEN connection ---
    def _connect(self):
        """Blocking (run in an executor): a new autocommit connection that LISTENs."""
        import psycopg2
        db = self.db
        params = {**KEEPALIVES, "application_name": APPLICATION_NAME, **db.connect_params}
        if db.database.startswith("postgresql://"):
            params.setdefault("dsn", db.database)
        else:
            params.setdefault("dbname", db.database)
        conn = psycopg2.connect(**params)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _readable(self) -> None:
        conn = self.conn
        try:
            conn.poll()
        except Exception as e:  # the server went away (or terminated this backend)
            self._drop(e)
            return
        while conn.notifies:
            self._heard(conn.notifies.pop(0).payload)
        if conn.closed:
            self._drop(None)

    def _drop(self, error) -> None:
        self._unwatch()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(error)

    def _unwatch(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)  # (an fd libpq closed already is fine)

    async def _listen_forever(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = BACKOFF_FIRST
        down_since = None
        reported = False  # the first failed connection of an outage is logged, not every retry
        try:
            while True:
                try:
                    self.conn = await loop.run_in_executor(None, self._connect)
                except Exception as e:
                    down_since = down_since or time.monotonic()
                    if not reported:
                        reported = True
                        log.warning("cannot LISTEN for database changes (%s); checking every %g s "
                                    "and trying again", self._scrub(e), self.relay.settings.relay_revocation_poll)
                    await asyncio.sleep(backoff)
                    backoff = min(BACKOFF_MAX, backoff * 2)
                    continue
                self._lost = loop.create_future()
                self._fd = self.conn.fileno()
                loop.add_reader(self._fd, self._readable)
                self.listening = True
                self._mode.set()
                self._queue(None)  # whatever happened before (or while down) was not heard
                log.info("listening for database changes (LISTEN %s)%s", CHANNEL,
                         "" if down_since is None else
                         f" again after {time.monotonic() - down_since:.1f} s")
                up_at, down_since, reported = time.monotonic(), None, False
                self._readable()  # anything already buffered
                error = await self._lost
                self._close_conn()
                self.listening = False
                self._mode.set()
                down_since = time.monotonic()
                log.warning("lost the LISTEN connection (%s); checking every %g s and reconnecting",
                            self._scrub(error) if error else "closed",
                            self.relay.settings.relay_revocation_poll)
                if time.monotonic() - up_at > BACKOFF_MAX * 4:
                    backoff = BACKOFF_FIRST
                await asyncio.sleep(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
        finally:
            self._close_conn()
            self.listening = False

    def _close_conn(self) -> None:
        conn, self.conn = self.conn, None
        self._unwatch()
        if conn is None:
            return
        try:
            conn.close()
        except Exception:
            pass

    def _scrub(self, error) -> str:
        from ..dburl import scrub
        return scrub(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__, self.db)
