"""The inspector's capture (client/inspect/capture.py), pure: fed a connection's two directions,
it records each exchange; any split of the same bytes records the same."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from intunnel.client.inspect import capture, views
from intunnel.client.inspect.capture import Capture, Store

XFF = "X-Forwarded-For: 203.0.113.9\r\n"


def req(line: str, headers: str = "", body: bytes = b"") -> bytes:
    return f"{line} HTTP/1.1\r\nHost: app.example\r\n{XFF}{headers}\r\n".encode() + body


def resp(status: str, headers: str = "", body: bytes = b"") -> bytes:
    return f"HTTP/1.1 {status}\r\n{headers}\r\n".encode() + body


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def run(up: list, down: list, limit: int = 64 * 1024, close: bool = True, **store_kw) -> Store:
    """Interleave: all request bytes first, then response bytes (the order a real exchange has)."""
    store = Store(body_limit=limit, **store_kw)
    cap = Capture(store)
    for piece in up:
        cap.requests(piece)
    for piece in down:
        cap.responses(piece)
    if close:
        cap.closed()
    return store


CASES = [
    # name, request bytes, response bytes, expected (method, target, status, req size, resp size, state)
    ("get with query", req("GET /a?b=1&c=2"), resp("200 OK", "Content-Length: 5\r\n", b"hello"),
     [("GET", "/a?b=1&c=2", 200, 0, 5, "done")]),
    ("json post", req("POST /hook", "Content-Type: application/json\r\nContent-Length: 7\r\n", b'{"a":1}'),
     resp("201 Created", "Content-Length: 0\r\n"), [("POST", "/hook", 201, 7, 0, "done")]),
    ("chunked both ways", req("PUT /up", "Transfer-Encoding: chunked\r\n", chunked(b"abc", b"de")),
     resp("200 OK", "Transfer-Encoding: chunked\r\n", chunked(b"x" * 10)),
     [("PUT", "/up", 200, 5, 10, "done")]),
    ("head", req("HEAD /h"), resp("200 OK", "Content-Length: 99\r\n"), [("HEAD", "/h", 200, 0, 0, "done")]),
    ("304", req("GET /c"), resp("304 Not Modified", "Content-Length: 12\r\n"), [("GET", "/c", 304, 0, 0, "done")]),
    ("keep-alive pair", req("GET /1") + req("GET /2"),
     resp("200 OK", "Content-Length: 1\r\n", b"a") + resp("404 Not Found", "Content-Length: 2\r\n", b"no"),
     [("GET", "/2", 404, 0, 2, "done"), ("GET", "/1", 200, 0, 1, "done")]),
    ("interim 100", req("POST /e", "Expect: 100-continue\r\nContent-Length: 2\r\n", b"hi"),
     resp("100 Continue") + resp("200 OK", "Content-Length: 2\r\n", b"ok"), [("POST", "/e", 200, 2, 2, "done")]),
    ("read until close", req("GET /stream"), resp("200 OK", "", b"0123456789"),
     [("GET", "/stream", 200, 0, 10, "done")]),
    ("upgrade", req("GET /ws", "Connection: Upgrade\r\nUpgrade: websocket\r\n") + b"\x81\x01a",
     resp("101 Switching Protocols", "Connection: Upgrade\r\nUpgrade: websocket\r\n", b"\x81\x02ok"),
     [("GET", "/ws", 101, 0, 0, "done")]),
    ("upgrade refused, then http", req("GET /ws", "Connection: Upgrade\r\nUpgrade: websocket\r\n") + req("GET /n"),
     resp("400 Bad Request", "Content-Length: 0\r\n") + resp("200 OK", "Content-Length: 0\r\n"),
     [("GET", "/n", 200, 0, 0, "done"), ("GET", "/ws", 400, 0, 0, "done")]),
    ("no response before close", req("GET /slow"), b"", [("GET", "/slow", 0, 0, 0, "closed")]),
    # heads the quick look takes or leaves to the reader (capture._quick_request, _quick_response)
    ("lowercase framing, no reason phrase", req("POST /l", "content-length: 3\r\n", b"abc"),
     b"HTTP/1.1 200\r\ncontent-length: 2\r\n\r\nok", [("POST", "/l", 200, 3, 2, "done")]),
    ("204 and an empty length", req("DELETE /d") + req("GET /e", "Content-Length: 0\r\n"),
     resp("204 No Content") + resp("200 OK", "Content-Length: 0\r\n"),
     [("GET", "/e", 200, 0, 0, "done"), ("DELETE", "/d", 204, 0, 0, "done")]),
    ("HTTP/1.0 answer until close", req("GET /old"), b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nold",
     [("GET", "/old", 200, 0, 3, "done")]),
    ("a repeated length is refused", req("GET /r"),
     resp("200 OK", "Content-Length: 1\r\nContent-Length: 1\r\n", b"a"), [("GET", "/r", 0, 0, 0, "lost")]),
    ("a body bigger than a read", req("PUT /b", "Content-Length: 9\r\n", b"12") + b"3456789",
     resp("200 OK", "Content-Length: 4\r\n", b"ab") + b"cd", [("PUT", "/b", 200, 9, 4, "done")]),
]


def shape(store: Store) -> list:
    return [(r.method, r.target, r.status, r.request.size, r.response.size, r.state) for r in store.records()]


@pytest.mark.parametrize("name,up,down,expected", CASES, ids=[c[0] for c in CASES])
def test_cases(name, up, down, expected):
    store = run([up], [down] if down else [])
    assert shape(store) == expected
    for record in store.records():
        assert record.remote == "203.0.113.9"
        assert record.request_head.startswith(f"{record.method} {record.target} HTTP/1.1\r\n")


def test_upgrade_counts_raw_bytes_both_ways():
    store = run([req("GET /ws", "Connection: Upgrade\r\nUpgrade: websocket\r\n") + b"abc", b"defg"],
                [resp("101 Switching Protocols", "Connection: Upgrade\r\nUpgrade: websocket\r\n", b"xy"), b"z"])
    (record,) = store.records()
    assert record.upgraded and (record.raw_up, record.raw_down) == (7, 3)
    assert record.duration is not None
    assert views.summary(record)["upgrade"] == {"protocol": "websocket", "bytes_in": 7, "bytes_out": 3,
                                                "open": False}


def test_body_limit_keeps_the_first_bytes_and_counts_the_rest():
    body = bytes(range(256)) * 40   # 10240
    store = run([req("POST /big", f"Content-Length: {len(body)}\r\n", body)],
                [resp("200 OK", f"Content-Length: {len(body)}\r\n", body)], limit=1000)
    (record,) = store.records()
    assert bytes(record.request.kept) == body[:1000] and record.request.size == len(body)
    assert bytes(record.response.kept) == body[:1000] and record.response.size == len(body)
    assert record.request.truncated and record.response.truncated
    detail = views.summary(record, detail=True)
    assert detail["request"]["body"]["kept"] == 1000 and detail["request"]["body"]["size"] == 10240


def test_chunked_body_is_shown_dechunked():
    store = run([req("POST /c", "Transfer-Encoding: chunked\r\n", chunked(b'{"a":', b"1}"))],
                [resp("200 OK", "Content-Length: 0\r\n")])
    import base64
    (record,) = store.records()
    assert base64.b64decode(views.summary(record, True)["request"]["body"]["data"]) == b'{"a":1}'


def test_store_keeps_the_last_exchanges():
    up = b"".join(req(f"GET /{i}") for i in range(30))
    down = resp("200 OK", "Content-Length: 0\r\n") * 30
    store = run([up], [down], max_exchanges=10)
    assert [r.target for r in store.records()] == [f"/{i}" for i in range(29, 19, -1)]


def test_store_body_budget_drops_the_oldest():
    body = b"x" * 1000
    up = b"".join(req(f"POST /{i}", "Content-Length: 1000\r\n", body) for i in range(10))
    down = resp("200 OK", "Content-Length: 0\r\n") * 10
    one = run([req("POST /0", "Content-Length: 1000\r\n", body)], [resp("200 OK", "Content-Length: 0\r\n")])
    per = one.records()[0].held          # the body and both heads
    assert per > 1000 and one.body_bytes == per
    store = run([up], [down], max_body_bytes=3 * per + per // 2)
    assert store.body_bytes <= 3 * per + per // 2
    assert [r.target for r in store.records()] == ["/9", "/8", "/7"]


def test_clear_and_a_dropped_record_copies_nothing_more():
    store = Store(body_limit=100)
    cap = Capture(store)
    cap.requests(req("POST /x", "Content-Length: 50\r\n", b"a" * 10))
    (record,) = store.records()
    store.clear()
    cap.requests(b"b" * 40)
    assert store.records() == [] and store.body_bytes == 0 and len(record.request.kept) == 10


def test_garbage_from_the_app_stops_the_capture_quietly():
    store = run([req("GET /")], [b"NOT HTTP\r\n\r\n"])
    assert shape(store) == [("GET", "/", 0, 0, 0, "lost")]


def test_filters():
    store = run([req("GET /a?x=1") + req("POST /b", "Content-Length: 0\r\n")],
                [resp("200 OK", "Content-Length: 0\r\n") + resp("503 No", "Content-Length: 0\r\n")])
    a, b = store.records()[::-1]
    assert views.matches(a, "/a", None, None) and not views.matches(b, "/a", None, None)
    assert views.matches(b, None, "post", "5xx") and not views.matches(b, None, None, "503x")
    assert views.matches(a, None, "GET", "200") and views.matches(a, None, None, "2xx")
    assert not views.matches(a, None, None, "404")


def splits(data: bytes, cuts: list) -> list:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points + [len(data)]:
        pieces.append(data[last:p])
        last = p
    return [p for p in pieces if p]


def full(store: Store) -> list:
    return [(r.method, r.target, r.status, r.request.size, bytes(r.request.kept), r.response.size,
             bytes(r.response.kept), r.request_head, r.response_head, r.state, r.upgraded, r.raw_up, r.raw_down,
             r.interim) for r in store.records()]


@settings(max_examples=150, deadline=None)
@given(case=st.sampled_from(CASES), up_cuts=st.lists(st.integers(0, 10_000), max_size=8),
       down_cuts=st.lists(st.integers(0, 10_000), max_size=8), limit=st.sampled_from([3, 8, 64 * 1024]))
def test_any_split_records_the_same(case, up_cuts, down_cuts, limit):
    _, up, down, _ = case
    whole = run([up], [down] if down else [], limit=limit)
    split = run(splits(up, up_cuts), splits(down, down_cuts) if down else [], limit=limit)
    assert full(split) == full(whole)


@pytest.mark.parametrize("name,up,down,expected", CASES, ids=[c[0] for c in CASES])
def test_the_quick_look_records_what_the_reader_does(name, up, down, expected, monkeypatch):
    """A whole head at the start of a read is delimited by a look at its framing headers, not
    parsed: with that turned off (every message through http1.MessageReader) the same is recorded."""
    quick = run([up], [down] if down else [])
    monkeypatch.setattr(capture, "_quick_request", lambda data: None)
    monkeypatch.setattr(capture, "_quick_response", lambda data, head_only: None)
    strict = run([up], [down] if down else [])
    assert full(quick) == full(strict) and [r.held for r in quick.records()] == [r.held for r in strict.records()]


@pytest.mark.parametrize("side", ["request", "response"])
def test_a_body_past_the_limit_may_go_by_unseen(side):
    store = Store(body_limit=10)
    cap = Capture(store)
    body = b"b" * 1000
    if side == "request":
        cap.requests(req("POST /up", "Content-Length: 1000\r\n", body[:4]))
        assert cap.unseen("request") == 0           # the kept part isn't full yet
        cap.requests(body[4:30])
        assert cap.unseen("request") == 970
        cap.moved("request", 970)
        assert cap.unseen("request") == 0
        cap.responses(resp("200 OK", "Content-Length: 0\r\n"))
    else:
        cap.requests(req("GET /down"))
        assert cap.unseen("response") == 0          # no response head yet
        cap.responses(resp("200 OK", "Content-Length: 1000\r\n", body[:50]))
        assert cap.unseen("response") == 950
        cap.moved("response", 950)
    (record,) = store.records()
    part = record.request if side == "request" else record.response
    assert (part.size, bytes(part.kept), record.state) == (1000, b"b" * 10, "done")
    assert cap.unseen("request") == cap.unseen("response") == 0


def test_heads_count_against_the_byte_budget():
    big = "X-Pad: " + "p" * 5000 + "\r\n"
    up = b"".join(req(f"GET /{i}", big) for i in range(10))
    down = resp("200 OK", "Content-Length: 0\r\n") * 10
    store = run([up], [down], max_body_bytes=12_000)
    assert store.body_bytes <= 12_000 and [r.target for r in store.records()] == ["/9", "/8"]


@pytest.mark.parametrize("xff,visitor", [("203.0.113.9", "203.0.113.9"),
                                         ("203.0.113.9, 127.0.0.1", "203.0.113.9"),           # behind nginx
                                         ("6.6.6.6, 203.0.113.9, 127.0.0.1", "203.0.113.9")])  # written by the visitor
def test_the_visitor_address_is_the_one_the_relay_forwards(xff, visitor):
    store = Store()
    Capture(store).requests(f"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: {xff}\r\n\r\n".encode())
    assert store.records()[0].remote == visitor
