"""Members-only tunnels in real headless Chromium (issue 13), on *.localhost as `intunnel serve` runs.

An anonymous visit of the tunnel's URL goes to the web app's login, and after it back to that
exact URL with its query string; the app sees no appliance cookie.  Logging out everywhere and
disabling the account end the access; another user not on the list is refused; a ticket can't
be used twice.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.sync_api import expect

from intunnel import accounts, tunnels
from intunnel.models import User, database, open_database
from support.browser import PASSWORD, browser, open_page  # noqa: F401
from support.tunnel import ClientThread, RelayThread, free_port, wait_for
from support.web_server import running_web_app

pytestmark = pytest.mark.browser


class EchoApp:
    """The user's app: a page showing the path and the cookies it received."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen = {"path": self.path, "cookie": self.headers.get("Cookie", "")}
            body = (f"<!doctype html><title>Laptop app</title><h1>Hello member</h1>"
                    f"<pre id='seen'>{json.dumps(seen)}</pre>").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Set-Cookie", "app=1; Path=/")
            self.end_headers()
            self.wfile.write(body)

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


@pytest.fixture
def stack(settings, browser):
    open_database(settings)
    web_port = free_port()
    with contextlib.ExitStack() as stack:
        relay = stack.enter_context(RelayThread(settings.replace(web_public_url=f"http://localhost:{web_port}")))
        web = stack.enter_context(running_web_app(settings, web_listen=f"127.0.0.1:{web_port}",
                                                  relay_listen=f"127.0.0.1:{relay.port}"))
        app = EchoApp()
        stack.callback(app.close)
        with database.connection_context():
            alice = accounts.create_user("alice@example.com", "alice", PASSWORD)
            accounts.create_user("bob@example.com", "bob", PASSWORD)
            accounts.create_user("carol@example.com", "carol", PASSWORD)
            tunnel = tunnels.create(web.settings, alice, "Private", "private", app.port)
            tunnels.set_access(web.settings, tunnel, {"members": {"users": ["bob"]}})
        client = stack.enter_context(ClientThread(relay.url, tunnel.token, app.port))
        client.wait_connected()
        yield web, relay, stack


def sign_in_form(page, who: str) -> None:
    expect(page.get_by_role("heading", name=re.compile("Log in|Sign in"))).to_be_visible()
    page.get_by_label(re.compile("Email")).fill(f"{who}@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name=re.compile("Sign in|Log in")).click()


def seen(page) -> dict:
    return json.loads(page.locator("#seen").inner_text())


def test_members_only_in_a_real_browser(stack, browser):
    web, relay, _ = stack
    url = web.settings.tunnel_url("private") + "/reports?month=11&sort=desc"
    localhost_web = f"http://localhost:{web.port}"
    with open_page(browser, web) as page:
        # Anonymous: sent to the web app's login (on localhost, not the tunnel's host).
        page.goto(url)
        assert page.url.startswith(localhost_web + "/login?")
        sign_in_form(page, "bob")
        # Back on the exact URL, query string intact; the app got no appliance cookie.
        expect(page.get_by_role("heading", name="Hello member")).to_be_visible()
        assert page.url == url
        got = seen(page)
        assert got["path"] == "/reports?month=11&sort=desc"
        assert "intunnel" not in got["cookie"]
        cookies = {c["name"]: c for c in page.context.cookies()}
        access = cookies["intunnel_access"]
        assert access["domain"] == "private.localhost" and access["httpOnly"] and access["sameSite"] == "Lax"
        # Another page of the tunnel: no new login; the app's own cookie comes back to it.
        page.goto(web.settings.tunnel_url("private") + "/other")
        assert seen(page) == {"path": "/other", "cookie": "app=1"}

        # Log out everywhere (profile page): the tunnel asks for a login again.
        def refused():
            page.goto(url)
            return page.url.startswith(localhost_web + "/login?")
        page.goto(localhost_web + "/profile")
        page.get_by_role("button", name="Log out everywhere").click()
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        wait_for(refused, timeout=10, interval=0.2, message="logging out everywhere ends the access")

        # Log in again, then the account is disabled: access ends at the next request.
        sign_in_form(page, "bob")
        expect(page.get_by_role("heading", name="Hello member")).to_be_visible()
        with database.connection_context():
            accounts.set_disabled(User.get(User.username == "bob"), True)
        wait_for(refused, timeout=10, interval=0.2, message="a disabled account's access ends")

    # Someone not on the list is refused, said by the web app.
    with open_page(browser, web) as page:
        page.goto(url)
        sign_in_form(page, "carol")
        expect(page.get_by_text(re.compile("may not open private.localhost"))).to_be_visible()

    # A ticket can't be replayed: the sign-in link, used once, is refused the second time.
    with open_page(browser, web) as page:
        tickets = []
        page.on("request", lambda r: "/_intunnel/auth?ticket=" in r.url and tickets.append(r.url))
        with database.connection_context():
            accounts.set_disabled(User.get(User.username == "bob"), False)
        page.goto(url)
        sign_in_form(page, "bob")
        expect(page.get_by_role("heading", name="Hello member")).to_be_visible()
        assert len(tickets) == 1
        response = page.goto(tickets[0])
        assert response.status == 403
        expect(page.get_by_role("heading", name="Sign-in link expired")).to_be_visible()
