"""Access policies for visitors a relay forwards to the relay holding the agent (issue 12 + 13):
the holding relay judges them on the visitor's address as the first relay saw it, not on the
peer relay's, and refused requests reach no app (PostgreSQL: several relays)."""

from __future__ import annotations

from intunnel import access, tunnels
from tests.relay.test_access import ALICE, get
from tests.relay.test_forwarding import Relays, connect, pg, secret_file, stack  # noqa: F401
from tests.support.tunnel import HttpUpstream, wait_for


def test_a_forwarded_visitor_meets_the_tunnel_policy_with_its_own_address(pg, settings, db, stack, secret_file):
    upstream = stack.enter_context(HttpUpstream())
    relays = Relays(stack, settings, secret_file)
    tunnel, _ = connect(stack, settings, relays[0], "myapp", upstream.port)
    tunnels.set_access(settings, tunnel, {"basic_auth": ["alice:wonderland"], "ip_deny": ["127.0.0.2/32"]})
    host = "myapp.localhost"
    wait_for(lambda: get(relays[0].port, host, "/probe")[0] == 401, 5, message="the policy reached relay-0")
    before = len(upstream.seen)
    # at the other relay: forwarded, and judged by the holding relay
    status, headers, _ = get(relays[1].port, host, "/anonymous")
    assert status == 401 and headers["www-authenticate"] == 'Basic realm="myapp", charset="UTF-8"'
    assert get(relays[1].port, host, "/denied", {"Authorization": ALICE}, source="127.0.0.2")[0] == 403
    assert get(relays[1].port, host, "/signed-in", {"Authorization": ALICE})[0] == 200
    assert [p for _, p, _ in upstream.seen[before:]] == ["/signed-in"]
    assert access.load(tunnel.access).hash_of("alice")
