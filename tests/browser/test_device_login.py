"""`intunnel login` end to end: the client as a real process, the approval in headless Chromium.

The web app and the relay run in this process on their own ports (as `intunnel serve` runs
them); the client gets its own config directory (XDG_CONFIG_HOME).  It prints the page and
the code, the test opens that very URL in a fresh browser, signs in there, checks what the
page says asked, and approves or denies.  Then the saved token (0600) works on the API, is
never printed, and `intunnel logout` revokes it.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat

import pytest
import requests
from playwright.sync_api import expect

from intunnel import accounts
from intunnel.client import config
from intunnel.models import database, open_database
from support.browser import PASSWORD, browser, open_page, shot  # noqa: F401
from support.tunnel import RelayThread, _Process, _python_env, free_port, wait_for
from support.web_server import running_web_app

pytestmark = pytest.mark.browser

PROMPT = r"Open (http://\S+/device\?code=([A-Z]{4}-[A-Z]{4})) and approve the code ([A-Z]{4}-[A-Z]{4})"


@pytest.fixture
def stack(settings, tmp_path):
    """(web app, relay, the client's environment) with alice able to sign in."""
    open_database(settings)
    web_port = free_port()
    web_url = f"http://localhost:{web_port}"
    with contextlib.ExitStack() as stack:
        relay = stack.enter_context(RelayThread(settings.replace(web_public_url=web_url)))
        web = stack.enter_context(running_web_app(settings, web_listen=f"127.0.0.1:{web_port}",
                                                  relay_listen=f"127.0.0.1:{relay.port}",
                                                  device_poll_interval=1))
        with database.connection_context():
            accounts.create_user("alice@example.com", "alice", PASSWORD)
        env = _python_env({"XDG_CONFIG_HOME": str(tmp_path / "home")})
        yield web, web_url, relay, env, tmp_path / "home" / "intunnel" / "config.toml"


def intunnel(env, *argv) -> _Process:
    return _Process(list(argv), env)


def exit_code(proc: _Process, timeout: float = 20.0) -> int:
    wait_for(lambda: proc.proc.poll() is not None, timeout, message="the client to exit")
    proc._reader.join(5)
    return proc.proc.returncode


def approve_in_browser(browser, web, url: str, machine: str, button: str = "Approve", screenshot: str = "") -> None:
    with open_page(browser, web) as page:
        page.goto(url)
        # not logged in: the login first, then back to the very page with its code
        page.get_by_label("Email or username").fill("alice")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Log in a machine")).to_be_visible()
        expect(page.locator("#device-client")).to_have_text(machine)
        expect(page.locator("#device-address")).to_have_text("127.0.0.1")
        expect(page.locator("#device-code")).to_have_text(url.rsplit("=", 1)[1])
        if screenshot:
            shot(page, screenshot)
        page.get_by_role("button", name=button).click()
        if button == "Approve":
            expect(page).to_have_url(re.compile(r"/tokens$"))
            expect(page.get_by_text(f"intunnel login on {machine}").first).to_be_visible()
        else:
            expect(page.get_by_text("was not logged in")).to_be_visible()


def test_login_approved_in_chromium_then_logout_revokes(browser, stack):
    web, web_url, relay, env, cfg_file = stack
    with intunnel(env, "login", "--server", web_url, "--machine-name", "ci-laptop") as login:
        m = login.wait_line(PROMPT)
        url, code, code_again = m.groups()
        assert code == code_again and url.startswith(web_url + "/device?code=")
        approve_in_browser(browser, web, url, "ci-laptop", screenshot="device")
        assert exit_code(login) == 0, "\n".join(login.lines)
    said = "\n".join(login.lines)
    assert f"logged in as alice@example.com on {relay.url}" in said

    # saved 0600 under the relay's URL, with the web app's URL for API calls
    assert stat.S_IMODE(os.stat(cfg_file).st_mode) == 0o600
    cfg = config.load(cfg_file)
    assert cfg.server == relay.url
    saved = cfg.find(relay.url).login
    assert saved.user == "alice@example.com" and saved.web == web_url and saved.token_id
    assert saved.token not in said and saved.token[4:12] not in said   # never printed
    bearer = {"Authorization": f"Bearer {saved.token}"}
    assert requests.get(web.url + "/api/user/profile", headers=bearer).json()["email"] == "alice@example.com"
    # `config show` masks it too
    with intunnel(env, "config", "show") as show:
        assert exit_code(show) == 0
    assert "logged in as alice@example.com" in "\n".join(show.lines) and saved.token not in "\n".join(show.lines)

    with intunnel(env, "logout") as logout:
        assert exit_code(logout) == 0, "\n".join(logout.lines)
    assert f"logged out of {relay.url}; its API token is revoked" in "\n".join(logout.lines)
    assert requests.get(web.url + "/api/user/profile", headers=bearer).status_code == 401
    after = config.load(cfg_file)
    assert after.find(relay.url) is None and after.server == relay.url  # the default server is kept


def test_login_through_the_relay_url_and_denied(browser, stack):
    """--server the relay's URL (what `intunnel http --server` takes) finds the web app; Deny ends it."""
    web, web_url, relay, env, cfg_file = stack
    with intunnel(env, "login", "--server", relay.url, "--machine-name", "shared box") as login:
        url = login.wait_line(PROMPT).group(1)
        assert url.startswith(web_url + "/device?code=")
        approve_in_browser(browser, web, url, "shared box", button="Deny")
        assert exit_code(login) == 1
    assert "the login was denied on the dashboard" in "\n".join(login.lines)
    assert not cfg_file.exists()
