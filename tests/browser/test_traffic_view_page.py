"""The tunnel page's Recent requests card in real headless Chromium (issue 15 item 5), with the
real relay, client and local app: a visitor's request appears without a reload (its path, never
its query string), another user can't see the page, and turning the view off stops it."""

from __future__ import annotations

import contextlib
import re

import pytest
from playwright.sync_api import expect

from intunnel import tunnels
from intunnel.models import TrafficEntry
from support.browser import PageErrors, browser, login, open_page, users, web  # noqa: F401
from support.tunnel import ClientThread, HttpUpstream, RelayThread, wait_for
from tests.relay.test_access import get

pytestmark = pytest.mark.browser


@pytest.fixture
def tunnel_up(settings, users):
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(HttpUpstream())
        relay = RelayThread(settings.replace(relay_traffic_flush=0.05))
        stack.callback(relay.close)
        tunnel = tunnels.create(settings, users["alice"], "Hooks", "hooks", upstream.port)
        stack.enter_context(ClientThread(relay.url, tunnel.token, upstream.port)).wait_connected()
        yield relay, tunnel


def test_a_visitor_request_appears_live_and_turning_it_off_stops_it(browser, web, tunnel_up):
    relay, tunnel = tunnel_up
    with open_page(browser, web, errors=PageErrors()) as page:
        login(page, "alice")
        page.goto(f"/tunnels/{tunnel.id}")
        card = page.locator("#traffic")
        expect(page.locator("#traffic-empty")).to_be_visible()
        expect(page.get_by_text("never headers, bodies or query strings")).to_be_visible()
        assert get(relay.port, "hooks.localhost", "/webhooks/stripe?signature=s3cret", source="127.0.0.7")[0] == 200
        row = card.locator("tbody tr").first
        expect(row).to_contain_text("/webhooks/stripe")     # no reload: the page polls
        expect(row).to_contain_text("GET")
        expect(row).to_contain_text("200")
        expect(row).to_contain_text("127.0.0.7")
        expect(page.locator("#traffic-empty")).to_be_hidden()
        assert "s3cret" not in page.content()
        assert get(relay.port, "hooks.localhost", "/second")[0] == 200
        expect(card.locator("tbody tr")).to_have_count(2)
        expect(card.locator("tbody tr").first).to_contain_text("/second")

        page.get_by_role("switch", name="Turn off").click()
        expect(page.locator("#traffic-state")).to_contain_text("Off")
        expect(page.locator("#traffic")).to_have_count(0)
        assert TrafficEntry.select().count() == 0
        session = relay.relay.sessions["hooks"]
        wait_for(lambda: session.traffic_view is False, 5, message="the relay heard of it")
        assert get(relay.port, "hooks.localhost", "/after-off")[0] == 200
        relay.call(relay.relay.traffic.flush())
        assert TrafficEntry.select().count() == 0

        page.get_by_role("switch", name="Turn on").click()
        expect(page.locator("#traffic-state")).to_contain_text("On")
        wait_for(lambda: session.traffic_view is True, 5, message="the relay heard of it")
        assert get(relay.port, "hooks.localhost", "/back-on")[0] == 200
        expect(page.locator("#traffic tbody tr").first).to_contain_text("/back-on")


def test_another_user_cannot_see_it(browser, web, tunnel_up):
    relay, tunnel = tunnel_up
    assert get(relay.port, "hooks.localhost", "/private")[0] == 200
    wait_for(lambda: TrafficEntry.select().count() == 1, 5, message="stored")
    with open_page(browser, web) as page:
        login(page, "bob")
        expect(page).to_have_url(re.compile(r"/$"))
        assert page.goto(f"/tunnels/{tunnel.id}").status == 404
        response = page.request.get(f"/api/tunnels/{tunnel.id}/traffic")
        assert response.status == 404 and "/private" not in response.text()
