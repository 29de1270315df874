"""Request heads on the relay (pure): parsing, rewriting, smuggling guards.  Framing of whole
streams, both directions: test_framing.py and test_framing_differential.py."""

from __future__ import annotations

import pytest

from intunnel.wire.http1 import HttpError, parse_request_head


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
