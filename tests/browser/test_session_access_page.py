"""The tunnel page shows what the connected client added for its session (issue 13, item 2), in a
real headless Chromium with the real relay and a real ``intunnel http --basic-auth ... --deny-ip``
process: the note names the users and addresses (never the password), and goes away without a
reload when that client stops."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from intunnel import accounts, tunnels
from intunnel.models import Tunnel, database
from support.browser import PASSWORD, browser, login, shot  # noqa: F401
from support.tunnel import ClientProcess, wait_for
from test_live_tunnel import stack  # noqa: F401

pytestmark = pytest.mark.browser


def test_the_tunnel_page_shows_the_sessions_narrowing(stack):
    relay, web, app, page, processes = stack
    with database.connection_context():
        alice = accounts.create_user("alice@example.com", "alice", PASSWORD)
        tunnel = tunnels.create(web.settings, alice, "My Web App", "myapp", app.port)
    login(page, "alice@example.com")
    page.goto(f"/tunnels/{tunnel.id}")
    expect(page.locator("#access-summary")).to_contain_text("Public")
    expect(page.locator("#session-access")).to_have_count(0)

    client = processes.enter_context(ClientProcess(relay.url, tunnel.token, app.port, "--basic-auth",
                                                   "carol:sesame-open", "--deny-ip", "127.0.0.2"))
    client.wait_line(r"^access: basic auth \(1 user\), not from 1 address range for this session$")
    # The client prints that line on the relay's Welcome, which goes out before the relay's write
    # of the session's rules to the database: the page shows what is stored, so wait for it.
    wait_for(lambda: _stored_session_access(tunnel.id), message="the relay stored the session's rules")
    page.reload()
    note = page.locator("#session-access")
    expect(note).to_contain_text("Narrowed by the connected client")
    expect(note).to_contain_text("a password for carol; not from 127.0.0.2/32")
    expect(page.locator("#access-summary")).to_contain_text("Public")   # the stored policy is unchanged
    assert "sesame-open" not in page.content()
    shot(page, "tunnel-session-access")

    page.evaluate("window.__no_reload = true")
    client.stop()
    expect(note).to_be_hidden(timeout=10_000)
    assert page.evaluate("window.__no_reload") is True
    page.reload()
    expect(page.locator("#session-access")).to_have_count(0)


def _stored_session_access(tunnel_id: int) -> str | None:
    with database.connection_context():
        return Tunnel.get_by_id(tunnel_id).session_access
