"""The seed's JavaScript example, run as written in headless Chromium after a
login through the page: the session cookie authenticates a same-origin fetch."""

from __future__ import annotations

import pytest

from intunnel import tunnels
from intunnel.models import database
from support.browser import browser, login, page, users, web  # noqa: F401

pytestmark = pytest.mark.browser

SEED_JAVASCRIPT = '''
// After logging in via browser
fetch("/api/tunnels")
  .then(res => res.json())
  .then(data => console.log(data.tunnels));
'''


def test_seed_javascript_example(page, web, users):
    with database.connection_context():
        tunnels.create(web.settings, users["alice"], "My Web App", "myapp", 3000)
    login(page, "alice")
    page.wait_for_url(web.url + "/")
    with page.expect_console_message(lambda m: m.type == "log") as message:
        page.evaluate("() => {" + SEED_JAVASCRIPT + "}")  # the snippet verbatim, as a function body
    logged = message.value.args[0].json_value()
    assert [t["subdomain"] for t in logged] == ["myapp"]
    assert logged[0]["name"] == "My Web App" and logged[0]["local_port"] == 3000
