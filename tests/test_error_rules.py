"""errors.py's two shared rules: JSON or HTML for a caller (``wants_json``) and the code of a bare
status (``BY_STATUS``), and that the relay's pages and the web app's error rendering and login
both follow them."""

from __future__ import annotations

import json

import pytest

from intunnel import errors
from intunnel.relay import pages

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"

# (Accept, api, default, wants JSON)
CASES = [
    # A browser navigating or posting a form: HTML, whatever the service's default.
    (BROWSER, False, False, False),
    (BROWSER, False, True, False),
    ("text/html", False, True, False),
    ("TEXT/HTML", False, True, False),
    ("application/xhtml+xml", False, True, False),
    # Asking for JSON: JSON in both services.
    ("application/json", False, False, True),
    ("application/json", False, True, True),
    ("application/problem+json", False, False, True),
    ("Application/JSON; charset=utf-8", False, False, True),
    # Naming neither (curl's */*, requests, fetch, none at all): the service's default.
    (None, False, False, False),
    (None, False, True, True),
    ("", False, False, False),
    ("", False, True, True),
    ("*/*", False, False, False),
    ("*/*", False, True, True),
    ("text/plain, text/*", False, True, True),
    ("text/html;q=0", False, True, True),       # q=0: not acceptable, so HTML is not named
    ("text/html;q=0", False, False, False),
    # Both named: the higher q wins, a tie is HTML.
    ("application/json, text/html", False, True, False),
    ("text/html, application/json", False, False, False),
    ("application/json, text/html;q=0.9", False, False, True),
    ("text/html;q=0.1, application/json", False, True, True),
    ("application/json;q=0.5, text/html;q=0.6", False, True, False),
    ("application/json; Q=0.9, text/html; q=0.8", False, False, True),
    # Weights that aren't ones count as 0.
    ("application/json;q=abc, text/html;q=0.1", False, False, False),
    ("application/json;q=nan", False, True, True),
    ("application/json;q=nan", False, False, False),
    ("application/json;q=2, text/html", False, False, False),
    # Junk does not raise.
    (",,;;,q=,;q=1", False, False, False),
    ("\x00\xff", False, True, True),
    # The web app's /api paths: always JSON.
    (BROWSER, True, True, True),
    ("text/html", True, False, True),
    (None, True, False, True),
]


@pytest.mark.parametrize("accept, api, default, expected", CASES)
def test_wants_json(accept, api, default, expected):
    assert errors.wants_json(accept, api=api, default=default) is expected


def test_by_status_is_one_code_per_status_of_the_tree():
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.AppError)]
    assert set(errors.BY_STATUS.values()) <= set(classes)
    for status, cls in errors.BY_STATUS.items():
        assert cls.status == status and cls.code.isupper()
        assert cls.__name__ in errors.__doc__ and f"{status} {cls.code}" in errors.__doc__
    # Every status some class of the tree has is in the table.
    assert {c.status for c in classes if c is not errors.AppError} == set(errors.BY_STATUS)


@pytest.mark.parametrize("status, code", [
    (400, "BAD_REQUEST"), (401, "UNAUTHORIZED"), (403, "FORBIDDEN"), (404, "NOT_FOUND"),
    (405, "METHOD_NOT_ALLOWED"), (408, "REQUEST_TIMEOUT"), (413, "PAYLOAD_TOO_LARGE"), (429, "RATE_LIMITED"),
    (431, "HEADERS_TOO_LARGE"), (500, "INTERNAL_ERROR"), (501, "NOT_IMPLEMENTED"), (502, "BAD_GATEWAY"),
    (503, "TUNNEL_OFFLINE"), (504, "GATEWAY_TIMEOUT"), (418, "ERROR"),
])
def test_code_for(status, code):
    assert errors.code_for(status) == code


def _split(page: bytes) -> tuple[dict, bytes]:
    head, _, body = page.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}, body


@pytest.mark.parametrize("accept, api, default, expected", [c for c in CASES if not c[1] and not c[2]])
def test_relay_pages_follow_the_rule(accept, api, default, expected):
    headers, body = _split(pages.response(431, "Request head too large.", accept))
    if expected:
        assert headers["content-type"] == "application/json"
        assert json.loads(body) == {"error": True, "message": "Request head too large.",
                                    "code": "HEADERS_TOO_LARGE"}
    else:
        assert headers["content-type"].startswith("text/html") and b"<h1>431 " in body


def test_the_offline_page_shows_the_command_without_markdown():
    from intunnel.relay import pages
    page = pages.tunnel_offline("myapp", "text/html").decode()
    assert "`" not in page and "&quot;intunnel http PORT&quot;" in page
