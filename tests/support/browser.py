"""Browser fixtures: Debian's headless Chromium driven by Playwright, against the real app.

Import the fixtures a test module uses (not a conftest.py: a nested conftest
would shadow tests/conftest.py for the ``from conftest import ...`` of others):

    from support.browser import browser, web, users, page, login, shot  # noqa: F401

The web app runs under its web_server on 127.0.0.1:0 (``support.web_server``) on a
fresh SQLite file per test.  ``shot(page, name)`` takes the screenshots the
README shows (into docs/screenshots/ with INTUNNEL_UPDATE_SCREENSHOTS=1).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest

from intunnel import accounts
from intunnel.models import database

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
    # Tunnels live on <sub>.localhost: make sure those names reach loopback.
    "--host-resolver-rules=MAP *.localhost 127.0.0.1",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
SCRATCH = Path(os.environ.get("TMPDIR", "/tmp")) / f"intunnel-screenshots-{os.getuid()}"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 360, "height": 740}
PASSWORD = "correct horse battery"
# Live status polling in tests: fast, so "turns active" is seen within a second or two.
POLL_INTERVAL = 0.3

# Same rule as tests/conftest.py's require_tool (not importable from here: both are "conftest").
IN_CI = os.environ.get("CI") == "true"


def _require(what: str, present: bool) -> None:
    if not present:
        if IN_CI:
            pytest.fail(f"{what} is required in CI but not installed")
        pytest.skip(f"{what} not installed")


# Module scope: each test module imports its own copy of this fixture, and only one
# sync Playwright may run at a time, so each must end with its module.
@pytest.fixture(scope="module")
def browser():
    _require(CHROMIUM, shutil.which(CHROMIUM) is not None)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _require("playwright (pip install -e '.[server,test]')", False)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def web(settings):
    from support.web_server import running_web_app
    with running_web_app(settings, dashboard_poll_interval=POLL_INTERVAL) as running:
        yield running


@pytest.fixture
def users(web):
    """An admin (alice) and a regular user (bob), both with PASSWORD."""
    with database.connection_context():
        alice = accounts.create_user("alice@example.com", "alice", PASSWORD, is_admin=True)
        bob = accounts.create_user("bob@example.com", "bob", PASSWORD)
    return {"alice": alice, "bob": bob}


class PageErrors:
    """Console errors and CSP violations seen by a page; a test ends with none."""

    def __init__(self):
        self.messages: list[str] = []

    def attach(self, page):
        page.on("console", lambda msg: msg.type == "error" and self.messages.append(msg.text))
        page.on("pageerror", lambda exc: self.messages.append(str(exc)))


@contextlib.contextmanager
def open_page(browser, web, viewport=DESKTOP, errors: "PageErrors | None" = None, **options):
    """A page in a fresh browser context (own cookies) on the app; closed afterwards.

    With ``errors``, console errors and CSP violations are collected, and the
    block fails if any happened.
    """
    context = browser.new_context(base_url=web.url, viewport=viewport, **options)
    try:
        page = context.new_page()
        page.set_default_timeout(10_000)
        if errors is not None:
            errors.attach(page)
        yield page
    finally:
        context.close()
    if errors is not None:
        # Errors from pages a test expects to fail (403, 404) are not script errors.
        unexpected = [m for m in errors.messages if "Failed to load resource" not in m]
        assert not unexpected, f"browser console errors: {unexpected}"


@pytest.fixture
def page(browser, web):
    with open_page(browser, web, errors=PageErrors()) as page:
        yield page


@pytest.fixture
def phone_page(browser, web):
    with open_page(browser, web, PHONE, errors=PageErrors(), is_mobile=True, has_touch=True,
                   device_scale_factor=2) as page:
        yield page


@pytest.fixture
def no_js_page(browser, web):
    with open_page(browser, web, java_script_enabled=False) as page:
        yield page


def login(page, who: str = "alice", password: str = PASSWORD) -> None:
    page.goto("/login")
    page.get_by_label("Email or username").fill(who)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def shot(page, name: str) -> Path:
    """Save <name>.png (whole page, animations frozen): into docs/screenshots/ only when asked
    (INTUNNEL_UPDATE_SCREENSHOTS=1), else beside the other test files, so a test run leaves the
    checkout as it was (the page is rendered and captured either way)."""
    where = SCREENSHOTS if os.environ.get("INTUNNEL_UPDATE_SCREENSHOTS") == "1" else SCRATCH
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"{name}.png"
    page.screenshot(path=str(path), full_page=True, animations="disabled")
    return path


def no_horizontal_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
