"""Routes in PostgreSQL: two real relay processes on loopback sharing one throwaway
database, real client processes (issue 12, first part).

  * the newest session wins across relays: a client for the same tunnel connecting to
    relay B takes the route, and A closes its stale session within 1 s (by the
    notification alone: A's reconcile timer is set to an hour);
  * a relay killed with SIGKILL stops renewing: its lease expires within the lease
    bound, `relay list` marks it stale, `tunnel show` says `none`, and a client
    connecting to B gets the tunnel;
  * a clean stop deletes the relay's routes and its relay row;
  * the relay id on /metrics; on SQLite no route is recorded and nothing changes.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import urllib.request

import pytest

from intunnel.models import RelayNode, Route, Tunnel
from tests.admin.conftest import Admin
from tests.support.backends import database_toml
from tests.support.tunnel import (ClientProcess, HttpUpstream, RelayProcess, free_port, make_tunnel, visit,
                                  wait_for)

LEASE = 3.0       # relay_route_lease for these relays (the minimum): expiry is quick to watch
HOUR = "3600"
LISTENING = r"listening for database changes"


def relay(stack, settings, relay_id: str, metrics_port: int | None = None) -> RelayProcess:
    r = stack.enter_context(RelayProcess(settings, env={
        "INTUNNEL_RELAY_ID": relay_id, "INTUNNEL_RELAY_ROUTE_LEASE": str(LEASE),
        "INTUNNEL_RELAY_RECONCILE_INTERVAL": HOUR, "INTUNNEL_RELAY_REVOCATION_POLL": HOUR,
        "INTUNNEL_RELAY_METRICS_LISTEN": f"127.0.0.1:{metrics_port}" if metrics_port else ""}))
    if settings.db_backend == "postgresql":
        r.wait_line(LISTENING)
    return r


def admin_for(tmp_path, settings, relay_port: int) -> Admin:
    admin = Admin(tmp_path / "admin")
    admin.config.write_text(f'data_dir = "{settings.data_dir}"\ndomain = "{settings.domain}"\n'
                            f'relay_listen = "127.0.0.1:{relay_port}"\nrelay_route_lease = {LEASE}\n'
                            + database_toml(settings))
    return admin


def route_of(tunnel_id: int):
    return Route.select().where(Route.tunnel == tunnel_id).first()


def relay_rows(admin: Admin) -> dict[str, dict]:
    return {r["relay_id"]: r for r in admin.json("relay", "list")["relays"]}


def shown_relay(admin: Admin, subdomain: str):
    return admin.json("tunnel", "show", subdomain)["tunnel"]["relay"]


@pytest.fixture
def pg(db_backend):
    if db_backend != "postgresql":
        pytest.skip("several relays share a PostgreSQL database")


@pytest.fixture
def stack():
    with contextlib.ExitStack() as s:
        yield s


def held_by_a(stack, settings):
    """An upstream, relays A and B, tunnel ``myapp`` with its client connected to A (routed)."""
    upstream = stack.enter_context(HttpUpstream())
    a, b = relay(stack, settings, "relay-a"), relay(stack, settings, "relay-b")
    tunnel = make_tunnel(settings, "myapp", upstream.port)
    first = stack.enter_context(ClientProcess(a.url, tunnel.token, upstream.port))
    first.wait_line(r"^connected: ")
    wait_for(lambda: (r := route_of(tunnel.id)) and r.relay_id == "relay-a", 5, message="route on relay-a")
    return upstream, a, b, tunnel, first


def test_newest_session_wins_across_relays(pg, settings, db, stack, tmp_path):
    upstream, a, b, tunnel, first = held_by_a(stack, settings)
    assert visit(a.port, "myapp.localhost", "/hello")[0] == 200

    second = stack.enter_context(ClientProcess(b.url, tunnel.token, upstream.port))
    second.wait_line(r"^connected: ")
    connected = time.monotonic()
    first.wait_line("Not retrying", timeout=5)
    elapsed = time.monotonic() - connected
    (final,) = [line for line in first.lines if "Not retrying" in line]
    assert "replaced" in final and "relay-b" in final, final
    assert elapsed < 1.0, f"relay A closed its stale session {elapsed:.3f} s after B welcomed the new one"
    print(f"stale session on relay-a closed {elapsed * 1000:.0f} ms after the client on relay-b connected")
    assert first.proc.wait(10) == 1

    route = route_of(tunnel.id)
    assert route.relay_id == "relay-b" and len(route.session_id) == 16
    status, _, body = visit(b.port, "myapp.localhost", "/hello")
    assert status == 200 and b'"path": "/hello"' in body
    # relay A no longer serves it (these relays have no peer listener: no forwarding, test_forwarding.py)
    assert visit(a.port, "myapp.localhost", "/hello")[0] == 503
    assert Tunnel.get_by_id(tunnel.id).status == "active"

    admin = admin_for(tmp_path, settings, b.port)
    rows = wait_for(lambda: (r := relay_rows(admin)) and r["relay-a"]["agents_reported"] == 0
                    and r["relay-b"]["agents_reported"] == 1 and r, 5, message="heartbeats with agent counts")
    assert rows["relay-a"]["state"] == rows["relay-b"]["state"] == "live"
    assert (rows["relay-a"]["agents"], rows["relay-b"]["agents"]) == (0, 1)
    assert rows["relay-b"]["address"] == f"127.0.0.1:{b.port}"
    text = admin.ok("relay", "list").stdout
    assert re.search(r"^relay-a\s+127\.0\.0\.1:\d+\s+live\s.*\s0\s", text, re.M), text
    assert re.search(r"^relay-b\s+127\.0\.0\.1:\d+\s+live\s.*\s1\s", text, re.M), text
    shown = admin.ok("tunnel", "show", "myapp").stdout
    assert re.search(r"^relay:\s+relay-b \(lease until \S+Z\)$", shown, re.M), shown
    assert "taken over from relay relay-a" in "\n".join(b.lines)


def test_a_killed_relay_s_lease_expires_and_another_relay_takes_the_tunnel(pg, settings, db, stack, tmp_path):
    upstream, a, b, tunnel, first = held_by_a(stack, settings)
    admin = admin_for(tmp_path, settings, b.port)
    assert shown_relay(admin, "myapp")["relay_id"] == "relay-a"

    a.kill()  # SIGKILL: no clean stop, the route stays until its lease lapses
    killed = time.monotonic()
    assert route_of(tunnel.id).relay_id == "relay-a"
    wait_for(lambda: route_of(tunnel.id) is None, LEASE + 3, interval=0.05, message="relay-a's lease to expire")
    freed = time.monotonic() - killed
    print(f"relay-a's route freed {freed:.2f} s after SIGKILL (lease {LEASE:g} s, renewed every 1 s)")
    assert freed <= LEASE + 1.5
    assert Tunnel.get_by_id(tunnel.id).status == "inactive"
    assert shown_relay(admin, "myapp") is None
    assert re.search(r"^relay:\s+none$", admin.ok("tunnel", "show", "myapp").stdout, re.M)
    rows = relay_rows(admin)
    assert rows["relay-a"]["state"] == "stale" and rows["relay-a"]["agents"] == 0
    assert rows["relay-b"]["state"] == "live"
    assert re.search(r"^relay-a\s+\S+\s+stale\s", admin.ok("relay", "list").stdout, re.M)

    first.close()
    second = stack.enter_context(ClientProcess(b.url, tunnel.token, upstream.port))
    second.wait_line(r"^connected: ")
    wait_for(lambda: (r := route_of(tunnel.id)) and r.relay_id == "relay-b", 5, message="route on relay-b")
    assert visit(b.port, "myapp.localhost", "/after")[0] == 200
    assert shown_relay(admin, "myapp")["relay_id"] == "relay-b"
    assert Tunnel.get_by_id(tunnel.id).status == "active"


def test_relay_forget_removes_a_dead_relay_and_frees_its_tunnels(pg, settings, db, stack, tmp_path):
    """Every relay died (nobody is left to expire the leases): `relay forget` clears what the dead
    relay left; a live relay is refused."""
    upstream, a, b, tunnel, first = held_by_a(stack, settings)
    admin = admin_for(tmp_path, settings, b.port)
    admin.fails("relay", "forget", "relay-b", match="relay-b is live")
    admin.fails("relay", "forget", "relay-z", match="no relay 'relay-z' is registered")
    b.stop()
    a.kill()
    first.close()
    assert Tunnel.get_by_id(tunnel.id).status == "active"   # what nobody is left to correct
    wait_for(lambda: relay_rows(admin)["relay-a"]["state"] == "stale", LEASE + 3, message="relay-a stale")
    done = admin.json("relay", "forget", "relay-a")
    assert done["ok"] and done["routes_deleted"] == 1
    assert "relay-a" not in relay_rows(admin) and route_of(tunnel.id) is None
    assert Tunnel.get_by_id(tunnel.id).status == "inactive"
    assert re.search(r"^relay:\s+none$", admin.ok("tunnel", "show", "myapp").stdout, re.M)


def test_a_clean_stop_deletes_the_relay_s_routes(pg, settings, db, stack, tmp_path):
    upstream = stack.enter_context(HttpUpstream())
    a, b = relay(stack, settings, "relay-a"), relay(stack, settings, "relay-b")
    one = make_tunnel(settings, "one", upstream.port)
    two = make_tunnel(settings, "two", upstream.port)
    c1 = stack.enter_context(ClientProcess(a.url, one.token, upstream.port))
    c2 = stack.enter_context(ClientProcess(b.url, two.token, upstream.port))
    c1.wait_line(r"^connected: ")
    c2.wait_line(r"^connected: ")
    wait_for(lambda: Route.select().count() == 2, 5, message="two routes")
    assert a.stop() == 0
    assert Route.select().where(Route.relay_id == "relay-a").count() == 0
    assert RelayNode.get_or_none(RelayNode.relay_id == "relay-a") is None
    assert Tunnel.get_by_id(one.id).status == "inactive"
    # the other relay's tunnel is untouched
    assert route_of(two.id).relay_id == "relay-b" and Tunnel.get_by_id(two.id).status == "active"
    assert visit(b.port, "two.localhost", "/")[0] == 200
    assert list(relay_rows(admin_for(tmp_path, settings, b.port))) == ["relay-b"]


def test_the_relay_id_on_metrics_and_sqlite_records_no_route(settings, db, db_backend, stack, tmp_path):
    upstream = stack.enter_context(HttpUpstream())
    metrics_port = free_port()
    r = relay(stack, settings, "relay-a", metrics_port)
    tunnel = make_tunnel(settings, "myapp", upstream.port)
    client = stack.enter_context(ClientProcess(r.url, tunnel.token, upstream.port))
    client.wait_line(r"^connected: ")
    wait_for(lambda: Tunnel.get_by_id(tunnel.id).status == "active", 5, message="active")
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    assert [line for line in text.splitlines() if line.startswith("intunnel_relay_info")] == \
        ['intunnel_relay_info{relay_id="relay-a"} 1.0']
    admin = admin_for(tmp_path, settings, r.port)
    admin.config.write_text(admin.config.read_text() + 'relay_id = "relay-a"\n')
    doctor = admin.run("doctor", "--json")  # (its backups and nginx checks may fail here: not ours)
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks["relay id"]["message"].startswith("relay-a"), checks["relay id"]
    if db_backend == "sqlite":
        assert Route.select().count() == 0 and RelayNode.select().count() == 0
        assert "single host" in checks["relay id"]["message"]
        assert admin.ok("relay", "list").stdout.strip() == \
            "single host (SQLite): routes are not recorded; this host's relay is relay-a"
        assert shown_relay(admin, "myapp") == {"relay_id": "relay-a", "lease_expires_at": None}
        assert re.search(r"^relay:\s+relay-a \(single host\)$", admin.ok("tunnel", "show", "myapp").stdout, re.M)
    else:
        assert checks["relay id"]["level"] == "ok" and "live" in checks["relay id"]["message"]
        assert route_of(tunnel.id).relay_id == "relay-a"
    client.close()
    wait_for(lambda: Tunnel.get_by_id(tunnel.id).status == "inactive", 5, message="inactive")
    assert shown_relay(admin, "myapp") is None
    assert Route.select().count() == 0
