"""Render every error once: the seed's JSON for the API, a small HTML page for browsers.

``error_response(err)`` turns an ``AppError`` into a ``bottle.HTTPResponse``;
``errors.wants_json`` decides the format: JSON for ``/api/*`` and for every
client that prefers JSON or names neither (scripts), HTML for browsers.  Internal exception
text never reaches a client.
"""

from __future__ import annotations

import html
import json

import bottle

from ..errors import AppError, BY_STATUS, InternalError, wants_json

JSON_TYPE = "application/json"


def is_api_path(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


def json_body(payload: dict) -> str:
    return json.dumps(payload, separators=(",", ":"))


def default_html_page(status: int, message: str) -> str:
    title = f"{status} {bottle.HTTP_CODES.get(status, 'Error')}"
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)} · InTunnel</title></head>\n"
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>"
        "<p><a href=\"/\">InTunnel home</a></p></body></html>\n"
    )


def error_response(err: AppError, environ: dict | None = None) -> bottle.HTTPResponse:
    """The complete response for ``err`` in the format the client wants."""
    environ = bottle.request.environ if environ is None else environ
    headers = {}
    retry_after = getattr(err, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(int(retry_after))
    if wants_json(environ.get("HTTP_ACCEPT"), api=is_api_path(environ.get("PATH_INFO", "")), default=True):
        headers["Content-Type"] = JSON_TYPE
        body = json_body(err.to_dict())
    else:
        headers["Content-Type"] = "text/html; charset=utf-8"
        state = environ.get("intunnel.state")
        page = (state and state.error_page) or default_html_page
        body = page(err.status, err.message)
    return bottle.HTTPResponse(body=body, status=err.status, headers=headers)


def from_bottle_error(res: bottle.HTTPError) -> AppError:
    """Map Bottle's own errors (unknown route, wrong method, crash) to our tree."""
    cls = BY_STATUS.get(res.status_code)
    if cls is None or cls is InternalError or res.status_code >= 500:
        return InternalError()
    if res.status_code == 404:
        return cls("No such endpoint" if is_api_path(bottle.request.path) else "Page not found")
    return cls()
