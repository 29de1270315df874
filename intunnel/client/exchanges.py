"""The client's ``-v`` log: one line per finished exchange, from a passive look at a visitor's
connection to the local app.

Requests reach the client already framed and re-serialized by the relay, so the relay's
own reader (``http1.MessageReader``) splits them, the same way.  Responses come straight
from whatever the local app is, and following them is exactly what httptools (llhttp,
the C parser uvloop's authors wrote) does: status, body bytes, where each response ends
(Content-Length, chunked, 1xx, 204/304).  Two things httptools can't know are added
here: a response to HEAD ends with its head (httptools has no way to be told,
MagicStack/httptools#47), and a body read until the app closes ends at the close.

``ExchangeLog`` only watches: it never raises, never holds more than one head, and gives up
quietly (reports nothing more for that connection) on anything it doesn't follow.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import httptools

from ..wire.http1 import MessageReader, RequestHead

MAX_HEAD = 64 * 1024
# httptools raises this HttpParserError instead of HttpParserUpgrade for a 101 that isn't the
# connection's first response (llhttp's HPE_PAUSED_UPGRADE with its upgrade flag unseen).
_UPGRADE_PAUSE = "Pause on CONNECT/Upgrade"


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
        self._new_parser()
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
        if not self.off and self._final and not self._sized and self._pending:
            self._guard(lambda _: self._finish(), b"")
        self.off = True

    def _guard(self, step, data: bytes) -> None:
        try:
            step(data)
        except Exception:   # _GiveUp, HttpError, httptools' errors, a bug here: traffic goes on
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
    def _new_parser(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._events: list = []     # what the callbacks saw, handled once feed_data returns
        self._final = False         # the current exchange's final (non-1xx) head is in
        self._sized = False         # ... and has a Content-Length or a Transfer-Encoding
        self._in_head = False
        self._head_bytes = 0

    def _read_responses(self, data: bytes) -> None:
        pos = 0
        while pos < len(data) and not self.off:
            if not self._pending:
                raise _GiveUp("bytes from the app nobody asked for")
            # httptools can't be told a response answers HEAD: it would read the body its
            # headers announce.  So up to the end of a HEAD's response head, one byte at a time.
            head_only = any(exchange.method == "HEAD" for exchange, _ in self._pending)
            end = pos + 1 if head_only else len(data)
            self._feed(data[pos:end])
            pos = end

    def _feed(self, piece: bytes) -> None:
        switched, error = False, None
        head_before = self._in_head
        try:
            self._parser.feed_data(piece)
        except httptools.HttpParserUpgrade:
            switched = True
        except httptools.HttpParserError as e:
            switched, error = str(e) == _UPGRADE_PAUSE, e
            if switched:
                error = None
        if self._in_head and head_before:   # the whole piece is head (a bound: one piece more)
            self._head_bytes += len(piece)
            if self._head_bytes > self._max_head:
                raise _GiveUp("response head too large")
        events, self._events = self._events, []
        for kind, value in events:
            exchange = self._pending[0][0]
            if kind == "sized":
                self._sized = True
            elif kind == "head" and value < 200:
                self._sized = False     # 1xx: the final response follows
            elif kind == "head":
                self._final = True
                exchange.status = value
                if exchange.method == "HEAD":
                    self._finish()
                    self._new_parser()   # the rest (of this byte: nothing) is the next response's
                    return
            elif kind == "body":
                exchange.bytes += value
            elif kind == "end" and self._final:
                self._finish()
        if error is not None:
            raise error                 # after what finished before it was reported
        if switched:
            exchange, asked = self._pending[0]
            if self._parser.get_status_code() != 101 or not asked:
                raise _GiveUp("switching protocols unasked")
            exchange.status = 101
            self._finish()

    def _finish(self) -> None:
        exchange, asked = self._pending.popleft()
        self._final = self._sized = False
        if exchange.status == 101:
            self.off = True             # another protocol from here on: nothing more to log
        elif asked:                     # an upgrade answered without switching: HTTP goes on
            self._switching = False
            self._requests.after_upgrade_refused()
            held, self._held = self._held, b""
            self._read_requests(held)
        self._report(exchange)

    # --- httptools' callbacks (they only take notes) -------------------------------------------
    def on_message_begin(self) -> None:
        self._in_head, self._head_bytes = True, 0

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self._events.append(("sized", 0))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._events.append(("head", self._parser.get_status_code()))

    def on_body(self, body: bytes) -> None:
        self._events.append(("body", len(body)))

    def on_message_complete(self) -> None:
        self._events.append(("end", 0))
