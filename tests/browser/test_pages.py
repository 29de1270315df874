"""The dashboard in a real headless Chromium: every page, its forms, and its screenshot.

The end-to-end flow with a real relay and client is in test_live_tunnel.py.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from playwright.sync_api import expect

from intunnel import tunnels
from intunnel.models import ApiToken, Tunnel, User, database
from intunnel.timeutil import utcnow
from support.browser import (PASSWORD, browser, login, no_horizontal_scroll, no_js_page, open_page,  # noqa: F401
                             page, phone_page, shot, users, web)

pytestmark = pytest.mark.browser


def make_tunnel(settings, user, name, subdomain, port, status="inactive", connected_ago=None):
    with database.connection_context():
        tunnel = tunnels.create(settings, user, name, subdomain, port)
        tunnel.status = status
        tunnel.created_at = utcnow() - timedelta(days=3)
        if connected_ago is not None:
            tunnel.last_connected = utcnow() - connected_ago
        tunnel.save()
        return tunnel


def set_status(tunnel_id, status):
    with database.connection_context():
        Tunnel.update(status=status, last_connected=utcnow()).where(Tunnel.id == tunnel_id).execute()


def test_login_shows_errors_then_opens_the_dashboard(page, users):
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login$"))
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    shot(page, "login")

    page.get_by_label("Email or username").fill("alice")
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")
    shot(page, "login-error")

    login(page, "alice@example.com")
    expect(page).to_have_url(re.compile(r"/$"))
    expect(page.get_by_role("heading", name="Create your first tunnel")).to_be_visible()
    shot(page, "dashboard-empty")


def test_login_throttling_shows_a_clear_message(page, users, web):
    for _ in range(web.settings.login_max_failures):
        login(page, "bob", "not the password")
        expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")
    login(page, "bob", PASSWORD)  # even the right password waits now
    expect(page.get_by_role("alert")).to_contain_text("Too many failed attempts")


def test_login_goes_back_to_the_page_asked_for(page, users):
    page.goto("/profile")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fprofile$"))
    page.get_by_label("Email or username").fill("bob")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/profile$"))


def test_create_tunnel_inline_errors_then_tunnel_page(page, users, web):
    make_tunnel(web.settings, users["bob"], "Bob's app", "taken", 4000)
    login(page)
    page.goto("/")
    page.get_by_role("link", name="New tunnel").first.click()

    form_name = page.get_by_label("Name")
    subdomain = page.get_by_label("Subdomain")
    port = page.get_by_label("Local port")
    form_name.fill("My Web App")
    port.fill("3000")
    for value, message in (("taken", "Subdomain 'taken' is already in use"),
                           ("www", "Subdomain 'www' is reserved"),
                           ("Not_A-Label-", "Subdomain must be 1-63 characters of a-z, 0-9 and inner hyphens")):
        subdomain.fill(value)
        page.get_by_role("button", name="Create tunnel").click()
        expect(page.locator("#e-subdomain")).to_have_text(message)
        expect(subdomain).to_have_attribute("aria-invalid", "true")
        expect(form_name).to_have_value("My Web App")  # the form keeps what was typed
    port.fill("70000")
    subdomain.fill("taken")
    page.get_by_role("button", name="Create tunnel").click()
    expect(page.locator("#e-local_port")).to_have_text("Local port must be between 1 and 65535")
    shot(page, "tunnel-new-errors")

    port.fill("3000")
    subdomain.fill("myapp")
    page.get_by_role("button", name="Create tunnel").click()
    expect(page.get_by_role("heading", name="My Web App")).to_be_visible()
    expect(page.get_by_role("status").first).to_contain_text("Tunnel “My Web App” created")

    with database.connection_context():
        tunnel = Tunnel.get(Tunnel.subdomain == "myapp")
    relay_url = web.settings.relay_url
    # The token is hidden until revealed; the commands are exactly these.
    token = page.locator("#tunnel-token")
    expect(token).to_be_hidden()
    expect(page.get_by_text(tunnel.token)).to_have_count(3)  # in the DOM, but inside closed <details>
    expect(page.locator("#cmd-add-token")).to_be_hidden()
    expect(page.locator("#cmd-pyz")).to_be_hidden()
    expect(page.locator("#cmd-http")).to_have_text("intunnel http 3000")
    expect(page.locator("[data-tunnel-status]")).to_have_attribute("data-status", "inactive")
    shot(page, "tunnel")
    page.get_by_text("Reveal token").click()
    expect(token).to_be_visible()
    expect(token).to_have_text(tunnel.token)
    page.locator("#cmd-token-reveal > summary").click()
    expect(page.locator("#cmd-add-token")).to_have_text(
        f"intunnel config add-token {tunnel.token} --server {relay_url} --name {tunnel.subdomain}")
    # No intunnel on that machine: this server's own client, fetched from where the page was read.
    page.locator("#cmd-pyz-reveal > summary").click()
    expect(page.locator("#cmd-pyz")).to_have_text(
        f"curl -fsSLO {web.url}/download/intunnel.pyz && python3 intunnel.pyz http 3000 --server {relay_url} "
        f"--token {tunnel.token}")
    page.locator("#tunnel-reveal, #token-reveal").first.scroll_into_view_if_needed()
    shot(page, "tunnel-revealed")

    # The copy buttons put the exact text on the clipboard.
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.locator("button[data-copy=tunnel-token]").click()
    expect(page.locator("button[data-copy=tunnel-token]")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == tunnel.token
    page.locator("button[data-copy=cmd-http]").click()
    assert page.evaluate("navigator.clipboard.readText()") == "intunnel http 3000"


def test_dashboard_lists_tunnels_and_updates_status_without_reload(page, users, web):
    alice = users["alice"]
    make_tunnel(web.settings, alice, "Marketing site", "marketing", 3000, "active", timedelta(minutes=2))
    make_tunnel(web.settings, alice, "API staging", "api-staging", 8080, "inactive", timedelta(days=2))
    quiet = make_tunnel(web.settings, alice, "Webhook receiver", "hooks", 5000)
    make_tunnel(web.settings, users["bob"], "Bob's secret", "bobs", 1234)
    login(page)
    rows = page.locator("#tunnels tbody tr")
    expect(rows).to_have_count(3)  # bob's tunnel is not listed
    first = rows.first
    expect(first.get_by_role("link", name="Marketing site")).to_have_attribute("href", "/tunnels/1")
    expect(first.get_by_role("link", name=re.compile("marketing.localhost"))).to_have_attribute(
        "href", web.settings.tunnel_url("marketing"))
    expect(first.locator("[data-tunnel-status]")).to_have_text("Active")
    expect(first.locator("td[data-label='Local port']")).to_have_text("3000")
    expect(first.locator("td[data-label='Last connected']")).to_have_text("2 min ago")
    expect(first.locator("td[data-label='Created']")).to_have_text("3 days ago")
    expect(rows.nth(2).locator("td[data-label='Last connected']")).to_have_text("Never")
    shot(page, "dashboard")

    # A marker that a reload would wipe: the page must change in place.
    page.evaluate("window.__no_reload = true")
    pill = page.locator(f"[data-tunnel-status='{quiet.id}']")
    expect(pill).to_have_attribute("data-status", "inactive")
    set_status(quiet.id, "active")
    expect(pill).to_have_attribute("data-status", "active", timeout=5000)
    expect(pill).to_have_text("Active")
    expect(page.locator("#active-count")).to_have_text("2")
    expect(rows.nth(2).locator("td[data-label='Last connected']")).to_have_text("just now")
    set_status(quiet.id, "inactive")
    expect(pill).to_have_text("Inactive", timeout=5000)
    assert page.evaluate("window.__no_reload") is True


def test_phone_layout(phone_page, users, web):
    alice = users["alice"]
    make_tunnel(web.settings, alice, "Marketing site", "marketing", 3000, "active", timedelta(minutes=2))
    make_tunnel(web.settings, alice, "API staging", "api-staging", 8080, "inactive", timedelta(days=2))
    phone_page.goto("/login")
    assert no_horizontal_scroll(phone_page)
    shot(phone_page, "phone-login")
    login(phone_page)
    expect(phone_page.locator("#tunnels tbody tr")).to_have_count(2)
    assert no_horizontal_scroll(phone_page)
    shot(phone_page, "phone-dashboard")
    for path, name in (("/tunnels/1", "phone-tunnel"), ("/tunnels/new", None), ("/tokens", None),
                       ("/profile", None), ("/admin/users", "phone-users")):
        phone_page.goto(path)
        assert no_horizontal_scroll(phone_page), f"{path} scrolls sideways at 360 px"
        if name:
            shot(phone_page, name)


def test_dark_mode_follows_the_system(browser, web, users):
    with open_page(browser, web, color_scheme="dark") as page:
        make_tunnel(web.settings, users["alice"], "Marketing site", "marketing", 3000, "active", timedelta(minutes=2))
        make_tunnel(web.settings, users["alice"], "API staging", "api-staging", 8080, "inactive", timedelta(days=2))
        login(page)
        expect(page.locator("#tunnels tbody tr")).to_have_count(2)
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(13, 17, 23)", background
        shot(page, "dark-dashboard")


def test_rename_change_port_regenerate_and_delete_with_confirmation(page, users, web):
    tunnel = make_tunnel(web.settings, users["alice"], "Old name", "renameme", 3000)
    login(page)
    page.goto(f"/tunnels/{tunnel.id}")
    settings_form = page.locator("form[action$='/edit']")
    settings_form.get_by_label("Name").fill("")
    settings_form.get_by_label("Local port").fill("0")
    settings_form.get_by_role("button", name="Save changes").click()
    expect(page.locator("#e-name")).to_have_text("Name must be 1-100 characters")
    expect(page.locator("#e-local_port")).to_have_text("Local port must be between 1 and 65535")
    settings_form.get_by_label("Name").fill("New name")
    settings_form.get_by_label("Local port").fill("5173")
    settings_form.get_by_role("button", name="Save changes").click()
    expect(page.get_by_role("heading", name="New name")).to_be_visible()
    expect(page.locator("#cmd-http")).to_have_text("intunnel http 5173")

    old_token = tunnel.token
    page.get_by_role("link", name="Regenerate token…").click()
    expect(page.get_by_role("heading", name="Regenerate the token?")).to_be_visible()
    shot(page, "confirm-regenerate")
    page.get_by_role("link", name="Cancel").click()  # cancelling changes nothing
    with database.connection_context():
        assert Tunnel.get_by_id(tunnel.id).token == old_token
    page.get_by_role("link", name="Regenerate token…").click()
    page.get_by_role("button", name="Regenerate token").click()
    expect(page.get_by_role("status").first).to_contain_text("New token created")
    with database.connection_context():
        new_token = Tunnel.get_by_id(tunnel.id).token
    assert new_token != old_token
    expect(page.locator("#tunnel-token")).to_have_text(new_token, use_inner_text=False)

    page.get_by_role("link", name="Delete tunnel…").click()
    expect(page.get_by_role("heading", name="Delete “New name”?")).to_be_visible()
    shot(page, "confirm-delete")
    page.get_by_role("button", name="Delete tunnel").click()
    expect(page).to_have_url(re.compile(r"/$"))
    expect(page.get_by_role("status").first).to_contain_text("Tunnel “New name” deleted")
    with database.connection_context():
        assert Tunnel.get_or_none(Tunnel.id == tunnel.id) is None
    assert page.goto(f"/tunnels/{tunnel.id}").status == 404


def test_api_token_secret_is_shown_once_then_revoked(page, users):
    login(page)
    page.goto("/tokens")
    page.get_by_label("Token name").fill("")
    page.get_by_role("button", name="Create token").click()
    expect(page.locator("#e-name")).to_have_text("Name must be 1-100 characters")
    page.get_by_label("Token name").fill("CI deploys")
    page.get_by_role("button", name="Create token").click()
    secret = page.locator("#new-token-value").inner_text()
    assert secret.startswith("itk_") and len(secret) > 40
    expect(page.locator("#tokens")).to_contain_text("CI deploys")
    shot(page, "tokens")

    # The secret works for the API, and is never shown again.
    response = page.request.get("/api/user/profile", headers={"Authorization": f"Bearer {secret}"})
    assert response.status == 200 and response.json()["username"] == "alice"
    page.reload()
    expect(page.locator("#new-token")).to_have_count(0)
    assert secret not in page.content()

    page.get_by_role("button", name="Revoke CI deploys").click()
    expect(page.get_by_role("status").first).to_contain_text("Token “CI deploys” revoked")
    with database.connection_context():
        assert ApiToken.select().count() == 0
    response = page.request.get("/api/user/profile", headers={"Authorization": f"Bearer {secret}"})
    assert response.status == 401


def test_profile_and_password_change_needs_the_current_password(page, users, web):
    make_tunnel(web.settings, users["bob"], "One", "one", 3000)
    login(page, "bob")
    page.goto("/profile")
    account = page.locator("#profile")
    expect(account).to_contain_text("bob@example.com")
    expect(account).to_contain_text("Tunnels")
    expect(account.locator("dd").nth(3)).to_have_text("1")
    shot(page, "profile")

    page.get_by_label("Current password").fill("not it")
    page.get_by_label("New password", exact=True).fill("a brand new password")
    page.get_by_label("Repeat new password").fill("a brand new password")
    page.get_by_role("button", name="Change password").click()
    expect(page.locator("#e-current_password")).to_have_text("Current password is wrong.")
    page.get_by_label("Current password").fill(PASSWORD)
    page.get_by_label("New password", exact=True).fill("short")
    page.get_by_label("Repeat new password").fill("short")
    page.get_by_role("button", name="Change password").click()
    expect(page.locator("#e-new_password")).to_have_text("Password must be at least 8 characters")
    with open_page(page.context.browser, web) as other_device:  # bob on another device
        login(other_device, "bob")
        expect(other_device.get_by_role("heading", name="Tunnels")).to_be_visible()
        page.get_by_label("Current password").fill(PASSWORD)
        page.get_by_label("New password", exact=True).fill("a brand new password")
        page.get_by_label("Repeat new password").fill("a brand new password")
        page.get_by_role("button", name="Change password").click()
        expect(page.get_by_role("status").first).to_have_text(
            "Password changed. Your other sessions were logged out.")
        other_device.goto("/profile")
        expect(other_device).to_have_url(re.compile(r"/login\?next=%2Fprofile$"))

    page.get_by_role("button", name="Log out", exact=True).click()
    expect(page).to_have_url(re.compile(r"/login$"))
    login(page, "bob", PASSWORD)
    expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")
    login(page, "bob", "a brand new password")
    expect(page.get_by_role("heading", name="Tunnels")).to_be_visible()


def test_admin_manages_users_and_others_cannot(page, users, web):
    login(page)
    page.get_by_role("link", name="Users").click()
    table = page.locator("#users")
    expect(table.locator("tbody tr")).to_have_count(2)
    form = page.locator("form[action='/admin/users']")
    form.get_by_label("Email").fill("carol@example.com")
    form.get_by_label("Username").fill("bob")
    form.get_by_label("Initial password").fill("carols password")
    form.get_by_role("button", name="Create user").click()
    expect(page.locator("#e-username")).to_have_text("A user named 'bob' already exists")
    form.get_by_label("Username").fill("carol")
    form.get_by_label("Initial password").fill("carols password")
    form.get_by_role("button", name="Create user").click()
    expect(page.get_by_role("status").first).to_have_text("User carol created.")
    expect(table.locator("tbody tr")).to_have_count(3)

    page.get_by_role("button", name="Disable bob").click()
    expect(page.get_by_role("status").first).to_have_text("User bob disabled.")
    expect(table.locator("tr[data-user-id='2']")).to_contain_text("Disabled")
    shot(page, "admin-users")
    with database.connection_context():
        assert User.get_by_id(2).disabled

    # bob can't log in while disabled; after enabling he can, and sees no Users page.
    with open_page(page.context.browser, web) as bob_page:
        login(bob_page, "bob")
        expect(bob_page.get_by_role("alert")).to_have_text("Wrong email or password.")
        page.get_by_role("button", name="Enable bob").click()
        expect(page.get_by_role("status").first).to_have_text("User bob enabled.")
        login(bob_page, "bob")
        expect(bob_page.get_by_role("link", name="Users")).to_have_count(0)
        response = bob_page.goto("/admin/users")
        assert response.status == 403
        expect(bob_page.get_by_role("heading", name="Forbidden")).to_be_visible()
        shot(bob_page, "error-403")


def test_form_without_csrf_token_is_refused(page, users, web):
    login(page)
    page.goto("/tunnels/new")
    page.get_by_label("Name").fill("Sneaky")
    page.get_by_label("Subdomain").fill("sneaky")
    page.get_by_label("Local port").fill("3000")
    page.evaluate("document.querySelector('form[action=\"/tunnels\"] input[name=csrf_token]').remove()")
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.get_by_role("button", name="Create tunnel").click()
    assert posted.value.status == 403
    expect(page.get_by_role("heading", name="Forbidden")).to_be_visible()
    expect(page.get_by_text("Invalid or missing CSRF token")).to_be_visible()
    # A wrong token is refused too, and nothing was created either way.
    response = page.request.post("/tunnels", form={"csrf_token": "x" * 43, "name": "Sneaky",
                                                   "subdomain": "sneaky", "local_port": "3000"})
    assert response.status == 403
    with database.connection_context():
        assert Tunnel.select().count() == 0


def test_form_posts_share_the_write_rate_limit(page, users, web):
    login(page)
    page.goto("/tunnels/new")
    token = page.locator("form[action='/tunnels'] input[name=csrf_token]").input_value()
    form = {"csrf_token": token, "name": "x", "subdomain": "www", "local_port": "1"}
    statuses = [page.request.post("/tunnels", form=form).status for _ in range(web.settings.rate_limit_write + 1)]
    assert statuses == [400] * web.settings.rate_limit_write + [429]
    page.goto("/tunnels/new")
    page.get_by_label("Name").fill("One more")
    page.get_by_role("button", name="Create tunnel").click()
    expect(page.get_by_role("heading", name="Too Many Requests")).to_be_visible()
    expect(page.get_by_text("Too many changes in a minute; try again shortly")).to_be_visible()


def test_everything_works_without_javascript(no_js_page, users):
    page = no_js_page
    login(page)
    page.get_by_role("link", name="New tunnel").click()
    page.get_by_label("Name").fill("No JS")
    page.get_by_label("Subdomain").fill("nojs")
    page.get_by_label("Local port").fill("8000")
    page.get_by_role("button", name="Create tunnel").click()
    expect(page.get_by_role("heading", name="No JS")).to_be_visible()
    expect(page.locator("button[data-copy]").first).to_be_hidden()  # copy buttons need JS
    page.get_by_text("Reveal token").click()  # <details>: no script needed
    expect(page.locator("#tunnel-token")).to_be_visible()
    page.get_by_role("link", name="Delete tunnel…").click()
    page.get_by_role("button", name="Delete tunnel").click()
    expect(page.get_by_role("status").first).to_contain_text("deleted")
    page.get_by_role("button", name="Log out", exact=True).click()
    expect(page).to_have_url(re.compile(r"/login$"))


def test_user_text_is_escaped(page, users, web):
    evil = "<img src=x onerror=alert(1)><script>alert(2)</script>"
    make_tunnel(web.settings, users["alice"], evil, "evil", 3000)
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    login(page)
    expect(page.get_by_role("link", name=evil)).to_be_visible()  # shown as text
    page.get_by_role("link", name=evil).click()
    expect(page.get_by_role("heading", name=evil)).to_be_visible()
    assert page.locator("img[src=x]").count() == 0
    assert dialogs == []


def test_keyboard_only_login_and_visible_focus(page, users, web):
    page.goto("/login")
    expect(page.get_by_label("Email or username")).to_be_focused()  # autofocus
    page.keyboard.type("alice")
    page.keyboard.press("Tab")
    expect(page.get_by_label("Password")).to_be_focused()
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Tab")
    button = page.get_by_role("button", name="Sign in")
    expect(button).to_be_focused()
    ring = button.evaluate("el => getComputedStyle(el).boxShadow")
    assert ring and ring != "none", "focused button shows no focus ring"
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Tunnels")).to_be_visible()
    page.keyboard.press("Tab")  # the first stop on every page skips the navigation
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    expect(skip).to_be_in_viewport()
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="InTunnel")).to_be_focused()

    # The token is revealed and copied from the keyboard too.
    tunnel = make_tunnel(web.settings, users["alice"], "Keys", "keys", 3000)
    page.goto(f"/tunnels/{tunnel.id}")
    page.locator("#token-reveal > summary").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#tunnel-token")).to_be_visible()
    page.keyboard.press("Tab")
    expect(page.locator("button[data-copy=tunnel-token]")).to_be_focused()


def test_pages_send_security_headers_and_errors_are_pages(page, users):
    response = page.goto("/login")
    headers = response.headers
    assert "script-src" not in headers["content-security-policy"] or "unsafe-inline" not in headers[
        "content-security-policy"]
    assert "'unsafe-inline'" not in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "same-origin"
    login(page)
    for path, status in (("/tunnels/999", 404), ("/tunnels/abc", 404), ("/no/such/page", 404)):
        response = page.goto(path)
        assert response.status == status
        assert "text/html" in response.headers["content-type"]
        expect(page.get_by_role("heading", name="Not Found")).to_be_visible()
        assert "Traceback" not in page.content()
    shot(page, "error-404")
