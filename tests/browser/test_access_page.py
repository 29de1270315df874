"""The tunnel page's access card in a real headless Chromium (issue 13): set a password and
IP rules, see the mistakes next to the form, remove a user, make the tunnel public again."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from intunnel import access, tunnels
from intunnel.models import Tunnel, database
from intunnel.security import verify_password
from support.browser import browser, login, page, users, web  # noqa: F401

pytestmark = pytest.mark.browser


def stored(tunnel_id) -> access.Policy:
    with database.connection_context():
        return access.load(Tunnel.get_by_id(tunnel_id).access)


def test_set_show_and_clear_the_access_policy(page, users, web):
    with database.connection_context():
        tunnel = tunnels.create(web.settings, users["alice"], "Shop", "shop", 3000)
    login(page)
    page.goto(f"/tunnels/{tunnel.id}")
    expect(page.locator("#access-summary")).to_contain_text("Public")
    form = page.locator("#access-form")
    form.get_by_label("Add or reset a user").fill("carol")
    form.get_by_label("Their password").fill("short")
    form.get_by_label("Only from these addresses").fill("10.0.0.0/8\n2001:db8::/32")
    form.get_by_role("button", name="Save access").click()
    expect(page.locator("#e-access")).to_contain_text("password of 'carol' must be 8-256 characters")
    expect(page.locator("#f-ip_allow")).to_have_value("10.0.0.0/8\n2001:db8::/32")  # what was typed stays
    assert stored(tunnel.id).public

    form.get_by_label("Their password").fill("carols-secret")
    form.get_by_role("button", name="Save access").click()
    expect(page.get_by_role("status").first).to_contain_text("Access saved")
    expect(page.locator("#access-summary")).to_contain_text("a password is required (1 user)")
    expect(page.locator("#access-summary")).to_contain_text("only from 10.0.0.0/8, 2001:db8::/32")
    expect(page.locator("#access-users")).to_contain_text("carol")
    assert "carols-secret" not in page.content()
    policy = stored(tunnel.id)
    assert verify_password("carols-secret", policy.hash_of("carol"))

    form.get_by_label("Add or reset a user").fill("dave")
    form.get_by_label("Their password").fill("daves-secret")
    form.get_by_role("button", name="Save access").click()
    expect(page.locator("#access-summary")).to_contain_text("(2 users)")
    assert stored(tunnel.id).hash_of("carol") == policy.hash_of("carol")  # kept, not re-hashed

    page.locator("#access-users li", has_text="carol").get_by_label("Remove").check()
    form.get_by_label("Only from these addresses").fill("")
    form.get_by_label("Never from these addresses").fill("192.0.2.0/24")
    form.get_by_role("button", name="Save access").click()
    expect(page.locator("#access-summary")).to_contain_text("(1 user); not from 192.0.2.0/24")
    assert [u for u, _ in stored(tunnel.id).users] == ["dave"]

    page.get_by_role("button", name="Make public").click()
    expect(page.get_by_role("status").first).to_contain_text("public again")
    expect(page.locator("#access-summary")).to_contain_text("Public")
    assert stored(tunnel.id).public
