"""The relay routes a custom hostname to its tunnel, only while it is active, and to no other
tunnel (tenant isolation: a request reaches only the tunnel its Host names)."""

from __future__ import annotations

import http.client
import json

from intunnel import domains
from intunnel.models import CustomDomain
from tests.support.tunnel import ClientThread, HttpUpstream, RelayThread, make_tunnel, visit, wait_for


def test_only_active_custom_domains_route_each_to_its_own_tunnel(settings, db):
    settings = settings.replace(relay_custom_domain_refresh=0.05)
    with HttpUpstream() as app_a, HttpUpstream() as app_b, RelayThread(settings) as relay:
        a = make_tunnel(relay.settings, "alpha", app_a.port, username="alice")
        b = make_tunnel(relay.settings, "bravo", app_b.port, username="bob")
        with ClientThread(relay.url, a.token, app_a.port) as ca, ClientThread(relay.url, b.token, app_b.port) as cb:
            ca.wait_connected()
            cb.wait_connected()
            domains.add(relay.settings, a, "shop.alice.test")
            domains.add(relay.settings, b, "blog.bob.test")

            def port_of(host):
                try:
                    status, headers, body = visit(relay.port, host, "/who")
                except (OSError, http.client.HTTPException):   # cut while its name stopped routing
                    return "closed", None
                return status, headers.get("x-upstream-port")

            # pending-dns: not routed (the relay's unknown-name 404), though the row exists
            assert port_of("shop.alice.test")[0] == 404
            CustomDomain.update(state="active").where(CustomDomain.hostname == "shop.alice.test").execute()
            wait_for(lambda: port_of("shop.alice.test") == (200, str(app_a.port)), message="shop routed to alpha")
            assert port_of("blog.bob.test")[0] == 404          # bob's is still pending
            CustomDomain.update(state="active").where(CustomDomain.hostname == "blog.bob.test").execute()
            wait_for(lambda: port_of("blog.bob.test") == (200, str(app_b.port)), message="blog routed to bravo")
            assert port_of("shop.alice.test") == (200, str(app_a.port))
            status, _, body = visit(relay.port, "shop.alice.test", "/x")
            assert json.loads(body)["headers"]["Host"] == "shop.alice.test"

            # failed or removed: no longer routed, not even on a kept-alive connection attached to it
            kept = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=10)
            kept.request("GET", "/kept", headers={"Host": "shop.alice.test"})
            response = kept.getresponse()
            assert (response.status, response.getheader("x-upstream-port")) == (200, str(app_a.port))
            response.read()
            CustomDomain.update(state="failed").where(CustomDomain.hostname == "shop.alice.test").execute()
            wait_for(lambda: port_of("shop.alice.test")[0] == 404, message="a failed name unrouted")
            seen = len(app_a.seen)
            try:
                kept.request("GET", "/kept-after", headers={"Host": "shop.alice.test"})
                again = kept.getresponse().status
            except (OSError, http.client.HTTPException):
                again = "closed"
            assert again in (404, "closed") and len(app_a.seen) == seen, again
            kept.close()
            domains.remove(b, "blog.bob.test")
            wait_for(lambda: port_of("blog.bob.test")[0] == 404, message="a removed name unrouted")
            assert port_of("alpha.localhost") == (200, str(app_a.port))   # the tunnels' own names unchanged
