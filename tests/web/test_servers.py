"""The web app under each WSGI server (the web_server setting): cheroot and waitress behave alike.

Login, an API write, a 400 and a 413 in the seed's error format, bodies above the
server's ceiling refused cleanly, chunked bodies, proxy headers with and without
web_trust_proxy, the thread count, and `intunnel web` stopping on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import bottle
import pytest
import requests

from intunnel.settings import load_settings
from intunnel.web import auth
from intunnel.web.serve import BODY_CEILING, make_server, stop_server, start_in_thread
from support.backends import database_env
from support.web_server import running_web_app
from conftest import create_user, login_session

SERVERS = ("cheroot", "waitress")


@pytest.fixture(params=SERVERS)
def server_name(request):
    return request.param


@pytest.fixture
def web_on(settings, clock, server_name):
    with running_web_app(settings, clock=clock, web_server=server_name) as running:
        yield running


def raw_exchange(web, head: bytes, body: bytes = b"", limit: int = 1 << 16) -> bytes:
    """Send ``head`` and ``body`` on a new connection; everything the server sends until it closes
    (or ``limit`` bytes)."""
    with socket.create_connection((web.host, web.port), timeout=10) as s:
        s.sendall(head + body)
        out = b""
        while len(out) < limit:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    return out


def test_the_setting_picks_the_server(settings, server_name):
    server = make_server(settings.replace(web_listen="127.0.0.1:0", web_server=server_name, web_threads=3))
    thread = start_in_thread(server)
    try:
        assert server.name == server_name
        workers = server.server.requests.min if server_name == "cheroot" else server.server.adj.threads
        assert workers == 3
        r = requests.get(f"http://127.0.0.1:{server.effective_port}/healthz", timeout=5)
        assert r.json() == {"status": "ok"} and r.headers["Server"] == "intunnel"
    finally:
        stop_server(server, thread)


def test_login_and_create_a_tunnel(web_on):
    create_user("alice@example.com", "alice")
    with login_session(web_on, "alice@example.com") as s:
        r = s.post(web_on.url + "/api/tunnels", json={"name": "App", "subdomain": "myapp", "local_port": 3000})
        assert r.status_code == 200 and r.json()["success"] is True
        assert [t["subdomain"] for t in s.get(web_on.url + "/api/tunnels").json()["tunnels"]] == ["myapp"]
        assert s.get(web_on.url + "/api/user/profile").json()["tunnels_count"] == 1


def test_a_400_and_an_api_max_body_413_in_the_seed_format(web_on):
    create_user("alice@example.com", "alice")
    with login_session(web_on, "alice@example.com") as s:
        r = s.post(web_on.url + "/api/tunnels", json={"name": "App", "subdomain": "-bad-", "local_port": 3000})
        assert r.status_code == 400 and r.json()["code"] == "VALIDATION_ERROR" and r.json()["error"] is True
        big = b'{"name": "' + b"x" * web_on.settings.api_max_body + b'"}'
        r = s.post(web_on.url + "/api/tunnels", data=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["code"] == "PAYLOAD_TOO_LARGE"
        # the connection (a keep-alive one, the body left unread by the app) still serves
        assert s.get(web_on.url + "/api/user/profile").status_code == 200


def test_a_body_above_the_ceiling_is_refused_before_it_is_sent(web_on):
    head = (b"POST /api/tunnels HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (BODY_CEILING + 1))
    answer = raw_exchange(web_on, head)   # no body sent: the head alone is refused, and the connection closed
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"\r\nConnection: close\r\n" in answer.split(b"\r\n\r\n", 1)[0] + b"\r\n"


def test_chunked_bodies_are_read_and_limited_alike(web_on):
    create_user("alice@example.com", "alice")
    body = b'{"email": "alice@example.com", "password": "wrong"}'
    head = (b"POST /login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    answer = raw_exchange(web_on, head, b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    assert answer.startswith(b"HTTP/1.1 401 ") and b'"code":"UNAUTHORIZED"' in answer, answer[:300]
    big = b"x" * (web_on.settings.api_max_body + 1)
    answer = raw_exchange(web_on, head, b"%x\r\n%s\r\n0\r\n\r\n" % (len(big), big))
    assert answer.startswith(b"HTTP/1.1 413 ") and b'"code":"PAYLOAD_TOO_LARGE"' in answer, answer[:300]


def peer_route(web):
    def peer():
        return {"address": auth.client_address(), "scheme": bottle.request.urlparts[0],
                "forwarded_for": bottle.request.environ.get("HTTP_X_FORWARDED_FOR"),
                "forwarded_host": bottle.request.environ.get("HTTP_X_FORWARDED_HOST")}
    web.app.route("/test-peer", "GET", peer)


@pytest.mark.parametrize("trust", [False, True])
def test_proxy_headers(settings, clock, server_name, trust):
    with running_web_app(settings, clock=clock, web_server=server_name, web_trust_proxy=trust) as web:
        peer_route(web)
        headers = {"X-Forwarded-For": "203.0.113.9, 198.51.100.7", "X-Forwarded-Proto": "https",
                   "X-Forwarded-Host": "evil.example"}
        seen = requests.get(web.url + "/test-peer", headers=headers, timeout=5).json()
        # nginx's $proxy_add_x_forwarded_for appends the address it saw: the last entry is believed
        expected = {"address": "198.51.100.7", "scheme": "https", "forwarded_for": "198.51.100.7",
                    "forwarded_host": None} if trust else \
            {"address": "127.0.0.1", "scheme": "http", "forwarded_for": None, "forwarded_host": None}
        assert seen == expected
        assert requests.get(web.url + "/test-peer", timeout=5).json()["address"] == "127.0.0.1"
        if trust:
            r = requests.get(web.url + "/test-peer", headers={"X-Forwarded-Proto": "gopher"}, timeout=5)
            assert r.status_code == 400   # waitress's middleware under both servers


def test_intunnel_web_stops_on_sigterm_with_a_keepalive_connection_open(settings, server_name):
    env = {**os.environ, "INTUNNEL_DATA_DIR": str(settings.data_dir), "INTUNNEL_WEB_LISTEN": "127.0.0.1:0",
           "INTUNNEL_WEB_SERVER": server_name, "INTUNNEL_WEB_METRICS_LISTEN": "", "INTUNNEL_CONFIG": "",
           **database_env(settings)}
    proc = subprocess.Popen([sys.executable, "-m", "intunnel.cli", "web"], env=env, stderr=subprocess.PIPE,
                            text=True)
    try:
        lines = []
        deadline = time.monotonic() + 20
        while not any("web app listening on" in line for line in lines) and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "intunnel web exited: " + "".join(lines)
            lines.append(line)
        assert any(f"web server: {server_name}, {load_settings(env={}).web_threads} threads" in line for line in lines), lines
        url = lines[-1].rsplit(" ", 1)[1].strip()
        with requests.Session() as keepalive:
            assert keepalive.get(url + "/healthz", timeout=5).json() == {"status": "ok"}
            began = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
            assert time.monotonic() - began < 8
        with pytest.raises(requests.ConnectionError):
            requests.get(url + "/healthz", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_a_slow_upload_holds_up_no_other_write(web_on):
    """Write requests on SQLite take turns on a lock (app.SqliteWriters), taken only once the body is in:
    a client stalled mid-body must not keep another user's POST waiting."""
    create_user("alice@example.com", "alice")
    create_user("bob@example.com", "bob")
    with login_session(web_on, "alice@example.com") as alice, login_session(web_on, "bob@example.com") as bob:
        cookie = "; ".join(f"{k}={v}" for k, v in alice.cookies.items())
        body = b'{"name": "Slow", "subdomain": "slow", "local_port": 3000}'
        with socket.create_connection((web_on.host, web_on.port), timeout=10) as slow:
            slow.sendall(b"POST /api/tunnels HTTP/1.1\r\nHost: %s:%s\r\nCookie: %s\r\n"
                         b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (web_on.host.encode(), str(web_on.port).encode(), cookie.encode(), len(body), body[:10]))
            began = time.monotonic()
            r = bob.post(web_on.url + "/api/tunnels", json={"name": "Fast", "subdomain": "fast", "local_port": 3000},
                         timeout=10)
            assert r.status_code == 200 and time.monotonic() - began < 3
            slow.sendall(body[10:])
            answer = slow.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
        assert [t["subdomain"] for t in alice.get(web_on.url + "/api/tunnels").json()["tunnels"]] == ["slow"]
