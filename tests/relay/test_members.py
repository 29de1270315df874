"""Members-only tunnels end to end (issue 13): a real relay, client, local app and web app.

The visitor's browser is played by hand here (each redirect followed explicitly, the Cookie
header kept by the test), so every hop is asserted: the relay's 302 to the web app's
/access, the login, the one-time ticket on the tunnel's host, the access cookie, and the
app's view (no appliance cookie, no ticket).  tests/browser/test_members_browser.py walks the
same path in headless Chromium."""

from __future__ import annotations

import contextlib
import json
import re
import socket
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from intunnel import accounts, memberpass, tunnels
from intunnel.models import Tunnel, User
from tests.support.tunnel import ClientThread, HttpUpstream, RelayThread, make_tunnel, read_response, wait_for
from tests.support.web_server import running_web_app

PUBLIC_PORT = 8080   # what tunnel URLs say; the test connects to the relay's real port itself
PASSWORD = "correct horse battery"


@pytest.fixture
def stack(settings, db):
    """(web, relay, upstream, tunnel): alice owns members-only 'myapp'; bob, carol exist."""
    with contextlib.ExitStack() as stack:
        web = stack.enter_context(running_web_app(settings.replace(public_port=PUBLIC_PORT)))
        upstream = stack.enter_context(HttpUpstream())
        relay = RelayThread(web.settings)
        stack.callback(relay.close)
        tunnel = make_tunnel(web.settings, "myapp", upstream.port, username="alice")
        accounts.create_user("bob@example.com", "bob", PASSWORD)
        accounts.create_user("carol@corp.example", "carol", PASSWORD)
        tunnels.set_access(web.settings, tunnel, {"members": {"users": ["bob"]}})
        client = stack.enter_context(ClientThread(relay.url, tunnel.token, upstream.port))
        client.wait_connected()
        yield web, relay, upstream, tunnel


def raw(port: int, path: str, cookie: str | None = None, method: str = "GET", headers: dict | None = None,
        host: str = f"myapp.localhost:{PUBLIC_PORT}"):
    """One request to the relay as a browser on the tunnel's host would send it."""
    headers = {"Accept": "text/html", **(headers or {})}
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"Cookie: {cookie}"] if cookie else []
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += ["Content-Length: 0"] if method == "POST" else []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, sock.makefile("rb") as f:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return read_response(f)


def login(web, email: str) -> requests.Session:
    s = requests.Session()
    r = s.post(web.url + "/login", json={"email": email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    s.csrf = r.json()["csrf_token"]
    return s


def continue_url(session: requests.Session, access_url: str) -> str:
    """Where the web app's /access page moves on to (a meta refresh: see web/member_access)."""
    r = session.get(access_url.replace("localhost", "127.0.0.1", 1), allow_redirects=False)
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store", r.text
    url = re.search(r'id="continue" href="([^"]+)"', r.text).group(1).replace("&amp;", "&")
    assert f'content="0;url={url}"' in r.text.replace("&amp;", "&")
    return url


def sign_in(web, relay, session: requests.Session, path: str = "/page?q=1&x=%C3%A9") -> str:
    """The whole dance from an anonymous visit of ``path`` to the access cookie; its value."""
    status, headers, _ = raw(relay.port, path)
    assert status == 302
    access_url = headers["location"]
    assert access_url.startswith(f"http://localhost:{web.port}/access?")
    assert parse_qs(urlsplit(access_url).query)["to"] == [f"http://myapp.localhost:{PUBLIC_PORT}{path}"]
    ticket_url = urlsplit(continue_url(session, access_url))
    assert ticket_url.netloc == f"myapp.localhost:{PUBLIC_PORT}" and ticket_url.path == memberpass.AUTH_PATH
    status, headers, _ = raw(relay.port, f"{ticket_url.path}?{ticket_url.query}")
    assert status == 302 and headers["location"] == path, headers
    cookie = headers["set-cookie"]
    assert re.fullmatch(r"intunnel_access=[\w-]{40,}; Path=/; Max-Age=\d+; HttpOnly; SameSite=Lax", cookie)
    return cookie.split(";")[0]


def test_a_named_member_signs_in_and_lands_on_the_exact_url(stack):
    web, relay, upstream, tunnel = stack
    seen_before = len(upstream.seen)
    cookie = sign_in(web, relay, login(web, "bob@example.com"))
    assert len(upstream.seen) == seen_before   # nothing reached the app on the way
    status, _, body = raw(relay.port, "/page?q=1&x=%C3%A9", cookie=f"theme=dark; {cookie}; lang=en")
    assert status == 200
    echo = json.loads(body)
    assert echo["path"] == "/page?q=1&x=%C3%A9"
    assert echo["headers"]["Cookie"] == "theme=dark; lang=en"   # the access cookie was stripped
    for method, path, headers in upstream.seen:
        assert "ticket" not in path and "intunnel" not in json.dumps(headers).lower()


def test_the_owner_passes_and_an_unlisted_account_is_refused_at_the_web_app(stack):
    web, relay, _, _ = stack
    sign_in(web, relay, login(web, "alice@example.com"))
    carol = login(web, "carol@corp.example")
    _, headers, _ = raw(relay.port, "/")
    r = carol.get(headers["location"].replace("localhost", "127.0.0.1", 1), allow_redirects=False)
    assert r.status_code == 403 and "carol" in r.text


def test_anonymous_visitors_are_sent_to_log_in_and_scripts_get_401(stack):
    web, relay, upstream, _ = stack
    r = requests.get(raw_redirect := f"http://127.0.0.1:{web.port}/access?" + urlsplit(
        raw(relay.port, "/x")[1]["location"]).query, allow_redirects=False)
    assert r.status_code == 303 and r.headers["Location"].startswith("/login?next=%2Faccess%3Fto%3D"), raw_redirect
    status, _, body = raw(relay.port, "/x", headers={"Accept": "application/json"})
    assert status == 401 and json.loads(body)["code"] == "UNAUTHORIZED"
    assert raw(relay.port, "/form", method="POST")[0] == 401   # a POST is not redirected (its body)
    assert raw(relay.port, "/x", cookie="intunnel_access=made-up-token")[0] == 302
    assert not upstream.seen


def test_a_ticket_is_good_once_and_for_its_own_tunnel_only(stack, settings):
    web, relay, _, tunnel = stack
    bob = login(web, "bob@example.com")
    _, headers, _ = raw(relay.port, "/")
    ticket_path = continue_url(bob, headers["location"]).split(f":{PUBLIC_PORT}", 1)[1]
    assert raw(relay.port, ticket_path)[0] == 302
    assert raw(relay.port, ticket_path)[0] == 403   # replayed
    other = make_tunnel(web.settings, "other", 1, username="dave")
    session_row = memberpass.Session.get()
    ticket = memberpass.issue_ticket(session_row, other.id, "/", 60)
    assert raw(relay.port, f"{memberpass.AUTH_PATH}?ticket={ticket}")[0] == 403   # another tunnel's


def test_the_rule_applies_to_the_next_request_and_logout_everywhere_ends_access(stack):
    web, relay, _, tunnel = stack
    bob = login(web, "bob@example.com")
    cookie = sign_in(web, relay, bob)
    assert raw(relay.port, "/", cookie=cookie)[0] == 200
    tunnels.set_access(web.settings, Tunnel.get_by_id(tunnel.id), {"members": {"owner_only": True}})
    wait_for(lambda: raw(relay.port, "/", cookie=cookie)[0] == 403, message="owner_only applied")
    tunnels.set_access(web.settings, Tunnel.get_by_id(tunnel.id), {"members": True})
    wait_for(lambda: raw(relay.port, "/", cookie=cookie)[0] == 200, message="any member again")
    r = bob.post(f"{web.url}/logout", data={"csrf_token": bob.csrf, "everywhere": "1"}, allow_redirects=False)
    assert r.status_code in (200, 303)
    wait_for(lambda: raw(relay.port, "/", cookie=cookie)[0] == 302, timeout=5, message="access ended")


def test_disabling_the_account_ends_its_access(stack):
    web, relay, _, _ = stack
    cookie = sign_in(web, relay, login(web, "bob@example.com"))
    assert raw(relay.port, "/", cookie=cookie)[0] == 200
    accounts.set_disabled(User.get(User.username == "bob"), True)
    wait_for(lambda: raw(relay.port, "/", cookie=cookie)[0] == 302, timeout=5, message="access ended")


def test_a_keep_alive_connection_is_checked_per_request(stack):
    web, relay, upstream, _ = stack
    cookie = sign_in(web, relay, login(web, "bob@example.com"))
    host = f"myapp.localhost:{PUBLIC_PORT}"
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock, sock.makefile("rb") as f:
        sock.sendall(f"GET /one HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n".encode())
        assert read_response(f)[0] == 200
        sock.sendall(f"GET /two HTTP/1.1\r\nHost: {host}\r\nAccept: text/html\r\n\r\n".encode())
        assert read_response(f)[0] == 302
    assert [p for _, p, _ in upstream.seen] == ["/one"]


def test_an_app_cannot_plant_or_read_the_access_cookie():
    from intunnel.relay import cookies
    head = (b"HTTP/1.1 200 OK\r\nSet-Cookie: intunnel_access=planted; Path=/\r\n"
            b"Set-Cookie: __Host-intunnel_access=planted; Path=/; Secure\r\nSet-Cookie: own=1")
    assert cookies.scrub_set_cookies(head, "localhost") == b"HTTP/1.1 200 OK\r\nSet-Cookie: own=1"
    assert cookies.strip_access(["a=1; intunnel_access=x", "__Host-intunnel_access=y; b=2"]) == "a=1; b=2"
    assert cookies.strip_access(["intunnel_access=x"]) == ""
    assert cookies.strip_access(["a=1"]) is None


def test_bypass_paths_skip_members_only_but_not_the_ip_rules(stack):
    """A webhook sender (no account, no cookie) reaches a bypass path of a members-only tunnel,
    keep-alive too; a sibling or a dot-segment path is still sent to log in; an IP deny stands."""
    web, relay, upstream, tunnel = stack
    tunnels.set_access(web.settings, tunnel, {"bypass_paths": ["/webhooks/stripe"]})
    wait_for(lambda: relay.relay.sessions["myapp"].gate.stored == tunnel.access, 1.0,
             message="the relay has the new policy")
    assert raw(relay.port, "/webhooks/stripe", method="POST")[0] == 200
    assert raw(relay.port, "/webhooks/stripe/evt?id=1")[0] == 200
    for path in ("/webhooks/stripe-admin", "/webhooks/stripe/../x", "/webhooks/stripe/%2e%2e/x"):
        assert raw(relay.port, path)[0] == 302, path
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock, sock.makefile("rb") as f:
        for path, expected in (("/webhooks/stripe/1", 200), ("/private", 302)):
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: myapp.localhost:{PUBLIC_PORT}\r\nAccept: text/html"
                         "\r\n\r\n".encode())
            assert read_response(f)[0] == expected, path
    assert [p for _, p, _ in upstream.seen] == ["/webhooks/stripe", "/webhooks/stripe/evt?id=1",
                                                "/webhooks/stripe/1"]
    tunnels.set_access(web.settings, tunnel, {"ip_deny": ["127.0.0.1/32"]})
    wait_for(lambda: relay.relay.sessions["myapp"].gate.stored == tunnel.access, 1.0,
             message="the relay has the new policy")
    assert raw(relay.port, "/webhooks/stripe")[0] == 403


# --- the relay's pieces without sockets ---------------------------------------------------------

from datetime import datetime, timedelta  # noqa: E402

from hypothesis import given, strategies as st  # noqa: E402

from intunnel.members import Identity, Members  # noqa: E402
from intunnel.relay import members as relay_members  # noqa: E402
from intunnel.relay import cookies as relay_cookies  # noqa: E402
from intunnel.wire import http1  # noqa: E402


@pytest.mark.parametrize("values, tokens", [
    (None, []),
    (["a=1; b=2"], []),
    (["intunnel_access=t1"], ["t1"]),
    (["a=1;intunnel_access=t1 ; b=2"], ["t1"]),
    (['__Host-intunnel_access="t2"'], ["t2"]),
    (["x_intunnel_access=no; intunnel_accessx=no; intunnel_access="], []),
    (["a=1", "intunnel_access=t1, intunnel_access=t3"], ["t1", "t3"]),
])
def test_access_tokens(values, tokens):
    assert relay_cookies.access_tokens(values) == tokens


NAMES = st.sampled_from(["a", "theme", "intunnel_access", "__Host-intunnel_access", "intunnel_accessx", "sid"])
PAIRS = st.lists(st.tuples(NAMES, st.text("abcXYZ019-_", min_size=1, max_size=8)), max_size=6)


@given(PAIRS)
def test_stripping_keeps_every_other_cookie_in_order(pairs):
    header = "; ".join(f"{k}={v}" for k, v in pairs)
    kept = relay_cookies.strip_access([header])
    others = [f"{k}={v}" for k, v in pairs if k not in relay_cookies.ACCESS_NAMES]
    if len(others) == len(pairs):
        assert kept is None or kept == header   # nothing to strip
    else:
        assert kept == "; ".join(others)
        assert relay_cookies.access_tokens([kept]) == []


def _grants(settings):
    g = relay_members.Grants(settings)
    later, earlier = datetime.utcnow() + timedelta(hours=1), datetime.utcnow() - timedelta(seconds=1)
    g.remember("bob-token", "d-bob", memberpass.Grant(7, Identity(2, "bob", "bob@example.com"), later))
    g.remember("old-token", "d-old", memberpass.Grant(7, Identity(2, "bob", "bob@example.com"), earlier))
    g.remember("eve-token", "d-eve", memberpass.Grant(7, Identity(3, "eve", "eve@corp.example"), later))
    g.remember("other-tunnel", "d-other", memberpass.Grant(8, Identity(2, "bob", "bob@example.com"), later))
    g.remember("no-grant", "d-none", None)
    return g


@pytest.mark.parametrize("target, cookie, verdict", [
    ("/", "intunnel_access=bob-token", "allow"),
    ("/", "intunnel_access=eve-token", "not_member"),
    ("/", "intunnel_access=old-token", "login"),       # expired
    ("/", "intunnel_access=other-tunnel", "login"),    # another tunnel's grant
    ("/", "intunnel_access=no-grant", "login"),
    ("/", None, "login"),
    ("/", "intunnel_access=eve-token; intunnel_access=bob-token", "allow"),
    ("/_intunnel/auth?ticket=x", "intunnel_access=bob-token", "redeem"),
    ("/_intunnel/authx", None, "login"),
])
def test_grant_verdicts(settings, target, cookie, verdict):
    head = http1.parse_request_head(f"GET {target} HTTP/1.1\r\nHost: myapp.localhost".encode()
                                    + (f"\r\nCookie: {cookie}".encode() if cookie else b""))
    assert _grants(settings).verdict(7, 1, Members(users=("bob",)), head) == verdict


def test_an_unseen_cookie_is_looked_up_and_a_refresh_forgets_what_ended(settings):
    g = _grants(settings)
    head = http1.parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: intunnel_access=new")
    look = g.verdict(7, 1, Members(), head)
    assert isinstance(look, relay_members.LookUp) and look.token_hash == relay_members._digest("new")
    assert sorted(g.live()) == ["d-bob", "d-eve", "d-old", "d-other"] and g.live({3}) == ["d-eve"]
    still = {"d-bob": memberpass.Grant(7, Identity(2, "bob", "bob@example.com"), datetime(2099, 1, 1))}
    assert g.keep_only(["d-bob", "d-eve"], still) == 1          # eve signed out
    assert g.verdict(7, 1, Members(), http1.parse_request_head(
        b"GET / HTTP/1.1\r\nHost: a\r\nCookie: intunnel_access=eve-token")) != "allow"


@pytest.mark.parametrize("target, safe", [
    ("/page?q=1", "/page?q=1"), ("//evil.example/x", "/"), ("/\\evil.example", "/"), ("http://evil/", "/"),
    ("/caf\u00e9", "/"), ("/a b", "/"), (memberpass.AUTH_PATH + "?ticket=old", "/"), ("/", "/"),
])
def test_where_a_redeemed_ticket_may_send_the_visitor(target, safe):
    assert relay_members._safe_target(target) == safe


def test_the_proxy_strips_the_cookie_memberpass_sets():
    assert relay_cookies.ACCESS == memberpass.COOKIE
    assert memberpass.cookie_name(True) in relay_cookies.ACCESS_NAMES
