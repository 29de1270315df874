"""Tunnel access policies through the generated nginx config with TLS (issue 13): basic auth on
https://<sub>.<domain>, and IP rules judged on the address nginx saw, not on what a visitor
wrote in X-Forwarded-For."""

from __future__ import annotations

import pytest

from bench.stack import http_request
from intunnel import access, tunnels
from intunnel.models import Tunnel
from tests.support.tunnel import HttpUpstream, wait_for
from tests.tunnel_heavy.test_nginx_tls import behind_nginx

pytestmark = [pytest.mark.nginx, pytest.mark.slow]

ALICE = {"Authorization": access.basic_header("alice", "wonderland")}


def set_policy(st, subdomain: str, policy: dict) -> None:
    st._open_db()
    tunnels.set_access(st.settings, Tunnel.get(Tunnel.subdomain == subdomain), policy)


def test_basic_auth_and_ip_rules_through_nginx_with_tls(make_stack, tmp_path):
    with HttpUpstream() as app, behind_nginx(make_stack, tmp_path, app.port) as (st, port):
        host = f"verified.localhost:{port}"

        def get(path, headers=None):
            return http_request(port, host, path, tls=True, headers=headers)
        set_policy(st, "verified", {"basic_auth": ["alice:wonderland"]})
        wait_for(lambda: get("/probe")[0] == 401, 5, message="the policy reached the relay")
        before = len(app.seen)
        status, headers, _ = get("/anonymous")
        assert status == 401 and headers["www-authenticate"] == 'Basic realm="verified", charset="UTF-8"'
        assert get("/wrong", {"Authorization": access.basic_header("alice", "nope")})[0] == 401
        status, _, body = get("/signed-in", ALICE)
        assert status == 200 and b'"/signed-in"' in body
        assert [p for _, p, _ in app.seen[before:]] == ["/signed-in"]

        # nginx appends the address it saw (127.0.0.1): a visitor's own X-Forwarded-For is not believed
        set_policy(st, "verified", {"basic_auth": [], "ip_allow": ["198.51.100.7/32"]})
        wait_for(lambda: get("/probe2")[0] == 403, 5, message="the IP rule reached the relay")
        assert get("/spoofed", {"X-Forwarded-For": "198.51.100.7"})[0] == 403
        set_policy(st, "verified", {"ip_allow": ["127.0.0.1/32"]})
        wait_for(lambda: get("/probe3")[0] == 200, 5, message="the allow rule reached the relay")
        assert get("/spoofed-elsewhere", {"X-Forwarded-For": "203.0.113.9"})[0] == 200  # still 127.0.0.1
        # the other tunnel behind the same nginx is untouched: public
        assert http_request(port, f"insecure.localhost:{port}", "/", tls=True)[0] == 200


def test_members_only_through_nginx_with_tls(make_stack, tmp_path):
    """The relay's half of members only on https://<sub>.<domain>: the redirect to the web app,
    the ticket redeemed through nginx, the __Host- Secure cookie, stripped before the app."""
    from datetime import timedelta
    from urllib.parse import quote

    from intunnel import memberpass
    from intunnel.models import Session
    from intunnel.timeutil import utcnow
    with HttpUpstream() as app, behind_nginx(make_stack, tmp_path, app.port, public_scheme="https",
                                             web_public_url="https://localhost") as (st, port):
        host = f"verified.localhost:{port}"

        def get(path, headers=None):
            return http_request(port, host, path, tls=True, headers={"Accept": "text/html", **(headers or {})})
        set_policy(st, "verified", {"members": True})
        wait_for(lambda: get("/probe")[0] == 302, 5, message="the policy reached the relay")
        before = len(app.seen)
        status, headers, _ = get("/x?y=1")
        assert status == 302
        assert headers["location"] == "https://localhost/access?to=" + quote("https://verified.localhost/x?y=1", safe="")
        session = Session.create(id_hash="a" * 64, user=st._user, csrf_token="c", expires_at=utcnow() + timedelta(hours=1))
        tunnel = Tunnel.get(Tunnel.subdomain == "verified")
        ticket = memberpass.issue_ticket(session, tunnel.id, "/x?y=1", 60)
        status, headers, _ = get(f"{memberpass.AUTH_PATH}?ticket={ticket}")
        assert status == 302 and headers["location"] == "/x?y=1"
        cookie, _, attributes = headers["set-cookie"].partition("; ")
        assert cookie.startswith("__Host-intunnel_access=")
        assert attributes.split("; ")[0] == "Path=/" and attributes.endswith("HttpOnly; SameSite=Lax; Secure")
        assert get(f"{memberpass.AUTH_PATH}?ticket={ticket}")[0] == 403   # once only
        status, _, body = get("/x?y=1", {"Cookie": f"{cookie}; theme=dark"})
        assert status == 200 and b'"/x?y=1"' in body
        assert [h.get("Cookie") for _, _, h in app.seen[before:]] == ["theme=dark"]
