"""What the inspector keeps of each exchange, from a passive look at one visitor connection.

Pure: ``Capture`` is fed the bytes the local app receives (``requests``) and sends
(``responses``), as ``exchanges.ExchangeLog`` is, and follows both directions with the
relay's own reader (``http1.MessageReader``).  It records each exchange into a ``Store``:
times, method, target, status, sizes, the visitor's address, both heads and the first
``body_limit`` bytes of each body; the rest of a body is counted, not kept (a Content-Length
body past the limit is skipped by count, not even sliced).

It never raises into the tunnel and never holds the tunnel's bytes: on anything it doesn't
follow it stops recording that connection (the exchange in progress is marked so).

Cheap per exchange (issue 15: the inspector on by default costs at most a quarter of the
keep-alive throughput): a record keeps its heads as the bytes that came, and what the API
shows of them (method, target, visitor address, the heads as text) is worked out when asked.
The usual message, a whole head at the start of a read, is delimited by a quick look at its
framing headers (``_quick_request``, ``_quick_response``) rather than parsed: requests come
from the relay, which parsed and checked them already; a response head the quick look doesn't
take as plainly framed (a 1xx or 101, chunked, no Content-Length, anything unusual) goes to the
strict reader, as every message that starts in the middle of a read does.  The relay checks
every response strictly itself.

The ``Store`` is bounded twice: ``max_exchanges`` records and ``max_body_bytes`` of kept
bodies (and heads: a head is at most the relay's 64 KiB-ish bound, but 500 of them add up),
oldest dropped first.  A record dropped while its exchange is still running stops
copying (nobody could see what it would keep).
"""

from __future__ import annotations

import itertools
import re
import time
from collections import OrderedDict, deque
from typing import Callable, Optional

from ...wire.http1 import END, MessageReader, RequestHead, ResponseHead

BODY_LIMIT = 64 * 1024              # --inspect-body-limit's default: bytes kept of each body
MAX_EXCHANGES = 500                 # the store keeps the last this many exchanges
MAX_BODY_BYTES = 32 * 1024 * 1024   # and at most this many body bytes in all
MAX_REQUEST_HEAD = 1 << 20          # the relay bounded visitor heads already (relay_max_header_size)
MAX_RESPONSE_HEAD = 64 * 1024       # as exchanges.MAX_HEAD: a longer response head is not followed
MAX_HELD = 64 * 1024                # request bytes held after an upgrade request, until its answer
UNTIL_CLOSE = -1                    # unseen(): after a 101, every byte of both sides (counted by a RawMeter)


class Body:
    """One body: its size on the wire's framing (chunked: the data, without the chunk lines),
    and the first bytes of it as sent (a chunked body's kept bytes include its chunk lines)."""

    __slots__ = ("size", "kept", "wire")

    def __init__(self):
        self.size = 0
        self.kept = b""     # a bytearray once something is kept
        self.wire = 0       # bytes of the body as framed on the wire (chunk lines included)

    @property
    def truncated(self) -> bool:
        return self.wire > len(self.kept)


class Record:
    """One exchange.  ``state``: "open" (request seen), "done", "upgraded" (101: raw bytes
    until close), "closed" (the connection ended before a whole response) or "lost" (the
    capture stopped following this connection).

    The heads are kept as the bytes that came (without their blank line); ``method``,
    ``target``, ``remote``, ``request_head`` and ``response_head`` are made of them when asked."""
    __slots__ = ("id", "started", "_mono", "duration", "_request_raw", "_line", "head_only", "request_chunked",
                 "request", "_response_raw", "status", "response_chunked", "response", "interim",
                 "upgraded", "raw_up", "raw_down", "state", "replay_of", "dropped", "held", "origin")

    def __init__(self, rid: str, raw: bytes, chunked: bool, started: float, mono: float, replay_of: str = "",
                 origin=None):
        self.id = rid
        self.origin = origin            # the tunnel it came through (an Agent: url, upstream), or None
        self.started = started          # wall clock (time.time()) of the request head
        self._mono = mono
        self.duration = None            # seconds, once the response ended (or the upgrade closed)
        self._request_raw = raw         # the request head as received, without its blank line
        self._line = None               # (method, target), once asked for
        self.head_only = raw[:5] == b"HEAD "   # its response has no body
        self.request_chunked = chunked
        self.request = Body()
        self._response_raw = b""
        self.status = 0
        self.response_chunked = False
        self.response = Body()
        self.interim: tuple = ()        # 1xx statuses before the final response
        self.upgraded = False
        self.raw_up = 0                 # after a 101: bytes visitor -> app
        self.raw_down = 0               # and app -> visitor
        self.state = "open"
        self.replay_of = replay_of      # the id this exchange replays ("" for a visitor's)
        self.dropped = False            # gone from the store: copy nothing more
        self.held = len(raw)            # bytes charged to the store's budget: heads and kept bodies

    def finish(self, mono: float, state: str) -> None:
        if self.state in ("open", "upgraded"):
            self.duration = max(0.0, mono - self._mono)
            self.state = state

    def _request_line(self) -> tuple:
        if self._line is None:
            raw = self._request_raw
            end = raw.find(b"\r\n")
            method, _, rest = (raw if end < 0 else raw[:end]).decode("latin-1").partition(" ")
            self._line = method, rest.rpartition(" ")[0]
        return self._line

    @property
    def method(self) -> str:
        return self._request_line()[0]

    @property
    def target(self) -> str:
        return self._request_line()[1]

    @property
    def request_head(self) -> str:
        return self._request_raw.decode("latin-1")

    @property
    def response_head(self) -> str:
        """The final response's head ("" before it came), without its blank line."""
        return self._response_raw.decode("latin-1")

    @property
    def remote(self) -> str:
        found = _XFF.search(self._request_raw)
        return _visitor(found.group(1).decode("latin-1").strip(" \t") if found else None)


# The first X-Forwarded-For of a head (a checked head: no CR or LF inside a value).
_XFF = re.compile(rb"\r\nx-forwarded-for:([^\r]*)", re.IGNORECASE)


def _visitor(xff: Optional[str]) -> str:
    """The visitor's address as the relay forwards it (access.visitor_address): X-Forwarded-For is
    just the visitor's address, unless the relay trusts a proxy in front (nginx), which appended
    what it saw, and the relay appended the proxy's address after it: the entry before the last."""
    if not xff:
        return ""
    entries = [e.strip() for e in xff.split(",")]
    return entries[-2] if len(entries) >= 2 else entries[-1]


class Store:
    """The last ``max_exchanges`` records, with at most ``max_body_bytes`` of kept bodies and heads."""

    def __init__(self, max_exchanges: int = MAX_EXCHANGES, max_body_bytes: int = MAX_BODY_BYTES,
                 body_limit: int = BODY_LIMIT, clock: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic):
        self.max_exchanges = max_exchanges
        self.max_body_bytes = max_body_bytes
        self.body_limit = body_limit
        self.clock, self.mono = clock, mono
        self._records: "OrderedDict[str, Record]" = OrderedDict()
        self.body_bytes = 0
        self._ids = itertools.count(1)
        self.version = 0                # bumped on every change (the page polls it)

    def new(self, raw: bytes, chunked: bool = False, replay_of: str = "", origin=None) -> Record:
        """A record for the request head ``raw`` (without its blank line)."""
        record = Record(f"ex_{next(self._ids)}", raw, chunked, self.clock(), self.mono(), replay_of, origin)
        records = self._records
        records[record.id] = record
        self.body_bytes += record.held
        if len(records) > self.max_exchanges or self.body_bytes > self.max_body_bytes:
            while len(records) > self.max_exchanges or self.body_bytes > self.max_body_bytes and len(records) > 1:
                self._drop_oldest()
        self.version += 1
        return record

    def charge(self, record: Record, n: int) -> None:
        """``record`` holds ``n`` more bytes (a response head); the oldest go when over budget."""
        if record.dropped:
            return
        record.held += n
        self.body_bytes += n
        while self.body_bytes > self.max_body_bytes and self._records:
            self._drop_oldest()

    def keep(self, record: Record, body: Body, data) -> None:
        """Append what of ``data`` fits in ``body``'s limit and the store's byte budget."""
        room = self.body_limit - len(body.kept)
        if record.dropped or room <= 0 or not data:
            return
        piece = data[:room] if len(data) > room else data
        if body.kept:
            body.kept += piece
        else:
            body.kept = bytearray(piece)
        record.held += len(piece)
        self.body_bytes += len(piece)
        self.version += 1   # a streamed body (SSE) shows its events as they arrive
        while self.body_bytes > self.max_body_bytes and self._records:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, record = self._records.popitem(last=False)
        record.dropped = True
        self.body_bytes -= record.held

    def changed(self) -> None:
        self.version += 1

    def get(self, rid: str) -> Optional[Record]:
        return self._records.get(rid)

    def records(self) -> list:
        """Newest first."""
        return list(reversed(self._records.values()))

    def clear(self) -> None:
        for record in self._records.values():
            record.dropped = True
        self._records.clear()
        self.body_bytes = 0
        self.changed()


class _GiveUp(Exception):
    pass


class Capture:
    """One connection's exchanges, into ``store``.  Feed ``requests(data)`` what the app
    receives and ``responses(data)`` what it sends; call ``closed()`` when it ends."""

    def __init__(self, store: Store, replay_of: str = "", origin=None):
        self.store = store
        self.replay_of = replay_of
        self.origin = origin
        self._requests = MessageReader("request", MAX_REQUEST_HEAD)
        self._responses = MessageReader("response", MAX_RESPONSE_HEAD)
        self._pending: deque = deque()      # records waiting for (or reading) their response
        self._reading: Optional[Record] = None   # the record whose request body is being read
        self._held = b""
        self._switching = False             # an upgrade request waits for its answer
        self._raw: Optional[Record] = None  # after a 101: the upgraded exchange
        self.off = False

    # --- the taps ------------------------------------------------------------------------------
    # Each returns ``unseen`` of its side after the bytes given: how many of the next ones may go
    # by unseen (the kernel may move them), so the tunnel's tap asks once per read.
    def requests(self, data) -> int:
        if self.off:
            return 0
        if self._raw is not None:
            self._raw.raw_up += len(data)
            return UNTIL_CLOSE
        try:
            self._read_requests(data)
        except Exception:   # _GiveUp, HttpError, a bug here: traffic goes on, unrecorded
            self._lose()
            return 0
        return 0 if self._reading is None else self.unseen("request")

    def responses(self, data) -> int:
        if self.off:
            return 0
        if self._raw is not None:
            self._raw.raw_down += len(data)
            return UNTIL_CLOSE
        try:
            self._read_responses(data)
        except Exception:
            self._lose()
            return 0
        return self.unseen("response") if self._pending or self._raw is not None else 0

    def closed(self) -> None:
        if self.off:
            return
        self.off = True
        mono = self.store.mono()
        if self._raw is not None:
            self._raw.finish(mono, "done")
        elif self._pending and self._responses.eof():   # a body read until the app closes
            self._pending.popleft().finish(mono, "done")
        for record in self._pending:
            record.finish(mono, "closed")
        self._pending.clear()
        self.store.changed()

    def _lose(self) -> None:
        """Stop following this connection: what it was in the middle of is marked lost."""
        self.off = True
        mono = self.store.mono()
        for record in self._pending:
            record.finish(mono, "lost")
        self._pending.clear()
        self.store.changed()

    # --- requests ------------------------------------------------------------------------------
    def _read_requests(self, data) -> None:
        if self._switching:
            self._held += bytes(data)
            if len(self._held) > MAX_HELD:
                raise _GiveUp("too many bytes after an upgrade request")
            return
        reader, store = self._requests, self.store
        while data:
            record = self._reading
            if record is None and reader.between_messages:
                quick = _quick_request(data)
                if quick is not None:       # a plainly framed head: recorded without a parse
                    end, length = quick
                    raw = data[:end]
                    record = store.new(raw if type(raw) is bytes else bytes(raw), False, self.replay_of,
                                       self.origin)
                    self._pending.append(record)
                    if length:
                        reader.expect_body(_Framing(length))
                        self._reading = record
                    data = data[end + 4:]
                    continue
            left = reader.body_left
            if record is not None and left and len(record.request.kept) >= store.body_limit:
                n = min(left, len(data))        # past the limit: counted, not even sliced
                self._skip_request(record, n)
                data = data[n:]
                continue
            events, data = reader.feed(data)
            for ev in events:
                if isinstance(ev, RequestHead):
                    record = store.new(ev.raw, ev.body == "chunked", self.replay_of, self.origin)
                    self._pending.append(record)
                    self._reading = record
                    if ev.body == "upgrade":
                        self._switching = True
                elif ev is END:
                    if record is not None and record.request_chunked:
                        record.request.size = reader.chunk_data
                    self._reading = None
                elif record is not None:
                    record.request.wire += len(ev)
                    if not record.request_chunked:
                        record.request.size += len(ev)
                    store.keep(record, record.request, ev)
            if self._switching:
                self._held += bytes(data)
                return
            if not events:
                break

    # --- responses -----------------------------------------------------------------------------
    def _read_responses(self, data) -> None:
        reader, store = self._responses, self.store
        while data and not self.off and self._raw is None:
            if not self._pending:
                raise _GiveUp("bytes from the app nobody asked for")
            record = self._pending[0]
            if reader.between_messages:
                upgrade_asked = self._switching and len(self._pending) == 1
                quick = None if upgrade_asked else _quick_response(data, record.head_only)
                if quick is not None:       # a plainly framed final response: no parse
                    end, status, length = quick
                    raw = data[:end]
                    self._final_head(record, status, raw if type(raw) is bytes else bytes(raw), False)
                    start = end + 4
                    if not length:
                        self._finish(record)
                    elif len(data) - start >= length:   # the whole body in this read (a small response)
                        body = record.response
                        body.size = body.wire = length
                        store.keep(record, body, memoryview(data)[start:start + length])
                        self._finish(record)
                        start += length
                    else:
                        reader.expect_body(_Framing(length))
                    data = data[start:]
                    continue
                reader.head_only, reader.upgrade_asked = record.head_only, upgrade_asked
            left = reader.body_left
            if left and record.status and len(record.response.kept) >= store.body_limit:
                n = min(left, len(data))
                self._skip_response(record, n)
                data = data[n:]
                continue
            events, data = reader.feed(data)
            for ev in events:
                if isinstance(ev, ResponseHead):
                    if 100 <= ev.status < 200 and ev.status != 101:
                        record.interim += (ev.status,)
                        continue
                    self._final_head(record, ev.status, bytes(ev.raw[:-4]), ev.body == "chunked")
                    if ev.status == 101:
                        self._upgraded(record, data)
                        return
                elif ev is END:
                    if record.response_chunked:
                        record.response.size = reader.chunk_data
                    self._finish(record)
                else:
                    record.response.wire += len(ev)
                    if not record.response_chunked:
                        record.response.size += len(ev)
                    store.keep(record, record.response, ev)
            if not events:
                break

    def _final_head(self, record: Record, status: int, raw: bytes, chunked: bool) -> None:
        record.status = status
        record._response_raw = raw
        record.response_chunked = chunked
        store = self.store
        store.charge(record, len(raw))
        store.version += 1

    # --- bytes moved unseen (the kernel's splice, past the limit) ---------------------------------
    def unseen(self, side: str) -> int:
        """How many of the next bytes of ``side`` ("request" or "response") may go by unseen: the
        rest of a Content-Length body whose kept part is full (0: the capture must see them), or
        after a 101 ``UNTIL_CLOSE``: all of both sides, counted by ``raw_meter(side)``."""
        if self.off:
            return 0
        if self._raw is not None:
            return UNTIL_CLOSE
        if side == "request":
            record, reader = self._reading, self._requests
            full = record is not None and len(record.request.kept) >= self.store.body_limit
        else:
            record, reader = (self._pending[0] if self._pending else None), self._responses
            full = record is not None and bool(record.status) and \
                len(record.response.kept) >= self.store.body_limit
        return reader.body_left if full else 0

    def raw_meter(self, side: str) -> "RawMeter":
        """What counts the bytes of ``side`` moved unseen after a 101 (a ``netio.Conn.meter``)."""
        return RawMeter(self._raw, side == "request")

    def moved(self, side: str, n: int) -> None:
        """``n`` bytes of ``side`` went by unseen (at most ``unseen(side)``)."""
        if self.off:
            return
        try:
            if side == "request":
                self._skip_request(self._reading, n)
            else:
                self._skip_response(self._pending[0], n)
        except Exception:
            self._lose()

    def _skip_request(self, record: Record, n: int) -> None:
        record.request.size += n
        record.request.wire += n
        if self._requests.skip_body(n):
            self._reading = None

    def _skip_response(self, record: Record, n: int) -> None:
        record.response.size += n
        record.response.wire += n
        if self._responses.skip_body(n):
            self._finish(record)

    def _upgraded(self, record: Record, rest) -> None:
        self._pending.popleft()
        record.upgraded, record.state = True, "upgraded"
        record.raw_down += len(rest)
        record.raw_up += len(self._held)
        self._held = b""
        self._raw = record

    def _finish(self, record: Record) -> None:
        self._pending.popleft()
        store = self.store
        record.finish(store.mono(), "done")
        store.version += 1
        if self._switching and not self._pending:   # an upgrade answered without switching
            self._switching = False
            self._requests.after_upgrade_refused()
            held, self._held = self._held, b""
            if held:
                self._read_requests(held)


class RawMeter:
    """Counts into an upgraded record the bytes the kernel moves (``rx``: received from the side's
    source, visitor or app); ``tx`` is not looked at."""
    __slots__ = ("record", "up", "tx")

    def __init__(self, record: Record, up: bool):
        self.record, self.up, self.tx = record, up, 0

    @property
    def rx(self) -> int:
        return self.record.raw_up if self.up else self.record.raw_down

    @rx.setter
    def rx(self, n: int) -> None:
        if self.up:
            self.record.raw_up = n
        else:
            self.record.raw_down = n


class _Framing:
    """A Content-Length body's framing, for ``MessageReader.expect_body`` after a quick look."""
    __slots__ = ("body", "length", "status")

    def __init__(self, length: int):
        self.body, self.length, self.status = "length", length, 200


# The headers that may frame a message, at the start of a line (a head's first line can't match).
_REQUEST_FRAMING = re.compile(rb"\r\n(content-length|transfer-encoding|upgrade):([^\r]*)", re.IGNORECASE)
_RESPONSE_FRAMING = re.compile(rb"\r\n(content-length|transfer-encoding):([^\r]*)", re.IGNORECASE)


def _quick_request(data) -> Optional[tuple]:
    """(end of the head, Content-Length) of a request head starting ``data`` whose body is none
    or a Content-Length; None for anything else (chunked, an upgrade, a head in pieces): the
    reader parses those.  The relay sends only heads it parsed and checked."""
    end = data.find(b"\r\n\r\n", 0, MAX_REQUEST_HEAD)
    if end <= 0 or data[0] in (13, 10):
        return None
    found = _REQUEST_FRAMING.findall(data, 0, end)
    if not found:
        return end, 0
    if len(found) > 1 or len(found[0][0]) != 14:        # one Content-Length (14 letters), nothing else
        return None
    value = found[0][1].strip(b" \t")
    return (end, int(value)) if value.isdigit() and len(value) <= 18 else None


def _quick_response(data, head_only: bool) -> Optional[tuple]:
    """(end of the head, status, body length) of a final response head starting ``data`` framed
    by a Content-Length or having no body (HEAD, 204, 304); None for anything else (1xx, 101,
    chunked, read until close, repeated or odd framing, a head in pieces).  Only the framing is
    looked at: a head the strict reader would refuse (a bare LF, say) is refused by the relay,
    which then answers the visitor 502 and closes the connection."""
    end = data.find(b"\r\n\r\n", 0, MAX_RESPONSE_HEAD)
    if end < 12 or data[:7] != b"HTTP/1." or data[7] not in (48, 49) or data[8] != 32 or \
            data[12] not in (32, 13) or not data[9:12].isdigit():
        return None
    status = int(data[9:12])
    if status < 200:
        return None
    found = _RESPONSE_FRAMING.findall(data, 0, end)
    if not found:       # no body, or one read until the app closes (the reader follows that)
        return (end, status, 0) if head_only or status in (204, 304) else None
    if len(found) > 1 or len(found[0][0]) != 14:        # one Content-Length (14 letters), nothing else
        return None
    value = found[0][1].strip(b" \t")
    if not value.isdigit() or len(value) > 18:
        return None
    return end, status, 0 if head_only or status in (204, 304) else int(value)
