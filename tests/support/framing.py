"""Three HTTP/1.1 framing readers behind one interface, for the framing tests.

``read_mr`` (the relay's ``intunnel.wire.http1.MessageReader``), ``read_h11`` and
``read_httptools`` all take a byte stream of requests (``side="request"``) or
responses (``side="response"``, with ``asked``: per response, the request's method
and whether it asked to upgrade) and say where each message's head and body end.
Offsets are into the stream; bodies are measured on the wire (chunk lines included),
so the three are compared on framing alone, never on decoding.

``Outcome.stop`` says how reading ended after the last complete message:
  "clean"    every byte belongs to a complete message
  "partial"  a message is incomplete: it extends past the end of the bytes
  "close"    the last message's body is read until the connection closes
  "raw"      an upgrade (request) or a 101 (response): what follows is another protocol
  "closing"  the reader won't read more messages on this connection (keep-alive off)
  "extra"    responses beyond ``asked`` (nobody asked for them)
  "error"    the reader rejected the message after the last complete one
"""

from __future__ import annotations

from dataclasses import dataclass, field

import h11
import httptools

from intunnel.wire.http1 import END, HttpError, MessageReader

MAX_HEAD = 64 * 1024


@dataclass(frozen=True)
class Message:
    kind: str        # "request", "interim" (1xx, 101 included) or "response" (final)
    code: object     # the method (str) or the status (int)
    head_end: int    # offset just past the head's blank line
    end: int         # offset just past the message's last byte


@dataclass
class Outcome:
    messages: list[Message] = field(default_factory=list)
    stop: str = "clean"
    at: int = 0      # "raw": where the other protocol begins; "error": the message's start
    why: str = ""
    status: int = 0  # MessageReader's HttpError status

    def stopped(self, stop: str, at: int, why: str = "", status: int = 0) -> "Outcome":
        self.stop, self.at, self.why, self.status = stop, at, why, status
        return self


def _pieces(data: bytes, cuts) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)])] or [b""]


def stream(side: str, *parts) -> tuple[bytes, list[Message]]:
    """Bytes and the messages a reader must find in them: ``parts`` are ``(head, body)``
    pairs, one a message, or plain bytes between messages (stray CRLF, bytes after a switch)."""
    data, messages = b"", []
    for part in parts:
        if isinstance(part, bytes):
            data += part
            continue
        head, body = part
        start = len(data)
        data += head + body
        first = head.split(b"\r\n", 1)[0].split(b" ", 2)
        if side == "request":
            kind, code = "request", first[0].decode()
        else:
            code = int(first[1])
            kind = "interim" if code < 200 else "response"
        messages.append(Message(kind, code, start + len(head), len(data)))
    return data, messages


# --- the relay's reader -----------------------------------------------------------------------
def read_mr(side: str, data: bytes, asked=(), cuts=(), max_head: int = MAX_HEAD) -> Outcome:
    """MessageReader, fed ``data`` cut at ``cuts``, the caller feeding ``rest`` again as the
    relay does; the response side sets ``head_only``/``upgrade_asked`` from ``asked``."""
    out = Outcome()
    reader = MessageReader(side, max_head)
    consumed = 0           # offset of the first byte not handed to the reader yet
    pos = 0                # response side: offset just past the last event (no bytes are skipped)
    head = head_end = None
    pending = b""
    for piece in _pieces(data, cuts):
        pending += piece
        while pending:
            if side == "response" and head is None and reader.between_messages:
                finals = sum(m.kind == "response" for m in out.messages)
                if finals >= len(asked):
                    return out.stopped("extra", consumed)
                reader.head_only = asked[finals][0] == "HEAD"
                reader.upgrade_asked = asked[finals][1]
            try:
                events, rest = reader.feed(pending)
            except HttpError as e:
                return out.stopped("error", out.messages[-1].end if out.messages else 0, e.message, e.status)
            consumed += len(pending) - len(rest)
            pending = rest
            for ev in events:
                if ev is END:   # always the last event of a feed: the reader stops there
                    if side == "request":
                        out.messages.append(Message("request", head.method, head_end, consumed))
                        if head.body == "upgrade":
                            return out.stopped("raw", consumed)
                    else:
                        out.messages.append(Message("response", head.status, head_end, consumed))
                    pos, head = consumed, None
                elif isinstance(ev, (bytes, bytearray, memoryview)):
                    pos += len(ev)
                elif side == "request":
                    head, head_end = ev, consumed    # the reader stops after a request head
                else:
                    pos += len(ev.raw)
                    if ev.status < 200:
                        out.messages.append(Message("interim", ev.status, pos, pos))
                        if ev.status == 101:
                            return out.stopped("raw", pos)
                    else:
                        head, head_end = ev, pos
            if not events:
                break   # a head is still arriving
    if head is not None and reader.eof():
        out.messages.append(Message("response", head.status, head_end, len(data)))
        return out.stopped("close", len(data))
    if head is not None or not reader.between_messages or pending:
        return out.stopped("partial", out.messages[-1].end if out.messages else 0)
    return out


# --- h11 ----------------------------------------------------------------------------------------
def _h11_request(method: str, upgrade: bool) -> h11.Request:
    headers = [("Host", "a.example")]
    if upgrade:
        headers += [("Connection", "Upgrade"), ("Upgrade", "websocket")]
    return h11.Request(method=method, target="/", headers=headers)


def read_h11(side: str, data: bytes, asked=(), max_head: int = MAX_HEAD) -> Outcome:
    """h11 as the server (requests) or as the client that sent ``asked`` (responses)."""
    out = Outcome()
    conn = h11.Connection(h11.SERVER if side == "request" else h11.CLIENT,
                          max_incomplete_event_size=max_head)
    finals = 0
    if side == "response":
        if not asked:
            return out.stopped("extra" if data else "clean", 0)
        conn.send(_h11_request(*asked[0]))
        conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    offset = lambda: len(data) - len(conn.trailing_data[0])   # noqa: E731
    start = head_end = 0
    code = None
    eof_sent = False
    while True:
        try:
            ev = conn.next_event()
        except h11.RemoteProtocolError as e:
            if eof_sent:   # h11 says "the peer closed mid-message": the message goes on
                done = code is None and start == offset() == len(data)
                return out.stopped("clean" if done else "partial", start)
            return out.stopped("error", start, str(e))
        if ev is h11.NEED_DATA:
            if side == "request" or eof_sent:
                return out.stopped("partial" if offset() < len(data) or code is not None else "clean", start)
            conn.receive_data(b"")    # the end of the responses: ends a read-until-close body
            eof_sent = True
            continue
        if ev is h11.PAUSED or type(ev) is h11.ConnectionClosed:
            return out.stopped("clean" if offset() == len(data) else "closing", offset())
        if type(ev) is h11.Request:
            code, head_end = ev.method.decode(), offset()
        elif type(ev) is h11.InformationalResponse:
            out.messages.append(Message("interim", ev.status_code, offset(), offset()))
            start = offset()
            if ev.status_code == 101:
                return out.stopped("raw", offset())
        elif type(ev) is h11.Response:
            code, head_end = ev.status_code, offset()
        elif type(ev) is h11.EndOfMessage:
            kind = "request" if side == "request" else "response"
            out.messages.append(Message(kind, code, head_end, offset()))
            start, code = offset(), None
            if side == "request":
                if conn.their_state is h11.MIGHT_SWITCH_PROTOCOL:
                    return out.stopped("raw", offset())
                conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                conn.send(h11.EndOfMessage())
            else:
                if eof_sent:   # only the end of the stream ended it: read until close
                    return out.stopped("close", len(data))
                finals += 1
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return out.stopped("closing", offset())
            conn.start_next_cycle()
            if side == "response":
                if finals >= len(asked):
                    return out.stopped("extra" if offset() < len(data) else "clean", offset())
                conn.send(_h11_request(*asked[finals]))
                conn.send(h11.EndOfMessage())
            # h11 waits for a response to each request before reading the next: data is buffered


# --- httptools (llhttp) -------------------------------------------------------------------------
class _Calls:
    def __init__(self):
        self.headers_done = self.message_done = False
        self.parser = None
        self.keep_alive = True

    def on_headers_complete(self):
        self.headers_done = True
        self.keep_alive = self.parser.should_keep_alive()   # reset once the message is complete

    def on_message_complete(self):
        self.message_done = True


# httptools raises this HttpParserError instead of HttpParserUpgrade for a 101 that isn't the
# connection's first response (llhttp's HPE_PAUSED_UPGRADE, with its ``upgrade`` flag not seen).
UPGRADE_PAUSE = "Pause on CONNECT/Upgrade"


def read_httptools(side: str, data: bytes, asked=()) -> Outcome:
    """llhttp, fed one byte at a time so each callback shows its exact offset.

    httptools can't be told that a response answers a HEAD request (MagicStack/httptools#47):
    such a response ends with its head, so the stream is cut there and a fresh parser
    reads on (what the client's exchange log does).  llhttp has no end-of-stream call
    here: a read-until-close body stays "partial"."""
    out = Outcome()
    make = httptools.HttpRequestParser if side == "request" else httptools.HttpResponseParser
    calls = _Calls()
    parser = calls.parser = make(calls)
    start = head_end = finals = 0
    code, cut = None, False
    for i in range(len(data)):
        if side == "response" and finals >= len(asked) and not calls.headers_done and start == i:
            return out.stopped("extra", i)
        try:
            try:
                parser.feed_data(data[i:i + 1])
            except httptools.HttpParserError as e:
                if str(e) != UPGRADE_PAUSE:
                    raise
                raise httptools.HttpParserUpgrade(1) from None
        except httptools.HttpParserUpgrade as e:
            code = parser.get_method().decode() if side == "request" else parser.get_status_code()
            kind = "request" if side == "request" else "interim"
            end = i + int(e.args[0]) if e.args else i + 1
            out.messages.append(Message(kind, code, head_end or end, end))
            return out.stopped("raw", end)
        except httptools.HttpParserError as e:
            return out.stopped("error", start, str(e))
        if calls.headers_done and not head_end:
            head_end = i + 1
            code = parser.get_method().decode() if side == "request" else parser.get_status_code()
            cut = side == "response" and code >= 200 and asked[finals][0] == "HEAD"
            if cut:   # no body, whatever the headers say: a fresh parser reads what follows
                calls.message_done, parser = True, make(calls)
                calls.parser = parser
        if calls.message_done:
            kind = "request" if side == "request" else "interim" if code < 200 else "response"
            out.messages.append(Message(kind, code, head_end, i + 1))
            finals += kind == "response"
            start, head_end = i + 1, 0
            calls.headers_done = calls.message_done = False
            if not calls.keep_alive:
                return out.stopped("closing", i + 1)
    if head_end or start < len(data):
        return out.stopped("partial", start)
    return out
