"""A dashboard-created API token's secret: shown once, on the next page, and never in a cookie."""

from __future__ import annotations

import base64
import html
import re
from urllib.parse import unquote

import requests

from intunnel.models import ApiToken, database
from intunnel.security import sha256_hex

from conftest import PASSWORD, create_user

HTML = {"Accept": "text/html"}
SECRET_ON_PAGE = re.compile(r'<code id="new-token-value">([^<]+)</code>')


def browser_session(web, email: str) -> requests.Session:
    s = requests.Session()
    s.headers.update(HTML)
    assert s.post(web.url + "/login", data={"email": email, "password": PASSWORD}).ok
    return s


def form_token(s: requests.Session, web) -> str:
    page = s.get(web.url + "/tokens").text
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def readings(value: str) -> list[str]:
    """A cookie value and what it says once url- and base64-decoded, part by part."""
    found = [value, unquote(value)]
    for text in list(found):
        for part in re.split(r"[.:|]", text):
            for decode in (base64.urlsafe_b64decode, base64.b64decode):
                try:
                    found.append(decode(part + "=" * (-len(part) % 4)).decode("utf-8", "replace"))
                except ValueError:
                    pass
    return found


def set_cookies(r: requests.Response) -> list[str]:
    return r.raw.headers.getlist("Set-Cookie")


def test_new_token_secret_is_shown_once_and_never_in_a_cookie(web):
    create_user("alice@example.com", "alice")
    s = browser_session(web, "alice@example.com")
    created = s.post(web.url + "/tokens", data={"csrf_token": form_token(s, web), "name": "deploy"},
                     allow_redirects=False)
    assert created.status_code == 303 and created.headers["Location"] == "/tokens"
    shown = s.get(web.url + "/tokens")
    secrets_on_page = SECRET_ON_PAGE.findall(shown.text)
    assert len(secrets_on_page) == 1
    secret = html.unescape(secrets_on_page[0])
    with database.connection_context():
        assert ApiToken.get(ApiToken.token_hash == sha256_hex(secret)).name == "deploy"
    for response in (created, shown):
        for header in set_cookies(response):
            for reading in readings(header.split(";", 1)[0].partition("=")[2]):
                assert secret not in reading and secret[4:20] not in reading, header
    # once: the next visit shows no secret
    assert not SECRET_ON_PAGE.search(s.get(web.url + "/tokens").text)


def test_flash_cookie_replayed_elsewhere_shows_no_secret(web):
    """Even the flash cookie copied into another session (same user) before it was read reveals nothing."""
    create_user("alice@example.com", "alice")
    s = browser_session(web, "alice@example.com")
    created = s.post(web.url + "/tokens", data={"csrf_token": form_token(s, web), "name": "deploy"},
                     allow_redirects=False)
    other = browser_session(web, "alice@example.com")
    for header in set_cookies(created):
        name, _, value = header.split(";", 1)[0].partition("=")
        if "flash" in name:
            other.cookies.set(name, value)
    page = other.get(web.url + "/tokens").text
    assert "created" in page and not SECRET_ON_PAGE.search(page)
    assert len(SECRET_ON_PAGE.findall(s.get(web.url + "/tokens").text)) == 1
