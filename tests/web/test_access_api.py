"""PATCH /api/tunnels/:id with an ``access`` object (issue 13): policies set, shown without
secrets, bad input as the documented 400, and only the owner can read or change one."""

from __future__ import annotations

import json

import pytest

from intunnel import access
from intunnel.models import Tunnel, database
from intunnel.security import verify_password

from conftest import create_user, login_session


@pytest.fixture
def tunnel_url(web, alice_session):
    r = alice_session.post(web.url + "/api/tunnels", json={"name": "App", "subdomain": "myapp", "local_port": 3000})
    assert r.status_code == 200, r.text
    return f"{web.url}/api/tunnels/{r.json()['tunnel']['id']}"


def stored(url) -> str | None:
    with database.connection_context():
        return Tunnel.get_by_id(int(url.rsplit("/", 1)[1])).access


def test_a_new_tunnel_is_public(alice_session, tunnel_url):
    r = alice_session.get(tunnel_url)
    assert r.json()["access"] == {"public": True, "basic_auth": [], "ip_allow": [], "ip_deny": [],
                                  "members": None, "bypass_paths": []}


def test_set_show_and_clear_a_policy(alice_session, tunnel_url):
    r = alice_session.patch(tunnel_url, json={"access": {
        "basic_auth": ["alice:wonderland", {"username": "bob", "password": "builder123"}],
        "ip_allow": ["10.0.0.0/8", "2001:db8::/32"], "ip_deny": ["10.9.0.0/16"]}})
    assert r.status_code == 200, r.text
    view = {"public": False, "basic_auth": ["alice", "bob"], "ip_allow": ["10.0.0.0/8", "2001:db8::/32"],
            "ip_deny": ["10.9.0.0/16"], "members": None, "bypass_paths": []}
    assert r.json()["tunnel"]["access"] == view
    got = alice_session.get(tunnel_url)
    assert got.json()["access"] == view
    for text in (r.text, got.text, alice_session.get(tunnel_url.rsplit("/", 1)[0]).text):
        assert "wonderland" not in text and "builder123" not in text and "argon2" not in text
    # stored hashed, with the project's password hashing
    policy = access.load(stored(tunnel_url))
    assert verify_password("wonderland", policy.hash_of("alice"))
    assert "wonderland" not in stored(tunnel_url)
    # a mode not given is kept; bob keeps his password, alice goes
    r = alice_session.patch(tunnel_url, json={"access": {"basic_auth": [{"username": "bob"}]}, "name": "Renamed"})
    assert r.status_code == 200, r.text
    assert r.json()["tunnel"]["access"] == {**view, "basic_auth": ["bob"]}
    assert r.json()["tunnel"]["name"] == "Renamed"
    assert verify_password("builder123", access.load(stored(tunnel_url)).hash_of("bob"))
    r = alice_session.patch(tunnel_url, json={"access": {"public": True}})
    assert r.json()["tunnel"]["access"]["public"] is True and stored(tunnel_url) is None


@pytest.mark.parametrize("body, field", [
    ({"access": "password"}, "access"),
    ({"access": {"basic_auth": ["alice"]}}, "access.basic_auth"),
    ({"access": {"basic_auth": ["alice:short"]}}, "access.basic_auth"),
    ({"access": {"basic_auth": ["a:b:c:d"] * 2}}, "access.basic_auth"),
    ({"access": {"basic_auth": [f"u{i}:password{i}" for i in range(21)]}}, "access.basic_auth"),
    ({"access": {"ip_allow": ["10.0.0.0/40"]}}, "access.ip_allow"),
    ({"access": {"ip_deny": "10.0.0.0/8"}}, "access.ip_deny"),
    ({"access": {"members": "yes"}}, "access.members"),
    ({"access": {"members": {"users": ["nobody-here"]}}}, "access.members"),
    ({"access": {"members": {"owner_only": True, "users": ["alice"]}}}, "access.members"),
    ({"access": {"members": {"email_domains": ["not a domain"]}}}, "access.members"),
    ({"access": {"members": {"admins": True}}}, "access.members"),
    ({"access": {"public": True, "basic_auth": []}}, "access.public"),
])
def test_bad_access_objects_are_400_in_the_documented_format(alice_session, tunnel_url, body, field):
    r = alice_session.patch(tunnel_url, json=body)
    assert r.status_code == 400, r.text
    error = r.json()
    assert set(error) == {"error", "message", "code"} and error["error"] is True
    assert error["code"] == "VALIDATION_ERROR" and error["message"].startswith(field)
    assert "short" not in error["message"] and "password1" not in error["message"]
    assert stored(tunnel_url) is None  # nothing changed


def test_deep_or_huge_access_objects_are_refused_cleanly(alice_session, tunnel_url):
    deep = {"access": {"basic_auth": [{"username": {"a": [[[[1]]]]}}]}}
    assert alice_session.patch(tunnel_url, json=deep).status_code == 400
    huge = {"access": {"ip_allow": ["10.0.0.0/8"] * 100000}}
    assert alice_session.patch(tunnel_url, data=json.dumps(huge),
                               headers={"Content-Type": "application/json"}).status_code == 413


def test_only_the_owner_reads_or_changes_the_policy(web, alice_session, tunnel_url):
    create_user("mallory@example.com", "mallory")
    with login_session(web, "mallory@example.com") as mallory:
        r = mallory.patch(tunnel_url, json={"access": {"public": True}})
        assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND"
        assert mallory.get(tunnel_url).status_code == 404
    anonymous = __import__("requests").patch(tunnel_url, json={"access": {"ip_allow": ["10.0.0.0/8"]}})
    assert anonymous.status_code == 401 and anonymous.json()["code"] == "UNAUTHORIZED"
    assert stored(tunnel_url) is None


def test_the_subdomain_still_cannot_be_changed(alice_session, tunnel_url):
    r = alice_session.patch(tunnel_url, json={"subdomain": "other", "access": {"public": True}})
    assert r.status_code == 400 and r.json()["message"].startswith("subdomain")


def test_the_dashboard_form_needs_its_csrf_token_and_the_owner(web, alice_session, tunnel_url):
    import re
    tunnel_id = tunnel_url.rsplit("/", 1)[1]
    page = alice_session.get(f"{web.url}/tunnels/{tunnel_id}").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    form = {"new_user": "carol", "new_password": "carols-secret", "ip_allow": "", "ip_deny": ""}
    r = alice_session.post(f"{web.url}/tunnels/{tunnel_id}/access", data=form, allow_redirects=False)
    assert r.status_code == 403 and stored(tunnel_url) is None
    r = alice_session.post(f"{web.url}/tunnels/{tunnel_id}/access", data={**form, "ip_deny": "not-an-ip",
                                                                          "csrf_token": csrf})
    assert r.status_code == 400 and "is not an IP address or CIDR" in r.text and stored(tunnel_url) is None
    assert "carols-secret" not in r.text
    r = alice_session.post(f"{web.url}/tunnels/{tunnel_id}/access", data={**form, "csrf_token": csrf},
                           allow_redirects=False)
    assert r.status_code == 303 and access.load(stored(tunnel_url)).hash_of("carol")
    create_user("mallory@example.com", "mallory")
    with login_session(web, "mallory@example.com") as mallory:
        page = mallory.get(web.url + "/").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        r = mallory.post(f"{web.url}/tunnels/{tunnel_id}/access", data={"public": "1", "csrf_token": token})
        assert r.status_code == 404
    assert not access.load(stored(tunnel_url)).public


def test_members_only_through_the_api_and_the_dashboard_form(web, alice_session, tunnel_url):
    import re
    create_user("bob@example.com", "bob")
    r = alice_session.patch(tunnel_url, json={"access": {"members": {"users": ["bob"],
                                                                     "email_domains": ["Example.ORG"]}}})
    assert r.status_code == 200, r.text
    assert r.json()["tunnel"]["access"]["members"] == {"owner_only": False, "users": ["bob"],
                                                       "email_domains": ["example.org"]}
    tunnel_id = tunnel_url.rsplit("/", 1)[1]
    page = alice_session.get(f"{web.url}/tunnels/{tunnel_id}").text
    assert "members only: you, bob, anyone @example.org" in page
    assert re.search(r'value="listed" checked', page)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    form = {"csrf_token": csrf, "ip_allow": "", "ip_deny": "", "new_user": "", "members": "owner"}
    r = alice_session.post(f"{web.url}/tunnels/{tunnel_id}/access", data=form, allow_redirects=False)
    assert r.status_code == 303
    assert access.load(stored(tunnel_url)).members == access.members_rule.Members(owner_only=True)
    r = alice_session.post(f"{web.url}/tunnels/{tunnel_id}/access", data={**form, "members": "listed",
                                                                          "members_users": "nobody"})
    assert r.status_code == 400 and "there is no user &#39;nobody&#39;" in r.text
    r = alice_session.post(f"{web.url}/tunnels/{tunnel_id}/access", data={**form, "members": "off"},
                           allow_redirects=False)
    assert r.status_code == 303 and stored(tunnel_url) is None


def test_bypass_paths_through_the_api_and_the_dashboard_form(web, alice_session, tunnel_url):
    import re
    r = alice_session.patch(tunnel_url, json={"access": {"basic_auth": ["alice:wonderland"],
                                                         "bypass_paths": ["/webhooks/stripe/", "/hooks"]}})
    assert r.status_code == 200, r.text
    assert r.json()["tunnel"]["access"]["bypass_paths"] == ["/webhooks/stripe", "/hooks"]
    for bad in (["webhooks"], ["/a/../b"], ["/a/%2e%2e"], ["/"], ["/_intunnel/auth"], "/hooks",
                [f"/p{i}" for i in range(web.settings.access_max_bypass_paths + 1)]):
        r = alice_session.patch(tunnel_url, json={"access": {"bypass_paths": bad}})
        assert r.status_code == 400 and r.json()["code"] == "VALIDATION_ERROR", (bad, r.text)
        assert "access.bypass_paths" in r.json()["message"]
    assert access.load(stored(tunnel_url)).bypass == ("/webhooks/stripe", "/hooks")   # unchanged
    tunnel_id = tunnel_url.rsplit("/", 1)[1]
    page = alice_session.get(f"{web.url}/tunnels/{tunnel_id}").text
    assert "no sign-in under /webhooks/stripe, /hooks" in page
    assert re.search(r'<textarea id="f-bypass_paths" name="bypass_paths"[^>]*>/webhooks/stripe\n/hooks</textarea>',
                     page)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    form = {"csrf_token": csrf, "ip_allow": "", "ip_deny": "", "new_user": "", "members": "off",
            "bypass_paths": "/webhooks/github\r\n\r\n/webhooks/stripe\r\n"}
    r = alice_session.post(f"{web.url}/tunnels/{tunnel_id}/access", data=form, allow_redirects=False)
    assert r.status_code == 303, r.text
    assert access.load(stored(tunnel_url)).bypass == ("/webhooks/github", "/webhooks/stripe")
    r = alice_session.post(f"{web.url}/tunnels/{tunnel_id}/access", data={**form, "bypass_paths": "/a/../b"})
    assert r.status_code == 400 and "bypass_paths" in r.text
    r = alice_session.post(f"{web.url}/tunnels/{tunnel_id}/access", data={**form, "bypass_paths": ""},
                           allow_redirects=False)
    assert r.status_code == 303 and access.load(stored(tunnel_url)).bypass == ()
    spec = alice_session.get(web.url + "/api/openapi.json").json()["components"]["schemas"]
    assert "bypass_paths" in spec["Access"]["properties"] and "bypass_paths" in spec["AccessUpdate"]["properties"]
