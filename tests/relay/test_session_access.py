"""A client's own access rules for its session (issue 13, item 2), through a real relay and a real
client: ``intunnel http --basic-auth/--allow-ip/--deny-ip`` narrows the tunnel's policy (a visitor
must pass both), the rules end with the session, invalid ones end the client (no retry loop), and
the tunnel row tells the dashboard what the live session added (never a password)."""

from __future__ import annotations

import contextlib
import json
import logging

from intunnel import access, tunnels
from intunnel.models import Tunnel
from tests.relay.test_access import ALICE, connect, exchange, get, seen_paths, wait_for_policy
from tests.support.tunnel import (ClientProcess, ClientThread, HttpUpstream, RelayThread, make_tunnel,
                                  wait_for)

CAROL = access.basic_header("carol", "sesame-open")
BOB = access.basic_header("bob", "builder123")


def served(stack, settings):
    """A relay, a local app and a tunnel to it, closed with ``stack``: (relay, tunnel, app)."""
    app = stack.enter_context(HttpUpstream())
    relay = RelayThread(settings)
    stack.callback(relay.close)
    return relay, make_tunnel(settings, "myapp", app.port), app


@contextlib.contextmanager
def narrowed(settings, rules: dict | None, policy: dict | None = None):
    """A relay, a local app, a tunnel (with stored ``policy``), and a client sending ``rules``."""
    with contextlib.ExitStack() as stack:
        relay, tunnel, upstream = served(stack, settings)
        if policy is not None:
            tunnels.set_access(settings, tunnel, policy)
        client = stack.enter_context(ClientThread(relay.url, tunnel.token, upstream.port, access=rules))
        client.wait_connected()
        yield relay, tunnel, upstream, client


def shown(tunnel) -> dict | None:
    row = Tunnel.get_by_id(tunnel.id)
    return json.loads(row.session_access) if row.status == "active" and row.session_access else None


def test_a_session_password_on_a_public_tunnel(settings, db, caplog):
    caplog.set_level(logging.INFO, logger="intunnel")
    with narrowed(settings, {"basic_auth": ["carol:sesame-open"]}) as (relay, tunnel, app, client):
        host = f"myapp.{settings.domain}"
        assert "access: basic auth (1 user) for this session" in client.lines
        status, headers, _ = get(relay.port, host, "/none")
        assert status == 401 and headers["www-authenticate"] == 'Basic realm="myapp", charset="UTF-8"'
        assert get(relay.port, host, "/wrong", {"Authorization": access.basic_header("carol", "nope-nope")})[0] == 401
        assert get(relay.port, host, "/right", {"Authorization": CAROL})[0] == 200
        assert seen_paths(app) == ["/right"]
        wait_for(lambda: shown(tunnel), 5, message="the row names the session's rules")
        assert shown(tunnel) == {"basic_auth": ["carol"], "ip_allow": [], "ip_deny": []}
        assert access.load(Tunnel.get_by_id(tunnel.id).access).public   # nothing stored
    assert "sesame-open" not in caplog.text and "sesame-open" not in "\n".join(client.lines)


def test_a_session_deny_rule_refuses_that_address_only(settings, db):
    with narrowed(settings, {"ip_deny": ["127.0.0.2"]}) as (relay, tunnel, app, client):
        host = f"myapp.{settings.domain}"
        assert "access: not from 1 address range for this session" in client.lines
        assert get(relay.port, host, "/denied", source="127.0.0.2")[0] == 403
        assert get(relay.port, host, "/ok", source="127.0.0.1")[0] == 200
        assert seen_paths(app) == ["/ok"]


def test_a_keep_alive_visitor_of_a_narrowed_session_is_checked_on_every_request(settings, db):
    with narrowed(settings, {"basic_auth": ["carol:sesame-open"]}) as (relay, tunnel, app, _):
        host = f"myapp.{settings.domain}"
        with connect(relay.port) as sock, sock.makefile("rb") as f:
            assert exchange(sock, f, host, "/first", {"Authorization": CAROL})[0] == 200
            assert exchange(sock, f, host, "/second", {"Authorization": CAROL})[0] == 200   # cached
            status, _, _ = exchange(sock, f, host, "/third")
        assert status == 401
        assert seen_paths(app) == ["/first", "/second"]

def test_stored_password_and_session_password_are_both_required(settings, db):
    stored = {"basic_auth": ["alice:wonderland", "bob:builder123"]}
    # the tunnel admits alice and bob; this session only alice (and carol, whom the tunnel doesn't know)
    rules = {"basic_auth": ["alice:wonderland", "carol:sesame-open"]}
    with narrowed(settings, rules, stored) as (relay, tunnel, app, _):
        host = f"myapp.{settings.domain}"
        assert get(relay.port, host, "/none")[0] == 401
        assert get(relay.port, host, "/bob", {"Authorization": BOB})[0] == 401       # the tunnel's only
        assert get(relay.port, host, "/carol", {"Authorization": CAROL})[0] == 401   # the session's only
        assert get(relay.port, host, "/alice", {"Authorization": ALICE})[0] == 200   # both
        assert get(relay.port, host, "/again", {"Authorization": ALICE})[0] == 200   # (cached)
        assert seen_paths(app) == ["/alice", "/again"]


def test_a_stored_policy_change_keeps_the_sessions_narrowing(settings, db):
    with narrowed(settings, {"basic_auth": ["alice:wonderland"]}) as (relay, tunnel, app, _):
        host = f"myapp.{settings.domain}"
        assert get(relay.port, host, "/a", {"Authorization": ALICE})[0] == 200
        tunnels.set_access(settings, tunnel, {"ip_deny": ["127.0.0.2"]})
        wait_for_policy(relay, tunnel)
        assert get(relay.port, host, "/denied", {"Authorization": ALICE}, source="127.0.0.2")[0] == 403
        assert get(relay.port, host, "/none")[0] == 401                              # still narrowed
        assert get(relay.port, host, "/b", {"Authorization": ALICE})[0] == 200
        tunnels.set_access(settings, tunnel, {"public": True})
        wait_for_policy(relay, tunnel)
        assert get(relay.port, host, "/none")[0] == 401
        assert seen_paths(app) == ["/a", "/b"]


def test_the_narrowing_ends_with_the_session(settings, db):
    with contextlib.ExitStack() as stack:
        relay, tunnel, app = served(stack, settings)
        host = f"myapp.{settings.domain}"
        with ClientThread(relay.url, tunnel.token, app.port, access={"basic_auth": ["carol:sesame-open"],
                                                                      "ip_deny": ["127.0.0.2"]}) as client:
            client.wait_connected()
            assert get(relay.port, host, "/none")[0] == 401
            wait_for(lambda: shown(tunnel), 5, message="the row names the session's rules")
        wait_for(lambda: "myapp" not in relay.relay.sessions, 5, message="the session ended")
        wait_for(lambda: Tunnel.get_by_id(tunnel.id).status == "inactive", 5, message="inactive")
        assert Tunnel.get_by_id(tunnel.id).session_access is None
        with ClientThread(relay.url, tunnel.token, app.port) as client:
            client.wait_connected()
            assert not any(line.startswith("access:") for line in client.lines)
            assert get(relay.port, host, "/public")[0] == 200                        # public again
            assert get(relay.port, host, "/from-2", source="127.0.0.2")[0] == 200
            wait_for(lambda: Tunnel.get_by_id(tunnel.id).status == "active", 5, message="active")
            assert shown(tunnel) is None
        assert seen_paths(app) == ["/public", "/from-2"]


def test_invalid_rules_end_the_client_with_the_relays_reason(settings, db, caplog):
    """The real command line: a password the relay's limits refuse (access_min_password) ends the
    client at once with the reason and what to do; it does not retry; nothing is served."""
    caplog.set_level(logging.INFO, logger="intunnel")
    with contextlib.ExitStack() as stack:
        relay, tunnel, app = served(stack, settings)
        client = stack.enter_context(ClientProcess(relay.url, tunnel.token, app.port, "--basic-auth", "carol:short"))
        assert client.proc.wait(20) == 1
        client.close()
        out = "\n".join(client.lines)
        assert "the relay refused this session's access rules: access.basic_auth: the password of 'carol' " \
               "must be 8-256 characters" in out
        assert "fix the --basic-auth, --allow-ip and --deny-ip options" in out
        assert "retrying in" not in out and "connected:" not in out and "short" not in out
        assert "short" not in caplog.text
        assert Tunnel.get_by_id(tunnel.id).status == "inactive"


def test_the_password_can_come_from_the_environment(settings, db):
    with contextlib.ExitStack() as stack:
        relay, tunnel, app = served(stack, settings)
        client = stack.enter_context(ClientProcess(relay.url, tunnel.token, app.port, "--allow-ip", "127.0.0.1",
                                                   env={"INTUNNEL_BASIC_AUTH": "carol:sesame-open"}))
        client.wait_line(r"^access: basic auth \(1 user\), only from 1 address range for this session$")
        host = f"myapp.{settings.domain}"
        assert get(relay.port, host, "/none")[0] == 401
        assert get(relay.port, host, "/other", {"Authorization": CAROL}, source="127.0.0.2")[0] == 403
        assert get(relay.port, host, "/ok", {"Authorization": CAROL})[0] == 200
        assert seen_paths(app) == ["/ok"]


def test_a_relay_that_does_not_enforce_the_rules_gets_no_tunnel(settings, db, monkeypatch):
    """An older relay ignores the Hello's access field (its Welcome says nothing of it): the client
    must not serve a tunnel less protected than it asked; it says so and exits."""
    from intunnel.relay import server
    monkeypatch.setattr(server.session_access, "summary", lambda shown: "")   # the relay acknowledges nothing
    with contextlib.ExitStack() as stack:
        relay, tunnel, app = served(stack, settings)
        client = stack.enter_context(ClientThread(relay.url, tunnel.token, app.port,
                                                  access={"basic_auth": ["carol:sesame-open"]}))
        assert client.wait_exit() == 1
        assert any("does not enforce this session's access rules" in line and "upgrade the server" in line
                   for line in client.lines), client.lines
        assert not any(line.startswith("connected:") for line in client.lines)


def test_guessing_a_session_password_is_throttled_like_a_stored_one(settings, db):
    """A session password costs the relay microseconds to check, so only the throttle slows a
    guesser: relay_access_max_failures wrong ones from an address, then 429 without checking."""
    strict = settings.replace(relay_access_max_failures=2)
    with narrowed(strict, {"basic_auth": ["carol:sesame-open"]}) as (relay, tunnel, app, _):
        host = f"myapp.{settings.domain}"
        wrong = {"Authorization": access.basic_header("carol", "guess-one")}
        assert [get(relay.port, host, "/guess", wrong)[0] for _ in range(2)] == [401, 401]
        status, headers, _ = get(relay.port, host, "/right-but-late", {"Authorization": CAROL})
        assert status == 429 and int(headers["retry-after"]) >= 1
        assert get(relay.port, host, "/other-address", {"Authorization": CAROL}, source="127.0.0.2")[0] == 200
        assert seen_paths(app) == ["/other-address"]
