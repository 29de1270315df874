"""Every error the API can give, produced by a real request, in the seed's format;
bad input of every kind gets a 4xx JSON error, never a 500, a traceback or HTML."""

from __future__ import annotations

import json
import socket

import pytest
import requests

from conftest import create_user, login_session


def assert_error(r, status, code, field=None):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("application/json"), r.headers["Content-Type"]
    body = r.json()
    assert set(body) == {"error", "message", "code"} and body["error"] is True and body["code"] == code, body
    assert "Traceback" not in body["message"]
    if field is not None:
        assert field in body["message"], body
    return body


@pytest.fixture
def tunnel_id(web, alice_session):
    r = alice_session.post(web.url + "/api/tunnels", json={"name": "A", "subdomain": "alpha", "local_port": 3000})
    return r.json()["tunnel"]["id"]


def test_401_unauthorized(web):
    assert_error(requests.get(web.url + "/api/tunnels"), 401, "UNAUTHORIZED")


def test_403_forbidden(web, alice_session):
    r = alice_session.post(web.url + "/api/tokens", json={"name": "x"}, headers={"Origin": "https://evil.example"})
    assert_error(r, 403, "FORBIDDEN")


@pytest.mark.parametrize("path", ["/api/tunnels/999", "/api/tunnels/abc", "/api/tunnels/-1", "/api/tunnels/0",
                                  "/api/tunnels/1e3", "/api/tunnels/" + "9" * 40, "/api/tunnels/%C3%A9",
                                  "/api/nothing-here", "/api/tunnels/1/nope"])
def test_404_not_found(web, alice_session, path):
    assert_error(alice_session.get(web.url + path), 404, "NOT_FOUND")


def test_404_for_another_users_tunnel_and_token(web, alice_session, tunnel_id):
    create_user("bob@example.com", "bob")
    bob = login_session(web, "bob@example.com")
    token_id = alice_session.post(web.url + "/api/tokens", json={"name": "t"}).json()["api_token"]["id"]
    missing = assert_error(bob.get(web.url + "/api/tunnels/424242"), 404, "NOT_FOUND")
    for method, path, body in (("GET", f"/api/tunnels/{tunnel_id}", None),
                               ("PATCH", f"/api/tunnels/{tunnel_id}", {"name": "mine"}),
                               ("PUT", f"/api/tunnels/{tunnel_id}", {"name": "mine"}),
                               ("DELETE", f"/api/tunnels/{tunnel_id}", None),
                               ("POST", f"/api/tunnels/{tunnel_id}/regenerate-token", None)):
        r = bob.request(method, web.url + path, json=body)
        assert assert_error(r, 404, "NOT_FOUND") == missing  # no existence leak
    assert_error(bob.delete(web.url + f"/api/tokens/{token_id}"), 404, "NOT_FOUND")
    assert alice_session.get(web.url + f"/api/tunnels/{tunnel_id}").json()["name"] == "A"


@pytest.mark.parametrize("body, field", [
    ({"subdomain": "x1", "local_port": 3000}, "name"),
    ({"name": "x", "local_port": 3000}, "subdomain"),
    ({"name": "x", "subdomain": "x1"}, "local_port"),
    ({"name": "x", "subdomain": "x1", "local_port": 3000, "admin": True}, "admin"),
    ({"name": "x", "subdomain": "x1", "local_port": "3000"}, "local_port"),
    ({"name": "x", "subdomain": "x1", "local_port": True}, "local_port"),
    ({"name": "x", "subdomain": "x1", "local_port": 3000.5}, "local_port"),
    ({"name": "x", "subdomain": "x1", "local_port": 0}, "local_port"),
    ({"name": "x", "subdomain": "x1", "local_port": 65536}, "local_port"),
    ({"name": "x", "subdomain": "x1", "local_port": None}, "local_port"),
    ({"name": 5, "subdomain": "x1", "local_port": 3000}, "name"),
    ({"name": "   ", "subdomain": "x1", "local_port": 3000}, "name"),
    ({"name": "x" * 101, "subdomain": "x1", "local_port": 3000}, "name"),
    ({"name": "a\u0000b", "subdomain": "x1", "local_port": 3000}, "name"),
    ({"name": "x", "subdomain": ["x1"], "local_port": 3000}, "subdomain"),
    ({"name": "x", "subdomain": "-x", "local_port": 3000}, "subdomain"),
    ({"name": "x", "subdomain": "a_b", "local_port": 3000}, "subdomain"),
    ({"name": "x", "subdomain": "a.b", "local_port": 3000}, "subdomain"),
    ({"name": "x", "subdomain": "a" * 64, "local_port": 3000}, "subdomain"),
    ({"name": "x", "subdomain": "", "local_port": 3000}, "subdomain"),
    ({"name": "x", "subdomain": "ünï", "local_port": 3000}, "subdomain"),
])
def test_400_validation_names_the_field(web, alice_session, body, field):
    assert_error(alice_session.post(web.url + "/api/tunnels", json=body), 400, "VALIDATION_ERROR", field)


@pytest.mark.parametrize("raw", [b"{", b"[1, 2]", b'"text"', b"null", b"\xff\xfe\x00", b"", b"{'a': 1}"])
def test_400_malformed_json(web, alice_session, raw):
    r = alice_session.post(web.url + "/api/tunnels", data=raw, headers={"Content-Type": "application/json"})
    assert_error(r, 400, "VALIDATION_ERROR")


def test_400_token_name_and_patch_fields(web, alice_session, tunnel_id):
    assert_error(alice_session.post(web.url + "/api/tokens", json={}), 400, "VALIDATION_ERROR", "name")
    assert_error(alice_session.post(web.url + "/api/tokens", json={"name": "x", "scope": "all"}),
                 400, "VALIDATION_ERROR", "scope")
    assert_error(alice_session.patch(web.url + f"/api/tunnels/{tunnel_id}", json={"local_port": "80"}),
                 400, "VALIDATION_ERROR", "local_port")
    assert_error(alice_session.patch(web.url + f"/api/tunnels/{tunnel_id}", json={"token": "mine"}),
                 400, "VALIDATION_ERROR", "token")


def test_400_subdomain_taken(web, alice_session, tunnel_id):
    r = alice_session.post(web.url + "/api/tunnels", json={"name": "B", "subdomain": "alpha", "local_port": 1})
    assert_error(r, 400, "SUBDOMAIN_TAKEN")


def test_405_in_seed_format(web, alice_session, tunnel_id):
    for method, path in (("DELETE", "/api/tunnels"), ("POST", "/api/user/profile"),
                         ("GET", f"/api/tunnels/{tunnel_id}/regenerate-token"), ("PUT", "/api/tokens")):
        r = alice_session.request(method, web.url + path)
        assert_error(r, 405, "METHOD_NOT_ALLOWED")
        assert r.headers["Allow"]


def test_413_body_too_large(web, alice_session):
    big = json.dumps({"name": "x" * (web.settings.api_max_body + 1), "subdomain": "big", "local_port": 1})
    r = alice_session.post(web.url + "/api/tunnels", data=big, headers={"Content-Type": "application/json"})
    assert_error(r, 413, "PAYLOAD_TOO_LARGE")
    assert r.headers["X-RateLimit-Limit"]


def test_415_wrong_content_type(web, alice_session):
    for headers, data in (({}, {"name": "x", "subdomain": "form", "local_port": "1"}),
                          ({"Content-Type": "text/plain"}, '{"name": "x", "subdomain": "t", "local_port": 1}')):
        r = alice_session.post(web.url + "/api/tunnels", data=data, headers=headers)
        assert_error(r, 415, "UNSUPPORTED_MEDIA_TYPE")


def test_429_rate_limited(web, alice_session):
    for _ in range(web.settings.rate_limit_write):
        alice_session.post(web.url + "/api/tokens", json={"name": "t"})
    r = alice_session.post(web.url + "/api/tokens", json={"name": "t"})
    assert_error(r, 429, "RATE_LIMITED")
    assert int(r.headers["Retry-After"]) >= 1


def test_500_in_seed_format_without_internals(web, alice_session):
    def explode():
        raise RuntimeError("secret internal detail /etc/passwd")
    web.app.route("/api/test-explode", "GET", explode)
    r = alice_session.get(web.url + "/api/test-explode")
    body = assert_error(r, 500, "INTERNAL_ERROR")
    assert "secret" not in r.text and "passwd" not in r.text
    assert body["message"] == "Internal server error"


def test_garbage_requests_never_500(web, alice_session):
    cookie = alice_session.cookies["intunnel_session"]
    cases = [
        ("POST", "/api/tunnels", b"\x00" * 100, "application/json"),
        ("POST", "/api/tunnels", json.dumps({"name": {"a": 1}, "subdomain": 1, "local_port": [1]}).encode(),
         "application/json; charset=utf-8"),
        ("POST", "/api/tunnels", json.dumps({"name": "x", "subdomain": "s" * 10000, "local_port": 10 ** 30}).encode(),
         "application/json"),
        ("PATCH", "/api/tunnels/1", b"[]", "application/json"),
        ("POST", "/api/tokens", b'{"name": "\\ud800"}', "application/json"),
        ("GET", "/api/tunnels/%00", b"", ""),
        ("GET", "/api/tunnels/" + "1" * 5000, b"", ""),
        ("POST", "/api/tunnels/%2e%2e/regenerate-token", b"", ""),
    ]
    for method, path, body, ctype in cases:
        headers = {"Cookie": f"intunnel_session={cookie}", "Content-Type": ctype} if ctype else \
            {"Cookie": f"intunnel_session={cookie}"}
        r = requests.request(method, web.url + path, data=body, headers=headers)
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
        assert r.json()["error"] is True


def test_raw_bad_http_gets_no_traceback(web):
    with socket.create_connection((web.host, web.port), timeout=5) as sock:
        sock.sendall(b"POST /api/tunnels HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Type: application/json"
                     b"\r\nCookie: intunnel_session=\xff\xfe\r\nConnection: close\r\n\r\n{\"a\":")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 4") and b"Traceback" not in data


def test_413_chunked_body_of_megabytes(web, alice_session):
    def chunks():
        yield b'{"name": "'
        for _ in range(48):
            yield b"x" * 65536
        yield b'", "subdomain": "big", "local_port": 1}'
    r = alice_session.post(web.url + "/api/tunnels", data=chunks(), headers={"Content-Type": "application/json"})
    assert_error(r, 413, "PAYLOAD_TOO_LARGE")


@pytest.mark.parametrize("path, authed", [("/api/tunnels", True), ("/api/tokens", True), ("/login", False)])
@pytest.mark.parametrize("raw", [b"[" * 30000, b'{"a":' * 12000, b'{"name": ' + b"[" * 65 + b"]" * 65 + b"}"])
def test_400_deeply_nested_json(web, alice_session, path, authed, raw):
    """Nesting past MAX_JSON_DEPTH is refused before the parser recurses (it was a 500)."""
    client = alice_session if authed else requests
    r = client.post(web.url + path, data=raw, headers={"Content-Type": "application/json"})
    assert_error(r, 400, "VALIDATION_ERROR", "body")


def test_json_nesting_limit_counts_only_structure(web, alice_session):
    """Brackets inside strings are text, and 64 levels are still accepted (then refused by field checks)."""
    from intunnel.web.jsonbody import MAX_JSON_DEPTH
    name = "[{" * 5000
    r = alice_session.post(web.url + "/api/tokens", json={"name": name[:100]})
    assert r.status_code == 200, r.text
    deep = "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)
    r = alice_session.post(web.url + "/api/tokens", data='{"name": ' + deep + "}",
                           headers={"Content-Type": "application/json"})
    assert_error(r, 400, "VALIDATION_ERROR", "name")  # parsed, then the field check speaks
    r = alice_session.post(web.url + "/api/tokens", data=('{"name": "' + name + '"}').encode("utf-16"),
                           headers={"Content-Type": "application/json"})
    assert_error(r, 400, "VALIDATION_ERROR", "name")  # UTF-16 JSON decodes, long name refused
