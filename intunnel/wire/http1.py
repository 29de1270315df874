"""HTTP/1.1 message framing, pure and bounded: just enough to route requests and log them.

The relay parses visitor request *heads* (to route by Host and add
X-Forwarded-*) and follows request *bodies* by their framing (Content-Length
or chunked) without copying or decoding them, so it can see the next request
head on a keep-alive connection.  After an Upgrade everything is raw bytes.
Responses are forwarded raw; the relay follows only their framing
(``ResponseEnds``) to know when a data connection is idle and may serve the
tunnel's next visitor, and the client's ``-v`` log uses ``ResponseTracker``.

Everything here works on bytes already received and keeps at most one head
(bounded by ``max_head``) or one chunk-size line in memory.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field

MAX_CHUNK_LINE = 4096          # chunk-size line incl. extensions
MAX_TRAILER = 16 * 1024        # all trailer lines together

_REQUEST_LINE = re.compile(r"([A-Z][A-Z0-9_-]{0,31}) ([^\x00-\x20\x7f]+) (HTTP/1\.[01])\Z")
# The whole header block at once, in C: "name: value" lines, token names, no NUL/CR/LF in values.
_HEADER_BLOCK = re.compile(r"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\r\n\x00]*\r\n)*\Z")
_HOST = re.compile(r"^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+)(?::[0-9]{1,5})?$")


class HttpError(Exception):
    """A visitor sent something that isn't acceptable HTTP/1.1; ``status`` is the answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class RequestHead:
    """A parsed request head: request line, headers in order, body framing."""

    __slots__ = ("method", "target", "version", "headers", "index", "body", "length", "size", "_host")

    def __init__(self, method: str, target: str, version: str, headers: list[tuple[str, str]]):
        self.method, self.target, self.version, self.headers = method, target, version, headers
        index: dict[str, list[str]] = {}
        for name, value in headers:
            index.setdefault(name.lower(), []).append(value)
        self.index = index
        self.body = "none"      # "none", "length", "chunked" or "upgrade"
        self.length = 0
        self.size = 0           # bytes the head took on the wire
        self._host: str | None = None

    def get(self, name: str) -> str | None:
        values = self.index.get(name.lower())
        return values[0] if values else None

    @property
    def host(self) -> str:
        """The Host header's name part, lowercased, without port or trailing dot."""
        if self._host is None:  # routing asks several times per request
            value = (self.get("host") or "").strip().lower()
            if value.startswith("["):
                self._host = value[: value.find("]") + 1]
            else:
                self._host = value.rsplit(":", 1)[0].rstrip(".") if ":" in value else value.rstrip(".")
        return self._host

    def wire(self, remove: tuple[str, ...] = (), add: list[tuple[str, str]] | None = None,
             replace: dict[str, str] | None = None) -> bytes:
        """Serialize, dropping headers named in ``remove``, replacing and appending some."""
        replace = {k.lower(): v for k, v in (replace or {}).items()}
        lines = [f"{self.method} {self.target} {self.version}"]
        for k, v in self.headers:
            lk = k.lower()
            if lk in remove:
                continue
            lines.append(f"{k}: {replace.pop(lk)}" if lk in replace else f"{k}: {v}")
        lines.extend(f"{k}: {v}" for k, v in list(replace.items()) + (add or []))
        lines.append("\r\n")
        return "\r\n".join(lines).encode("latin-1")


def _split_headers(block: str) -> list[tuple[str, str]]:
    """``block``: header lines, each ending in CRLF."""
    if not _HEADER_BLOCK.match(block):
        if re.search(r"\r\n[ \t]", "\r\n" + block):
            raise HttpError(400, "obsolete header line folding is not accepted")
        raise HttpError(400, "malformed header line")
    headers = []
    for line in block.split("\r\n")[:-1]:
        name, _, value = line.partition(":")
        headers.append((name, value.strip(" \t")))
    return headers


def parse_request_head(raw: bytes) -> RequestHead:
    """Parse a request head (up to and excluding the blank line) and decide its body framing."""
    text = raw.decode("latin-1")
    end = text.find("\r\n")
    request_line, block = (text, "") if end < 0 else (text[:end], text[end + 2:] + "\r\n")
    m = _REQUEST_LINE.match(request_line)
    if not m:
        raise HttpError(400, "malformed request line")
    head = RequestHead(m.group(1), m.group(2), m.group(3), _split_headers(block))
    if head.method == "CONNECT":
        raise HttpError(405, "CONNECT is not supported")
    index = head.index
    hosts = index.get("host")
    if not hosts or len(hosts) != 1 or not _HOST.match(hosts[0]):
        raise HttpError(400, "exactly one valid Host header is required")
    lengths = {v.strip() for v in index.get("content-length", ())}
    te = index.get("transfer-encoding")
    if te:
        if lengths:
            raise HttpError(400, "both Transfer-Encoding and Content-Length")
        codings = [c.strip().lower() for v in te for c in v.split(",")]
        if codings[-1] != "chunked" or codings.count("chunked") != 1:
            raise HttpError(501, "unsupported Transfer-Encoding")
        head.body = "chunked"
    elif lengths:
        if len(lengths) != 1:
            raise HttpError(400, "conflicting Content-Length headers")
        value = lengths.pop()
        if not value.isdigit() or not value.isascii() or len(value) > 18:
            raise HttpError(400, "invalid Content-Length")
        head.length = int(value)
        head.body = "length" if head.length else "none"
    if "upgrade" in index and "connection" in index:
        if any(t.strip().lower() == "upgrade" for v in index["connection"] for t in v.split(",")):
            head.body = "upgrade"
    return head


class ChunkedScanner:
    """Finds the end of a chunked body in a stream without copying the chunk data."""

    def __init__(self):
        self._state = "size"
        self._line = bytearray()
        self._remaining = 0
        self._trailer_bytes = 0

    def feed(self, data: bytes, pos: int = 0) -> int:
        """Scan ``data[pos:]``; return the index just past the body's end, or -1 if not there yet."""
        n = len(data)
        while pos < n:
            if self._state == "data":
                take = min(self._remaining, n - pos)
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = "data_crlf"
                    self._line.clear()
                continue
            # line-oriented states: size, data_crlf, trailer
            end = data.find(b"\n", pos)
            chunk = data[pos:] if end < 0 else data[pos:end + 1]
            self._line += chunk
            pos += len(chunk)
            limit = MAX_TRAILER if self._state == "trailer" else MAX_CHUNK_LINE
            if len(self._line) > limit:
                raise HttpError(400, "chunk line too long")
            if end < 0:
                break
            line = bytes(self._line).rstrip(b"\r\n")
            self._line.clear()
            if self._state == "data_crlf":
                if line:
                    raise HttpError(400, "missing CRLF after chunk data")
                self._state = "size"
            elif self._state == "size":
                size = line.split(b";", 1)[0].strip()
                if not size or len(size) > 16 or not all(c in b"0123456789abcdefABCDEF" for c in size):
                    raise HttpError(400, "invalid chunk size")
                self._remaining = int(size, 16)
                self._state = "data" if self._remaining else "trailer"
            else:  # trailer: header lines until an empty one
                if not line:
                    self._state = "size"
                    return pos
                self._trailer_bytes += len(line)
                if self._trailer_bytes > MAX_TRAILER:
                    raise HttpError(400, "trailer too large")
        return -1


class RequestStream:
    """Splits a visitor's byte stream into events: ``RequestHead`` objects and body ``bytes``.

    Body bytes are slices of the input, in order; after an Upgrade request
    every following byte is body.  Raises ``HttpError`` for bad or oversized heads.
    """

    def __init__(self, max_head: int):
        self.max_head = max_head
        self._buf = bytearray()
        self._mode = "head"     # head, length, chunked, raw
        self._remaining = 0
        self._chunks: ChunkedScanner | None = None

    @property
    def between_requests(self) -> bool:
        return self._mode == "head" and not self._buf

    @property
    def body_left(self) -> int:
        """Bytes of the current request's Content-Length body still to come (0 otherwise)."""
        return self._remaining if self._mode == "length" else 0

    def skip_body(self, n: int) -> None:
        """``n`` bytes of the current body went by unseen (moved by the kernel)."""
        if self._mode != "length" or n > self._remaining:
            raise ValueError("skip_body past the request body")
        self._remaining -= n
        if not self._remaining:
            self._mode = "head"

    def feed(self, data: bytes) -> list:
        events: list = []
        pos, n = 0, len(data)
        while pos < n:
            mode = self._mode
            if mode == "raw":
                events.append(data if pos == 0 else data[pos:])
                break
            if mode == "length":
                take = min(self._remaining, n - pos)
                events.append(data if take == n else data[pos:pos + take])
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._mode = "head"
                continue
            if mode == "chunked":
                end = self._chunks.feed(data, pos)
                stop = n if end < 0 else end
                events.append(data if (pos == 0 and stop == n) else data[pos:stop])
                pos = stop
                if end >= 0:
                    self._mode = "head"
                continue
            # head: accumulate until the blank line
            if not self._buf:
                while pos < n and data[pos] in (13, 10):  # stray CRLF between requests
                    pos += 1
                if pos == n:
                    break
            start = max(0, len(self._buf) - 3)
            self._buf += data[pos:]
            end = self._buf.find(b"\r\n\r\n", start)
            if end < 0:
                if len(self._buf) > self.max_head:
                    raise HttpError(431, "request head too large")
                break
            if end + 4 > self.max_head:
                raise HttpError(431, "request head too large")
            consumed = end + 4 - (len(self._buf) - (n - pos))
            head = parse_request_head(bytes(self._buf[:end]))
            head.size = end + 4
            self._buf.clear()
            pos += consumed
            events.append(head)
            self.after_head(head)
        return events

    def after_head(self, head: RequestHead) -> None:
        """Expect ``head``'s body next (also used when the first head was read elsewhere)."""
        if head.body == "length":
            self._mode, self._remaining = "length", head.length
        elif head.body == "chunked":
            self._mode, self._chunks = "chunked", ChunkedScanner()
        elif head.body == "upgrade":
            self._mode = "raw"

    @property
    def partial_head(self) -> bool:
        """True while a head has started arriving but isn't complete (slowloris check)."""
        return self._mode == "head" and bool(self._buf)


@dataclass
class Exchange:
    """One request/response seen by ``ResponseTracker``, for the client's -v log."""
    method: str
    path: str
    started: float
    status: int = 0
    bytes: int = 0
    extra: dict = field(default_factory=dict)


class ResponseTracker:
    """Follows responses on a connection to report each finished exchange (client -v).

    ``request(head, now)`` queues a request; ``feed(data)`` returns the exchanges
    whose responses completed.  Knows HEAD, 1xx, 204/304, 101 (then stops),
    Content-Length, chunked and read-until-close.  Gives up quietly (stops
    reporting) on anything it doesn't understand: it must never break traffic.
    """

    def __init__(self, max_head: int = 64 * 1024):
        self.max_head = max_head
        self.pending: list[Exchange] = []
        self._buf = bytearray()
        self._mode = "head"     # head, length, chunked, close, off
        self._remaining = 0
        self._chunks: ChunkedScanner | None = None

    def request(self, head: RequestHead, now: float) -> None:
        if self._mode != "off":
            self.pending.append(Exchange(head.method, head.target, now))

    def feed(self, data: bytes) -> list[Exchange]:
        done: list[Exchange] = []
        try:
            self._feed(data, done)
        except (HttpError, ValueError, IndexError):
            self._mode = "off"
        return done

    def close(self) -> list[Exchange]:
        if self._mode == "close" and self.pending:
            return [self.pending.pop(0)]
        return []

    def _feed(self, data: bytes, done: list[Exchange]) -> None:
        pos, n = 0, len(data)
        while pos < n and self._mode != "off":
            if self._mode == "close":
                self.pending[0].bytes += n - pos
                return
            if self._mode == "length":
                take = min(self._remaining, n - pos)
                self.pending[0].bytes += take
                pos += take
                self._remaining -= take
                if not self._remaining:
                    done.append(self.pending.pop(0))
                    self._mode = "head"
                continue
            if self._mode == "chunked":
                end = self._chunks.feed(data, pos)
                stop = n if end < 0 else end
                self.pending[0].bytes += stop - pos
                pos = stop
                if end >= 0:
                    done.append(self.pending.pop(0))
                    self._mode = "head"
                continue
            start = max(0, len(self._buf) - 3)
            self._buf += data[pos:]
            end = self._buf.find(b"\r\n\r\n", start)
            if end < 0:
                if len(self._buf) > self.max_head:
                    self._mode = "off"
                return
            consumed = end + 4 - (len(self._buf) - (n - pos))
            raw = bytes(self._buf[:end])
            self._buf.clear()
            pos += consumed
            if not self.pending:
                self._mode = "off"
                return
            self._start_response(raw, done)

    def _start_response(self, raw: bytes, done: list[Exchange]) -> None:
        text = raw.decode("latin-1")
        first, _, block = text.partition("\r\n")
        status = int(first.split(" ")[1])
        headers = _split_headers(block + "\r\n" if block else "")
        exchange = self.pending[0]
        if 100 <= status < 200:
            if status == 101:
                exchange.status = 101
                done.append(self.pending.pop(0))
                self._mode = "off"
            return
        exchange.status = status
        names = {k.lower(): v for k, v in headers}
        if exchange.method == "HEAD" or status in (204, 304):
            done.append(self.pending.pop(0))
        elif "chunked" in names.get("transfer-encoding", "").lower():
            self._mode, self._chunks = "chunked", ChunkedScanner()
        elif "content-length" in names:
            self._remaining = int(names["content-length"])
            if self._remaining:
                self._mode = "length"
            else:
                done.append(self.pending.pop(0))
        else:
            self._mode = "close"


def _value(low: bytes, marker: bytes) -> bytes | None:
    """The value of header ``marker`` (b"\\r\\nname:") in a lowercased head; HttpError when repeated
    (a response whose framing headers repeat is simply not reused)."""
    i = low.find(marker)
    if i < 0:
        return None
    start = i + len(marker)
    stop = low.find(b"\r\n", start)
    if stop < 0:
        stop = len(low)
    if low.find(marker, stop) >= 0:
        raise HttpError(502, "repeated framing header")
    return low[start:stop].strip(b" \t")


def _response_framing(raw: bytes, head_only: bool) -> tuple[int, str, int, bool]:
    """(status, body framing, length, keep-alive) of a response head; framing as in ``ResponseEnds``.

    Only three headers matter (Content-Length, Transfer-Encoding, Connection): found with
    ``find`` on the lowercased head, in C, instead of splitting every header line."""
    if raw[:7] != b"HTTP/1." or raw[8:9] != b" " or not raw[9:12].isdigit():
        raise HttpError(502, "malformed status line")
    status = int(raw[9:12])
    keep_alive = raw[7:8] == b"1"      # HTTP/1.0 responses: never reused (simple and safe)
    low = raw.lower()
    connection = _value(low, b"\r\nconnection:")
    if connection is not None and b"close" in connection and \
            b"close" in [t.strip() for t in connection.split(b",")]:
        keep_alive = False
    if 100 <= status < 200 or head_only or status in (204, 304):
        return status, "none", 0, keep_alive
    te = _value(low, b"\r\ntransfer-encoding:")
    if te is not None and b"chunked" in te:
        return status, "chunked", 0, keep_alive
    length = _value(low, b"\r\ncontent-length:")
    if length is not None:
        if not length.isdigit():
            raise HttpError(502, "invalid Content-Length")
        return status, "length", int(length), keep_alive
    return status, "close", 0, False


class ResponseEnds:
    """Relay side: follows the responses on an upstream (data) connection to know when it is idle.

    ``request(head_only, close)`` for every request sent; ``feed(data)`` with every
    response byte returns how many of the requests that asked the visitor's
    connection to be closed got their whole response.  ``reusable`` turns False for
    good on anything that ends the connection or that it can't follow: a
    ``Connection: close`` or HTTP/1.0 response, a read-until-close body, 101
    (Upgrade), a response without a request, malformed framing.  ``idle`` is True
    when every request sent has its complete response and the connection may
    carry another visitor's request.
    """

    __slots__ = ("_expect", "_buf", "_mode", "_remaining", "_chunks", "reusable")

    def __init__(self, max_head: int = 64 * 1024):
        self._expect: deque = deque()      # per request in flight: (head_only, close)
        self._buf = bytearray()
        self._mode = "head"                # head, length, chunked, off (stopped following)
        self._remaining = 0
        self._chunks: ChunkedScanner | None = None
        self.reusable = True

    def request(self, head_only: bool, close: bool) -> None:
        self._expect.append((head_only, close))

    @property
    def idle(self) -> bool:
        return self.reusable and self.complete

    @property
    def complete(self) -> bool:
        """Every request sent has its whole response (the connection may still be unusable)."""
        return self._mode == "head" and not self._expect and not self._buf

    @property
    def close_pending(self) -> bool:
        """A request in flight asked for the visitor's connection to close after its response."""
        return any(close for _, close in self._expect)

    @property
    def body_left(self) -> int:
        """Bytes of the current response's Content-Length body still to come (0 otherwise)."""
        return self._remaining if self._mode == "length" else 0

    def skip_body(self, n: int) -> int:
        """``n`` bytes of the current body went by unseen (moved by the kernel); like ``feed``."""
        if self._mode != "length" or n > self._remaining:
            self._mode, self.reusable = "off", False
            return 0
        self._remaining -= n
        return 0 if self._remaining else self._done()

    def feed(self, data) -> int:
        if self._mode == "off":
            return 0
        try:
            return self._feed(data)
        except (HttpError, ValueError, IndexError):
            self._mode, self.reusable = "off", False
            return 0

    def _done(self) -> int:
        _, close = self._expect.popleft()
        self._mode = "head"
        return 1 if close else 0

    def _feed(self, data) -> int:
        closes = 0
        pos, n = 0, len(data)
        while pos < n:
            mode = self._mode
            if mode == "length":
                take = min(self._remaining, n - pos)
                pos += take
                self._remaining -= take
                if not self._remaining:
                    closes += self._done()
                continue
            if mode == "chunked":
                end = self._chunks.feed(data, pos)
                if end < 0:
                    break
                pos = end
                closes += self._done()
                continue
            if mode != "head":
                break
            if not self._buf and (end := data.find(b"\r\n\r\n", pos)) >= 0:
                raw = data[pos:end]   # the usual case: the whole head in one read, no copy to a buffer
                pos = end + 4
            else:
                start = max(0, len(self._buf) - 3)
                self._buf += data[pos:] if pos else data
                end = self._buf.find(b"\r\n\r\n", start)
                if end < 0:
                    if len(self._buf) > 64 * 1024:
                        raise HttpError(502, "response head too large")
                    break
                consumed = end + 4 - (len(self._buf) - (n - pos))
                raw = bytes(self._buf[:end])
                self._buf.clear()
                pos += consumed
            if not self._expect:
                raise HttpError(502, "response without a request")
            status, framing, length, keep_alive = _response_framing(raw, self._expect[0][0])
            if not keep_alive:
                self.reusable = False
            if status == 101 or framing == "close":
                self.reusable = False
                self._mode = "off"        # raw bytes (or until close) from here on
                break
            if 100 <= status < 200:
                continue                  # 100 Continue, 103 Early Hints: the final response follows
            if framing == "length" and length:
                self._mode, self._remaining = "length", length
            elif framing == "chunked":
                self._mode, self._chunks = "chunked", ChunkedScanner()
            else:
                closes += self._done()
        return closes
