"""The issue's whole story in a real browser, with the real relay and a real client.

A user logs in (a wrong password first), creates a tunnel (a taken subdomain
first), sees it inactive, runs the two commands the tunnel page shows (as real
``intunnel`` processes), watches the dashboard turn active without a reload,
opens the public URL and gets the local app's page, regenerates the token (the
running client is cut and says so) and deletes the tunnel.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.sync_api import expect

from intunnel import accounts, tunnels
from intunnel.models import Tunnel, database, open_database
from support.browser import PASSWORD, POLL_INTERVAL, browser, login, open_page, shot  # noqa: F401
from support.tunnel import RelayThread, _Process, _python_env
from support.web_server import running_web_app

pytestmark = pytest.mark.browser

LOCAL_PAGE = b"<!doctype html><title>My laptop app</title><h1>Hello from my laptop</h1>"


class LocalApp:
    """The user's app on localhost: one HTML page."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(LOCAL_PAGE)))
            self.end_headers()
            self.wfile.write(LOCAL_PAGE)

        def log_message(self, *args):
            pass

    def __init__(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def run_shown_command(text: str, config_home) -> _Process:
    """Run a command exactly as the page shows it (``intunnel ...``) as a real process."""
    argv = shlex.split(text)
    assert argv[0] == "intunnel"
    return _Process(argv[1:], _python_env({"XDG_CONFIG_HOME": str(config_home), "HOME": str(config_home)}))


@pytest.fixture
def stack(settings, browser):
    """Relay first (its port goes into the public URLs), then the web app, then the local app."""
    open_database(settings)  # migrated before either service reads it
    with contextlib.ExitStack() as stack:
        relay = stack.enter_context(RelayThread(settings))
        web = stack.enter_context(running_web_app(
            settings, relay_listen=f"127.0.0.1:{relay.port}", dashboard_poll_interval=POLL_INTERVAL))
        app = LocalApp()
        stack.callback(app.close)
        page = stack.enter_context(open_page(browser, web))
        yield relay, web, app, page, stack


def test_log_in_create_connect_open_regenerate_delete(stack, tmp_path):
    relay, web, app, page, processes = stack
    with database.connection_context():
        accounts.create_user("alice@example.com", "alice", PASSWORD)
        bob = accounts.create_user("bob@example.com", "bob", PASSWORD)
        tunnels.create(web.settings, bob, "Bob's", "taken", 4000)

    # Log in: a wrong password says so.
    login(page, "alice@example.com", "not my password")
    expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")
    login(page, "alice@example.com")
    expect(page.get_by_role("heading", name="Tunnels")).to_be_visible()

    # Create: a taken subdomain is an inline error; then a free one.
    page.get_by_role("link", name="New tunnel").click()
    page.get_by_label("Name").fill("My Web App")
    page.get_by_label("Subdomain").fill("taken")
    page.get_by_label("Local port").fill(str(app.port))
    page.get_by_role("button", name="Create tunnel").click()
    expect(page.locator("#e-subdomain")).to_have_text("Subdomain 'taken' is already in use")
    page.get_by_label("Subdomain").fill("myapp")
    page.get_by_role("button", name="Create tunnel").click()
    expect(page.get_by_role("heading", name="My Web App")).to_be_visible()
    page.locator("#cmd-token-reveal > summary").click()
    add_token = page.locator("#cmd-add-token").inner_text()
    start = page.locator("#cmd-http").inner_text()
    assert add_token.endswith(f"--server {relay.url} --name myapp")
    assert start == f"intunnel http {app.port}"

    # The dashboard shows it inactive.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Tunnels").click()
    row = page.locator("#tunnels tbody tr").filter(has_text="My Web App")
    pill = row.locator("[data-tunnel-status]")
    expect(pill).to_have_text("Inactive")
    public_url = web.settings.tunnel_url("myapp")
    expect(row.get_by_role("link", name=re.compile(r"myapp\.localhost"))).to_have_attribute("href", public_url)

    # Run exactly the two commands the page showed; the page turns active by itself.
    page.evaluate("window.__no_reload = true")
    with run_shown_command(add_token, tmp_path) as saved:
        assert saved.proc.wait(30) == 0, saved.lines
    client = processes.enter_context(run_shown_command(start, tmp_path))
    client.wait_line(r"^connected: ")
    expect(pill).to_have_text("Active", timeout=10_000)
    expect(row.locator("td[data-label='Last connected']")).to_have_text("just now")
    assert page.evaluate("window.__no_reload") is True, "the dashboard reloaded instead of updating"
    shot(page, "dashboard-live")

    # The public URL opens the local app's page.
    with page.context.expect_page() as opened:
        row.get_by_role("link", name=re.compile(r"myapp\.localhost")).click()
    visitor = opened.value
    visitor.wait_for_load_state()
    expect(visitor.get_by_role("heading", name="Hello from my laptop")).to_be_visible()
    assert visitor.url.rstrip("/") == public_url
    visitor.close()

    # Regenerate the token: the running client is cut and stops; the tunnel goes offline.
    row.get_by_role("link", name="My Web App").click()
    expect(page.locator("[data-tunnel-status]")).to_have_text("Active")
    shot(page, "tunnel-active")
    page.get_by_role("link", name="Regenerate token…").click()
    page.get_by_role("button", name="Regenerate token").click()
    expect(page.get_by_role("status").first).to_contain_text("New token created")
    assert client.proc.wait(15) == 1, client.lines
    assert any("the token was regenerated" in line for line in client.lines), client.lines
    expect(page.locator("[data-tunnel-status]")).to_have_text("Inactive", timeout=10_000)
    offline = page.context.new_page()
    assert offline.goto(public_url).status == 503
    offline.close()

    # Delete.
    page.get_by_role("link", name="Delete tunnel…").click()
    page.get_by_role("button", name="Delete tunnel").click()
    expect(page.get_by_role("status").first).to_contain_text("Tunnel “My Web App” deleted")
    with database.connection_context():
        assert not Tunnel.select().where(Tunnel.subdomain == "myapp").exists()
