"""HTTP/1.1 message framing, pure and bounded: just enough to route requests and log them.

The relay parses visitor request *heads* (to route by Host and add
X-Forwarded-*) and follows request *bodies* by their framing (Content-Length
or chunked) without copying or decoding them, so it can see the next request
head on a keep-alive connection.  After an Upgrade everything is raw bytes.
Responses are forwarded raw; the relay follows their framing with the same
reader (``MessageReader``, as strict as for requests) to know where each ends.
(The client's ``-v`` log follows both directions with it too: ``client/exchanges.py``.)

Everything here works on bytes already received and keeps at most one head
(bounded by ``max_head``) or one chunk-size line in memory.
"""

from __future__ import annotations

import functools
import re
import sys

MAX_CHUNK_LINE = 4096          # chunk-size line incl. extensions
MAX_TRAILER = 16 * 1024        # all trailer lines together


def _without_possessives(pattern):
    """``pattern`` with its possessive quantifiers (``a++``, ``a*+``, ``a?+``, ``{m,n}+``) made
    greedy, for Pythons before 3.11 (the client runs on 3.9).  The same language: each possessive
    class here excludes what follows it, so a greedy match has nothing different to backtrack to."""
    text = pattern.decode("latin-1") if isinstance(pattern, bytes) else pattern
    out, i, opened, quantified = [], 0, -1, False     # opened: where the open class's "[" is
    while i < len(text):
        c = text[i]
        if c == "\\":
            out.append(text[i:i + 2])
            i, quantified = i + 2, False
            continue
        if opened >= 0:     # in a class: "]" first (after "[" or "[^") is a literal
            if c == "]" and i > opened + 1 and text[opened + 1:i] != "^":
                opened = -1
        elif c == "[":
            opened = i
        elif c == "+" and quantified:
            i, quantified = i + 1, False        # the possessive mark: dropped
            continue
        quantified = opened < 0 and (c in "*+}" or c == "?" and text[i - 1:i] != "(")
        out.append(c)
        i += 1
    joined = "".join(out)
    return joined.encode("latin-1") if isinstance(pattern, bytes) else joined


def _compile(pattern, flags: int = 0) -> re.Pattern:
    return re.compile(pattern if sys.version_info >= (3, 11) else _without_possessives(pattern), flags)


_REQUEST_LINE = _compile(r"([A-Z][A-Z0-9_-]{0,31}+) ([^\x00-\x20\x7f]++) (HTTP/1\.[01])\Z")
# The whole header block at once, in C: "name: value" lines, token names, no NUL/CR/LF in values.
# (Possessive quantifiers: each class excludes what follows it, so there is nothing to backtrack
# into, and the matcher keeps no backtracking points: about half the time per header.)
_HEADER_BLOCK = _compile(r"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]++:[^\r\n\x00]*+\r\n)*+\Z")
# RFC 9112 §7.1: chunk-size [ BWS ";" chunk-ext ] -- an extension needs its ";" ("5 x" is not one).
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[\x21-\x7e \t]*)?\Z")
_TRAILER_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\r\n\x00]*\Z")
# A Host value; group 1 is its name part (what ``RequestHead.host`` is made of).
_HOST = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+)(?::[0-9]{1,5})?\Z")


class HttpError(Exception):
    """A visitor sent something that isn't acceptable HTTP/1.1; ``status`` is the answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class RequestHead:
    """A parsed request head: request line, headers in order, body framing."""

    __slots__ = ("method", "target", "version", "_headers", "index", "body", "length", "size", "raw", "_host")

    def __init__(self, method: str, target: str, version: str, headers: list[tuple[str, str]] | None,
                 raw: bytes | None = None, index: dict[str, list[str]] | None = None):
        # headers None: split out of ``raw`` when asked for (the relay's hot path needs only ``index``)
        self.method, self.target, self.version, self._headers = method, target, version, headers
        self.raw = raw          # the head as received, without its blank line (None: built here)
        if index is None:
            index = {}
            for name, value in headers:
                index.setdefault(name.lower(), []).append(value)
        self.index = index      # values by lowercased name
        self.body = "none"      # "none", "length", "chunked" or "upgrade"
        self.length = 0
        self.size = 0           # bytes the head took on the wire
        self._host: str | None = None

    @property
    def headers(self) -> list[tuple[str, str]]:
        """The headers in order, as (name, value)."""
        if self._headers is None:
            text = self.raw.decode("latin-1") + "\r\n"
            self._headers = _split_headers(text, text.find("\r\n") + 2, pairs=True)[0]
        return self._headers

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
             replace: dict[str, str] | None = None, rendered: str = "") -> bytes:
        """Serialize, dropping headers named in ``remove``, replacing and appending some
        (``rendered``: header lines to append as they are, each "\r\nName: value")."""
        extra = rendered + "".join([f"\r\n{k}: {v}" for k, v in add]) if add else rendered
        if self.raw is not None and not replace:
            # The validated bytes as they came, less the dropped lines (one pass in C).
            raw = self.raw if self.index.keys().isdisjoint(remove) else _line_dropper(frozenset(remove)).sub(b"", self.raw)
            return b"".join((raw, extra.encode("latin-1"), b"\r\n\r\n"))
        replace = {k.lower(): v for k, v in (replace or {}).items()}
        lines = [f"{self.method} {self.target} {self.version}"]
        for k, v in self.headers:
            lk = k.lower()
            if lk in remove:
                continue
            lines.append(f"{k}: {replace.pop(lk)}" if lk in replace else f"{k}: {v}")
        lines.extend(f"{k}: {v}" for k, v in replace.items())
        return ("\r\n".join(lines) + extra + "\r\n\r\n").encode("latin-1")


@functools.lru_cache(maxsize=16)
def _line_dropper(names: frozenset) -> re.Pattern:
    """Matches each header line named in ``names`` (lowercase) with the CRLF before it.  Safe on
    a validated head only: there every line is "name:value" with no CR or LF inside, and the
    request line has no CRLF before it."""
    alternatives = b"|".join(re.escape(name.encode("latin-1")) for name in sorted(names))
    return _compile(rb"\r\n(?:" + alternatives + rb"):[^\r\n]*+", re.IGNORECASE)


def _split_headers(block: str, start: int = 0, pairs: bool = True) -> tuple[list[tuple[str, str]] | None,
                                                                           dict[str, list[str]]]:
    """``block[start:]``: header lines, each ending in CRLF; the headers in order (None unless
    ``pairs``), and by lowercased name."""
    if not _HEADER_BLOCK.match(block, start):
        if re.search(r"\r\n[ \t]", "\r\n" + block[start:]):
            raise HttpError(400, "obsolete header line folding is not accepted")
        raise HttpError(400, "malformed header line")
    headers = [] if pairs else None
    index: dict[str, list[str]] = {}
    for line in block[start:-2].split("\r\n") if len(block) > start else ():
        name, _, value = line.partition(":")
        value = value.strip(" \t")
        if pairs:
            headers.append((name, value))
        key = name.lower()
        if key in index:
            index[key].append(value)
        else:
            index[key] = [value]
    return headers, index


def parse_request_head(raw: bytes) -> RequestHead:
    """Parse a request head (up to and excluding the blank line) and decide its body framing."""
    text = raw.decode("latin-1") + "\r\n"
    end = text.find("\r\n")
    # The two patterns admit no CR, LF or NUL but each line's CRLF: no bare LF gets through.
    m = _REQUEST_LINE.match(text, 0, end)
    if not m:
        raise HttpError(400, "malformed request line")
    headers, index = _split_headers(text, end + 2, pairs=False)
    head = RequestHead(m.group(1), m.group(2), m.group(3), headers, raw, index)
    if head.method == "CONNECT":
        raise HttpError(405, "CONNECT is not supported")
    index = head.index
    hosts = index.get("host")
    host = _HOST.match(hosts[0]) if hosts and len(hosts) == 1 else None
    if host is None:
        raise HttpError(400, "exactly one valid Host header is required")
    head._host = host.group(1).lower().rstrip(".")   # what the host property makes of it
    lengths = {v.strip() for v in index["content-length"]} if "content-length" in index else None
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
    if "upgrade" in index and has_token(index.get("connection"), "upgrade"):
        head.body = "upgrade"
    return head


class ChunkedScanner:
    """Finds the end of a chunked body in a stream without copying the chunk data."""

    def __init__(self):
        self._state = "size"
        self._line = bytearray()
        self._remaining = 0
        self._trailer_bytes = 0
        self.data = 0           # chunk data bytes so far (the -v log's body size)

    def feed(self, data: bytes, pos: int = 0) -> int:
        """Scan ``data[pos:]``; return the index just past the body's end, or -1 if not there yet."""
        n = len(data)
        while pos < n:
            if self._state == "data":
                take = min(self._remaining, n - pos)
                pos += take
                self._remaining -= take
                self.data += take
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
            if len(self._line) < 2 or self._line[-2] != 13:
                raise HttpError(400, "chunked body line not ended by CRLF")
            line = bytes(self._line[:-2])
            self._line.clear()
            if b"\r" in line:
                raise HttpError(400, "bare CR in a chunked body line")
            if self._state == "data_crlf":
                if line:
                    raise HttpError(400, "missing CRLF after chunk data")
                self._state = "size"
            elif self._state == "size":
                m = _CHUNK_LINE.match(line)
                if m is None:
                    raise HttpError(400, "invalid chunk size line")
                self._remaining = int(m.group(1), 16)
                self._state = "data" if self._remaining else "trailer"
            else:  # trailer: field lines until an empty one (RFC 9112 §7.1.2), as strict as a head's
                if not line:
                    self._state = "size"
                    return pos
                if not _TRAILER_LINE.match(line):
                    raise HttpError(400, "malformed trailer line")
                self._trailer_bytes += len(line)
                if self._trailer_bytes > MAX_TRAILER:
                    raise HttpError(400, "trailer too large")
        return -1


# --- both directions: one message reader for request and response streams ---------------------

_STATUS_LINE = _compile(r"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: [\t !-~\x80-\xff]*+)?\Z")
END = "end"  # the event after a message's last body byte (or after a bodiless head)


class ResponseHead:
    """A parsed response head; ``raw`` is its exact bytes (blank line included).

    Only the framing headers are looked at for every response (``framing``); the whole
    header list is split out of ``raw`` on demand (``headers``, ``get``)."""

    __slots__ = ("status", "version", "raw", "framing", "body", "length", "keep_alive", "sets_cookies", "_index")

    def __init__(self, status: int, version: str, raw: bytes, framing: dict[str, list[str]]):
        self.status, self.version, self.raw, self.framing = status, version, raw, framing
        self.body = "none"      # "none", "length", "chunked", "close" (until the app closes) or "upgrade"
        self.length = 0
        self.keep_alive = version == "HTTP/1.1" and not has_token(framing.get("connection"), "close")
        self.sets_cookies = True  # may have a Set-Cookie header (parse_response_head knows)
        self._index: dict[str, list[str]] | None = None

    @property
    def headers(self) -> list[tuple[str, str]]:
        text = self.raw[:-2].decode("latin-1")
        return _split_headers(text, text.find("\r\n") + 2)[0]

    def get(self, name: str) -> str | None:
        if self._index is None:
            self._index = {}
            for k, v in self.headers:
                self._index.setdefault(k.lower(), []).append(v)
        values = self._index.get(name.lower())
        return values[0] if values else None


# A whole response head in one C pass, on its bytes: the status line and the header block
# (_STATUS_LINE and _HEADER_BLOCK joined; neither admits a CR, LF or NUL but a line's CRLF,
# so no bare LF gets through).
_RESPONSE_HEAD = _compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: [\t !-~\x80-\xff]*+)?\r\n"
                          rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]++:[^\r\n\x00]*+\r\n)*+\r\n\Z")
# The headers that decide a response's framing, found in the lowercased head in one pass (a
# validated head has no space before a colon and no CR or LF inside a value).  Their values
# are taken lowercased: digits, codings and connection tokens are all case-insensitive.
_FRAMING = re.compile(rb"\r\n(content-length|transfer-encoding|connection):([^\r]*)")
_FRAMING_NAMES = {name.encode(): name for name in ("content-length", "transfer-encoding", "connection")}


def has_token(values: list[str] | None, token: str) -> bool:
    """Whether a comma-separated header (all its ``values``) lists ``token`` (lowercase)."""
    if not values:
        return False
    joined = values[0].lower() if len(values) == 1 else ",".join(values).lower()
    return token in joined and any(t.strip() == token for t in joined.split(","))


def _no_bare_lf(raw) -> bool:
    return raw.count(b"\n") == raw.count(b"\r\n")


def parse_response_head(raw: bytes, head_only: bool, upgrade_asked: bool) -> ResponseHead:
    """Parse a response head (``raw`` ends with the blank line) and decide its body framing
    exactly as RFC 9112 §6.3 does; anything it forbids or leaves ambiguous is an HttpError
    (502): a response the relay can't delimit exactly is never forwarded as if it could."""
    m = _RESPONSE_HEAD.match(raw)
    if m is None:
        raise HttpError(502, _malformed_response_head(raw))
    lower = raw.lower()
    framing: dict[str, list[str]] = {}
    for name, value in _FRAMING.findall(lower):
        name, value = _FRAMING_NAMES[name], value.decode("latin-1").strip(" \t")
        if name in framing:
            framing[name].append(value)
        else:
            framing[name] = [value]
    head = ResponseHead(int(m.group(2)), "HTTP/1.0" if m.group(1) == b"0" else "HTTP/1.1", raw, framing)
    head.sets_cookies = b"\r\nset-cookie:" in lower
    index, status = framing, head.status
    if status == 101:
        if not upgrade_asked:
            raise HttpError(502, "the app switched protocols without being asked to")
        head.body, head.keep_alive = "upgrade", False
        return head
    lengths = index.get("content-length")
    te = index.get("transfer-encoding")
    if lengths and (len(lengths) != 1 or not _DIGITS.match(lengths[0])):
        raise HttpError(502, "the app sent a repeated or invalid Content-Length")
    if te and lengths:
        raise HttpError(502, "the app sent both Transfer-Encoding and Content-Length")
    if status < 200 or status in (204, 304) or head_only:
        return head   # no body, whatever the headers say
    if te:
        codings = [c.strip().lower() for v in te for c in v.split(",")]
        if codings[-1] == "chunked" and codings.count("chunked") == 1:
            head.body = "chunked"
        elif "chunked" in codings:
            raise HttpError(502, "the app sent an invalid Transfer-Encoding")
        else:
            head.body, head.keep_alive = "close", False
    elif lengths:
        head.length = int(lengths[0])
        head.body = "length" if head.length else "none"
    else:
        head.body, head.keep_alive = "close", False
    return head


def _malformed_response_head(raw: bytes) -> str:
    """Why a response head failed validation (the slow path: only for a refused head)."""
    if not _no_bare_lf(raw) or b"\r\r" in raw or b"\x00" in raw:
        return "the app's response head has a bare LF, CR or NUL"
    text = raw[:-2].decode("latin-1")
    end = text.find("\r\n")
    if not _STATUS_LINE.match(text, 0, end):
        return "the app sent a malformed status line"
    return "the app sent a malformed header line"


_DIGITS = re.compile(r"[0-9]{1,18}\Z")


class MessageReader:
    """Delimits the messages of one direction of a connection, one message at a time.

    ``feed(data)`` returns ``(events, rest)``: events are a head (``RequestHead`` or
    ``ResponseHead``), body ``bytes`` (slices of the input, never decoded) and ``END``;
    parsing stops after a request head and after a message's ``END`` (and after a 101),
    leaving ``rest`` unparsed for the caller to feed again when it is ready for
    the next message.  So memory is one head (``max_head``) plus what the caller holds.
    Interim (1xx) responses are heads followed by ``END``-less continuation: the final
    response comes next in the same message.  Raises ``HttpError`` on anything RFC 9112
    forbids; the reader is unusable afterwards.
    """

    __slots__ = ("side", "max_head", "_buf", "_mode", "_remaining", "_chunks", "head_only", "upgrade_asked")

    def __init__(self, side: str, max_head: int):
        self.side = side                  # "request" or "response"
        self.max_head = max_head
        self._buf = bytearray()
        self._mode = "head"               # head, length, chunked, close, raw
        self._remaining = 0
        self._chunks: ChunkedScanner | None = None
        self.head_only = False            # response side: the request was HEAD
        self.upgrade_asked = False        # response side: the request asked to upgrade

    @property
    def between_messages(self) -> bool:
        return self._mode == "head" and not self._buf

    @property
    def partial_head(self) -> bool:
        return self._mode == "head" and bool(self._buf)

    @property
    def chunk_data(self) -> int:
        """Chunk data bytes of the current (or the last) chunked body, its chunk lines not counted."""
        return self._chunks.data if self._chunks is not None else 0

    @property
    def body_left(self) -> int:
        """Bytes of a Content-Length body still to come (0 otherwise)."""
        return self._remaining if self._mode == "length" else 0

    def skip_body(self, n: int) -> bool:
        """``n`` body bytes went by unseen (the kernel moved them); True: the message ended."""
        if self._mode != "length" or n > self._remaining:
            raise ValueError("skip_body past the body")
        self._remaining -= n
        if self._remaining:
            return False
        self._mode = "head"
        return True

    def feed(self, data) -> tuple[list, bytes]:
        events: list = []
        pos, n = 0, len(data)
        while pos < n:
            mode = self._mode
            if mode == "head":   # first: every message starts here (the usual case in one read)
                end = -1 if self._buf or data[pos] in (13, 10) else data.find(b"\r\n\r\n", pos, pos + self.max_head)
                if end > 0:   # a whole head in this read (no stray CRLF before it)
                    raw = data[pos:end + 4] if pos or end + 4 < n else data
                    if type(raw) is not bytes:
                        raw = bytes(raw)
                    head = self._parse(raw) if self.side == "request" else \
                        parse_response_head(raw, self.head_only, self.upgrade_asked)
                    pos = end + 4
                else:
                    head, pos = self._head(data, pos)
                    if head is None:
                        break
                events.append(head)
                if head.body == "length":   # (what _start_body does for it, without the call)
                    self._mode, self._remaining = "length", head.length
                    if self.side == "request":
                        break   # a request's body waits until its head is routed
                elif self._start_body(head, events) or self.side == "request":
                    break
                continue
            if mode == "length":
                remaining = self._remaining
                take = n - pos if n - pos < remaining else remaining
                events.append(data if take == n else data[pos:pos + take])
                pos += take
                self._remaining = remaining - take
                if take == remaining:
                    self._mode = "head"
                    events.append(END)
                    break
                continue
            if mode == "chunked":
                try:
                    end = self._chunks.feed(data, pos)
                except HttpError as e:
                    if self.side == "response":   # the app's fault, like a bad response head
                        raise HttpError(502, e.message) from None
                    raise
                stop = n if end < 0 else end
                events.append(data if (pos == 0 and stop == n) else data[pos:stop])
                pos = stop
                if end >= 0:
                    self._mode = "head"
                    events.append(END)
                    break
                continue
            # close, raw
            events.append(data if pos == 0 else data[pos:])
            pos = n
            break
        return events, (b"" if pos >= n else bytes(data[pos:]))

    def eof(self) -> bool:
        """The peer closed: True when that ends a read-until-close message cleanly."""
        return self._mode == "close"

    def _head(self, data, pos: int):
        if not self._buf and self.side == "request":
            while pos < len(data) and data[pos] in (13, 10):  # stray CRLF between requests (RFC 9112 §2.2)
                pos += 1
        limit = self.max_head
        if not self._buf:   # the usual case: a whole head in one read, sliced out with no buffer
            end = data.find(b"\r\n\r\n", pos, pos + limit)
            if end >= 0:
                return self._parse(bytes(data[pos:end + 4])), end + 4
        start = max(0, len(self._buf) - 3)
        self._buf += data[pos:] if pos else data
        end = self._buf.find(b"\r\n\r\n", start)
        if end < 0:
            if len(self._buf) > limit:
                raise HttpError(431 if self.side == "request" else 502, "head too large")
            if not _no_bare_lf(self._buf[:-1]) or b"\n\n" in self._buf:
                raise HttpError(400 if self.side == "request" else 502, "bare LF in a head")
            return None, len(data)
        if end + 4 > limit:
            raise HttpError(431 if self.side == "request" else 502, "head too large")
        consumed = end + 4 - (len(self._buf) - (len(data) - pos))
        raw = bytes(self._buf[:end + 4])
        self._buf.clear()
        return self._parse(raw), pos + consumed

    def _parse(self, raw: bytes):
        if self.side == "request":
            head = parse_request_head(raw[:-4])
            head.size = len(raw)
            if head.body == "upgrade" and (head.version != "HTTP/1.1" or head.length or
                                           "transfer-encoding" in head.index):
                # An upgrade request's content is part of its HTTP/1.1 message (what h11 reads,
                # RFC 7540 §3.2); taken as the new protocol's first bytes, it would be parsed as a
                # request of its own after a refusal.  Such an Upgrade is ignored (RFC 9110 §7.8
                # lets a server; for HTTP/1.0 it must): a plain request, and a 101 to it is refused.
                head.body = "chunked" if "transfer-encoding" in head.index else \
                    "length" if head.length else "none"
            return head
        return parse_response_head(raw, self.head_only, self.upgrade_asked)

    def _start_body(self, head, events: list) -> bool:
        """Set up ``head``'s body; True when parsing must stop here (message over, or raw)."""
        body = head.body
        if body == "length":
            self._mode, self._remaining = "length", head.length
            return False
        if body == "chunked":
            self._mode, self._chunks = "chunked", ChunkedScanner()
            return False
        if body == "close":
            self._mode = "close"
            return False
        if body == "upgrade":
            if self.side == "response":
                self._mode = "raw"      # 101: raw bytes from here on
                return True
            events.append(END)          # an upgrade request: what follows waits for the answer
            return True
        if self.side == "response" and head.status < 200:
            return False                # interim: the final response follows
        events.append(END)
        return True

    def expect_body(self, head: RequestHead) -> None:
        """``head`` was read elsewhere (the relay's dispatcher): its body comes next."""
        self._start_body(head, [])

    def after_upgrade_refused(self) -> None:
        """Request side: the app answered an upgrade request normally: parse HTTP again."""
        self._mode = "head"

    def switch_to_raw(self) -> None:
        self._mode = "raw"
