"""GET /api/tunnels/:id names what the live session added to the policy (issue 13, item 2):
``session_access``, as the relay holding the session wrote it; null when none or inactive."""

from __future__ import annotations

import json

from intunnel.models import Tunnel, database

SHOWN = {"basic_auth": ["carol"], "ip_allow": [], "ip_deny": ["127.0.0.2/32"]}


def test_session_access_is_shown_only_for_a_live_session(web, alice_session):
    r = alice_session.post(web.url + "/api/tunnels", json={"name": "App", "subdomain": "myapp", "local_port": 3000})
    url = f"{web.url}/api/tunnels/{r.json()['tunnel']['id']}"
    assert alice_session.get(url).json()["session_access"] is None
    tunnel_id = r.json()["tunnel"]["id"]
    with database.connection_context():   # what the relay writes when such a session connects
        Tunnel.update(status="active", session_access=json.dumps(SHOWN)).where(Tunnel.id == tunnel_id).execute()
    got = alice_session.get(url).json()
    assert got["session_access"] == SHOWN and got["access"]["public"] is True
    with database.connection_context():   # inactive: whatever is left in the row is not a live session's
        Tunnel.update(status="inactive").where(Tunnel.id == tunnel_id).execute()
    assert alice_session.get(url).json()["session_access"] is None
