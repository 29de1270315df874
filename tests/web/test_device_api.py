"""intunnel login's device authorization over HTTP: POST /api/device/code and /api/device/token
(the API's error format with RFC 8628's codes) and the dashboard's /device page (login first,
CSRF, wrong codes), on a real web app and database."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import requests

from intunnel.models import ApiToken, DeviceAuthorization, database
from intunnel.security import sha256_hex
from intunnel.timeutil import utcnow

from conftest import PASSWORD, create_user

CODE_RE = r"^[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}$"


def start(web, name="laptop", **kw):
    r = requests.post(web.url + "/api/device/code", json={"client_name": name}, **kw)
    assert r.status_code == 200, r.text
    return r.json()


def poll(web, device_code):
    return requests.post(web.url + "/api/device/token", json={"device_code": device_code})


def row_of(device_code) -> DeviceAuthorization:
    with database.connection_context():
        return DeviceAuthorization.get(DeviceAuthorization.device_code_hash == sha256_hex(device_code))


def change(device_code, **fields):
    """Move a row in time (no waiting): forget the last poll, or expire it."""
    with database.connection_context():
        (DeviceAuthorization.update(**fields)
         .where(DeviceAuthorization.device_code_hash == sha256_hex(device_code)).execute())


def logged_in(web, email="alice@example.com"):
    s = requests.Session()
    r = s.post(web.url + "/login", json={"email": email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return s, r.json()["csrf_token"]


def decide(web, session, csrf, user_code, decision):
    return session.post(web.url + "/device", data={"csrf_token": csrf, "user_code": user_code,
                                                   "decision": decision},
                        headers={"Accept": "text/html"}, allow_redirects=False)


def error(r, status, code):
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] is True and body["code"] == code and body["message"], body


def test_code_answer(web):
    got = start(web)
    assert set(got) == {"device_code", "user_code", "verification_uri", "verification_uri_complete",
                        "expires_in", "interval"}
    assert re.match(CODE_RE, got["user_code"])
    assert got["verification_uri"].endswith("/device")
    assert got["verification_uri_complete"] == got["verification_uri"] + "?code=" + got["user_code"]
    assert got["expires_in"] == web.settings.device_code_lifetime and got["interval"] == web.settings.device_poll_interval
    row = row_of(got["device_code"])
    assert row.client_name == "laptop" and row.client_address == "127.0.0.1"
    assert got["device_code"] not in (row.device_code_hash, row.user_code)  # stored hashed
    assert row.expires_at == row.created_at + timedelta(seconds=web.settings.device_code_lifetime)


def test_approved_flow_gives_a_working_token_once(web, alice):
    got = start(web, "build box")
    error(poll(web, got["device_code"]), 400, "AUTHORIZATION_PENDING")
    error(poll(web, got["device_code"]), 400, "SLOW_DOWN")  # at once again: too fast
    assert row_of(got["device_code"]).interval == web.settings.device_poll_interval + 5
    session, csrf = logged_in(web)
    page = session.get(web.url + "/device", params={"code": got["user_code"].lower()})
    assert page.status_code == 200 and "build box" in page.text and "127.0.0.1" in page.text
    r = decide(web, session, csrf, got["user_code"], "approve")
    assert r.status_code == 303 and r.headers["Location"] == "/tokens"
    with database.connection_context():  # the token exists from the approval on, unusable yet
        assert [t.name for t in ApiToken.select()] == ["intunnel login on build box"]
    change(got["device_code"], last_poll_at=None)
    r = poll(web, got["device_code"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user"] == {"id": alice.id, "username": "alice", "email": "alice@example.com"}
    assert body["api_token"]["name"] == "intunnel login on build box"
    assert body["token"].startswith("itk_") and body["token"].startswith(body["api_token"]["prefix"])
    assert body["relay_url"] == web.app.intunnel.settings.relay_url
    assert body["web_url"] == web.app.intunnel.settings.web_url
    me = requests.get(web.url + "/api/user/profile", headers={"Authorization": f"Bearer {body['token']}"})
    assert me.status_code == 200 and me.json()["email"] == "alice@example.com"
    # one redemption
    change(got["device_code"], last_poll_at=None)
    error(poll(web, got["device_code"]), 400, "EXPIRED_TOKEN")
    # the token revokes itself (intunnel logout)
    bearer = {"Authorization": f"Bearer {body['token']}"}
    r = requests.delete(f"{web.url}/api/tokens/{body['api_token']['id']}", headers=bearer)
    assert r.status_code == 200, r.text
    assert requests.get(web.url + "/api/user/profile", headers=bearer).status_code == 401


def test_denied(web, alice):
    got = start(web)
    session, csrf = logged_in(web)
    r = decide(web, session, csrf, got["user_code"], "deny")
    assert r.status_code == 303
    error(poll(web, got["device_code"]), 403, "ACCESS_DENIED")
    assert session.get(web.url + "/device", params={"code": got["user_code"]}).status_code == 400  # decided
    with database.connection_context():
        assert ApiToken.select().count() == 0


def test_expired(web, alice):
    got = start(web)
    change(got["device_code"], expires_at=utcnow() - timedelta(seconds=1))
    error(poll(web, got["device_code"]), 400, "EXPIRED_TOKEN")
    session, csrf = logged_in(web)
    page = session.get(web.url + "/device", params={"code": got["user_code"]})
    assert page.status_code == 400 and "unknown, expired or already used" in page.text
    assert decide(web, session, csrf, got["user_code"], "approve").status_code == 400
    # the next code asked for prunes it
    start(web)
    with database.connection_context():
        assert DeviceAuthorization.select().count() == 1


def test_token_revoked_before_the_client_picked_it_up(web, alice):
    got = start(web)
    session, csrf = logged_in(web)
    decide(web, session, csrf, got["user_code"], "approve")
    with database.connection_context():
        ApiToken.delete().execute()
    error(poll(web, got["device_code"]), 403, "ACCESS_DENIED")


@pytest.mark.parametrize("path, body, field", [
    ("/api/device/code", {}, "client_name"),
    ("/api/device/code", {"client_name": ""}, "client_name"),
    ("/api/device/code", {"client_name": "x" * 65}, "client_name"),
    ("/api/device/code", {"client_name": "a\x1bb"}, "client_name"),
    ("/api/device/code", {"client_name": 7}, "client_name"),
    ("/api/device/code", {"client_name": "a", "scope": "all"}, "scope"),
    ("/api/device/token", {}, "device_code"),
    ("/api/device/token", {"device_code": 5}, "device_code"),
    ("/api/device/token", {"device_code": "x" * 500}, "device_code"),
])
def test_bad_input_is_a_validation_error(web, path, body, field):
    r = requests.post(web.url + path, json=body)
    error(r, 400, "VALIDATION_ERROR")
    assert field in r.json()["message"]


def test_unknown_device_code(web):
    error(poll(web, "no-such-code"), 400, "EXPIRED_TOKEN")


def test_pending_codes_per_address_are_capped(settings, clock):
    from support.web_server import running_web_app
    with running_web_app(settings, clock=clock, device_max_pending_per_address=2) as web:
        start(web)
        start(web)
        r = requests.post(web.url + "/api/device/code", json={"client_name": "third"})
        error(r, 429, "RATE_LIMITED")
        assert int(r.headers["Retry-After"]) >= 1


def test_the_page_needs_a_login_and_comes_back_with_the_code(web, alice):
    got = start(web)
    r = requests.get(web.url + "/device", params={"code": got["user_code"]}, allow_redirects=False,
                     headers={"Accept": "text/html"})
    assert r.status_code == 303
    assert r.headers["Location"] == "/login?next=%2Fdevice%3Fcode%3D" + got["user_code"]
    r = requests.post(web.url + "/device", data={"user_code": got["user_code"], "decision": "approve"},
                      headers={"Accept": "text/html"}, allow_redirects=False)
    assert r.status_code == 303 and r.headers["Location"].startswith("/login")


def test_the_page_needs_the_csrf_token(web, alice):
    got = start(web)
    session, csrf = logged_in(web)
    for token in ("", "x" * len(csrf), csrf + "x"):
        r = decide(web, session, token, got["user_code"], "approve")
        assert r.status_code == 403, r.text
    # another site's page can't post it either, even with the token
    r = session.post(web.url + "/device", data={"csrf_token": csrf, "user_code": got["user_code"],
                                                "decision": "approve"},
                     headers={"Origin": "https://evil.example", "Accept": "text/html"}, allow_redirects=False)
    assert r.status_code == 403
    assert row_of(got["device_code"]).approved_by_id is None


def test_a_wrong_code_on_the_page(web, alice):
    start(web)
    session, csrf = logged_in(web)
    for typed in ("BCDF-GHJK", "not a code", "x" * 200):
        page = session.get(web.url + "/device", params={"code": typed})
        assert page.status_code == 400 and "unknown, expired or already used" in page.text
        assert decide(web, session, csrf, typed, "approve").status_code == 400
    empty = session.get(web.url + "/device")
    assert empty.status_code == 200 and 'name="code"' in empty.text


def test_another_user_approving_gets_the_token_for_themselves(web, alice):
    """Whoever approves is who the machine logs in as (the page says so before the button)."""
    create_user("bob@example.com", "bob")
    got = start(web)
    session, csrf = logged_in(web, "bob@example.com")
    assert "bob@example.com" in session.get(web.url + "/device", params={"code": got["user_code"]}).text
    decide(web, session, csrf, got["user_code"], "approve")
    change(got["device_code"], last_poll_at=None)
    assert poll(web, got["device_code"]).json()["user"]["username"] == "bob"


def test_code_lookups_on_the_page_are_rate_limited(settings, clock):
    """Guessing codes on the page costs the user's read budget (rate_limit_get a minute)."""
    from support.web_server import running_web_app
    with running_web_app(settings, clock=clock, rate_limit_get=3) as web:
        create_user("alice@example.com", "alice")
        got = start(web)
        session, _ = logged_in(web)
        for _ in range(3):
            assert session.get(web.url + "/device", params={"code": "BCDF-GHJK"}).status_code == 400
        r = session.get(web.url + "/device", params={"code": got["user_code"]}, headers={"Accept": "text/html"})
        assert r.status_code == 429 and "Too many codes tried" in r.text
        clock.advance(61)
        assert session.get(web.url + "/device", params={"code": got["user_code"]}).status_code == 200


def test_the_tokens_page_says_how_a_machine_logs_in(web, alice):
    session, _ = logged_in(web)
    page = session.get(web.url + "/tokens").text
    relay_url = web.app.intunnel.settings.relay_url
    assert f'<span class="mono" id="login-command">intunnel login --server {relay_url}</span>' in page
