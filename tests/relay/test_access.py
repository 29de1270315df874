"""Tunnel access policies enforced by a real relay, with a real client and a real local app
(issue 13): refused visitors never reach the app (its requests are counted), keep-alive
visitors are checked per request, IP rules see 127.0.0.1, 127.0.0.2 and ::1 as the different
addresses they are, and a policy changed through the API applies to a live tunnel at once."""

from __future__ import annotations

import contextlib
import json
import socket

import pytest
import requests

from intunnel import access, apitokens, tunnels
from intunnel.models import Tunnel
from intunnel.relay.server import Relay
from tests.support.tunnel import (ClientThread, HttpUpstream, LoopThread, RelayThread, make_tunnel,
                                  read_response, wait_for)

ALICE = access.basic_header("alice", "wonderland")


class DualStackRelay(LoopThread):
    """The real relay on one dual-stack socket ([::]:0): visitors from ::1 and from 127.0.0.x
    (seen as ::ffff:127.0.0.x) reach the same relay."""

    def __init__(self, settings):
        super().__init__("relay-dual-stack")
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
        sock.listen(64)
        sock.setblocking(False)
        self.relay = Relay(settings.replace(relay_listen="127.0.0.1:0"))
        self.port = self.call(self.relay.start(sock=sock))[1]
        self.url = f"http://{settings.domain}:{self.port}"

    def close(self):
        with contextlib.suppress(Exception):
            self.call(self.relay.stop(1.0))
        self.shutdown()


@contextlib.contextmanager
def protected(settings, policy: dict | None, dual_stack: bool = False, subdomain: str = "myapp"):
    """A relay, a local app, and a tunnel whose policy is set before its client connects (so the
    relay loads it with the tunnel); yields (relay, tunnel, upstream, client)."""
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(HttpUpstream())
        relay = DualStackRelay(settings) if dual_stack else RelayThread(settings)
        stack.callback(relay.close)
        tunnel = make_tunnel(settings, subdomain, upstream.port)
        if policy is not None:
            tunnels.set_access(settings, tunnel, policy)
        client = stack.enter_context(ClientThread(relay.url, tunnel.token, upstream.port))
        client.wait_connected()
        yield relay, tunnel, upstream, client


def connect(port: int, source: str = "127.0.0.1", family=socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(("::1" if family == socket.AF_INET6 else "127.0.0.1", port))
    return sock


def exchange(sock: socket.socket, f, host: str, path: str = "/", headers: dict | None = None):
    """One keep-alive request on ``sock``; (status, headers, body)."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return read_response(f)


def get(port: int, host: str, path: str = "/", headers: dict | None = None, source: str = "127.0.0.1",
        family=socket.AF_INET):
    with connect(port, source, family) as sock, sock.makefile("rb") as f:
        return exchange(sock, f, host, path, headers)


def seen_paths(upstream) -> list[str]:
    return [path for _, path, _ in upstream.seen]


def count_password_checks(relay) -> list:
    """A list that gets an entry per password the relay checks (a hash, or a session digest)."""
    checker, calls = relay.relay.access, []
    original = checker.verify

    async def counting(*args):
        calls.append(1)
        return await original(*args)
    checker.verify = counting
    return calls


def wait_for_policy(relay, tunnel, timeout: float = 1.0) -> None:
    """Until the relay's live session holds the tunnel's stored policy (a policy change must reach
    it within a second: a poll on SQLite, a notification on PostgreSQL)."""
    wait_for(lambda: relay.relay.sessions[tunnel.subdomain].gate.stored == tunnel.access, timeout,
             message="the relay has the new policy")


def test_basic_auth_refuses_before_the_app_and_admits_the_right_password(settings, db):
    with protected(settings, {"basic_auth": ["alice:wonderland", "bob:builder123"]}) as (relay, tunnel, app, _):
        host = f"myapp.{settings.domain}"
        status, headers, body = get(relay.port, host, "/none")
        assert status == 401
        assert headers["www-authenticate"] == 'Basic realm="myapp", charset="UTF-8"'
        assert b"password" in body and b"alice" not in body
        status, _, _ = get(relay.port, host, "/wrong", {"Authorization": access.basic_header("alice", "nope")})
        assert status == 401
        status, _, _ = get(relay.port, host, "/nobody", {"Authorization": access.basic_header("eve", "wonderland")})
        assert status == 401
        status, headers, body = get(relay.port, host, "/json", {"Accept": "application/json"})
        assert status == 401 and json.loads(body) == {
            "error": True, "code": "UNAUTHORIZED", "message": json.loads(body)["message"]}
        assert app.seen == []  # not one of those reached the app
        status, _, body = get(relay.port, host, "/right", {"Authorization": ALICE})
        assert status == 200 and json.loads(body)["path"] == "/right"
        status, _, _ = get(relay.port, host, "/bob", {"Authorization": access.basic_header("bob", "builder123")})
        assert status == 200
        assert seen_paths(app) == ["/right", "/bob"]
        # the app sees the visitor's Authorization as sent (the tunnel's own business, like nginx's)
        assert app.seen[0][2]["Authorization"] == ALICE


def test_a_keep_alive_visitor_is_checked_on_every_request(settings, db):
    with protected(settings, {"basic_auth": ["alice:wonderland"]}) as (relay, tunnel, app, _):
        host = f"myapp.{settings.domain}"
        with connect(relay.port) as sock, sock.makefile("rb") as f:
            assert exchange(sock, f, host, "/one", {"Authorization": ALICE})[0] == 200
            assert exchange(sock, f, host, "/two", {"Authorization": ALICE})[0] == 200  # from the cache
            status, headers, _ = exchange(sock, f, host, "/three")  # the same connection, no credentials
            assert status == 401 and headers["connection"] == "close"
            assert f.read() == b""  # and the relay closed it
        assert seen_paths(app) == ["/one", "/two"]


def test_cached_credentials_skip_the_hash_and_a_policy_change_invalidates_them(settings, db):
    with protected(settings, {"basic_auth": ["alice:wonderland"]}) as (relay, tunnel, app, _):
        calls = count_password_checks(relay)
        host = f"myapp.{settings.domain}"
        for path in ("/a", "/b", "/c"):
            assert get(relay.port, host, path, {"Authorization": ALICE})[0] == 200  # new connection each
        assert len(calls) == 1
        # alice's password changes: the old one is refused on the live tunnel, with no reconnect
        tunnels.set_access(settings, tunnel, {"basic_auth": ["alice:new-password"]})
        wait_for_policy(relay, tunnel)
        assert get(relay.port, host, "/old", {"Authorization": ALICE})[0] == 401
        assert get(relay.port, host, "/d", {"Authorization": access.basic_header("alice", "new-password")})[0] == 200
        assert seen_paths(app) == ["/a", "/b", "/c", "/d"]


def test_ip_rules_refuse_with_403_and_never_ask_for_a_password(settings, db):
    policy = {"ip_allow": ["127.0.0.2/32"], "basic_auth": ["alice:wonderland"]}
    with protected(settings, policy) as (relay, tunnel, app, _):
        host = f"myapp.{settings.domain}"
        status, headers, body = get(relay.port, host, "/from-1", {"Authorization": ALICE}, source="127.0.0.1")
        assert status == 403 and "www-authenticate" not in headers
        assert b"Access denied" in body
        assert get(relay.port, host, "/from-2-anonymous", source="127.0.0.2")[0] == 401
        assert get(relay.port, host, "/from-2", {"Authorization": ALICE}, source="127.0.0.2")[0] == 200
        assert seen_paths(app) == ["/from-2"]
        tunnels.set_access(settings, tunnel, {"ip_allow": [], "ip_deny": ["127.0.0.2"], "basic_auth": []})
        wait_for_policy(relay, tunnel)
        assert get(relay.port, host, "/from-2-denied", source="127.0.0.2")[0] == 403
        assert get(relay.port, host, "/from-1-public", source="127.0.0.1")[0] == 200


def test_ipv6_and_ipv4_visitors_are_told_apart(settings, db):
    with protected(settings, {"ip_allow": ["::1/128"]}, dual_stack=True) as (relay, tunnel, app, _):
        host = f"myapp.{settings.domain}"
        assert get(relay.port, host, "/v6", source="::1", family=socket.AF_INET6)[0] == 200
        assert get(relay.port, host, "/v4", source="127.0.0.1")[0] == 403   # ::ffff:127.0.0.1 is IPv4
        tunnels.set_access(settings, tunnel, {"ip_allow": ["127.0.0.0/8"], "ip_deny": ["127.0.0.2/32"]})
        wait_for_policy(relay, tunnel)
        assert get(relay.port, host, "/v6-denied", source="::1", family=socket.AF_INET6)[0] == 403
        assert get(relay.port, host, "/v4-allowed", source="127.0.0.1")[0] == 200
        assert get(relay.port, host, "/v4-denied", source="127.0.0.2")[0] == 403
        assert seen_paths(app) == ["/v6", "/v4-allowed"]


def test_x_forwarded_for_counts_only_behind_the_proxy(settings, db):
    """relay_trust_proxy: the address our nginx saw is the last X-Forwarded-For entry, and only a
    loopback peer is our nginx; without the setting the header is the visitor's own words."""
    with protected(settings, {"ip_allow": ["198.51.100.7/32"]}) as (relay, tunnel, app, _):
        host = f"myapp.{settings.domain}"
        assert get(relay.port, host, "/spoofed", {"X-Forwarded-For": "198.51.100.7"})[0] == 403
    trusted = settings.replace(relay_trust_proxy=True)
    with protected(trusted, {"ip_allow": ["198.51.100.7/32"]}, subdomain="behind") as (relay, tunnel, app, _):
        host = f"behind.{settings.domain}"
        assert get(relay.port, host, "/nginx", {"X-Forwarded-For": "198.51.100.7"})[0] == 200
        # what a visitor wrote before nginx's own entry is not believed
        assert get(relay.port, host, "/prefixed", {"X-Forwarded-For": "198.51.100.7, 203.0.113.5"})[0] == 403
        assert seen_paths(app) == ["/nginx"]


def test_a_policy_changed_through_the_api_applies_to_the_next_request_of_a_connected_visitor(settings, db):
    from support.web_server import running_web_app
    with protected(settings, None) as (relay, tunnel, app, client), running_web_app(settings) as web:
        host = f"myapp.{settings.domain}"
        _, secret = apitokens.create(tunnel.owner, "policy script")
        api = requests.Session()
        api.headers["Authorization"] = f"Bearer {secret}"
        url = f"{web.url}/api/tunnels/{tunnel.id}"
        with connect(relay.port) as sock, sock.makefile("rb") as f:
            assert exchange(sock, f, host, "/public")[0] == 200        # public: the visitor stays connected
            answer = api.patch(url, json={"access": {"basic_auth": ["alice:wonderland"]}})
            assert answer.status_code == 200, answer.text
            assert answer.json()["tunnel"]["access"]["basic_auth"] == ["alice"]

            # within a poll (SQLite) or a notification (PostgreSQL), well under a second
            tunnel.access = Tunnel.get_by_id(tunnel.id).access
            wait_for_policy(relay, tunnel)
            # the same connection's next request is judged by it
            status, headers, _ = exchange(sock, f, host, "/after")
            assert status == 401 and headers["www-authenticate"].startswith("Basic ")
        assert "/after" not in seen_paths(app)
        assert get(relay.port, host, "/authed", {"Authorization": ALICE})[0] == 200
        assert api.patch(url, json={"access": {"public": True}}).status_code == 200
        tunnel.access = None
        wait_for_policy(relay, tunnel)
        assert get(relay.port, host, "/open")[0] == 200
        assert client.agent.url and len([l for l in client.lines if l.startswith("connected:")]) == 1
        assert not [l for l in client.lines if l.startswith(("disconnected", "reconnected"))]


def test_an_unreadable_stored_policy_refuses_everyone(settings, db):
    """A policy from a newer version (a mode this relay can't enforce) fails closed."""
    with protected(settings, None) as (relay, tunnel, app, _):
        Tunnel.update(access='{"v": 1, "members": {"owner": true}}').where(Tunnel.id == tunnel.id).execute()
        from intunnel import changes
        from intunnel.models import database
        with database.atomic():
            changes.tunnel_changed(tunnel.id)
        tunnel.access = Tunnel.get_by_id(tunnel.id).access
        wait_for_policy(relay, tunnel)
        assert get(relay.port, f"myapp.{settings.domain}", "/newer")[0] == 403
        assert app.seen == []


def test_upgrades_and_head_requests_are_refused_the_same_way(settings, db):
    with protected(settings, {"basic_auth": ["alice:wonderland"]}) as (relay, tunnel, app, _):
        host = f"myapp.{settings.domain}"
        ws = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
        status, headers, _ = get(relay.port, host, "/socket", ws)
        assert status == 401 and headers["www-authenticate"].startswith("Basic ")
        with connect(relay.port) as sock, sock.makefile("rb") as f:
            sock.sendall(f"HEAD /head HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            status_line = f.readline()
            assert b" 401 " in status_line
            lines = []
            while (line := f.readline()) not in (b"\r\n", b""):
                lines.append(line)
            assert f.read() == b""   # no body after the head, and the connection closed
        assert app.seen == []


def test_too_many_password_checks_at_once_get_429(settings, db):
    with protected(settings, {"basic_auth": ["alice:wonderland"]}) as (relay, tunnel, app, _):
        checker = relay.relay.access
        host = f"myapp.{settings.domain}"
        relay.call(_set_pending(checker, checker.max_pending))  # as if that many hashes were running
        try:
            status, headers, body = get(relay.port, host, "/busy", {"Authorization": ALICE,
                                                                     "Accept": "application/json"})
        finally:
            relay.call(_set_pending(checker, 0))
        assert status == 429 and headers["retry-after"] == "1" and json.loads(body)["code"] == "RATE_LIMITED"
        assert get(relay.port, host, "/later", {"Authorization": ALICE})[0] == 200
        assert seen_paths(app) == ["/later"]


async def _set_pending(checker, n: int) -> None:
    checker.pending = n  # on the relay's loop, where it is counted


def test_wrong_passwords_are_throttled_per_address_and_per_tunnel(settings, db):
    strict = settings.replace(relay_access_max_failures=2, relay_access_max_failures_per_tunnel=3)
    with protected(strict, {"basic_auth": ["alice:wonderland"]}) as (relay, tunnel, app, _):
        host = f"myapp.{settings.domain}"
        wrong = {"Authorization": access.basic_header("alice", "guess")}
        assert get(relay.port, host, "/signed-in", {"Authorization": ALICE})[0] == 200   # verified, cached
        assert [get(relay.port, host, "/guess", wrong)[0] for _ in range(2)] == [401, 401]
        status, headers, body = get(relay.port, host, "/guess", wrong)
        assert status == 429 and 1 <= int(headers["retry-after"]) <= 60 and b"Too many wrong passwords" in body
        # not even checked: the right password from that address waits too...
        assert get(relay.port, host, "/new-visitor", {"Authorization": access.basic_header("alice", "wonderland ")})[0] == 429
        # ...but a visitor already signed in carries on, and another address may still try
        assert get(relay.port, host, "/still-in", {"Authorization": ALICE})[0] == 200
        assert get(relay.port, host, "/guess", wrong, source="127.0.0.2")[0] == 401   # the tunnel's 3rd
        assert get(relay.port, host, "/guess", wrong, source="127.0.0.3")[0] == 429   # the tunnel is done
        assert seen_paths(app) == ["/signed-in", "/still-in"]
        refusals = relay.relay.stats.refusals
        assert refusals["access_throttled"] == 3 and refusals["access_challenge"] == 3


def test_bypass_paths_skip_the_password_but_never_the_ip_rules(settings, db):
    """A webhook sender reaches /webhooks/stripe without credentials; a sibling path, a path the
    app could resolve elsewhere (dot-segments, %2e, %2f, backslash) still needs the password, and
    a denied address is refused on the bypass path too."""
    policy = {"basic_auth": ["alice:wonderland"], "bypass_paths": ["/webhooks/stripe"],
              "ip_deny": ["127.0.0.2/32"]}
    with protected(settings, policy) as (relay, tunnel, app, _):
        calls = count_password_checks(relay)
        host = f"myapp.{settings.domain}"
        assert get(relay.port, host, "/webhooks/stripe")[0] == 200
        assert get(relay.port, host, "/webhooks/stripe/events?id=1")[0] == 200
        wrong = {"Authorization": access.basic_header("alice", "not-her-password")}
        assert get(relay.port, host, "/webhooks/stripe/signed", wrong)[0] == 200   # no hash spent on it
        for path in ("/webhooks/stripe-admin", "/webhooks", "/admin", "/webhooks/stripe/../admin",
                     "/webhooks/stripe/%2e%2e/admin", "/webhooks/stripe/%2E%2E/admin",
                     "/webhooks/stripe%2f..%2fadmin", "/webhooks/stripe//admin", "/webhooks/stripe\\..\\admin",
                     "/webhooks/stripe/..;/admin"):
            status, headers, _ = get(relay.port, host, path)
            assert status == 401 and headers["www-authenticate"].startswith("Basic"), (path, status)
        status, headers, _ = get(relay.port, host, "/webhooks/stripe", source="127.0.0.2")
        assert status == 403 and "www-authenticate" not in headers
        assert calls == []
        # keep-alive: a bypassed request, then one outside the prefix on the same connection
        with connect(relay.port) as sock, sock.makefile("rb") as f:
            assert exchange(sock, f, host, "/webhooks/stripe/1")[0] == 200
            assert exchange(sock, f, host, "/webhooks/stripe/2", wrong)[0] == 200
            assert exchange(sock, f, host, "/private")[0] == 401
        assert get(relay.port, host, "/private", {"Authorization": ALICE})[0] == 200
        assert seen_paths(app) == ["/webhooks/stripe", "/webhooks/stripe/events?id=1", "/webhooks/stripe/signed",
                                   "/webhooks/stripe/1", "/webhooks/stripe/2", "/private"]
        # the owner removes the bypass: the next request of the webhook needs the password again
        tunnels.set_access(settings, tunnel, {"bypass_paths": []})
        wait_for_policy(relay, tunnel)
        assert get(relay.port, host, "/webhooks/stripe")[0] == 401
