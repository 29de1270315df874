"""TCP tunnels through the REST API (issue 16, item 1): created with "protocol": "tcp", a port of
relay_tcp_ports reserved, the tcp:// address and the client command shown; a range used up, the
per-user limit, TCP turned off and a bad remote_port are clear errors in the seed's format; HTTP
tunnels keep the seed's shapes (protocol is an addition)."""

from __future__ import annotations

import pytest

from conftest import create_user, login_session
from support.web_server import running_web_app


@pytest.fixture
def settings(settings):
    return settings.replace(relay_tcp_ports="21000-21002", tcp_max_per_user=2)


def create(session, web, **body):
    return session.post(web.url + "/api/tunnels", json={"name": "ssh", "local_port": 22, **body})


def seed_error(r, status: int, code: str, says: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] is True and body["code"] == code and says in body["message"], body
    assert set(body) <= {"error", "message", "code", "field"}


def test_create_show_and_list(web, alice_session):
    r = create(alice_session, web, protocol="tcp")
    assert r.status_code == 200, r.text
    t = r.json()["tunnel"]
    assert t["protocol"] == "tcp" and t["remote_port"] == 21000
    assert t["url"] == "tcp://localhost:21000"
    assert t["command"] == f"intunnel tcp 22 --server {web.settings.relay_url} --token {t['token']}"
    assert t["subdomain"].startswith("tcp-")
    # asked for a port of the range: that one
    r2 = create(alice_session, web, protocol="tcp", remote_port=21002, subdomain="myssh")
    assert r2.status_code == 200, r2.text
    assert r2.json()["tunnel"]["remote_port"] == 21002 and r2.json()["tunnel"]["subdomain"] == "myssh"
    listed = {x["id"]: x for x in alice_session.get(web.url + "/api/tunnels").json()["tunnels"]}
    assert listed[t["id"]]["url"] == "tcp://localhost:21000" and listed[t["id"]]["remote_port"] == 21000
    got = alice_session.get(f"{web.url}/api/tunnels/{t['id']}").json()
    assert got["remote_port"] == 21000 and got["protocol"] == "tcp"


def test_http_tunnels_keep_the_seed_shapes(web, alice_session):
    r = alice_session.post(web.url + "/api/tunnels", json={"name": "App", "subdomain": "myapp", "local_port": 3000})
    assert r.status_code == 200, r.text
    t = r.json()["tunnel"]
    assert t["protocol"] == "http" and "remote_port" not in t
    assert t["url"].startswith("http://myapp.localhost")
    assert t["command"].startswith("intunnel http 3000 --server ")
    seed_error(alice_session.post(web.url + "/api/tunnels", json={"name": "App", "local_port": 3000}),
               400, "VALIDATION_ERROR", "subdomain is required")
    seed_error(create(alice_session, web, subdomain="x1", remote_port=21000), 400, "VALIDATION_ERROR", "TCP tunnels")
    seed_error(create(alice_session, web, subdomain="x2", protocol="udp"), 400, "VALIDATION_ERROR", "protocol")


def test_bad_or_taken_remote_port(web, alice_session):
    seed_error(create(alice_session, web, protocol="tcp", remote_port=22), 400, "VALIDATION_ERROR", "outside")
    seed_error(create(alice_session, web, protocol="tcp", remote_port="21000"), 400, "VALIDATION_ERROR", "integer")
    assert create(alice_session, web, protocol="tcp", remote_port=21001).status_code == 200
    seed_error(create(alice_session, web, protocol="tcp", remote_port=21001), 409, "CONFLICT", "already used")


def test_per_user_limit_then_range_used_up(web, alice_session):
    assert create(alice_session, web, protocol="tcp").status_code == 200
    assert create(alice_session, web, protocol="tcp").status_code == 200
    seed_error(create(alice_session, web, protocol="tcp"), 403, "FORBIDDEN", "tcp_max_per_user")
    create_user("bob@example.com", "bob")
    with login_session(web, "bob@example.com") as bob:
        assert create(bob, web, protocol="tcp").json()["tunnel"]["remote_port"] == 21002
        seed_error(create(bob, web, protocol="tcp"), 409, "CONFLICT", "every port of this server's TCP range")
    # a deleted tunnel's port is free again
    first = alice_session.get(web.url + "/api/tunnels").json()["tunnels"][0]
    assert alice_session.delete(f"{web.url}/api/tunnels/{first['id']}").status_code == 200
    with login_session(web, "bob@example.com") as bob:
        assert create(bob, web, protocol="tcp").json()["tunnel"]["remote_port"] == first["remote_port"]


def test_tcp_access_is_ip_rules_only(web, alice_session):
    t = create(alice_session, web, protocol="tcp").json()["tunnel"]
    url = f"{web.url}/api/tunnels/{t['id']}"
    r = alice_session.patch(url, json={"access": {"ip_allow": ["10.0.0.0/8"]}})
    assert r.status_code == 200, r.text
    seed_error(alice_session.patch(url, json={"access": {"basic_auth": ["alice:wonderland"]}}),
               400, "VALIDATION_ERROR", "IP rules only")


def test_tcp_turned_off(settings, db):
    create_user("carol@example.com", "carol")
    with running_web_app(settings, relay_tcp_ports="") as web, login_session(web, "carol@example.com") as s:
        seed_error(create(s, web, protocol="tcp"), 403, "FORBIDDEN", "TCP tunnels are disabled")


def test_the_database_itself_refuses_two_tunnels_on_one_port(db):
    """The UNIQUE index of migration 10 (both backends): the last word when two creates race."""
    import peewee as pw
    from intunnel.models import Tunnel, database
    user = create_user("dave@example.com", "dave")
    Tunnel.create(owner=user, name="a", subdomain="tcp-a", local_port=22, token="t-a", protocol="tcp",
                  remote_port=21000)
    with pytest.raises(pw.IntegrityError), database.atomic():
        Tunnel.create(owner=user, name="b", subdomain="tcp-b", local_port=22, token="t-b", protocol="tcp",
                      remote_port=21000)
    # HTTP tunnels all have none: many NULLs are fine
    for i in range(3):
        Tunnel.create(owner=user, name=f"h{i}", subdomain=f"h{i}", local_port=80, token=f"t-h{i}")
    assert Tunnel.select().where(Tunnel.remote_port.is_null()).count() == 3
