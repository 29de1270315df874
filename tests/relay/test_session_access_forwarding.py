"""A session's own access rules for a visitor another relay forwards (several relays, PostgreSQL):
the relay holding the session judges it, with the rules of that session, on the visitor's address
as the first relay saw it."""

from __future__ import annotations

import json

from intunnel import access
from intunnel.models import Route, Tunnel
from tests.relay.test_access import get
from tests.relay.test_forwarding import Relays, pg, secret_file, stack  # noqa: F401
from tests.support.tunnel import ClientProcess, HttpUpstream, make_tunnel, wait_for

CAROL = access.basic_header("carol", "sesame-open")


def test_a_forwarded_visitor_meets_the_sessions_rules(pg, settings, db, stack, secret_file):
    upstream = stack.enter_context(HttpUpstream())
    relays = Relays(stack, settings, secret_file)
    tunnel = make_tunnel(settings, "myapp", upstream.port)
    client = stack.enter_context(ClientProcess(relays[0].url, tunnel.token, upstream.port,
                                               "--basic-auth", "carol:sesame-open", "--deny-ip", "127.0.0.2"))
    client.wait_line(r"^access: basic auth \(1 user\), not from 1 address range for this session$")
    wait_for(lambda: Route.select().where(Route.tunnel == tunnel.id).exists(), 5, message="route of myapp")
    host = "myapp.localhost"
    # at the other relay, which has no session: forwarded, and judged by the one holding it
    status, headers, _ = get(relays[1].port, host, "/anonymous")
    assert status == 401 and headers["www-authenticate"] == 'Basic realm="myapp", charset="UTF-8"'
    assert get(relays[1].port, host, "/denied", {"Authorization": CAROL}, source="127.0.0.2")[0] == 403
    assert get(relays[1].port, host, "/signed-in", {"Authorization": CAROL})[0] == 200
    assert [p for _, p, _ in upstream.seen] == ["/signed-in"]
    assert json.loads(Tunnel.get_by_id(tunnel.id).session_access)["basic_auth"] == ["carol"]
