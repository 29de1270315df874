"""The client's ``-v`` log: one line per finished exchange, from a passive look at a visitor's
connection to the local app.

Both directions are followed by the relay's own reader (``http1.MessageReader``, fuzzed
against h11 and llhttp): requests reach the client already framed and re-serialized by the
relay; responses come straight from the local app, and the relay follows them with the same
reader, as strictly (status, body bytes, where each response ends: Content-Length, chunked,
1xx, 204/304, HEAD, a body read until the app closes).  Standard library only: the client
installs with no C parser.

``ExchangeLog`` only watches: it never raises, never holds more than one head, and gives up
quietly (reports nothing more for that connection) on anything it doesn't follow.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from ..wire.http1 import END, MessageReader, RequestHead, ResponseHead

MAX_HEAD = 64 * 1024


@dataclass
class Exchange:
    """One request and its response."""
    method: str
    path: str
    started: float
    status: int = 0
    bytes: int = 0         # the response's body (chunked: the data, without the chunk lines)

    def line(self, now: float) -> str:
        return f"{self.method} {self.path} -> {self.status} {self.bytes} B {(now - self.started) * 1000:.1f} ms"


class _GiveUp(Exception):
    pass


class ExchangeLog:
    """Feed it what the app receives (``requests``) and sends (``responses``), and call
    ``closed()`` when the connection ends; ``report(exchange)`` is called for each finished one."""

    def __init__(self, report: Callable[[Exchange], None], clock: Callable[[], float] = time.monotonic,
                 max_head: int = MAX_HEAD):
        self._report = report
        self._clock = clock
        self._max_head = max_head
        self._pending: deque[tuple[Exchange, bool]] = deque()   # (exchange, it asked to upgrade)
        # The relay bounded these heads already (relay_max_header_size) and then added a few headers.
        self._requests = MessageReader("request", 1 << 20)
        self._held = b""            # request bytes after an upgrade request, until its answer
        self._switching = False
        self._responses = MessageReader("response", max_head)
        self._chunked = False       # the response being read has a chunked body
        self.off = False

    # --- the taps ------------------------------------------------------------------------------
    def requests(self, data) -> None:
        if not self.off:
            self._guard(self._read_requests, bytes(data))

    def responses(self, data) -> None:
        if not self.off:
            self._guard(self._read_responses, bytes(data))

    def closed(self) -> None:
        """The connection ended: that ends a response whose body is read until the app closes."""
        if not self.off and self._pending and self._responses.eof():
            self._guard(lambda _: self._finish(), b"")
        self.off = True

    def _guard(self, step, data: bytes) -> None:
        try:
            step(data)
        except Exception:   # _GiveUp, HttpError, a bug here: traffic goes on
            self.off = True
            self._pending.clear()

    # --- requests ------------------------------------------------------------------------------
    def _read_requests(self, data: bytes) -> None:
        self._held += data
        if self._switching:
            if len(self._held) > self._max_head:
                raise _GiveUp("too many bytes after an upgrade request")
            return
        while self._held and not self._switching:
            events, self._held = self._requests.feed(self._held)
            for ev in events:
                if isinstance(ev, RequestHead):
                    self._switching = ev.body == "upgrade"
                    self._pending.append((Exchange(ev.method, ev.target, self._clock()), self._switching))
            if not events:
                break

    # --- responses -----------------------------------------------------------------------------
    def _read_responses(self, data: bytes) -> None:
        reader = self._responses
        while data and not self.off:
            if not self._pending:
                raise _GiveUp("bytes from the app nobody asked for")
            exchange, asked = self._pending[0]
            if reader.between_messages:     # what the reader must know before this response's head
                reader.head_only, reader.upgrade_asked = exchange.method == "HEAD", asked
            events, data = reader.feed(data)
            for ev in events:
                if isinstance(ev, ResponseHead):
                    self._chunked = ev.body == "chunked"
                    if ev.status >= 200 or ev.status == 101:
                        exchange.status = ev.status
                    if ev.status == 101:
                        self._finish()
                        return
                elif ev is END:
                    if self._chunked:
                        exchange.bytes = reader.chunk_data
                    self._finish()
                elif not self._chunked:
                    exchange.bytes += len(ev)
            if not events:
                break                       # a head in pieces: the reader holds it

    def _finish(self) -> None:
        exchange, asked = self._pending.popleft()
        if exchange.status == 101:
            self.off = True             # another protocol from here on: nothing more to log
        elif asked:                     # an upgrade answered without switching: HTTP goes on
            self._switching = False
            self._requests.after_upgrade_refused()
            held, self._held = self._held, b""
            self._read_requests(held)
        self._report(exchange)
