"""POST /login, POST /logout and a minimal GET /login page.

``POST /login`` takes form fields ``email`` and ``password`` (the seed's Python
example) or the same as a JSON object, plus an optional ``next`` (a local path).
A browser (an Accept that prefers text/html: ``errors.wants_json``, as every
error page decides) gets a 303 to ``next`` or ``/``; on failure a 303
back to ``/login?error=invalid`` (or ``error=throttled``) so the page can say
why.  Any other client gets JSON: ``{"success": true, "user": {...},
"csrf_token": "..."}``, or 401 UNAUTHORIZED / 429 RATE_LIMITED in the seed's
error format.

``POST /logout`` ends a session only with that session's form token in the
``csrf_token`` field (the dashboard's logout form carries it; a script has it
from the login answer); without it, 403 FORBIDDEN like every other form.
"""

from __future__ import annotations

import html
from urllib.parse import urlencode

import bottle

from .. import accounts
from ..models import Session
from ..errors import RateLimited, Unauthorized, UnsupportedMedia, ValidationError, wants_json
from ..timeutil import iso
from . import auth, jsonbody
from . import state as web_state
from .metrics import RATE_LIMITED_KEY

ERROR_MESSAGES = {
    "invalid": "Wrong email or password.",
    "throttled": "Too many failed attempts. Please wait a few minutes and try again.",
}


def safe_next(value: str | None) -> str:
    """A local path to go to after login; anything else (other sites, //host) is '/'."""
    if (not value or not value.startswith("/") or value.startswith("//") or "\\" in value
            or any(ord(c) < 32 for c in value)):
        return "/"
    return value


def user_json(user) -> dict:
    return {"id": user.id, "username": user.username, "email": user.email,
            "is_admin": bool(user.is_admin), "created_at": iso(user.created_at)}


def _read_credentials(max_body: int) -> tuple[str, str, str]:
    request = bottle.request
    if jsonbody.is_json_media_type(request.environ.get("CONTENT_TYPE", "")):
        data = jsonbody.read_object(max_body)
        jsonbody.check_fields(data, required=("email", "password"), optional=("next",))
        for field in ("email", "password", "next"):
            if field in data and not isinstance(data[field], str):
                raise ValidationError(f"{field} must be a string", field=field)
        return data["email"], data["password"], data.get("next") or ""
    mime = request.content_type.split(";", 1)[0].strip()
    if mime not in ("application/x-www-form-urlencoded", "multipart/form-data") and request.content_length > 0:
        raise UnsupportedMedia("Content-Type must be application/json or a form")
    forms = request.forms
    return (forms.getunicode("email") or "", forms.getunicode("password") or "",
            forms.getunicode("next") or request.query.getunicode("next") or "")


def see_other(location: str) -> None:
    """303 to a local path, keeping the cookies set so far.

    The Location stays relative (unlike ``bottle.redirect``, which makes it
    absolute from the scheme the app sees): behind a TLS proxy the app sees
    http, and the browser must stay on https.
    """
    res = bottle.response.copy(cls=bottle.HTTPResponse)
    res.status = 303
    res.body = ""
    res.set_header("Location", location)
    raise res


def _redirect_to_login(error: str, next_path: str) -> None:
    query = {"error": error}
    if next_path != "/":
        query["next"] = next_path
    see_other("/login?" + urlencode(query))


def login():
    state = web_state.current()
    browser = not wants_json(bottle.request.get_header("Accept"), default=True)
    email, password, next_path = _read_credentials(state.settings.api_max_body)
    next_path = safe_next(next_path)
    throttle = auth.LoginThrottle(state)
    address = auth.client_address()
    account = throttle.account_key(email)
    try:
        throttle.check(account, address)
    except RateLimited:
        bottle.request.environ[RATE_LIMITED_KEY] = "login"
        if browser:
            _redirect_to_login("throttled", next_path)
        raise
    user = accounts.authenticate(email, password)
    if user is None:
        throttle.failed(account, address)
        if browser:
            _redirect_to_login("invalid", next_path)
        raise Unauthorized("Invalid email or password")
    throttle.succeeded(account, address)
    session = auth.start_session(user)
    if browser:
        see_other(next_path)
    return {"success": True, "user": user_json(user), "csrf_token": session.csrf_token}


def logout():
    browser = not wants_json(bottle.request.get_header("Accept"), default=True)
    signed_in = auth.authenticate_request()
    if signed_in.session is not None:
        auth.check_csrf_form()
        # "everywhere" (a form field): every session of the account ends, and so does the
        # members-only tunnel access they gave (memberpass)
        everywhere = bottle.request.forms.getunicode("everywhere")
        if everywhere and everywhere != "0":
            accounts.end_sessions(Session.user == signed_in.user)
    auth.end_session()
    if browser:
        see_other("/login")
    return {"success": True, "message": "Logged out"}


def login_page():
    """Minimal page (the dashboard replaces it with a styled one)."""
    query = bottle.request.query
    error = ERROR_MESSAGES.get(query.getunicode("error") or "", "")
    next_path = safe_next(query.getunicode("next"))
    bottle.response.content_type = "text/html; charset=utf-8"
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Log in · InTunnel</title>"
        "</head>\n<body><h1>Log in to InTunnel</h1>\n"
        + (f"<p role=\"alert\">{html.escape(error)}</p>\n" if error else "")
        + "<form method=\"post\" action=\"/login\">\n"
        f"<input type=\"hidden\" name=\"next\" value=\"{html.escape(next_path)}\">\n"
        "<p><label>Email <input type=\"email\" name=\"email\" autocomplete=\"username\" required></label></p>\n"
        "<p><label>Password <input type=\"password\" name=\"password\" autocomplete=\"current-password\""
        " required></label></p>\n<p><button type=\"submit\">Log in</button></p>\n</form></body></html>\n"
    )


def install(app: bottle.Bottle) -> None:
    app.route("/login", "GET", login_page)
    app.route("/login", "POST", login)
    app.route("/logout", "POST", logout)
