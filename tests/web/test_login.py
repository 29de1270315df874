"""POST /login, POST /logout, GET /login, sessions, CSRF origin check, login throttle."""

from __future__ import annotations

import pytest
import requests

from intunnel.models import Session, database
from intunnel.security import sha256_hex

from conftest import PASSWORD, create_user


def test_healthz(web):
    r = requests.get(web.url + "/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in r.headers["Content-Security-Policy"]
    assert r.headers["Referrer-Policy"] == "same-origin"


def test_login_page_is_html_form(web):
    r = requests.get(web.url + "/login", headers={"Accept": "text/html"})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert 'name="email"' in r.text and 'name="password"' in r.text


def test_form_login_script_gets_json_and_cookie_flags(web, alice):
    r = requests.post(web.url + "/login", data={"email": "alice@example.com", "password": PASSWORD})
    assert r.status_code == 200
    assert r.json()["success"] is True and r.json()["user"]["username"] == "alice"
    cookie = r.raw.headers.getlist("Set-Cookie")[0]
    assert cookie.startswith("intunnel_session=") and "HttpOnly" in cookie and "samesite=lax" in cookie.lower()
    assert "Secure" not in cookie  # public_scheme http
    value = r.cookies["intunnel_session"]
    with database.connection_context():
        row = Session.get(Session.id_hash == sha256_hex(value))  # only the hash is stored
        assert row.user_id == alice.id and row.expires_at > row.created_at


def test_json_login(web, alice):
    r = requests.post(web.url + "/login", json={"email": "alice@example.com", "password": PASSWORD})
    assert r.status_code == 200 and r.json()["user"]["email"] == "alice@example.com"


def test_secure_cookie_under_https(settings, alice_factory=None):
    from support.web_server import running_web_app
    with running_web_app(settings, public_scheme="https") as web:
        create_user("bob@example.com", "bob")
        r = requests.post(web.url + "/login", json={"email": "bob@example.com", "password": PASSWORD})
        cookie = r.raw.headers.getlist("Set-Cookie")[0]
        assert cookie.startswith("__Host-intunnel_session=") and "Secure" in cookie


def test_browser_login_redirects_to_safe_next(web, alice):
    html = {"Accept": "text/html"}
    r = requests.post(web.url + "/login", headers=html, allow_redirects=False,
                      data={"email": "alice@example.com", "password": PASSWORD, "next": "/tokens"})
    assert r.status_code == 303 and r.headers["Location"] == "/tokens"
    assert r.cookies.get("intunnel_session")
    r = requests.post(web.url + "/login", headers=html, allow_redirects=False,
                      data={"email": "alice@example.com", "password": PASSWORD, "next": "//evil.example/x"})
    assert r.status_code == 303 and r.headers["Location"] == "/"
    r = requests.post(web.url + "/login", headers=html, allow_redirects=False,
                      data={"email": "alice@example.com", "password": "wrong"})
    assert r.status_code == 303 and r.headers["Location"] == "/login?error=invalid"


def test_new_session_id_at_every_login_and_logout_ends_it(web, alice):
    s = requests.Session()
    s.post(web.url + "/login", data={"email": "alice@example.com", "password": PASSWORD})
    first = s.cookies["intunnel_session"]
    csrf = s.post(web.url + "/login", data={"email": "alice@example.com", "password": PASSWORD}).json()["csrf_token"]
    second = s.cookies["intunnel_session"]
    assert first != second
    # the old id is dead
    r = requests.get(web.url + "/api/user/profile", cookies={"intunnel_session": first})
    assert r.status_code == 401
    assert s.get(web.url + "/api/user/profile").status_code == 200
    r = s.post(web.url + "/logout", data={"csrf_token": csrf})
    assert r.status_code == 200 and r.json() == {"success": True, "message": "Logged out"}
    r = requests.get(web.url + "/api/user/profile", cookies={"intunnel_session": second})
    assert r.status_code == 401 and r.json()["code"] == "UNAUTHORIZED"


def test_wrong_password_and_unknown_user_are_401(web, alice):
    for email, password in (("alice@example.com", "nope-nope"), ("ghost@example.com", PASSWORD)):
        r = requests.post(web.url + "/login", data={"email": email, "password": password})
        assert r.status_code == 401
        assert r.json() == {"error": True, "message": "Invalid email or password", "code": "UNAUTHORIZED"}


def test_disabled_user_cannot_log_in(web):
    create_user("dis@example.com", "dis", disabled=True)
    r = requests.post(web.url + "/login", data={"email": "dis@example.com", "password": PASSWORD})
    assert r.status_code == 401


def test_login_throttled_per_account(web, alice):
    limit = web.settings.login_max_failures
    for _ in range(limit):
        assert requests.post(web.url + "/login", data={"email": "alice@example.com", "password": "x"}).status_code == 401
    # even the right password is refused now, with Retry-After
    r = requests.post(web.url + "/login", data={"email": "alice@example.com", "password": PASSWORD})
    assert r.status_code == 429 and r.json()["code"] == "RATE_LIMITED"
    assert int(r.headers["Retry-After"]) > 0


def test_login_throttle_window_passes(web, alice, clock):
    for _ in range(web.settings.login_max_failures):
        requests.post(web.url + "/login", data={"email": "alice@example.com", "password": "x"})
    assert requests.post(web.url + "/login", data={"email": "alice@example.com", "password": PASSWORD}).status_code == 429
    clock.advance(15 * 60)
    assert requests.post(web.url + "/login", data={"email": "alice@example.com", "password": PASSWORD}).status_code == 200


def test_login_throttled_per_address(web):
    # failures spread over many accounts still stop one address
    from intunnel.web.state import LOGIN_ADDRESS_ACCOUNTS
    for i in range(web.settings.login_max_failures * LOGIN_ADDRESS_ACCOUNTS):
        requests.post(web.url + "/login", data={"email": f"u{i}@example.com", "password": "x"})
    create_user("late@example.com", "late")
    r = requests.post(web.url + "/login", data={"email": "late@example.com", "password": PASSWORD})
    assert r.status_code == 429


@pytest.fixture
def proxied(settings, clock):
    """The app behind a proxy (as behind nginx): each request names its client in X-Forwarded-For."""
    from support.web_server import running_web_app
    with running_web_app(settings, clock=clock, web_trust_proxy=True) as web:
        def post(address, login, password):
            return requests.post(web.url + "/login", data={"email": login, "password": password},
                                 headers={"X-Forwarded-For": address})
        web.post_login = post
        yield web


def test_failures_from_elsewhere_never_lock_the_owner_out(proxied):
    """Guesses from many addresses, by email and by username, leave the owner's own address alone."""
    create_user("alice@example.com", "alice")
    limit, owner = proxied.settings.login_max_failures, "198.51.100.7"
    for i in range(limit):
        for login in ("alice@example.com", "alice"):
            assert proxied.post_login(f"203.0.113.{i}", login, "guess").status_code == 401
    for _ in range(limit - 2):
        proxied.post_login("203.0.113.0", "alice", "guess")
    assert proxied.post_login("203.0.113.0", "alice@example.com", PASSWORD).status_code == 429
    assert proxied.post_login(owner, "alice@example.com", PASSWORD).status_code == 200
    assert proxied.post_login(owner, "alice", PASSWORD).status_code == 200


def test_email_and_username_are_one_budget(proxied):
    """The budget of (account, address) is the account's, whichever name the guesses use."""
    create_user("alice@example.com", "alice")
    create_user("bob@example.com", "bob")
    address, limit = "203.0.113.9", proxied.settings.login_max_failures
    for i in range(limit):
        assert proxied.post_login(address, ("alice@example.com", "alice", "ALICE@example.com")[i % 3],
                                  "guess").status_code == 401
    for login in ("alice", "alice@example.com", " Alice@Example.com "):
        assert proxied.post_login(address, login, "guess").status_code == 429, login
    # the address itself still has budget left for another account
    assert proxied.post_login(address, "bob", "guess").status_code == 401
    assert proxied.post_login(address, "bob@example.com", PASSWORD).status_code == 200


def test_owner_login_resets_only_their_own_budget(proxied):
    create_user("alice@example.com", "alice")
    address, limit = "198.51.100.7", proxied.settings.login_max_failures
    for _ in range(limit - 1):
        proxied.post_login(address, "alice", "typo")
    assert proxied.post_login(address, "alice@example.com", PASSWORD).status_code == 200
    for _ in range(limit - 1):
        assert proxied.post_login(address, "alice", "typo").status_code == 401
    assert proxied.post_login(address, "alice", PASSWORD).status_code == 200


def test_cross_site_post_with_cookie_is_403(web, alice_session):
    for header in ({"Origin": "http://evil.example"}, {"Referer": "http://evil.example/page"}, {"Origin": "null"}):
        r = alice_session.post(web.url + "/api/tunnels", headers=header,
                               json={"name": "x", "subdomain": "csrf", "local_port": 80})
        assert r.status_code == 403 and r.json()["code"] == "FORBIDDEN", header
    r = alice_session.post(web.url + "/api/tunnels", headers={"Origin": web.url},
                           json={"name": "x", "subdomain": "same", "local_port": 80})
    assert r.status_code == 200


def test_cross_site_logout_refused(web, alice_session):
    r = alice_session.post(web.url + "/logout", headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    assert alice_session.get(web.url + "/api/user/profile").status_code == 200



def test_logout_needs_the_sessions_csrf_token(web, alice):
    """A logout without the form's token (a forged form, a link, an old page) is refused like any form."""
    import re
    s = requests.Session()
    s.post(web.url + "/login", data={"email": "alice@example.com", "password": PASSWORD})
    page = s.get(web.url + "/profile", headers={"Accept": "text/html"}).text
    csrf = re.search(r'action="/logout">\s*<input type="hidden" name="csrf_token" value="([^"]+)"', page).group(1)
    for data in ({}, {"csrf_token": ""}, {"csrf_token": csrf + "x"}, {"csrf_token": "x" * len(csrf)}):
        r = s.post(web.url + "/logout", data=data)
        assert r.status_code == 403 and r.json()["code"] == "FORBIDDEN", data
        r = s.post(web.url + "/logout", data=data, headers={"Accept": "text/html"}, allow_redirects=False)
        assert r.status_code == 403 and "CSRF token" in r.text and r.headers["Content-Type"].startswith("text/html")
        assert "Set-Cookie" not in r.headers
        assert s.get(web.url + "/api/user/profile").status_code == 200, data
    r = s.post(web.url + "/logout", data={"csrf_token": csrf}, headers={"Accept": "text/html"}, allow_redirects=False)
    assert r.status_code == 303 and r.headers["Location"] == "/login"
    assert s.get(web.url + "/api/user/profile").status_code == 401


def test_logout_without_a_session_is_harmless(web):
    r = requests.post(web.url + "/logout")
    assert r.status_code == 200 and r.json() == {"success": True, "message": "Logged out"}

def test_unknown_page_is_html_for_browsers_json_for_api(web):
    r = requests.get(web.url + "/no-such-page", headers={"Accept": "text/html"})
    assert r.status_code == 404 and r.headers["Content-Type"].startswith("text/html")
    r = requests.get(web.url + "/api/no-such-endpoint", headers={"Accept": "text/html"})
    assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND"


# (Accept, an HTML answer): the web app's side of errors.wants_json (tests/test_errors.py has the rule).
NEGOTIATION = [
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),
    ("application/json", False),
    ("*/*", False),
    (None, False),
    ("application/json, text/html;q=0.5", False),
    ("application/json;q=0.5, text/html", True),
]


@pytest.mark.parametrize("accept, html", NEGOTIATION)
def test_error_pages_and_login_negotiate_alike(web, alice, accept, html):
    headers = {"Accept": accept} if accept is not None else {}
    session = requests.Session()
    if accept is None:
        del session.headers["Accept"]
    r = session.get(web.url + "/no-such-page", headers=headers)
    assert r.status_code == 404
    if html:
        assert r.headers["Content-Type"].startswith("text/html")
    else:
        assert r.headers["Content-Type"].startswith("application/json") and r.json()["code"] == "NOT_FOUND"
    r = session.post(web.url + "/login", headers=headers, allow_redirects=False,
                     data={"email": "alice@example.com", "password": "wrong"})
    if html:
        assert r.status_code == 303 and r.headers["Location"] == "/login?error=invalid"
    else:
        assert r.status_code == 401 and r.json()["code"] == "UNAUTHORIZED"
    r = session.post(web.url + "/login", headers=headers, allow_redirects=False,
                     data={"email": "alice@example.com", "password": PASSWORD})
    assert (r.status_code, r.headers.get("Location")) == ((303, "/") if html else (200, None))


def test_expired_session_is_401(web, alice_session):
    from datetime import timedelta
    from intunnel.timeutil import utcnow
    assert alice_session.get(web.url + "/api/user/profile").status_code == 200
    with database.connection_context():
        Session.update(expires_at=utcnow() - timedelta(seconds=1)).execute()
    r = alice_session.get(web.url + "/api/user/profile")
    assert r.status_code == 401 and r.json()["code"] == "UNAUTHORIZED"


def test_csrf_token_helpers(web, alice, alice_session):
    """csrf_token()/check_csrf_form() as the dashboard uses them, on a throwaway route."""
    from intunnel.web import auth

    def form_post():
        auth.check_csrf_form()
        return {"ok": True}

    def token():
        return {"csrf_token": auth.csrf_token()}

    web.app.route("/test-form", "POST", form_post)
    web.app.route("/test-token", "GET", token)
    value = alice_session.get(web.url + "/test-token").json()["csrf_token"]
    assert value and requests.get(web.url + "/test-token").json() == {"csrf_token": None}
    assert alice_session.post(web.url + "/test-form", data={"csrf_token": value}).json() == {"ok": True}
    for bad in ({"csrf_token": value + "x"}, {}):
        assert alice_session.post(web.url + "/test-form", data=bad).status_code == 403
    assert requests.post(web.url + "/test-form", data={"csrf_token": value}).status_code == 403


def test_json_login_bad_shapes(web, alice):
    for body, field in (({"email": "alice@example.com"}, "password"), ({"email": 5, "password": "x"}, "email"),
                        ({"email": "a", "password": "b", "remember": True}, "remember")):
        r = requests.post(web.url + "/login", json=body)
        assert r.status_code == 400 and r.json()["code"] == "VALIDATION_ERROR" and field in r.json()["message"]
    r = requests.post(web.url + "/login", data="email=x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json()["code"] == "UNSUPPORTED_MEDIA_TYPE"


def test_dashboard_redirects_stay_relative(web, alice):
    """Behind a TLS proxy the app sees http: an absolute Location would drop the browser to http."""
    r = requests.get(web.url + "/", headers={"Accept": "text/html"}, allow_redirects=False)
    assert r.status_code == 303 and r.headers["Location"].startswith("/login")
