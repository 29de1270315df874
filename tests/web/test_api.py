"""The seed's endpoints, exactly: paths, methods, status codes, field names, envelopes;
plus PATCH/PUT /api/tunnels/:id and /api/tokens."""

from __future__ import annotations

import re

import requests

from intunnel.models import ApiToken, Tunnel, database

from conftest import PASSWORD, create_user, login_session

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def create(session, web, subdomain="myapp", name="My Web App", port=3000):
    r = session.post(web.url + "/api/tunnels", json={"name": name, "subdomain": subdomain, "local_port": port})
    assert r.status_code == 200, r.text
    return r.json()["tunnel"]


def test_create_tunnel_envelope(web, alice_session):
    r = alice_session.post(web.url + "/api/tunnels",
                           json={"name": "New Tunnel", "subdomain": "newtunnel", "local_port": 8080})
    assert r.status_code == 200
    body = r.json()
    assert body["success"] is True
    tunnel = body["tunnel"]
    assert {"id", "name", "subdomain", "token"} <= set(tunnel)
    assert (tunnel["name"], tunnel["subdomain"], tunnel["local_port"]) == ("New Tunnel", "newtunnel", 8080)
    assert len(tunnel["token"]) >= 32


def test_list_tunnels_fields(web, alice_session):
    create(alice_session, web)
    r = alice_session.get(web.url + "/api/tunnels")
    assert r.status_code == 200 and list(r.json()) == ["tunnels"]
    [item] = r.json()["tunnels"]
    assert {"id", "name", "subdomain", "local_port", "token", "status", "created_at"} <= set(item)
    assert item["status"] == "inactive" and ISO_Z.match(item["created_at"])


def test_tunnel_details_url_reaches_the_tunnel(web, alice_session):
    t = create(alice_session, web)
    r = alice_session.get(web.url + f"/api/tunnels/{t['id']}")
    assert r.status_code == 200
    d = r.json()
    for key in ("id", "name", "subdomain", "local_port", "token", "status", "domain", "url",
                "created_at", "last_connected"):
        assert key in d, key
    assert d["domain"] == "localhost"
    assert d["url"] == "http://myapp.localhost:8080"  # the embedded default's relay address
    assert d["last_connected"] is None


def test_production_url_and_last_connected_iso(settings, clock):
    from support.web_server import running_web_app
    from intunnel.timeutil import utcnow
    with running_web_app(settings, clock=clock, domain="example.com", public_scheme="https") as web:
        create_user("p@example.com", "prod")
        s = requests.Session()
        r = s.post(web.url + "/login", json={"email": "p@example.com", "password": PASSWORD})
        # the cookie is Secure (https), so requests would not send it over plain http: do it by hand
        s.headers["Cookie"] = "__Host-intunnel_session=" + r.cookies["__Host-intunnel_session"]
        t = create(s, web)
        with database.connection_context():
            Tunnel.update(status="active", last_connected=utcnow()).where(Tunnel.id == t["id"]).execute()
        d = s.get(web.url + f"/api/tunnels/{t['id']}").json()
        assert d["url"] == "https://myapp.example.com" and d["domain"] == "example.com"
        assert d["status"] == "active" and ISO_Z.match(d["last_connected"])


def test_delete_tunnel(web, alice_session):
    t = create(alice_session, web)
    r = alice_session.delete(web.url + f"/api/tunnels/{t['id']}")
    assert r.status_code == 200 and r.json() == {"success": True, "message": "Tunnel deleted"}
    assert alice_session.get(web.url + f"/api/tunnels/{t['id']}").status_code == 404
    assert alice_session.delete(web.url + f"/api/tunnels/{t['id']}").json()["code"] == "NOT_FOUND"


def test_regenerate_token(web, alice_session):
    t = create(alice_session, web)
    r = alice_session.post(web.url + f"/api/tunnels/{t['id']}/regenerate-token")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"success", "token"} and body["success"] is True and body["token"] != t["token"]
    assert alice_session.get(web.url + f"/api/tunnels/{t['id']}").json()["token"] == body["token"]


def test_profile(web, alice_session, alice):
    create(alice_session, web, "one")
    create(alice_session, web, "two")
    r = alice_session.get(web.url + "/api/user/profile")
    assert r.status_code == 200
    assert r.json() == {"id": alice.id, "username": "alice", "email": "alice@example.com",
                        "tunnels_count": 2, "created_at": r.json()["created_at"]}
    assert ISO_Z.match(r.json()["created_at"])


def test_patch_and_put_change_name_and_port(web, alice_session):
    t = create(alice_session, web)
    r = alice_session.patch(web.url + f"/api/tunnels/{t['id']}", json={"name": "  Renamed  "})
    assert r.status_code == 200 and r.json()["success"] is True
    assert r.json()["tunnel"]["name"] == "Renamed" and r.json()["tunnel"]["local_port"] == 3000
    r = alice_session.put(web.url + f"/api/tunnels/{t['id']}", json={"local_port": 4000})
    assert r.status_code == 200 and r.json()["tunnel"]["local_port"] == 4000
    assert r.json()["tunnel"]["name"] == "Renamed"
    r = alice_session.patch(web.url + f"/api/tunnels/{t['id']}", json={"subdomain": "other"})
    assert r.status_code == 400 and "subdomain" in r.json()["message"]
    r = alice_session.patch(web.url + f"/api/tunnels/{t['id']}", json={})
    assert r.status_code == 400 and r.json()["code"] == "VALIDATION_ERROR"


def test_subdomain_lowercased_and_taken(web, alice_session):
    t = create(alice_session, web, subdomain="MyApp")
    assert t["subdomain"] == "myapp"
    bob = create_user("bob@example.com", "bob")
    s = login_session(web, "bob@example.com")
    r = s.post(web.url + "/api/tunnels", json={"name": "x", "subdomain": "myapp", "local_port": 1})
    assert r.status_code == 400
    assert r.json()["code"] == "SUBDOMAIN_TAKEN" and r.json()["error"] is True
    assert bob.id


def test_reserved_subdomains_refused(web, alice_session):
    for sub in ("www", "api", "admin", "app", "mail", "static", "localhost"):
        r = alice_session.post(web.url + "/api/tunnels", json={"name": "x", "subdomain": sub, "local_port": 1})
        assert r.status_code == 400 and r.json()["code"] == "VALIDATION_ERROR", sub
        assert "subdomain" in r.json()["message"]


def test_api_tokens_lifecycle(web, alice_session):
    r = alice_session.post(web.url + "/api/tokens", json={"name": "ci script"})
    assert r.status_code == 200
    body = r.json()
    secret = body["token"]
    assert body["success"] is True and secret.startswith("itk_")
    meta = body["api_token"]
    assert meta["name"] == "ci script" and secret.startswith(meta["prefix"]) and meta["last_used_at"] is None
    with database.connection_context():  # only the hash is stored
        row = ApiToken.get_by_id(meta["id"])
        assert secret not in (row.token_hash, row.prefix)

    bearer = {"Authorization": f"Bearer {secret}"}
    r = requests.get(web.url + "/api/tunnels", headers=bearer)
    assert r.status_code == 200 and r.json() == {"tunnels": []}
    r = requests.post(web.url + "/api/tunnels", headers=bearer,
                      json={"name": "via token", "subdomain": "viatoken", "local_port": 5000})
    assert r.status_code == 200

    listed = alice_session.get(web.url + "/api/tokens").json()["tokens"]
    assert [t["name"] for t in listed] == ["ci script"]
    assert set(listed[0]) == {"id", "name", "prefix", "created_at", "last_used_at"}
    assert ISO_Z.match(listed[0]["last_used_at"]) and ISO_Z.match(listed[0]["created_at"])
    assert secret not in str(listed)

    r = alice_session.delete(web.url + f"/api/tokens/{meta['id']}")
    assert r.status_code == 200 and r.json() == {"success": True, "message": "Token revoked"}
    r = requests.get(web.url + "/api/tunnels", headers=bearer)
    assert r.status_code == 401 and r.json()["code"] == "UNAUTHORIZED"
    assert alice_session.get(web.url + "/api/tokens").json() == {"tokens": []}


def test_malformed_bearer_is_401_even_with_cookie(web, alice_session):
    for value in ("Bearer nope", "Bearer itk_doesnotexist", "Basic YTpi", "Bearer", "itk_x"):
        r = alice_session.get(web.url + "/api/tunnels", headers={"Authorization": value})
        assert r.status_code == 401 and r.json()["code"] == "UNAUTHORIZED", value


def test_timestamps_are_utc_z(web, alice_session):
    t = create(alice_session, web)
    assert ISO_Z.match(t["created_at"])
