"""`intunnel-admin tunnel ...` and `token ...` against a real database."""

import threading
import time
from datetime import datetime, timedelta

import pytest

from intunnel.models import ApiToken, Tunnel, User
from intunnel.timeutil import utcnow


@pytest.fixture
def tunnels(installed):
    installed.create_user("alice@example.test", "alice")
    installed.open_models()
    root, alice = User.get(User.username == "root"), User.get(User.username == "alice")
    Tunnel.create(owner=alice, name="My Web App", subdomain="myapp", local_port=3000, token="secret-token-1",
                  status="active", last_connected=datetime(2026, 1, 15, 10, 30))
    Tunnel.create(owner=alice, name="API", subdomain="api2", local_port=8000, token="secret-token-2")
    Tunnel.create(owner=root, name="Root's", subdomain="roots", local_port=22, token="secret-token-3")
    ApiToken.create(user=alice, name="laptop", prefix="itk_aaaa", token_hash="a" * 64)
    ApiToken.create(user=root, name="ci", prefix="itk_bbbb", token_hash="b" * 64,
                    last_used_at=datetime(2026, 2, 1, 8, 0))
    return installed


def test_tunnel_list_filters_and_json(tunnels):
    items = tunnels.json("tunnel", "list")["tunnels"]
    assert [(t["id"], t["owner"], t["subdomain"], t["status"]) for t in items] == [
        (1, "alice", "myapp", "active"), (2, "alice", "api2", "inactive"), (3, "root", "roots", "inactive")]
    assert items[0]["url"] == "http://myapp.example.test:%d" % tunnels.relay_port
    assert items[0]["last_connected"] == "2026-01-15T10:30:00Z"
    assert all("token" not in t for t in items)  # secrets only on request
    assert [t["subdomain"] for t in tunnels.json("tunnel", "list", "--user", "alice")["tunnels"]] == ["myapp", "api2"]
    assert [t["subdomain"] for t in tunnels.json("tunnel", "list", "--status", "active")["tunnels"]] == ["myapp"]
    assert tunnels.json("tunnel", "list", "--user", "root", "--status", "active")["tunnels"] == []
    tunnels.fails("tunnel", "list", "--user", "ghost", match="unknown user 'ghost'")
    assert tunnels.run("tunnel", "list", "--status", "sleeping").returncode == 2


def test_tunnel_table(tunnels):
    out = tunnels.ok("tunnel", "list").stdout
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "OWNER", "NAME", "SUBDOMAIN", "PORT", "STATUS", "LAST", "CONNECTED"]
    assert "secret-token" not in out
    col = lines[0].index("SUBDOMAIN")
    assert [line[col:].split()[0] for line in lines[1:]] == ["myapp", "api2", "roots"]


def test_tunnel_show(tunnels):
    shown = tunnels.json("tunnel", "show", "myapp")["tunnel"]
    assert shown["id"] == 1 and shown["owner"] == "alice" and shown["domain"] == "example.test"
    assert "token" not in shown
    assert tunnels.json("tunnel", "show", "1", "--show-token")["tunnel"]["token"] == "secret-token-1"
    text = tunnels.ok("tunnel", "show", "2").stdout
    assert "subdomain:" in text and "api2" in text and "secret" not in text
    tunnels.fails("tunnel", "show", "nope", match="unknown tunnel 'nope'")
    tunnels.fails("tunnel", "show", "99", match="unknown tunnel '99'")


def test_tunnel_delete(tunnels):
    tunnels.fails("tunnel", "delete", "api2", code=2, match="refusing without --yes")
    assert tunnels.json("tunnel", "delete", "api2", "--yes")["deleted"] == {"id": 2, "subdomain": "api2"}
    assert Tunnel.get_or_none(Tunnel.subdomain == "api2") is None
    tunnels.fails("tunnel", "delete", "api2", "--yes", match="unknown tunnel")


class FakeRelay:
    """Does what the relay does for `disconnect`: sees the request, cuts the session."""

    def __init__(self, tunnel_id: int, reconnect: bool = False):
        self.tunnel_id, self.reconnect = tunnel_id, reconnect
        self.stop = threading.Event()
        self.saw_request = False
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        from intunnel.models import database
        with database.connection_context():
            while not self.stop.is_set():
                t = Tunnel.get_by_id(self.tunnel_id)
                if t.disconnect_requested_at and not self.saw_request:
                    self.saw_request = True
                    if self.reconnect:  # a client that comes straight back
                        Tunnel.update(last_connected=utcnow() + timedelta(seconds=1)).where(
                            Tunnel.id == self.tunnel_id).execute()
                    else:
                        Tunnel.update(status="inactive").where(Tunnel.id == self.tunnel_id).execute()
                self.stop.wait(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)


def test_disconnect_waits_for_the_relay(tunnels):
    with FakeRelay(1) as relay:
        out = tunnels.json("tunnel", "disconnect", "myapp")
    assert relay.saw_request
    assert out["result"] == "inactive" and out["message"] == "tunnel 'myapp' disconnected"
    requested = Tunnel.get_by_id(1).disconnect_requested_at
    assert abs((requested - utcnow()).total_seconds()) < 30


def test_disconnect_reports_a_reconnecting_client(tunnels):
    with FakeRelay(1, reconnect=True):
        out = tunnels.ok("tunnel", "disconnect", "1").stdout
    assert "connected again" in out and "regenerate the token" in out


def test_disconnect_without_relay_fails_clearly(tunnels):
    started = time.monotonic()
    tunnels.fails("tunnel", "disconnect", "myapp", "--wait", "0.5", match="still active after 0.5 s")
    assert time.monotonic() - started < 20
    assert Tunnel.get_by_id(1).disconnect_requested_at is not None


def test_disconnect_inactive_tunnel(tunnels):
    assert tunnels.json("tunnel", "disconnect", "api2")["result"] == "not-connected"
    tunnels.fails("tunnel", "disconnect", "ghost", match="unknown tunnel")


def test_token_list_and_revoke(tunnels):
    items = tunnels.json("token", "list")["tokens"]
    assert items == [
        {"id": 1, "user": "alice", "name": "laptop", "prefix": "itk_aaaa", "created_at": items[0]["created_at"],
         "last_used_at": None},
        {"id": 2, "user": "root", "name": "ci", "prefix": "itk_bbbb", "created_at": items[1]["created_at"],
         "last_used_at": "2026-02-01T08:00:00Z"},
    ]
    assert [t["name"] for t in tunnels.json("token", "list", "--user", "root")["tokens"]] == ["ci"]
    table = tunnels.ok("token", "list").stdout
    assert table.splitlines()[0].split() == ["ID", "USER", "NAME", "PREFIX", "CREATED", "LAST", "USED"]
    assert "a" * 64 not in table
    out = tunnels.ok("token", "revoke", "itk_aaaa").stdout
    assert out.strip() == "revoked API token itk_aaaa 'laptop' of 'alice'"
    assert tunnels.json("token", "revoke", "2")["revoked"]["name"] == "ci"
    assert ApiToken.select().count() == 0
    tunnels.fails("token", "revoke", "itk_aaaa", match="unknown API token")
    tunnels.fails("token", "list", "--user", "ghost", match="unknown user")


def test_ambiguous_token_prefix(tunnels):
    alice = User.get(User.username == "alice")
    ApiToken.create(user=alice, name="second", prefix="itk_aaaa", token_hash="c" * 64)
    tunnels.fails("token", "revoke", "itk_aaaa", match="matches several tokens")
    assert ApiToken.select().count() == 3
