"""The dashboard's traffic view (issue 15 item 5): requests through a tunnel, as the relay saw
them, in GET /api/tunnels/<id>/traffic: metadata only (no query string), the owner's only, off
per tunnel (and then nothing kept), bounded, and fed by every relay sharing the database."""

from __future__ import annotations

import contextlib

import requests

from intunnel import apitokens, tunnels
from intunnel.models import TrafficEntry, User
from tests.relay.test_access import connect as tcp, exchange, get
from tests.relay.test_forwarding import Relays, connect, pg, secret_file, stack  # noqa: F401
from tests.support.tunnel import ClientThread, HttpUpstream, RelayThread, make_tunnel, wait_for
from tests.support.web_server import running_web_app


def token_of(user) -> str:
    return apitokens.create(user, "traffic test")[1]


def traffic(web, token: str, tunnel_id: int, after: int = 0) -> requests.Response:
    return requests.get(f"{web.url}/api/tunnels/{tunnel_id}/traffic", params={"after": after},
                        headers={"Authorization": f"Bearer {token}"}, timeout=10)


def entries(web, token: str, tunnel_id: int) -> list[dict]:
    r = traffic(web, token, tunnel_id)
    assert r.status_code == 200, r.text
    return r.json()["entries"]


@contextlib.contextmanager
def tunnel_stack(settings, subdomain: str = "myapp", **overrides):
    settings = settings.replace(**{"relay_traffic_flush": 0.05, **overrides})
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(HttpUpstream())
        relay = RelayThread(settings)
        stack.callback(relay.close)
        tunnel = make_tunnel(settings, subdomain, upstream.port)
        client = stack.enter_context(ClientThread(relay.url, tunnel.token, upstream.port))
        client.wait_connected()
        web = stack.enter_context(running_web_app(settings))
        yield relay, tunnel, web


def test_requests_appear_with_their_metadata_and_never_a_query_string(settings, db):
    with tunnel_stack(settings) as (relay, tunnel, web):
        owner = User.get_by_id(tunnel.owner_id)
        token = token_of(owner)
        host = "myapp.localhost"
        with tcp(relay.port, "127.0.0.3") as sock, sock.makefile("rb") as f:   # one keep-alive connection
            assert exchange(sock, f, host, "/hello?secret=swordfish&x=1")[0] == 200
            status, _, body = exchange(sock, f, host, "/download?size=5000")
            assert status == 200 and len(body) == 5000
        wait_for(lambda: len(entries(web, token, tunnel.id)) == 2, 5, message="both requests listed")
        newest, oldest = entries(web, token, tunnel.id)
        assert oldest["method"] == "GET" and oldest["path"] == "/hello" and oldest["status"] == 200
        assert newest["path"] == "/download" and newest["response_bytes"] > 5000
        for e in (newest, oldest):
            assert e["visitor"] == "127.0.0.3"
            assert e["request_bytes"] > 0 and e["duration_ms"] >= 0 and e["time"].endswith("Z")
            assert set(e) == {"id", "time", "method", "path", "status", "duration_ms", "request_bytes",
                              "response_bytes", "visitor"}
        stored = [tuple(r) for r in TrafficEntry.select().tuples()]
        assert not any("swordfish" in str(v) or "size=" in str(v) for row in stored for v in row)
        # incremental polling
        assert traffic(web, token, tunnel.id, after=newest["id"]).json()["entries"] == []
        assert [e["id"] for e in traffic(web, token, tunnel.id, after=oldest["id"]).json()["entries"]] == \
            [newest["id"]]
        assert traffic(web, token, tunnel.id, after="x").status_code == 400


def test_another_user_gets_404(settings, db):
    with tunnel_stack(settings) as (relay, tunnel, web):
        other = make_tunnel(settings, "other", 1).owner
        assert get(relay.port, "myapp.localhost", "/visited")[0] == 200
        owner_token = token_of(User.get_by_id(tunnel.owner_id))
        wait_for(lambda: len(entries(web, owner_token, tunnel.id)) == 1, 5, message="listed for the owner")
        r = traffic(web, token_of(other), tunnel.id)
        assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND"
        assert requests.get(f"{web.url}/api/tunnels/{tunnel.id}/traffic", timeout=10).status_code == 401


def test_turned_off_nothing_is_kept_and_the_stored_rows_go(settings, db):
    with tunnel_stack(settings) as (relay, tunnel, web):
        token = token_of(User.get_by_id(tunnel.owner_id))
        auth = {"Authorization": f"Bearer {token}"}
        assert get(relay.port, "myapp.localhost", "/before")[0] == 200
        wait_for(lambda: len(entries(web, token, tunnel.id)) == 1, 5, message="listed")
        r = requests.patch(f"{web.url}/api/tunnels/{tunnel.id}", json={"traffic_view": False}, headers=auth,
                           timeout=10)
        assert r.status_code == 200 and r.json()["tunnel"]["traffic_view"] is False
        assert TrafficEntry.select().count() == 0
        session = relay.relay.sessions["myapp"]
        wait_for(lambda: session.traffic_view is False, 5, message="the relay heard of it")
        for i in range(5):
            assert get(relay.port, "myapp.localhost", f"/after/{i}")[0] == 200
        relay.call(relay.relay.traffic.flush())   # whatever it holds, written now
        body = traffic(web, token, tunnel.id).json()
        assert body == {"traffic_view": False, "entries": []}
        assert TrafficEntry.select().count() == 0
        assert requests.patch(f"{web.url}/api/tunnels/{tunnel.id}", json={"traffic_view": "no"}, headers=auth,
                              timeout=10).status_code == 400
        # on again: recorded again
        assert requests.patch(f"{web.url}/api/tunnels/{tunnel.id}", json={"traffic_view": True}, headers=auth,
                              timeout=10).json()["tunnel"]["traffic_view"] is True
        wait_for(lambda: session.traffic_view is True, 5, message="the relay heard of it")
        assert get(relay.port, "myapp.localhost", "/again")[0] == 200
        wait_for(lambda: [e["path"] for e in entries(web, token, tunnel.id)] == ["/again"], 5, message="listed")


def test_the_ring_and_the_rows_are_bounded(settings, db):
    with tunnel_stack(settings, relay_traffic_ring=4, traffic_rows_per_tunnel=6,
                      relay_traffic_flush=3600) as (relay, tunnel, web):
        token = token_of(User.get_by_id(tunnel.owner_id))
        traffic_ = relay.relay.traffic
        with tcp(relay.port) as sock, sock.makefile("rb") as f:
            for i in range(10):
                assert exchange(sock, f, "myapp.localhost", f"/a/{i}")[0] == 200
        assert len(traffic_.rings[tunnel.id]) == 4      # the ring keeps the newest
        relay.call(traffic_.flush())
        assert [e["path"] for e in entries(web, token, tunnel.id)] == [f"/a/{i}" for i in (9, 8, 7, 6)]
        with tcp(relay.port) as sock, sock.makefile("rb") as f:
            for i in range(4):
                assert exchange(sock, f, "myapp.localhost", f"/b/{i}")[0] == 200
        relay.call(traffic_.flush())
        assert [e["path"] for e in entries(web, token, tunnel.id)] == \
            ["/b/3", "/b/2", "/b/1", "/b/0", "/a/9", "/a/8"]
        assert TrafficEntry.select().count() == 6


def test_two_relays_feed_one_view(pg, settings, db, stack, secret_file):
    """PostgreSQL, two relays: visitors at either relay are listed (the holding relay records a
    forwarded visitor with the address the first relay saw), and after the agent moved to the other
    relay, that one's entries join the same view."""
    upstream = stack.enter_context(HttpUpstream())
    relays = Relays(stack, settings, secret_file, INTUNNEL_RELAY_TRAFFIC_FLUSH="0.05")
    tunnel, client = connect(stack, settings, relays[0], "myapp", upstream.port)
    web = stack.enter_context(running_web_app(settings))
    token = token_of(User.get_by_id(tunnel.owner_id))
    host = "myapp.localhost"
    assert get(relays[0].port, host, "/direct", source="127.0.0.4")[0] == 200
    assert get(relays[1].port, host, "/forwarded?q=1", source="127.0.0.5")[0] == 200
    wait_for(lambda: len(entries(web, token, tunnel.id)) == 2, 10, message="both listed")
    assert {(e["path"], e["visitor"]) for e in entries(web, token, tunnel.id)} == \
        {("/direct", "127.0.0.4"), ("/forwarded", "127.0.0.5")}
    client.stop()
    stack.enter_context(type(client)(relays[1].url, tunnel.token, upstream.port)).wait_line(r"^connected: ")
    wait_for(lambda: get(relays[1].port, host, "/moved")[0] == 200, 10, message="served at relay-1")
    wait_for(lambda: entries(web, token, tunnel.id)[0]["path"] == "/moved", 10, message="relay-1's entry listed")
    assert {e["path"] for e in entries(web, token, tunnel.id)} >= {"/direct", "/forwarded", "/moved"}
    tunnels.update(User.get_by_id(tunnel.owner_id), tunnel.id, {"traffic_view": False})
    assert entries(web, token, tunnel.id) == []


def test_a_row_keeps_the_path_only_and_at_most_path_max_of_it():
    from intunnel.relay.traffic import entry
    row = entry(7, 1.5, "POST", "/hook?token=x", 201, 0.25, 10, 20, "203.0.113.9")
    assert row == (7, 1500, "POST", "/hook", 201, 250, 10, 20, "203.0.113.9")
    assert entry(7, 0, "GET", "/" + "a" * 5000 + "?q", 200, 0, 0, 0, "v", path_max=100)[3] == "/" + "a" * 99


def test_the_relays_own_answer_to_an_attached_request_is_listed(settings, db):
    """A 504 (the app too slow) is what the visitor got: listed with that status."""
    with tunnel_stack(settings, relay_upstream_timeout=0.3) as (relay, tunnel, web):
        token = token_of(User.get_by_id(tunnel.owner_id))
        assert get(relay.port, "myapp.localhost", "/slow?delay=3")[0] == 504
        wait_for(lambda: len(entries(web, token, tunnel.id)) == 1, 5, message="listed")
        (e,) = entries(web, token, tunnel.id)
        assert (e["path"], e["status"]) == ("/slow", 504)
