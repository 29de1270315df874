"""The client's Upgrade request and what it makes of the relay's answer (intunnel/client/dial.py),
without sockets."""

from __future__ import annotations

import json

import pytest

from intunnel import __version__
from intunnel.client.address import parse_server
from intunnel.client.dial import error_fields, parse_answer, refusal, upgrade_request
from intunnel.client.errors import HandshakeFailed, TokenRefused, WrongServer
from intunnel.wire import protocol as p


def test_the_upgrade_request_byte_for_byte():
    request = upgrade_request(parse_server("https://example.com"), p.DATA_PATH, {p.SESSION_HEADER: "s3cret"})
    assert request == (b"GET /_intunnel/data HTTP/1.1\r\nHost: example.com\r\nUpgrade: intunnel\r\n"
                       b"Connection: Upgrade\r\nUser-Agent: intunnel/" + __version__.encode() +
                       b"\r\nX-Intunnel-Session: s3cret\r\n\r\n")
    assert b"Host: [::1]:8080\r\n" in upgrade_request(parse_server("http://[::1]:8080"), p.AGENT_PATH, {})


def test_a_101_is_an_upgrade():
    head = parse_answer(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: intunnel\r\nConnection: Upgrade")
    assert head.status == 101 and head.body == "upgrade"


@pytest.mark.parametrize("raw", [
    b"\x15\x03\x01\x00\x02\x02\x50",              # a TLS alert: the port speaks TLS
    b"SSH-2.0-OpenSSH_9.2",
    b"HTTP/2 200",
    b"HTTP/1.1 200 OK\r\nbad header line",
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 1\r\nContent-Length: 2",
])
def test_an_answer_that_is_not_http_is_a_handshake_failure(raw):
    with pytest.raises(HandshakeFailed, match="not HTTP"):
        parse_answer(raw)


def _head(status_line: str, body: bytes = b"", extra: str = ""):
    raw = f"{status_line}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}{extra}".encode()
    return parse_answer(raw)


def _json(**fields) -> bytes:
    return json.dumps({"error": True, **fields}).encode()


@pytest.mark.parametrize("status_line, body, kind, words, code", [
    ("HTTP/1.1 401 Unauthorized", _json(message="invalid token", code="UNAUTHORIZED"),
     TokenRefused, "the relay refused the token (invalid token)", "UNAUTHORIZED"),
    ("HTTP/1.1 403 Forbidden", _json(message="account disabled", code="ACCOUNT_DISABLED"),
     TokenRefused, "the relay refused the token (account disabled)", "ACCOUNT_DISABLED"),
    ("HTTP/1.1 403 Forbidden", b"", TokenRefused, "the relay refused the token (HTTP/1.1 403 Forbidden)", ""),
    ("HTTP/1.1 421 Misdirected Request",
     _json(message="not the relay", code="NOT_THE_RELAY", relay_url="http://localhost:8081"),
     WrongServer, "that is the InTunnel web app, not the relay; the relay is at http://localhost:8081: "
                  "use --server http://localhost:8081", None),
    ("HTTP/1.1 421 Misdirected Request", _json(message="not the relay", code="NOT_THE_RELAY"),
     WrongServer, "that is the InTunnel web app, not the relay; not the relay", None),
    ("HTTP/1.1 421 Misdirected Request", _json(message="elsewhere"), HandshakeFailed,
     "the relay answered 421: elsewhere", None),
    ("HTTP/1.1 404 Not Found", b"<html>nope</html>", HandshakeFailed,
     "the relay answered 404: HTTP/1.1 404 Not Found", None),
    ("HTTP/1.1 503 Service Unavailable", _json(message="the relay is stopping", code="STOPPING"),
     HandshakeFailed, "the relay answered 503: the relay is stopping", None),
])
def test_what_a_refusal_means(status_line, body, kind, words, code):
    error = refusal(_head(status_line, body), body)
    assert type(error) is kind and str(error) == words
    if code is not None:
        assert error.code == code


@pytest.mark.parametrize("body, fields", [
    (_json(message="m", code="C", relay_url="u"), ("m", "C", "u")),
    (b"not json", ("", "", "")),
    (b"[1, 2]", ("", "", "")),
    (b"", ("", "", "")),
    (_json(message="x" * 500, code="y" * 100), ("x" * 200, "y" * 64, "")),
])
def test_error_fields_of_a_body(body, fields):
    assert error_fields(body) == fields
