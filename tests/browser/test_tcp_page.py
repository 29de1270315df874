"""The dashboard's TCP tunnels (issue 16): created from the New tunnel form, the page shows the
tcp:// address, the `intunnel tcp` command and says that the address rules are all the access
control a TCP tunnel has (no password or members fields); TCP turned off is said on the form."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from intunnel.models import Tunnel, database
from support.browser import browser, login, page, shot, users, web  # noqa: F401

pytestmark = pytest.mark.browser


@pytest.fixture
def settings(settings):
    return settings.replace(relay_tcp_ports="22000-22009")


def test_create_a_tcp_tunnel_on_the_dashboard(page, users, web):
    login(page)
    page.goto("/tunnels/new")
    page.get_by_label("Name").fill("Home SSH")
    page.get_by_label("TCP: any protocol").check()
    page.get_by_label("Local port").fill("22")
    page.get_by_role("button", name="Create tunnel").click()
    expect(page.get_by_role("heading", name="Home SSH")).to_be_visible()
    expect(page.locator("#public-url")).to_have_text("tcp://localhost:22000")
    expect(page.locator("#cmd-http")).to_contain_text("intunnel tcp 22")
    expect(page.locator("#tcp-connect")).to_contain_text("ssh -p 22000")
    expect(page.locator("#tcp-access-note")).to_contain_text("only access control")
    expect(page.get_by_text("Password (HTTP basic auth)")).to_have_count(0)
    expect(page.get_by_role("link", name="Open", exact=True)).to_have_count(0)
    expect(page.locator("#traffic-h")).to_have_count(0)   # raw bytes: no requests to list
    shot(page, "tcp-tunnel")
    # the address rules save as for HTTP
    page.get_by_label("Only from these addresses").fill("10.0.0.0/8")
    page.get_by_role("button", name="Save access").click()
    expect(page.locator("#access-summary")).to_contain_text("only from 10.0.0.0/8")
    # a public port asked for, and one taken
    page.goto("/tunnels/new")
    page.get_by_label("Name").fill("DB")
    page.get_by_label("TCP: any protocol").check()
    page.get_by_label("Local port").fill("5432")
    page.get_by_label("Public port (TCP only)").fill("22000")
    page.get_by_role("button", name="Create tunnel").click()
    expect(page.get_by_text("already used by another tunnel")).to_be_visible()
    page.get_by_label("Public port (TCP only)").fill("22005")
    page.get_by_role("button", name="Create tunnel").click()
    expect(page.locator("#public-url")).to_have_text("tcp://localhost:22005")
    with database.connection_context():
        assert sorted(t.remote_port for t in Tunnel.select()) == [22000, 22005]
