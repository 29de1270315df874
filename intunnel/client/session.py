"""One control session: the Hello/Welcome handshake, then the relay's messages until it ends.

``open_session`` dials the control channel and gets welcomed (or raises what the relay's
refusal means).  ``Session.serve`` answers Ping, dials data connections for the pool
(pool.py decides how many, from the live ones counted here) and for OpenData, opens the next
session on a Move (make before break), and watches the relay's heartbeat; it returns why the
session ended and, after a Move, the session that replaces it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from ..wire import protocol as p
from ..wire.netio import KERNEL_AFTER, Conn, wait_for
from .data import DIALING, IDLE, DataLink, Upstream, run_link
from .dial import Dialer
from .errors import ACCESS_UNSUPPORTED, HandshakeFailed, TokenRefused, describe
from .pool import PoolPolicy

TICK = 1.0  # seconds between checks of the relay's heartbeat and of the pool's calm


@dataclass
class Opened:
    """A control session the relay welcomed, not served yet."""
    conn: Conn
    control: p.ControlSession
    welcome: p.Welcome
    address: str               # the relay's address this session dials its data connections to
    placed: dict[str, str]     # the placement header it sends on all of them ({} when none)


def welcomed(first: p.Message, hello: p.Hello) -> p.Welcome:
    """The relay's first message as a Welcome, or the exception saying why it isn't one."""
    if isinstance(first, p.Revoked):
        raise TokenRefused(first.reason, first.code)
    if isinstance(first, p.Error) and first.code == p.ACCESS_INVALID:
        raise TokenRefused(first.message, first.code)
    if isinstance(first, p.Welcome) and hello.access and not first.access:
        raise TokenRefused("the relay does not enforce this session's access rules (an older "
                           "version ignores them)", ACCESS_UNSUPPORTED)
    if not isinstance(first, p.Welcome):
        raise HandshakeFailed(f"relay said: {getattr(first, 'reason', '') or getattr(first, 'message', '')}")
    return first


async def open_session(dialer: Dialer, token: str, placement: str, hello: p.Hello) -> Opened:
    """Dial the relay's control channel and get welcomed.  Raises TokenRefused, WrongServer,
    HandshakeFailed, OSError, ConnClosed, ProtocolError, asyncio.TimeoutError."""
    address = await dialer.resolve()  # every session: the relay may have moved
    placed = {p.PLACEMENT_HEADER: placement} if placement else {}
    conn = await dialer.upgrade(address, p.AGENT_PATH, {"Authorization": f"Bearer {token}", **placed})
    try:
        control = p.ControlSession(p.AGENT, time.monotonic())
        conn.write(control.send(hello))
        messages = await wait_for(conn.read_messages(control.decoder, limit=1), dialer.timeout)
        welcome = welcomed(control.receive_messages(messages)[0], hello)
        return Opened(conn, control, welcome, address, placed)
    except BaseException:
        conn.close()
        raise


class Session:
    """Serves one welcomed control session and its data connections."""

    def __init__(self, opened: Opened, dialer: Dialer, upstream: Upstream, say: Callable[[str], None],
                 verbose: bool, open_next: Callable[[], Awaitable[Opened]], watch=None):
        self.opened = opened
        self.watch = watch           # the inspector's capture factory (data.serve_visitor), or None
        self.dialer = dialer
        self.upstream = upstream
        self.say = say
        self.verbose = verbose
        self.open_next = open_next   # a Move's new session (the agent's, which knows the token)
        self.pool = PoolPolicy.welcomed(opened.welcome.pool_size)
        # A TCP tunnel (its URL tcp://...): its short connections skip the kernel pump's set-up (netio)
        self.kernel_after = KERNEL_AFTER if opened.welcome.url.startswith("tcp://") else 0
        self.closed = False
        self._links: dict[asyncio.Task, DataLink] = {}   # the live ones: counts are derived from them
        opened.control.dead_peer_timeout = opened.welcome.dead_peer_timeout
        self._ended: asyncio.Future | None = None
        self._successor: asyncio.Task | None = None

    # --- the pool ---
    def counts(self) -> tuple[int, int]:
        """(idle, dialing) data connections right now."""
        phases = [link.phase for task, link in self._links.items() if not task.done()]
        return phases.count(IDLE), phases.count(DIALING)

    def _dial(self, count: int) -> None:
        for _ in range(count):
            link = DataLink()
            task = asyncio.ensure_future(run_link(link, self._dial_data, self._top_up, self.upstream,
                                                  self.say, self.verbose, self.watch, self.kernel_after))
            self._links[task] = link
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task) -> None:
        self._links.pop(task, None)

    async def _dial_data(self) -> Conn:
        headers = {p.SESSION_HEADER: self.opened.welcome.session, **self.opened.placed}
        return await self.dialer.upgrade(self.opened.address, p.DATA_PATH, headers)

    def _top_up(self) -> None:
        if not self.closed:
            self._dial(self.pool.top_up(*self.counts()))

    def _calm_down(self, now: float) -> None:
        idle = [link.conn for task, link in self._links.items() if link.phase == IDLE and not task.done()]
        for conn in idle[:self.pool.calm(now, len(idle))]:
            conn.close()

    # --- the control channel ---
    def _finish(self, reason: str) -> None:
        if not self._ended.done():
            self._ended.set_result(reason)

    def _on_bytes(self, data: bytes) -> None:
        try:
            messages = self.opened.control.receive_data(data, time.monotonic())
        except p.ProtocolError as e:
            self._finish(f"protocol error: {e}")
            return
        for m in messages:
            self._on_message(m)

    def _on_message(self, m: p.Message) -> None:
        if isinstance(m, p.Ping):
            self.opened.conn.write(self.opened.control.send(p.Pong(m.seq)))
        elif isinstance(m, p.OpenData):
            # The relay's pool ran dry: grow ours for this burst (it shrinks back when calm).
            self._dial(self.pool.open_data(m.count, time.monotonic()))
        elif isinstance(m, p.Move):
            if self._successor is None and not self._ended.done():
                self.say(f"moving: {m.reason}")
                self._successor = asyncio.ensure_future(self.open_next())
                self._successor.add_done_callback(self._moved)
        elif isinstance(m, p.Revoked):
            if self._successor is not None and m.code == p.REVOKED_REPLACED:
                return  # replaced by our own new session: it takes over once welcomed
            if not self._ended.done():
                self._ended.set_exception(TokenRefused(f"the relay cut this tunnel: {m.reason}", m.code))
        elif isinstance(m, p.GoAway):
            self._finish(f"the relay is going away ({m.reason})")
        elif isinstance(m, p.Error):
            self._finish(f"relay error: {m.message}")

    def _moved(self, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        if task.exception() is not None:
            self.say(f"could not open the new session the relay asked for ({describe(task.exception())}); "
                     "this one goes on")
            self._successor = None
            return
        self._finish("moved to the relay that takes this tunnel's visitors")

    async def serve(self) -> tuple[str, Opened | None]:
        """Serve until the channel ends: why it ended, and the session that takes over from it
        (a Move: opened while this one kept serving).  Raises TokenRefused when revoked."""
        self._ended = asyncio.get_running_loop().create_future()
        conn, control = self.opened.conn, self.opened.control
        conn.on_close = lambda: self._finish("connection to the relay lost")
        conn.on_eof = lambda: self._finish("the relay closed the connection")
        self._top_up()
        conn.forward_to(self._on_bytes)
        self._on_bytes(b"")
        try:
            while not self._ended.done():
                await asyncio.wait([self._ended], timeout=TICK)
                now = time.monotonic()
                if control.is_dead(now):
                    self._finish(f"no heartbeat from the relay for {control.dead_peer_timeout:.0f}s")
                self._calm_down(now)
            reason = self._ended.result()
        except BaseException:
            if self._successor is not None:
                self._successor.cancel()
            raise
        if self._successor is None:
            return reason, None
        try:   # under way, or done: the new session takes over when it is welcomed
            return reason, await self._successor
        except Exception:
            return reason, None

    def close(self) -> None:
        """End the control channel and the pool; spliced connections belong to their visitors."""
        self.closed = True
        self.opened.conn.close()
        for task, link in list(self._links.items()):
            task.cancel()
            if link.phase == IDLE and link.conn is not None:
                link.conn.close()
