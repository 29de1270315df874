"""The relay's message reader (``http1.MessageReader``) in both directions, as tables.

Each row is a byte stream and what the reader must make of it: where every message's
head and body end, and how reading stops (``tests/support/framing.py`` says what the
stops mean).  Then the rejections RFC 9112 requires, for requests (400/431/501) and for
responses (502), and the same outcome however the bytes are split across ``feed`` calls.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intunnel.wire.http1 import HttpError, MessageReader
from tests.support.framing import read_mr, stream


def head(first: str, *headers: str) -> bytes:
    return (first + "\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode("latin-1")


def req(method: str, *headers: str, version: str = "HTTP/1.1") -> bytes:
    return head(f"{method} /p?q=1 {version}", "Host: a.example", *headers)


def resp(status: str, *headers: str) -> bytes:
    return head(f"HTTP/1.1 {status}", *headers)


GET = (req("GET"), b"")
CHUNKED = "Transfer-Encoding: chunked"
UPGRADE = ("Connection: Upgrade", "Upgrade: websocket")
GET_ = ("GET", False)       # what the response answers: (method, the request asked to upgrade)
HEAD_ = ("HEAD", False)
UPGRADE_ = ("GET", True)

# (name, stream parts, how reading stops): the messages are the (head, body) parts.
REQUESTS = [
    ("content-length", [(req("POST", "Content-Length: 5"), b"hello"), GET], "clean"),
    ("content-length-0", [(req("POST", "Content-Length: 0"), b""), GET], "clean"),
    ("chunked", [(req("POST", CHUNKED), b"5\r\nhello\r\n0\r\n\r\n"), GET], "clean"),
    ("chunked-extensions", [(req("PUT", CHUNKED), b'5;name=value\r\nhello\r\n3;a;b="q x"\r\nabc\r\n0;last\r\n\r\n'),
                            GET], "clean"),
    ("chunked-trailers", [(req("POST", CHUNKED, "Trailer: X-Sum"),
                           b"a\r\n0123456789\r\n0\r\nX-Sum: 1\r\nX-Other: 2\r\n\r\n"), GET], "clean"),
    ("chunked-uppercase-hex-leading-zeros", [(req("POST", CHUNKED), b"00A\r\n0123456789\r\n000\r\n\r\n"), GET],
     "clean"),
    # RFC 9112 §7.1.1: chunk-ext = *( BWS ";" ... ): whitespace before the ";" is allowed
    ("chunk-extension-after-bws", [(req("POST", CHUNKED), b"5 ;x\r\nhello\r\n0\t;y=1\r\n\r\n"), GET], "clean"),
    ("codings-before-chunked", [(req("POST", "Transfer-Encoding: gzip, chunked"), b"3\r\nabc\r\n0\r\n\r\n"), GET],
     "clean"),
    # RFC 9112 §6.3 lets a recipient use a repeated Content-Length whose values are all the same
    ("identical-content-length-twice", [(req("POST", "Content-Length: 3", "Content-Length: 3"), b"abc"), GET],
     "clean"),
    ("head-and-delete", [(req("HEAD"), b""), (req("DELETE"), b""), (req("OPTIONS", "Content-Length: 2"), b"{}")],
     "clean"),
    ("pipelined", [GET, (req("POST", "Content-Length: 3"), b"abc"), (req("PUT", CHUNKED), b"1\r\nx\r\n0\r\n\r\n"),
                   (req("HEAD"), b""), GET], "clean"),
    # RFC 9112 §2.2: empty lines before a request line are ignored
    ("stray-crlf-between-requests", [b"\r\n", GET, b"\r\n", (req("POST", "Content-Length: 1"), b"x"), b"\r\n\r\n",
                                     GET], "clean"),
    ("stray-crlf-at-the-end", [GET, b"\r\n"], "clean"),
    ("upgrade", [(req("GET", *UPGRADE), b""), b"\x81\x05hello"], "raw"),
    ("upgrade-among-connection-options", [GET, (req("GET", "Connection: keep-alive, Upgrade", "Upgrade: h2c"), b""),
                                          b"raw"], "raw"),
    # no Upgrade without its Connection option (RFC 9110 §7.8): an ordinary request
    ("upgrade-header-alone", [(req("GET", "Upgrade: websocket"), b""), GET], "clean"),
    # An upgrade request's content is part of the HTTP/1.1 message (h11 reads it; RFC 7540 §3.2):
    # the reader ignores such an Upgrade (RFC 9110 §7.8 lets a server), so the content can't
    # become a request of its own when the app answers without switching.
    ("upgrade-with-content-length", [(req("POST", *UPGRADE, "Content-Length: 5"), b"hello"), GET], "clean"),
    ("upgrade-with-chunked-content", [(req("POST", *UPGRADE, CHUNKED), b"5\r\nhello\r\n0\r\n\r\n"), GET], "clean"),
    ("upgrade-with-empty-content", [(req("POST", *UPGRADE, "Content-Length: 0"), b""), b"raw"], "raw"),
    # RFC 9110 §7.8: a server MUST ignore Upgrade in an HTTP/1.0 request
    ("upgrade-in-http-1.0", [(req("GET", *UPGRADE, version="HTTP/1.0"), b""), GET], "clean"),
    ("body-incomplete", [(req("POST", "Content-Length: 10"), b"abc")], "partial"),
    ("chunked-incomplete", [(req("POST", CHUNKED), b"5\r\nhel")], "partial"),
    ("head-incomplete", [GET, (b"GET / HTTP/1.1\r\nHost: a", b"")], "partial"),
]

RESPONSES = [
    ("content-length", [GET_, GET_], [(resp("200 OK", "Content-Length: 5"), b"hello"),
                                      (resp("404 Not Found", "Content-Length: 0"), b"")], "clean"),
    ("chunked", [GET_, GET_], [(resp("200 OK", CHUNKED), b"5\r\nhello\r\n0\r\n\r\n"),
                               (resp("200 OK", "Content-Length: 1"), b"x")], "clean"),
    ("chunked-extensions-and-trailers", [GET_], [(resp("200 OK", CHUNKED),
                                                  b"5;a=1\r\nhello\r\n2;b\r\nhi\r\n0\r\nX-Digest: abc\r\n\r\n")],
     "clean"),
    ("head-with-content-length", [HEAD_, GET_], [(resp("200 OK", "Content-Length: 5"), b""),
                                                 (resp("200 OK", "Content-Length: 2"), b"hi")], "clean"),
    ("head-with-chunked", [HEAD_, GET_], [(resp("200 OK", CHUNKED), b""),
                                          (resp("200 OK", "Content-Length: 2"), b"hi")], "clean"),
    ("head-without-framing", [HEAD_, GET_], [(resp("404 Not Found"), b""),
                                             (resp("200 OK", "Content-Length: 2"), b"hi")], "clean"),
    ("interim-then-final", [GET_], [(resp("100 Continue"), b""), (resp("103 Early Hints", "Link: </a.css>"), b""),
                                    (resp("200 OK", "Content-Length: 2"), b"ok")], "clean"),
    ("interim-for-head", [HEAD_, GET_], [(resp("100 Continue"), b""), (resp("200 OK", "Content-Length: 9"), b""),
                                         (resp("204 No Content"), b"")], "clean"),
    ("204-and-304-have-no-body", [GET_, GET_, GET_], [(resp("204 No Content"), b""),
                                                      (resp("304 Not Modified", "Content-Length: 10"), b""),
                                                      (resp("304 Not Modified", CHUNKED), b"")], "clean"),
    ("switching-protocols", [UPGRADE_], [(resp("101 Switching Protocols", *UPGRADE), b""), b"\x81\x02hi"], "raw"),
    ("upgrade-answered-normally", [UPGRADE_, GET_], [(resp("200 OK", "Content-Length: 2"), b"no"),
                                                     (resp("200 OK", "Content-Length: 0"), b"")], "clean"),
    ("read-until-close", [GET_], [(resp("200 OK"), b"everything until the app closes")], "close"),
    ("read-until-close-other-coding", [GET_], [(resp("200 OK", "Transfer-Encoding: gzip"), b"\x1f\x8b...")],
     "close"),
    ("read-until-close-http-1.0", [GET_], [(head("HTTP/1.0 200 OK"), b"old")], "close"),
    ("pipelined", [GET_, HEAD_, GET_, GET_], [(resp("200 OK", "Content-Length: 3"), b"abc"),
                                              (resp("200 OK", "Content-Length: 3"), b""),
                                              (resp("404 Not Found", CHUNKED), b"1\r\nx\r\n0\r\n\r\n"),
                                              (resp("500 Internal Server Error", "Content-Length: 0"), b"")], "clean"),
    ("status-line-without-reason", [GET_, GET_], [(b"HTTP/1.1 200\r\nContent-Length: 1\r\n\r\n", b"x"),
                                                  (b"HTTP/1.1 204 \r\n\r\n", b"")], "clean"),
    ("body-incomplete", [GET_], [(resp("200 OK", "Content-Length: 10"), b"abc")], "partial"),
]


@pytest.mark.parametrize("name, parts, stop", REQUESTS, ids=[r[0] for r in REQUESTS])
def test_requests_are_framed(name, parts, stop):
    data, messages = stream("request", *parts)
    if stop == "partial":
        messages.pop()    # the last one is incomplete
    out = read_mr("request", data)
    assert (out.messages, out.stop) == (messages, stop)
    if stop == "raw":
        assert out.at == messages[-1].end


@pytest.mark.parametrize("name, asked, parts, stop", RESPONSES, ids=[r[0] for r in RESPONSES])
def test_responses_are_framed(name, asked, parts, stop):
    data, messages = stream("response", *parts)
    if stop == "partial":
        messages.pop()
    out = read_mr("response", data, asked)
    assert (out.messages, out.stop) == (messages, stop)
    if stop == "raw":
        assert out.at == messages[-1].end


def test_request_side_stops_after_each_head_and_each_end():
    """The relay routes a head before its body is read: the reader hands back the rest."""
    reader = MessageReader("request", 4096)
    data = req("POST", "Content-Length: 3") + b"abc" + req("GET")
    events, rest = reader.feed(data)
    assert [e.method for e in events] == ["POST"] and rest == b"abc" + req("GET")
    events, rest = reader.feed(rest)
    assert events == [b"abc", "end"] and rest == req("GET")
    events, rest = reader.feed(rest)
    assert events[0].method == "GET" and events[1:] == ["end"] and rest == b""
    assert reader.between_messages


def test_response_side_reads_interim_heads_on_to_the_final_one():
    reader = MessageReader("response", 4096)
    data = resp("100 Continue") + resp("200 OK", "Content-Length: 2") + b"ok" + resp("204 No Content")
    events, rest = reader.feed(data)
    assert [getattr(e, "status", e) for e in events] == [100, 200, b"ok", "end"]
    assert rest == resp("204 No Content")


# --- what RFC 9112 forbids ---------------------------------------------------------------------
BAD_REQUESTS = [
    ("bare-lf-after-request-line", b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400),
    ("bare-lf-after-header", b"GET / HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n", 400),
    ("bare-lf-blank-line", b"GET / HTTP/1.1\r\nHost: a\r\n\n", 400),
    ("bare-lf-only", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("bare-lf-in-value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\nb\r\n\r\n", 400),
    ("bare-cr-in-value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400),
    ("nul-in-value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
    ("bare-lf-after-chunk-size", req("POST", CHUNKED) + b"5\nhello\r\n0\r\n\r\n", 400),
    ("bare-lf-after-chunk-data", req("POST", CHUNKED) + b"5\r\nhello\n0\r\n\r\n", 400),
    ("bare-lf-after-last-chunk", req("POST", CHUNKED) + b"0\n\r\n", 400),
    ("bare-lf-in-trailer", req("POST", CHUNKED) + b"0\r\nX: 1\n\r\n", 400),
    ("bare-lf-ending-trailers", req("POST", CHUNKED) + b"0\r\n\n", 400),
    ("bare-cr-in-chunk-line", req("POST", CHUNKED) + b"5\r;x\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-extension-without-semicolon", req("POST", CHUNKED) + b"5 x\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-not-hex", req("POST", CHUNKED) + b"zz\r\n", 400),
    ("chunk-size-0x", req("POST", CHUNKED) + b"0x5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-negative", req("POST", CHUNKED) + b"-5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-empty", req("POST", CHUNKED) + b"\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-17-digits", req("POST", CHUNKED) + b"1" * 17 + b"\r\n", 400),
    ("chunk-size-space-before", req("POST", CHUNKED) + b" 5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-data-longer-than-size", req("POST", CHUNKED) + b"3\r\nhello\r\n0\r\n\r\n", 400),
    ("trailer-not-a-field", req("POST", CHUNKED) + b"0\r\nnot a field\r\n\r\n", 400),
    ("trailer-obs-fold", req("POST", CHUNKED) + b"0\r\nX: 1\r\n folded\r\n\r\n", 400),
    ("trailer-space-before-colon", req("POST", CHUNKED) + b"0\r\nX : 1\r\n\r\n", 400),
    ("content-length-twice-different", req("POST", "Content-Length: 3", "Content-Length: 4") + b"abcd", 400),
    ("content-length-list", req("POST", "Content-Length: 3, 3") + b"abc", 400),
    ("content-length-negative", req("POST", "Content-Length: -1"), 400),
    ("content-length-plus", req("POST", "Content-Length: +3") + b"abc", 400),
    ("content-length-not-a-number", req("POST", "Content-Length: abc"), 400),
    ("content-length-empty", req("POST", "Content-Length:"), 400),
    ("content-length-19-digits", req("POST", "Content-Length: " + "9" * 19), 400),
    ("content-length-two-numbers", req("POST", "Content-Length: 1 2"), 400),
    ("transfer-encoding-and-content-length", req("POST", CHUNKED, "Content-Length: 3") + b"0\r\n\r\n", 400),
    ("content-length-and-transfer-encoding", req("POST", "Content-Length: 3", CHUNKED) + b"0\r\n\r\n", 400),
    ("transfer-encoding-not-chunked", req("POST", "Transfer-Encoding: gzip"), 501),
    ("chunked-not-last", req("POST", "Transfer-Encoding: chunked, gzip"), 501),
    ("chunked-twice", req("POST", CHUNKED, CHUNKED), 501),
    ("obs-fold", req("GET", "X-A: 1", " folded"), 400),
    ("obs-fold-tab", req("GET", "X-A: 1", "\tfolded"), 400),
    ("header-name-with-space", req("GET", "Bad Name: x"), 400),
    ("header-name-with-brackets", req("GET", "Bad[1]: x"), 400),
    ("header-name-non-ascii", "GET / HTTP/1.1\r\nHost: a\r\nNäme: x\r\n\r\n".encode("latin-1"), 400),
    ("header-name-empty", req("GET", ": x"), 400),
    ("header-without-colon", req("GET", "NoColon"), 400),
    ("space-before-colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
    ("tab-before-colon", req("GET", "Content-Length\t: 0"), 400),
    ("space-before-first-header", b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400),
    ("request-line-extra-space", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("request-line-http-2", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400),
    ("no-host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two-hosts", req("GET", "Host: b.example"), 400),
    ("tls-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
]

BAD_RESPONSES = [
    ("bare-lf-after-status-line", b"HTTP/1.1 200 OK\nContent-Length: 5\r\n\r\nhello"),
    ("bare-lf-only", b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello"),
    ("bare-lf-after-header", b"HTTP/1.1 200 OK\r\nContent-Length: 5\n\r\nhello"),
    ("bare-lf-in-value", b"HTTP/1.1 200 OK\r\nX: a\nb\r\nContent-Length: 0\r\n\r\n"),
    ("bare-cr", b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 0\r\n\r\n"),
    ("nul", b"HTTP/1.1 200 OK\r\nX: \x00\r\nContent-Length: 0\r\n\r\n"),
    ("bare-lf-after-chunk-size", resp("200 OK", CHUNKED) + b"5\nhello\r\n0\r\n\r\n"),
    ("bare-lf-after-last-chunk", resp("200 OK", CHUNKED) + b"0\n\r\n"),
    ("chunk-extension-without-semicolon", resp("200 OK", CHUNKED) + b"5 x\r\nhello\r\n0\r\n\r\n"),
    ("chunk-size-not-hex", resp("200 OK", CHUNKED) + b"5g\r\nhello\r\n0\r\n\r\n"),
    ("trailer-not-a-field", resp("200 OK", CHUNKED) + b"0\r\n0\r\n\r\n"),
    # stricter than RFC 9112 §6.3 (which lets a recipient use a repeated identical value):
    # a response whose framing header repeats is not one the relay forwards
    ("content-length-twice-identical", resp("200 OK", "Content-Length: 5", "Content-Length: 5") + b"hello"),
    ("content-length-twice-different", resp("200 OK", "Content-Length: 5", "Content-Length: 6") + b"hello"),
    ("content-length-list", resp("200 OK", "Content-Length: 5, 5") + b"hello"),
    ("content-length-negative", resp("200 OK", "Content-Length: -5")),
    ("content-length-not-a-number", resp("200 OK", "Content-Length: five")),
    ("transfer-encoding-and-content-length", resp("200 OK", CHUNKED, "Content-Length: 5") + b"0\r\n\r\n"),
    ("chunked-not-last", resp("200 OK", "Transfer-Encoding: chunked, gzip")),
    ("obs-fold", resp("200 OK", "X-A: 1", " folded", "Content-Length: 0")),
    ("header-name-with-space", resp("200 OK", "Bad Name: x", "Content-Length: 0")),
    ("header-name-with-slash", resp("200 OK", "Bad/Name: x", "Content-Length: 0")),
    ("space-before-colon", resp("200 OK", "Content-Length : 0")),
    ("status-two-digits", b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n"),
    ("status-without-space", b"HTTP/1.1 200OK\r\nContent-Length: 0\r\n\r\n"),
    ("status-http-2", b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ("stray-crlf-before-response", b"\r\n" + resp("200 OK", "Content-Length: 0")),
    ("switching-protocols-unasked", resp("101 Switching Protocols", *UPGRADE)),
]


@pytest.mark.parametrize("name, data, status", BAD_REQUESTS, ids=[r[0] for r in BAD_REQUESTS])
def test_requests_rfc9112_forbids_are_rejected(name, data, status):
    out = read_mr("request", data)
    assert (out.stop, out.status) == ("error", status), out


@pytest.mark.parametrize("name, data", BAD_RESPONSES, ids=[r[0] for r in BAD_RESPONSES])
def test_responses_rfc9112_forbids_are_rejected(name, data):
    out = read_mr("response", data, [GET_])
    assert (out.stop, out.status) == ("error", 502), out


@pytest.mark.parametrize("side, status", [("request", 431), ("response", 502)])
def test_oversized_heads_are_rejected_with_or_without_their_end(side, status):
    first = b"GET / HTTP/1.1\r\nHost: a\r\n" if side == "request" else b"HTTP/1.1 200 OK\r\n"
    filler = first + b"X-Filler: " + b"a" * 1000 + b"\r\n"
    exact = filler + b"X: " + b"b" * (2048 - len(filler) - 7) + b"\r\n\r\n"
    assert len(exact) == 2048
    assert read_mr(side, exact, [GET_], max_head=2048).messages[0].head_end == 2048
    for data in (exact[:-4] + b"c\r\n\r\n",                      # one byte over, complete
                 filler * 3):                                      # over, and no end yet
        out = read_mr(side, data, [GET_], max_head=2048)
        assert (out.stop, out.status) == ("error", status)
        assert read_mr(side, data, [GET_], cuts=range(0, len(data), 100), max_head=2048).status == status


def test_the_reader_refuses_more_after_an_error():
    reader = MessageReader("request", 1024)
    with pytest.raises(HttpError):
        reader.feed(b"GET / HTTP/1.1\nHost: a\r\n\r\n")


# --- any split of the bytes ---------------------------------------------------------------------
CASES = ([("request", (), stream("request", *parts)[0]) for _, parts, _ in REQUESTS]
         + [("response", asked, stream("response", *parts)[0]) for _, asked, parts, _ in RESPONSES]
         + [("request", (), data) for _, data, _ in BAD_REQUESTS]
         + [("response", (GET_,), data) for _, data in BAD_RESPONSES])


def _seen(out):
    return out.messages, out.stop, out.at, out.status


@settings(max_examples=400, deadline=None)
@given(case=st.sampled_from(CASES), cuts=st.lists(st.integers(0, 300), max_size=12))
def test_framing_does_not_depend_on_how_the_bytes_are_split(case, cuts):
    side, asked, data = case
    assert _seen(read_mr(side, data, asked, cuts)) == _seen(read_mr(side, data, asked))


@pytest.mark.parametrize("side, asked, data", CASES[:len(REQUESTS) + len(RESPONSES)])
def test_framing_byte_by_byte(side, asked, data):
    assert _seen(read_mr(side, data, asked, range(len(data)))) == _seen(read_mr(side, data, asked))
