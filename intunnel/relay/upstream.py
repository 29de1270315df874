"""A visitor's attachment to one data connection of a tunnel, and how a fresh one is opened.

An ``Upstream`` holds one of the tunnel's ``relay_max_visitors_per_tunnel`` slots for
exactly as long as it exists: ``detach()`` is the only way out, and it releases the slot,
then parks the data connection for the tunnel's next visitor (upstream keep-alive) or
closes it.
"""

from __future__ import annotations

import asyncio
import logging

from ..wire import protocol as p
from ..wire.netio import Conn, ConnClosed

log = logging.getLogger("intunnel.relay")


class Upstream:
    __slots__ = ("session", "conn", "reused", "holder")

    def __init__(self, session, conn: Conn, reused: bool, holder):
        self.session, self.conn, self.reused, self.holder = session, conn, reused, holder
        session.visitors += 1
        session.holders.add(holder)
        session.active.add(conn)

    def detach(self, park: bool) -> None:
        session, self.session = self.session, None
        if session is None:
            return
        session.visitors -= 1
        session.holders.discard(self.holder)
        session.active.discard(self.conn)
        conn = self.conn
        conn.on_data = conn.on_eof = conn.on_close = None
        conn.meter = None   # a traffic view's byte count (relay/link): the next holder's own, if any
        if self.holder in conn.feeders:
            conn.feeders.remove(self.holder)
        if park and not conn.closed and not conn.eof:
            session.park(conn)
        else:
            conn.close()


class Refused(Exception):
    """No data connection: ``kind`` is "offline" or "local" (the app's port refused), ``port``."""

    def __init__(self, kind: str, port: int = 0):
        super().__init__(kind)
        self.kind, self.port = kind, port


async def open_data(session, peer: str) -> tuple[Conn, bytes]:
    """A fresh data connection of ``session``, bound to ``peer`` and dialed through to the local
    app by the agent; returns it with the bytes that followed the agent's DataReady.

    An idle connection may close unanswered after its Bind: the agent's pool closes idle ones
    when it shrinks (client/pool.py rule 5), and the close can cross the Bind.  No byte of the
    visitor's has gone out before DataReady, so another connection is taken, up to
    ``DATA_BIND_ATTEMPTS`` in all."""
    for attempt in range(1, p.DATA_BIND_ATTEMPTS + 1):
        data = await session.acquire_data(p.DATA_CONNECT_TIMEOUT)
        if data is None:
            raise Refused("offline")
        data.write(p.encode(p.Bind(peer)))
        decoder = p.FrameDecoder()
        try:
            # The agent answers as soon as it has dialed the local app (which it bounds itself).
            async with asyncio.timeout(p.DATA_CONNECT_TIMEOUT + p.LOCAL_CONNECT_TIMEOUT):
                reply = (await data.read_messages(decoder, limit=1))[0]
        except ConnClosed:
            session.active.discard(data)
            data.close()
            log.info("tunnel %s: a data connection closed unanswered after its Bind (attempt %d of %d)",
                     session.subdomain, attempt, p.DATA_BIND_ATTEMPTS)
            continue
        except (p.ProtocolError, TimeoutError) as e:
            log.info("tunnel %s: data connection failed: %s", session.subdomain, str(e) or type(e).__name__)
            session.active.discard(data)
            data.close()
            raise Refused("offline") from None
        session.active.discard(data)   # the Upstream adds it back while it holds it, or it is closed
        if not isinstance(reply, p.DataReady):
            data.close()
            raise Refused("local", reply.port if isinstance(reply, p.DataRefused) else 0)
        return data, decoder.take_rest()
    raise Refused("offline")
