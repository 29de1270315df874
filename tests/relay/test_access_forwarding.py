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


def test_members_only_across_relays(pg, settings, db, stack, secret_file):
    """A ticket redeemed at one relay, the cookie honoured at the other (forwarded: the first relay
    passes the cookie on, the holding relay judges and strips it), and logging out everywhere ends
    it at both (the u:<id> notification)."""
    from datetime import timedelta

    from intunnel import accounts, memberpass
    from intunnel.models import Session, User
    from intunnel.timeutil import utcnow
    upstream = stack.enter_context(HttpUpstream())
    relays = Relays(stack, settings, secret_file)
    tunnel, _ = connect(stack, settings, relays[0], "myapp", upstream.port)
    tunnels.set_access(settings, tunnel, {"members": True})
    host = "myapp.localhost"
    wait_for(lambda: get(relays[0].port, host, "/probe", {"Accept": "text/html"})[0] == 302, 5,
             message="the policy reached relay-0")
    owner = User.get_by_id(tunnel.owner_id)
    session = Session.create(id_hash="b" * 64, user=owner, csrf_token="c", expires_at=utcnow() + timedelta(hours=1))
    ticket = memberpass.issue_ticket(session, tunnel.id, "/here?x=1", 60)
    status, headers, _ = get(relays[1].port, host, f"{memberpass.AUTH_PATH}?ticket={ticket}")
    assert status == 302 and headers["location"] == "/here?x=1"
    assert get(relays[0].port, host, f"{memberpass.AUTH_PATH}?ticket={ticket}")[0] == 403   # once, anywhere
    cookie = headers["set-cookie"].split(";")[0]
    before = len(upstream.seen)
    for relay in relays:
        assert get(relay.port, host, "/here?x=1", {"Cookie": f"{cookie}; k=v"})[0] == 200
    assert [h.get("Cookie") for _, _, h in upstream.seen[before:]] == ["k=v", "k=v"]
    accounts.end_sessions(Session.user == owner)
    for relay in relays:
        wait_for(lambda: get(relay.port, host, "/", {"Cookie": cookie, "Accept": "text/html"})[0] == 302, 5,
                 message="logging out everywhere reached every relay")
