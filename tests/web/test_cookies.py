"""The web app's cookies against a tunnel planting its own (tunnels are subdomains of the web app's domain).

Under https the session and flash cookies are ``__Host-`` cookies (a subdomain
can't set those); over http they keep their plain names.  A request carrying
more than one session cookie, in either name, is not logged in.
"""

from __future__ import annotations

import re

import pytest
import requests

from support.web_server import running_web_app

from conftest import PASSWORD, create_user

DOMAIN = "intunnel.test"


def set_cookie_headers(r: requests.Response) -> list[str]:
    return r.raw.headers.getlist("Set-Cookie")


def attributes(header: str) -> tuple[str, str, dict[str, str]]:
    first, *rest = [part.strip() for part in header.split(";")]
    name, _, value = first.partition("=")
    return name, value, {k.lower(): v for k, _, v in (a.partition("=") for a in rest)}


def login(web, email: str) -> tuple[str, str, list[str]]:
    """Log in as a script: (cookie name, its value, every Set-Cookie header of the answer)."""
    r = requests.post(web.url + "/login", data={"email": email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    headers = set_cookie_headers(r)
    live = [attributes(h) for h in headers if attributes(h)[1]]
    assert len(live) == 1, headers
    return live[0][0], live[0][1], headers


def profile(web, cookie_header: str) -> int:
    return requests.get(web.url + "/api/user/profile", headers={"Cookie": cookie_header}).status_code


@pytest.fixture(params=["https", "http"])
def site(request, settings):
    with running_web_app(settings, public_scheme=request.param, domain=DOMAIN) as web:
        create_user("alice@example.com", "alice")
        create_user("mallory@example.com", "mallory")
        yield web


def test_session_cookie_name_and_attributes(site):
    name, value, headers = login(site, "alice@example.com")
    own = next(attributes(h) for h in headers if attributes(h)[1])
    if site.settings.public_scheme == "https":
        assert name == "__Host-intunnel_session"
        assert "secure" in own[2] and own[2]["path"] == "/" and "domain" not in own[2]
    else:
        assert name == "intunnel_session" and "secure" not in own[2]
    assert "httponly" in own[2] and own[2]["samesite"].lower() == "lax"
    assert headers[0].startswith(name + "="), "the session cookie comes first (scripts read the first one)"
    assert profile(site, f"{name}={value}") == 200


def test_two_session_cookies_are_not_a_login(site):
    """A victim's cookie plus one planted by a tunnel (Domain=<domain>), in either order and name: nobody."""
    name, alice, _ = login(site, "alice@example.com")
    _, mallory, _ = login(site, "mallory@example.com")
    plain = "intunnel_session"
    for header in (f"{name}={alice}; {name}={mallory}", f"{name}={mallory}; {name}={alice}",
                   f"{name}={alice}; {plain if name != plain else '__Host-' + plain}={mallory}",
                   f"{plain if name != plain else '__Host-' + plain}={mallory}; {name}={alice}",
                   f"theme=dark; {name}={alice}, {name}={mallory}"):
        assert profile(site, header) == 401, header
    assert profile(site, f"theme=dark; {name}={alice}") == 200


def test_the_other_name_alone_is_not_a_login(site):
    name, alice, _ = login(site, "alice@example.com")
    other = "intunnel_session" if name.startswith("__Host-") else "__Host-intunnel_session"
    assert profile(site, f"{other}={alice}") == 401


def test_login_and_logout_clear_planted_copies(site):
    """A planted Domain=<domain> copy (and, under https, the old plain cookie) is deleted at login and
    logout, so the duplicate rule can't keep the owner logged out."""
    name, value, headers = login(site, "alice@example.com")
    deleted = {(n, a.get("domain", "").lower()) for n, v, a in map(attributes, headers)
               if not v and a.get("max-age") == "0"}
    assert ("intunnel_session", DOMAIN) in deleted
    if name.startswith("__Host-"):
        assert ("intunnel_session", "") in deleted
    for n, v, a in map(attributes, headers):
        assert not (n == name and not v and not a.get("domain")), "the new cookie itself is never deleted"
    page = requests.get(site.url + "/profile", headers={"Cookie": f"{name}={value}", "Accept": "text/html"}).text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    r = requests.post(site.url + "/logout", data={"csrf_token": csrf},
                      headers={"Cookie": f"{name}={value}; intunnel_session=planted"}, allow_redirects=False)
    assert r.status_code == 200  # two cookies: not logged in, so nothing to check; cookies cleared all the same
    deleted = {(n, a.get("domain", "").lower()) for n, v, a in map(attributes, set_cookie_headers(r)) if not v}
    assert (name, "") in deleted and ("intunnel_session", DOMAIN) in deleted


def test_flash_cookie_name_and_planted_copies(site):
    name, value, _ = login(site, "alice@example.com")
    s = requests.Session()
    s.headers.update({"Accept": "text/html", "Cookie": f"{name}={value}"})
    page = s.get(site.url + "/tokens").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    r = s.post(site.url + "/tokens", data={"csrf_token": csrf, "name": "t"}, allow_redirects=False)
    flash = [attributes(h) for h in set_cookie_headers(r) if "flash" in h]
    assert len(flash) == 1
    flash_name, flash_value, attrs = flash[0]
    if site.settings.public_scheme == "https":
        assert flash_name == "__Host-intunnel_flash" and "secure" in attrs and "domain" not in attrs
    else:
        assert flash_name == "intunnel_flash"
    assert attrs["path"] == "/"
    cookie = f"{name}={value}; {flash_name}={flash_value}"
    # a second flash cookie (planted, even a validly signed one): no message shown from either
    r = requests.get(site.url + "/tokens", headers={"Accept": "text/html",
                                                    "Cookie": cookie + f"; intunnel_flash={flash_value}"})
    assert "created" not in r.text
    deleted = {(n, a.get("domain", "").lower()) for n, v, a in map(attributes, set_cookie_headers(r)) if not v}
    assert ("intunnel_flash", DOMAIN) in deleted  # the planted copy goes
    page = requests.get(site.url + "/tokens", headers={"Accept": "text/html", "Cookie": cookie}).text
    assert "Token “t” created." in page


@pytest.mark.parametrize("header, expected", [
    ("", []),
    ("a=1", []),
    ("intunnel_session=x", [("intunnel_session", "x")]),
    ('intunnel_session="x"', [("intunnel_session", "x")]),
    (" __Host-intunnel_session = y ;a=b", [("__Host-intunnel_session", "y")]),
    ("intunnel_session=x; intunnel_session=y", [("intunnel_session", "x"), ("intunnel_session", "y")]),
    ("intunnel_session=x, __Host-intunnel_session=y", [("intunnel_session", "x"), ("__Host-intunnel_session", "y")]),
    ("xintunnel_session=1; intunnel_sessionx=2; __host-intunnel_session=3", []),
])
def test_reading_cookie_pairs(header, expected):
    from intunnel.web import cookies
    assert cookies.pairs(header, "intunnel_session") == expected


def test_no_domain_deletion_on_a_single_label_domain():
    """On localhost (``intunnel serve``) a browser takes ``Domain=localhost`` as host-only: a "stray"
    deletion there would delete the session cookie the login just set (seen in Chromium)."""
    from intunnel.web import cookies
    assert cookies.strays("intunnel_session", secure=False, domain="localhost") == []
    assert [a.get("domain") for _, _, a in map(attributes, cookies.strays(
        "intunnel_session", secure=False, domain="example.com"))] == ["example.com"]
