"""Pure pieces of the dashboard, without a browser: time words, flash cookie, messages, errors."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from intunnel.web import flash, pages, render

NOW = datetime(2026, 11, 28, 12, 0, 0)


@pytest.mark.parametrize("delta, words", [
    (timedelta(seconds=0), "just now"),
    (timedelta(seconds=59), "just now"),
    (timedelta(seconds=60), "1 min ago"),
    (timedelta(minutes=59, seconds=59), "59 min ago"),
    (timedelta(hours=1), "1 h ago"),
    (timedelta(hours=23, minutes=59), "23 h ago"),
    (timedelta(days=1), "1 day ago"),
    (timedelta(days=29), "29 days ago"),
    (timedelta(days=30), "29 Oct 2026"),
    (timedelta(seconds=-5), "just now"),  # a clock a little ahead is not "in the future"
])
def test_ago(delta, words):
    assert render.ago(NOW - delta, now=NOW) == words


def test_ago_never_and_formats():
    assert render.ago(None) == "Never"
    assert render.date(datetime(2026, 1, 5, 8, 0)) == "5 Jan 2026"
    assert render.utc(datetime(2026, 1, 5, 8, 7, 9)) == "2026-01-05 08:07 UTC"


def test_flash_round_trip_and_forgeries_are_ignored():
    value = flash.encode("key", [("success", "Saved <b>"), ("secret", "itk_x")])
    assert flash.decode("key", value) == [("success", "Saved <b>"), ("secret", "itk_x")]
    assert flash.decode("other key", value) == []  # signed with another key
    payload, sig = value.rsplit(".", 1)
    forged = flash.encode("attacker", [("error", "Your account is locked")]).rsplit(".", 1)[0]
    assert flash.decode("key", f"{forged}.{sig}") == []
    for junk in (None, "", "no-dot", "....", "x.y", value + "x"):
        assert flash.decode("key", junk) == []


def test_flash_drops_unknown_kinds():
    value = flash.encode("key", [("script", "x"), ("info", "ok"), ["error"]])
    assert flash.decode("key", value) == [("info", "ok")]


@pytest.mark.parametrize("message, shown", [
    ("local_port must be between 1 and 65535", "Local port must be between 1 and 65535"),
    ("subdomain 'www' is reserved", "Subdomain 'www' is reserved"),
    ("name must be 1-100 characters", "Name must be 1-100 characters"),
    ("a user named 'bob' already exists", "A user named 'bob' already exists"),
])
def test_human_messages(message, shown):
    assert pages.human(message) == shown


@pytest.mark.parametrize("text, value", [
    ("3000", 3000), (" 8080 ", 8080), ("abc", "abc"), ("", ""), ("-1", "-1"),
    ("1234567", "1234567"), ("٣٠٠٠", "٣٠٠٠"),  # non-ASCII digits are not a port
])
def test_port_value(text, value):
    assert pages.port_value(text) == value


def test_error_page_escapes_and_never_needs_a_request(settings):
    page = pages.Pages(settings.replace(dashboard_poll_interval=1.0))
    html = page.error_page(404, "No tunnel <script>alert(1)</script>")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert" not in html
    assert "<h1>Not Found</h1>" in html
    assert "Traceback" not in html
