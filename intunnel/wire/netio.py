"""asyncio glue shared by the relay and the client: one Protocol for every socket.

A ``Conn`` starts in *handshake* mode, where coroutines ``await`` heads and
frames from a bounded buffer.  Then it is switched to *forwarding* mode,
where each received chunk goes straight to a callback (usually the peer's
``transport.write``) with no coroutine per chunk: the cheapest path asyncio
offers.  Backpressure is TCP's own: when a peer's write buffer passes the high
water mark, the connections feeding it stop reading until it drains, so
memory per connection stays bounded by the read size plus the write limits.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Callable

from .. import portable
from . import zerocopy
from .protocol import FrameDecoder, Message, ProtocolError

WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024
HANDSHAKE_BUFFER_LIMIT = 128 * 1024  # handshake mode stops reading past this
# splice(kernel_after=...): a direction hands its bytes to the kernel (zerocopy) only once it has
# carried this much through the event loop.  A TCP tunnel's short connections (a request and
# its answer) then skip the pump's set-up and teardown (two pipes and four duplicated
# descriptors per side: measured about 100 us of CPU per connection on relay and client alike),
# while a bulk transfer moves all but its first bytes inside the kernel.
KERNEL_AFTER = 256 * 1024


class ConnClosed(Exception):
    """The connection closed (or sent EOF) before the expected bytes arrived."""


class Conn(asyncio.Protocol):
    # Slots: a relay holds one per socket (nine per idle agent: its control channel and warm pool).
    __slots__ = ("transport", "peername", "buffer", "eof", "closed", "on_data", "on_eof", "on_close", "on_made",
                 "taps", "registry", "feeders", "_waiter", "_writing_paused", "eof_sent", "pump", "pumps",
                 "on_write_pressure", "meter", "__weakref__")

    def __init__(self):
        self.transport: asyncio.Transport | None = None
        self.peername = ""
        self.buffer = bytearray()
        self.eof = False
        self.closed = False
        self.on_data: Callable[[bytes], None] | None = None
        self.on_eof: Callable[[], None] | None = None
        self.on_close: Callable[[], None] | None = None
        self.on_made: Callable[[], None] | None = None
        self.taps: Callable[[bytes], None] | None = None  # splice: also show received bytes here
        self.registry: set | None = None  # the owner's set of open connections; left on close
        self.feeders: list["Conn"] = []  # connections whose bytes we write: pause them when full
        self._waiter: asyncio.Future | None = None
        self._writing_paused = False
        self.eof_sent = False
        self.pump: zerocopy.Pump | None = None  # the kernel reads this socket (see splice())
        self.pumps: list[zerocopy.Pump] = []    # pumps using this socket: stopped before it closes
        # Told True when the transport's write buffer passes the high-water mark, False when it
        # has drained below the low one (a control channel stops reading its own peer meanwhile).
        self.on_write_pressure: Callable[[bool], None] | None = None
        # Counts the bytes received (``rx``) and written (``tx``) here, kernel pumps included
        # (the relay's RelayStats, for visitor connections); None: not counted.
        self.meter = None

    # --- asyncio.Protocol ---
    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        # uvloop sets TCP_NODELAY on every TCP transport itself, and building its pseudo-socket
        # costs a few µs per connection: only asyncio's own transports need the option.
        sock = None if type(transport).__module__.startswith("uvloop") else transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError, TypeError):
                pass  # uvloop's pseudo-socket: it sets TCP_NODELAY itself
        peer = transport.get_extra_info("peername")
        self.peername = peer[0] if isinstance(peer, tuple) else str(peer or "")
        if self.on_made is not None:
            made, self.on_made = self.on_made, None   # once: its closure would live as long as the socket
            made()

    def data_received(self, data: bytes) -> None:
        meter = self.meter
        if meter is not None:
            meter.rx += len(data)
        if self.on_data is not None:
            self.on_data(data)
            return
        self.buffer += data
        if len(self.buffer) > HANDSHAKE_BUFFER_LIMIT:
            self.transport.pause_reading()
        self._wake()

    def eof_received(self):
        self.eof = True
        self._wake()
        if self.on_eof is None:
            return False  # nobody wants a half-open socket: let the transport close
        self.on_eof()
        if self.eof_sent:
            self.close()  # both directions are done
        return True  # keep the write side open (half-close); the handler decides

    def connection_lost(self, exc):
        self._stop_pumps()
        self.closed = True
        self.eof = True
        if self.registry is not None:
            self.registry.discard(self)
        self._wake()
        for feeder in self.feeders:
            feeder.resume()
        if self.on_close is not None:
            callback, self.on_close = self.on_close, None
            callback()

    def pause_writing(self):
        self._writing_paused = True
        for feeder in self.feeders:
            feeder.pause()
        if self.on_write_pressure is not None:
            self.on_write_pressure(True)

    def resume_writing(self):
        self._writing_paused = False
        for feeder in self.feeders:
            feeder.resume()
        if self.on_write_pressure is not None:
            self.on_write_pressure(False)

    # --- helpers ---
    @property
    def writing_paused(self) -> bool:
        """The transport holds more than the high-water mark unsent."""
        return self._writing_paused

    def unsent(self) -> int:
        """Bytes written but still waiting in the transport (not yet handed to the kernel)."""
        if self.transport is None or self.closed:
            return 0
        return self.transport.get_write_buffer_size()

    def pause(self):
        if self.pump is not None:
            self.pump.pause()
        elif self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self):
        if self.pump is not None:
            self.pump.resume()
        elif self.transport is not None and not self.closed and self.transport.is_reading() is False:
            self.transport.resume_reading()

    def _stop_pumps(self):
        # A pump holds duplicates of the descriptor: they must go before the transport closes
        # it, or the socket would stay open (no FIN) behind the transport's back.
        for pump in self.pumps:
            pump.stop()

    def _wake(self):
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait(self):
        if self.closed or self.eof:
            raise ConnClosed()
        self.resume()
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def write(self, data) -> None:
        if not self.closed:
            self.transport.write(data)
            meter = self.meter
            if meter is not None:
                meter.tx += len(data)

    def close(self):
        if self.transport is not None and not self.closed:
            self._stop_pumps()
            self.transport.close()

    def abort(self):
        if self.transport is not None and not self.closed:
            self._stop_pumps()
            self.transport.abort()

    def write_eof(self):
        """Half-close when the transport can (plain TCP).  TLS can't half-close: close
        after flushing instead, or a peer waiting for our close (a WebSocket server after
        its closing handshake) would wait forever."""
        if self.transport is not None and not self.closed and not self.transport.can_write_eof():
            self.eof_sent = True
            self.transport.close()
            return
        if self.transport is not None and not self.closed and self.transport.can_write_eof():
            try:
                self.transport.write_eof()
            except (OSError, RuntimeError):
                pass
            self.eof_sent = True
            if self.eof:
                self.close()

    async def read_head(self, limit: int) -> bytes:
        """Bytes up to a blank line (excluded, consumed); ValueError past ``limit``."""
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                if end + 4 > limit:
                    raise ValueError("head too large")
                head = bytes(self.buffer[:end])
                del self.buffer[:end + 4]
                return head
            if len(self.buffer) > limit:
                raise ValueError("head too large")
            await self._wait()

    async def read_exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            await self._wait()
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    async def read_messages(self, decoder: FrameDecoder, limit: int | None = None) -> list[Message]:
        """Wait for at least one whole frame; raises ProtocolError, ConnClosed."""
        while True:
            data, self.buffer = bytes(self.buffer), bytearray()
            messages = decoder.feed(data, limit)
            if messages:
                return messages
            await self._wait()

    def forward_to(self, on_data: Callable[[bytes], None], initial: bytes = b"") -> None:
        """Switch to forwarding mode: every chunk (and what's buffered) goes to ``on_data``."""
        pending = initial + bytes(self.buffer) if self.buffer else initial
        self.buffer = bytearray()
        self.on_data = on_data
        if pending:
            on_data(pending)
        self.resume()


if hasattr(asyncio, "timeout"):   # Python 3.11+
    async def wait_for(awaitable, timeout: float):
        """``asyncio.wait_for`` that never loses the caller's cancellation: 3.11's returns the
        result when the cancel and the result come in the same loop turn, so a loop around it
        outlives a cancel-and-gather (revocations' timer once hung a relay's stop).  3.12's
        ``wait_for`` is this same ``asyncio.timeout`` block."""
        async with asyncio.timeout(timeout):
            return await awaitable
else:   # 3.9 and 3.10 (the client only): their wait_for, race included
    wait_for = asyncio.wait_for


def run(main) -> object:
    """``asyncio.run`` on uvloop when it is installed (about twice the packets per CPU second),
    else on asyncio's own loop.  ``INTUNNEL_EVENT_LOOP=asyncio`` forces the latter, and so does
    ``INTUNNEL_PORTABLE=1`` (portable.py: the path of a system without uvloop)."""
    if os.environ.get("INTUNNEL_EVENT_LOOP", "") != "asyncio" and not portable.FORCED:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            if hasattr(asyncio, "Runner"):  # Python 3.11+
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    return runner.run(main)
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # the client on 3.9 and 3.10
            try:
                return asyncio.run(main)
            finally:
                asyncio.set_event_loop_policy(None)
    return asyncio.run(main)


def splice(a: Conn, b: Conn, on_close: Callable[[], None] | None = None, kernel_after: int = 0) -> None:
    """Copy raw bytes both ways until either side closes; mirror half-closes.  ``kernel_after``:
    each direction goes through the event loop for that many bytes before the kernel takes it
    (0: the kernel at once, when it can)."""
    b.feeders.append(a)
    a.feeders.append(b)

    def closer(other: Conn):
        def closed():
            other.close()
            if on_close is not None:
                on_close()
        return closed

    a.on_close, b.on_close = closer(b), closer(a)
    a.on_eof, b.on_eof = b.write_eof, a.write_eof
    if a.eof:
        b.write_eof()
    if b.eof:
        a.write_eof()
    for src, dst in ((a, b), (b, a)):
        _forward(src, dst, kernel_after)
    if a.closed:
        b.close()
    if b.closed:
        a.close()


def _forward(src: Conn, dst: Conn, kernel_after: int = 0) -> None:
    """src's bytes to dst: inside the kernel when both are plain TCP sockets and nobody
    watches the bytes (after ``kernel_after`` bytes through the loop), else through the event loop."""
    if src.buffer and src.taps is None:
        pending, src.buffer = bytes(src.buffer), bytearray()
        dst.write(pending)

    def failed():
        src.abort()
        dst.abort()

    def through_the_loop():
        src.forward_to(_forwarder(src, dst))
    if kernel_after > 0 and src.taps is None and not src.eof and zerocopy.AVAILABLE:
        src.forward_to(_kernel_later(src, dst, kernel_after, failed, through_the_loop))
        return
    if src.taps is not None or src.eof or \
            not pump_through_kernel(src, dst, src.eof_received, failed, on_refused=through_the_loop):
        through_the_loop()


def pump_through_kernel(src: Conn, dst: Conn, on_eof: Callable[[], None], on_error: Callable[[], None],
                        limit: int | None = None, on_moved: Callable[[], None] | None = None,
                        on_limit: Callable[[], None] | None = None,
                        on_refused: Callable[[], None] | None = None) -> bool:
    """Let ``zerocopy`` move what src receives (``limit`` bytes, or until EOF) to dst.

    False, with nothing changed, when either side isn't a plain TCP socket or dst's
    transport still holds bytes to send (they must go first).  After ``limit`` bytes
    the pump hands src back to its transport, then calls ``on_limit``; if the kernel
    refuses splice(2) it does the same before any byte moved, then calls ``on_refused``.
    """
    if not zerocopy.AVAILABLE or src.closed or dst.closed or src.pump is not None \
            or dst.transport.get_write_buffer_size():
        return False
    src_fd, dst_fd = zerocopy.socket_fd(src.transport), zerocopy.socket_fd(dst.transport)
    if src_fd is None or dst_fd is None:
        return False

    def hand_back(then: Callable[[], None] | None):
        def handed_back():
            src.pumps.remove(pump)
            dst.pumps.remove(pump)
            src.pump = None
            if not src.closed:
                src.transport.resume_reading()
            if then is not None:
                then()
        return handed_back
    src.transport.pause_reading()
    pump = zerocopy.Pump(src_fd, dst_fd, on_eof, on_error, limit, hand_back(on_limit), on_moved,
                         hand_back(on_refused))
    pump.rx_meter, pump.tx_meter = src.meter, dst.meter
    src.pump = pump
    src.pumps.append(pump)
    dst.pumps.append(pump)
    return True


def _kernel_later(src: Conn, dst: Conn, after: int, failed, through_the_loop) -> Callable[[bytes], None]:
    """Write src's chunks to dst; past ``after`` bytes, at the first chunk that leaves dst's
    buffer empty, let the kernel move the rest (pump_through_kernel refuses while it holds any)."""
    moved = 0

    def forward(data: bytes) -> None:
        nonlocal moved
        dst.write(data)
        moved += len(data)
        if moved >= after and src.pump is None and not src.closed and \
                pump_through_kernel(src, dst, src.eof_received, failed, on_refused=through_the_loop):
            src.on_data = dst.write   # (bytes already read before the pump took over)
    return forward


def _forwarder(src: Conn, dst: Conn) -> Callable[[bytes], None]:
    tap = src.taps
    if tap is None:
        return dst.write

    def forward(data: bytes) -> None:
        dst.write(data)
        try:
            tap(data)
        except Exception:  # an observer must never break traffic
            src.taps = None
    return forward


def frame_error(exc: Exception) -> str:
    if isinstance(exc, ProtocolError):
        return f"protocol error: {exc}"
    if isinstance(exc, ConnClosed):
        return "connection closed"
    return str(exc) or type(exc).__name__
