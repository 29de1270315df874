"""Tenant-safety breaches of issue 10 that need nginx in front (1, 2, and the 103 case of 10).

A real nginx runs the project's generated config (``nginxconf.render``) with TLS, in front of
the relay in this process (``relay_trust_proxy``, as deployed).  nginx keeps a pool of
keep-alive connections to the relay and sends any tenant's requests on them, which is what
an attacker's tunnel tries to exploit.  Local apps are ``RawApp`` servers (misbehaving on
purpose), visitors are TLS sockets to nginx with exact bytes.  After each test nginx stops
and the relay must be back at rest: every slot free, none of nginx's sockets still open.
"""

from __future__ import annotations

import contextlib

import pytest

from conftest import require_tool
from tests.deploy.nginx_support import running_nginx, tls_front
from tests.support.rawapps import Closed, Garbled, RawApp, RawVisitor, Stalled, Tenants, http_response, request

pytestmark = [pytest.mark.nginx]

DOMAIN = "localhost"
VICTIMS = 4        # victim requests, each on a new visitor connection to nginx


class Front:
    """nginx (generated config, TLS) in front of ``Tenants``; ``visit(name)`` is a TLS visitor."""

    def __init__(self, tenants: Tenants, https_port: int):
        self.t, self.port = tenants, https_port
        self.visitors: list[RawVisitor] = []

    def visit(self, name: str) -> RawVisitor:
        v = RawVisitor(self.port, tls_host=f"{name}.{DOMAIN}")
        self.visitors.append(v)
        return v

    def exchange(self, name: str, target: str, headers=(), timeout: float = 5.0):
        """One request on a new visitor connection; the response, or the exception it ended with."""
        with self.visit(name) as v:
            v.send(request("GET", target, f"{name}.{DOMAIN}", list(headers)))
            try:
                return v.read_response(timeout=timeout)
            except (Closed, Stalled, Garbled) as e:
                return e


@contextlib.contextmanager
def behind_nginx(settings, tmp_path, apps: dict[str, RawApp]):
    nginx = require_tool("nginx")
    require_tool("openssl")
    with Tenants(settings, apps, relay_trust_proxy=True) as t:
        main, https_port = tls_front(t.relay.settings, tmp_path, nginx, DOMAIN)
        with running_nginx(nginx, main, https_port):
            front = Front(t, https_port)
            yield front
            for v in front.visitors:
                v.close()
        # nginx is gone, and its keep-alive connections to the relay with it.
        t.assert_settled()


def victims_requests(front: Front) -> list:
    return [front.exchange("victim", f"/account/{i}", [("Cookie", f"session=victim-secret-{i}")])
            for i in range(VICTIMS)]


def assert_victims_served_by_their_own_app(front: Front, answers: list, attacker: RawApp) -> None:
    stolen = [(r.target, r.get("cookie")) for r in attacker.requests if "victim" in (r.get("cookie") or "")
              or (r.get("host") or "").startswith("victim.")]
    assert stolen == [], f"the attacker's app received another tenant's requests (cookies included): {stolen}"
    for i, answer in enumerate(answers):
        assert not isinstance(answer, Exception), f"victim request {i}: {answer}"
        assert (answer.status, answer.get("x-app"), answer.body) == (200, "victim",
                                                                     f"victim GET /account/{i}".encode()), \
            f"victim request {i} got someone else's answer: {answer.status} {answer.headers} {answer.body[:200]!r}"
    # (nginx may send an idempotent request again after a dead keep-alive connection: a set)
    seen = {(r.target, r.get("cookie")) for r in front.t.apps["victim"].requests}
    assert seen == {(f"/account/{i}", f"session=victim-secret-{i}") for i in range(VICTIMS)}, seen


# --- 1: an Upgrade answered without 101 ------------------------------------------------------------

def test_an_upgrade_answered_with_200_leaves_nginx_pooled_connection_plain_http(settings, db, tmp_path):
    """Rule: a connection becomes raw only after the app's 101.  The attacker's app answers an
    Upgrade request with a plain 200 (nginx passed ``Connection: upgrade``, gets an ordinary
    response and pools the connection): the other tenant's requests that nginx then sends on it
    are routed by their own Host, never relayed raw to the attacker's app."""
    apps = {"atk": RawApp("atk"), "victim": RawApp("victim")}
    with behind_nginx(settings, tmp_path, apps) as front:
        with front.visit("atk") as v:
            v.send(request("GET", "/up", f"atk.{DOMAIN}", [("Upgrade", "websocket"), ("Connection", "Upgrade")]))
            r = v.read_response()
            assert (r.status, r.body) == (200, b"atk GET /up")
        answers = victims_requests(front)
        assert_victims_served_by_their_own_app(front, answers, apps["atk"])


# --- 2: a response the relay can't follow ------------------------------------------------------------

FORGED = http_response(200, b"FORGED by atk", [("X-App", "atk"), ("Set-Cookie", "session=atk-owned")])
UNFOLLOWABLE = {   # each accepted by nginx 1.22 as a complete keep-alive response
    "chunk extension after a space": (b"HTTP/1.1 200 OK\r\nX-App: atk\r\nTransfer-Encoding: chunked\r\n\r\n"
                                      b"5 x\r\nhello\r\n0\r\n\r\n"),
    "bare-LF head": b"HTTP/1.1 200 OK\nX-App: atk\nContent-Length: 5\n\nhello",
    "duplicate Content-Length": (b"HTTP/1.1 200 OK\r\nX-App: atk\r\nContent-Length: 5\r\n"
                                 b"Content-Length: 5\r\n\r\nhello"),
}


def forger(raw: bytes):
    """The attacker's app: answers with ``raw``, then whatever comes next on that connection (the
    relay's half-close, or another request) is answered with a forged response."""
    def respond(app, conn, req):
        conn.send(raw)
        conn.read_request()
        conn.send(FORGED)
        return False
    return respond


@pytest.mark.parametrize("kind", list(UNFOLLOWABLE))
def test_a_response_the_relay_cannot_follow_never_reaches_another_tenants_visitor(settings, db, tmp_path, kind):
    """Rule: once a response can't be followed exactly, no byte of that data connection reaches the
    proxy connection after the next request head arrives (the relay closes the proxy connection
    instead).  The attacker's app sends a response nginx takes as complete but the relay can't
    delimit, then a forged response: every victim request nginx sends afterwards is answered by
    the victim's app, and the forged bytes reach nobody."""
    apps = {"atk": RawApp("atk", forger(UNFOLLOWABLE[kind])), "victim": RawApp("victim")}
    with behind_nginx(settings, tmp_path, apps) as front:
        front.exchange("atk", "/x", timeout=3.0)  # whatever the attacker gets is its own business
        answers = victims_requests(front)
        forged = [i for i, a in enumerate(answers) if not isinstance(a, Exception) and b"FORGED" in a.body]
        assert forged == [], f"victim requests {forged} got the attacker's forged response ({kind})"
        assert_victims_served_by_their_own_app(front, answers, apps["atk"])


# --- 10: 103 Early Hints behind nginx --------------------------------------------------------------

EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n"


def early_hints(app, conn, req):
    return conn.send(EARLY_HINTS + http_response(200, b"hello", [("X-App", app.name)]))


def test_103_early_hints_do_not_stall_a_visitor_behind_nginx(settings, db, tmp_path):
    """Rule: the visitor gets the app's final response, complete, at once (nginx 1.22 can't read a
    103: it must not see one), and the keep-alive connection goes on serving; the app closing its
    idle connection changes nothing for the visitor."""
    apps = {"hints": RawApp("hints", early_hints, idle_close=0.5)}
    with behind_nginx(settings, tmp_path, apps) as front:
        with front.visit("hints") as v:
            for target in ("/", "/again"):
                v.send(request("GET", target, f"hints.{DOMAIN}"))
                try:
                    r = v.read_response(timeout=3.0)
                except (Stalled, Garbled, Closed) as e:
                    pytest.fail(f"GET {target} after a 103 Early Hints, through nginx: {e}")
                assert (r.status, r.get("x-app"), r.body) == (200, "hints", b"hello"), (r.status, r.headers, r.body)
