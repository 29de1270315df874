"""Request framing on the relay (pure): heads, bodies, chunked, limits, smuggling guards."""

from __future__ import annotations

import pytest

from intunnel.wire.http1 import HttpError, RequestStream, parse_request_head


def feed_bytewise(stream, data):
    events = []
    for i in range(len(data)):
        events += stream.feed(data[i:i + 1])
    return events


def squash(events):
    """Heads as (method, host, body kind); adjacent body bytes joined."""
    out = []
    for e in events:
        if isinstance(e, (bytes, bytearray)):
            if out and isinstance(out[-1], bytes):
                out[-1] += e
            else:
                out.append(bytes(e))
        else:
            out.append((e.method, e.host, e.body))
    return out


PIPELINE = (b"POST /a HTTP/1.1\r\nHost: a.localhost:8080\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\n"
            b"PUT /b HTTP/1.1\r\nHost: B.localhost.\r\nContent-Length: 3\r\n\r\nxyz"
            b"\r\nGET /ws HTTP/1.1\r\nHost: a.localhost\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n"
            b"GET /not-a-request HTTP/1.1\r\n\r\n")
EXPECTED = [("POST", "a.localhost", "chunked"), b"5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\n",
            ("PUT", "b.localhost", "length"), b"xyz",
            ("GET", "a.localhost", "upgrade"), b"GET /not-a-request HTTP/1.1\r\n\r\n"]


def test_pipeline_split_into_heads_and_untouched_bodies():
    assert squash(RequestStream(4096).feed(PIPELINE)) == EXPECTED


def test_framing_does_not_depend_on_how_bytes_arrive():
    assert squash(feed_bytewise(RequestStream(4096), PIPELINE)) == EXPECTED


def test_head_rewrite_keeps_order_and_replaces_forwarded_headers():
    head = parse_request_head(b"GET /x HTTP/1.1\r\nHost: a.localhost\r\nX-Forwarded-For: 6.6.6.6\r\nAccept: */*")
    wire = head.wire(remove=("x-forwarded-for",), add=[("X-Forwarded-For", "1.2.3.4")],
                     replace={"host": "127.0.0.1:3000"})
    assert wire == (b"GET /x HTTP/1.1\r\nHost: 127.0.0.1:3000\r\nAccept: */*\r\n"
                    b"X-Forwarded-For: 1.2.3.4\r\n\r\n")


@pytest.mark.parametrize("raw, status", [
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked", 400),  # smuggling
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip", 501),
    (b"GET / HTTP/1.1\r\nHost: a\r\n folded", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x", 400),
    (b"GET / HTTP/1.1", 400),  # no Host
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b", 400),
    (b"GET / HTTP/2.0\r\nHost: a", 400),
    (b"GET /\x01 HTTP/1.1\r\nHost: a", 400),
    (b"CONNECT a:443 HTTP/1.1\r\nHost: a", 405),
    (b"\x16\x03\x01garbage", 400),
])
def test_bad_heads_get_an_http_status(raw, status):
    with pytest.raises(HttpError) as e:
        parse_request_head(raw)
    assert e.value.status == status


def test_oversized_head_is_431_even_without_its_end():
    stream = RequestStream(1024)
    with pytest.raises(HttpError) as e:
        for _ in range(100):
            stream.feed(b"X-Filler: " + b"a" * 100 + b"\r\n")
    assert e.value.status == 431


def test_bad_chunk_size_is_refused():
    stream = RequestStream(1024)
    with pytest.raises(HttpError):
        stream.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
