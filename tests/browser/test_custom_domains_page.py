"""The tunnel page's Custom domains card in real headless Chromium: add a hostname (the DNS
record to create is shown), a refused one is said on the page, the status changes live as the
reconciler writes it, and Remove removes it."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from intunnel import tunnels
from intunnel.models import CustomDomain
from support.browser import PageErrors, browser, login, open_page, users, web  # noqa: F401

pytestmark = pytest.mark.browser


def test_add_watch_and_remove_a_custom_domain(browser, web, users, settings):
    tunnel = tunnels.create(settings, users["alice"], "Shop", "shop", 3000)
    with open_page(browser, web, errors=PageErrors()) as page:
        login(page, "alice")
        page.goto(f"/tunnels/{tunnel.id}")
        expect(page.get_by_text("No custom domains yet.")).to_be_visible()
        page.get_by_label("Add a hostname").fill("Store.Example.ORG")
        page.get_by_role("button", name="Add custom domain").click()
        row = page.locator("#domains tr[data-hostname='store.example.org']")
        expect(row).to_contain_text("pending-dns")
        expect(row).to_contain_text("store.example.org CNAME shop.localhost")

        page.get_by_label("Add a hostname").fill("shop.localhost")
        page.get_by_role("button", name="Add custom domain").click()
        expect(page.get_by_role("alert")).to_contain_text("can't be localhost")

        # what the reconciler writes shows up without a reload
        CustomDomain.update(state="failed", reason="the CA could not connect").execute()
        expect(row.locator("[data-domain-status]")).to_have_text("failed: the CA could not connect", timeout=10000)
        CustomDomain.update(state="active", reason="").execute()
        expect(row.locator("[data-domain-status]")).to_have_text("active", timeout=10000)

        row.get_by_role("button", name="Remove").click()
        expect(page.get_by_text("No custom domains yet.")).to_be_visible()
        assert CustomDomain.select().count() == 0
