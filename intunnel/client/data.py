"""One data connection, from its dial to the visitor it carries (protocol.py, step 3).

Its life: ``DIALING`` (the Upgrade on its way) -> ``IDLE`` (in the relay's pool, waiting for a
Bind) -> ``BOUND`` (a visitor: dial the local app, answer DataReady or DataRefused, then
splice raw bytes both ways).  The session counts its pool by these phases (pool.py).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from ..wire import protocol as p
from ..wire.netio import Conn, ConnClosed, pump_through_kernel, splice, wait_for
from .errors import HandshakeFailed, TokenRefused, WrongServer, describe
from .exchanges import ExchangeLog
from .inspect.capture import UNTIL_CLOSE

DIALING, IDLE, BOUND = "dialing", "idle", "bound"

# A data connection that can't be dialed just ends: the pool tops up at the next Bind.
_DIAL_FAILURES = (OSError, ConnClosed, HandshakeFailed, TokenRefused, WrongServer, asyncio.TimeoutError)


@dataclass(frozen=True)
class Upstream:
    """The local app visitors are sent to."""
    host: str
    port: int


class DataLink:
    """One data connection's phase, and its connection once dialed."""

    def __init__(self):
        self.phase = DIALING
        self.conn: Conn | None = None


async def run_link(link: DataLink, dial: Callable[[], Awaitable[Conn]], on_bound: Callable[[], None],
                   upstream: Upstream, say: Callable[[str], None], verbose: bool, watch=None,
                   kernel_after: int = 0) -> None:
    """Dial, wait idle for a Bind (``on_bound`` then: the pool has one less), serve that visitor
    (``kernel_after``: netio.splice's, a TCP tunnel's)."""
    try:
        conn = await dial()
    except _DIAL_FAILURES:
        return
    link.conn, link.phase = conn, IDLE
    decoder = p.FrameDecoder()
    try:
        messages = await conn.read_messages(decoder, limit=1)
    except (ConnClosed, p.ProtocolError, asyncio.CancelledError):
        conn.close()   # closed by the relay, or by the session's end: nothing more to do
        return
    link.phase = BOUND
    on_bound()
    if not isinstance(messages[0], p.Bind):
        conn.close()
        return
    await serve_visitor(conn, decoder.take_rest(), upstream, say, verbose, watch, kernel_after)


async def serve_visitor(conn: Conn, first_bytes: bytes, upstream: Upstream, say: Callable[[str], None],
                        verbose: bool, watch=None, kernel_after: int = 0) -> None:
    """Dial the local app for a bound data connection and splice the two.  ``watch()``, when
    given, makes an observer of the connection (the inspector's capture: ``requests``,
    ``responses``, ``closed``).  Watched, the bytes go through the event loop rather than the
    kernel's splice(2) (netio._forward), each chunk written on before it is shown."""
    loop = asyncio.get_running_loop()
    try:
        _, local = await wait_for(loop.create_connection(Conn, upstream.host, upstream.port),
                                          p.LOCAL_CONNECT_TIMEOUT)
    except (OSError, asyncio.TimeoutError) as e:
        conn.write(p.encode(p.DataRefused(upstream.port, describe(e))))
        conn.close()
        say(f"local app on {upstream.host}:{upstream.port} refused a visitor: {describe(e)}")
        return
    conn.write(p.encode(p.DataReady()))
    watchers = []
    if verbose:   # -v: one line per exchange, from a passive look at both directions
        watchers.append(ExchangeLog(lambda exchange: say(exchange.line(time.monotonic()))))
    if watch is not None:
        watchers.append(watch())
    on_close = None
    armed = []   # the kernel may take over only once spliced (see _handing_over)
    if watchers:
        conn.taps, local.taps, on_close = _taps(watchers)
        if len(watchers) == 1 and hasattr(watchers[0], "unseen"):
            conn.taps = _handing_over(watchers[0], "request", conn, local, armed)
            local.taps = _handing_over(watchers[0], "response", local, conn, armed)
    if first_bytes:
        local.write(first_bytes)
        if conn.taps is not None:  # the request head often rides in with the Bind frame
            conn.taps(first_bytes)
    splice(conn, local, on_close=on_close, kernel_after=kernel_after)
    armed.append(True)


# A body with this much left past the capture's limit goes through the kernel (splice(2)),
# as with --no-inspect; smaller rests aren't worth the pump's set-up.
KERNEL_REST = 1 << 20


def _handing_over(capture, side: str, src: Conn, dst: Conn, armed: list) -> Callable[[bytes], None]:
    """The tap of one direction: the capture sees each chunk (already written on); when the rest of
    a body is only to be counted, the kernel moves it unseen and the capture is told how much.
    After a 101 (a WebSocket) both directions go to the kernel for good, as with --no-inspect."""
    see = capture.requests if side == "request" else capture.responses
    other = "response" if side == "request" else "request"

    def tap(data) -> None:
        n = see(data)   # what of the next bytes may go by unseen
        if not n or not armed or src.pump is not None:
            return
        if n == UNTIL_CLOSE:
            _raw_through_kernel(capture, side, src, dst)
            _raw_through_kernel(capture, other, dst, src)
        elif n >= KERNEL_REST:
            pump_through_kernel(src, dst, src.eof_received, _aborting(src, dst), n, None,
                                lambda: capture.moved(side, n))
    return tap


def _raw_through_kernel(capture, side: str, src: Conn, dst: Conn) -> None:
    """src's bytes to dst by splice(2) until the connection ends, counted into the upgraded record
    (src.meter: the pump counts what it moves).  Not now if dst still has bytes to send: the tap
    tries again at src's next read."""
    if src.pump is not None or src.closed or src.eof:
        return
    src.meter = capture.raw_meter(side)

    def refused():          # handed back before any byte moved: the tap counts again
        src.meter = None
    if not pump_through_kernel(src, dst, src.eof_received, _aborting(src, dst), on_refused=refused):
        src.meter = None


def _aborting(src: Conn, dst: Conn) -> Callable[[], None]:
    def failed():
        src.abort()
        dst.abort()
    return failed


def _taps(watchers: list) -> tuple:
    """(requests tap, responses tap, closed) feeding every watcher."""
    if len(watchers) == 1:
        w = watchers[0]
        return w.requests, w.responses, w.closed
    return (lambda data: [w.requests(data) for w in watchers], lambda data: [w.responses(data) for w in watchers],
            lambda: [w.closed() for w in watchers])
