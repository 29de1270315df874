"""The client's inspector page (issue 15) in a real headless Chromium, against a real relay, the
real ``intunnel http`` process and a local app: a request through the tunnel appears without a
reload, its detail shows the JSON body pretty-printed, and a replay appears in the list."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from support.browser import DESKTOP, PageErrors, browser, shot  # noqa: F401
from support.tunnel import HttpUpstream, RelayThread, _Process, _python_env, make_tunnel, visit

pytestmark = pytest.mark.browser


def test_the_page_lists_live_shows_pretty_json_and_replays(browser, settings, db):
    with HttpUpstream() as app, RelayThread(settings) as relay:
        tunnel = make_tunnel(settings, "myapp", local_port=app.port)
        argv = ["http", str(app.port), "--server", relay.url, "--token", tunnel.token, "--inspect", "127.0.0.1:0"]
        with _Process(argv, _python_env({})) as proc:
            url = proc.wait_line(r"^inspect: (http://127\.0\.0\.1:\d+/\?secret=[\w-]+)$").group(1)
            proc.wait_line(r"^connected: ")
            errors = PageErrors()
            context = browser.new_context(viewport=DESKTOP)
            try:
                page = context.new_page()
                page.set_default_timeout(10_000)
                errors.attach(page)
                page.goto(url)
                assert "secret" not in page.url      # the cookie holds it now
                expect(page.locator("h1")).to_have_text("intunnel inspector")
                page.evaluate("window.__no_reload = true")
                payload = {"event": "push", "commits": [{"id": 1}]}
                status, _, _ = visit(relay.port, "myapp.localhost", "/webhook?src=gh", "POST",
                                     json.dumps(payload).encode(), {"Content-Type": "application/json"})
                assert status == 200
                row = page.locator("#list li", has_text="/webhook?src=gh")
                expect(row).to_have_count(1)
                assert page.evaluate("window.__no_reload") is True
                row.click()
                body = page.locator("#detail pre.json").first
                expect(body).to_have_text(json.dumps(payload, indent=2))
                expect(page.locator("#detail h2")).to_have_text("POST /webhook?src=gh → 200")
                shot(page, "inspector")
                seen = len(app.seen)
                page.locator("#replay").click()
                expect(page.locator("#list li .tag", has_text="replay")).to_have_count(1)
                expect(page.locator("#list li", has_text="/webhook?src=gh")).to_have_count(2)
                assert len(app.seen) == seen + 1
                page.locator("#curl").click()
                expect(page.locator("#curl-out")).to_contain_text("curl -X POST 'http://myapp.localhost:")
                # a multipart form: its fields and files, one row each
                form = (b"--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nh\xc3\xa9llo\r\n"
                        b"--XyZ\r\nContent-Disposition: form-data; name=\"doc\"; filename=\"notes.txt\"\r\n"
                        b"Content-Type: text/plain\r\n\r\nline one\r\n--XyZ--\r\n")
                assert visit(relay.port, "myapp.localhost", "/form-up", "POST", form,
                             {"Content-Type": "multipart/form-data; boundary=XyZ"})[0] == 200
                page.locator("#list li", has_text="/form-up").click()
                rows = page.locator("#detail table.multipart tr")
                expect(rows).to_have_count(2)
                expect(rows.nth(0)).to_have_text("titlehéllo")
                expect(rows.nth(1)).to_have_text("docnotes.txt (text/plain, 8 bytes)")
                # edit and replay, then the filters and Clear
                page.locator("#list li", has_text="/webhook?src=gh").last.click()
                page.locator("#edit").click()
                page.locator("#edit-path").fill("/edited-in-page")
                page.locator("#edit-body").fill('{"edited": true}')
                page.locator("#edit-send").click()
                expect(page.locator("#list li", has_text="/edited-in-page").locator(".tag")).to_have_text("replay")
                assert app.seen[-1][:2] == ("POST", "/edited-in-page")
                expect(page.locator("#detail pre.json").first).to_have_text('{\n  "edited": true\n}')
                page.locator("#f-path").fill("edited")
                expect(page.locator("#list li")).to_have_count(1)
                page.locator("#f-path").fill("")
                page.locator("#f-method").select_option("POST")
                expect(page.locator("#list li")).to_have_count(4)   # the webhook, its two replays, the form
                page.locator("#clear").click()
                expect(page.locator("#list li")).to_have_count(0)
            finally:
                context.close()
            assert not errors.messages, errors.messages
