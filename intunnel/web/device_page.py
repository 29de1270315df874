"""The dashboard's ``/device`` page: a logged-in person approves or denies an ``intunnel login``.

    GET  /device[?code=BCDF-GHJK]   the code form, or (with a live code) what asked and when;
                                     each code looked up counts against the user's read rate limit
    POST /device                     Approve / Deny (CSRF token, the write rate limit)

Logged out, the page sends to the login and back here with the code kept.  A code that is
unknown, expired or already decided is the form again (400) with one message: which of those
it was is not told, so the page is no oracle for guessing codes.
"""

from __future__ import annotations

from urllib.parse import urlencode

import bottle

from .. import device_auth, deviceflow
from ..errors import ExpiredToken
from . import auth, login
from .state import current as current_state

UNKNOWN_CODE = "That code is unknown, expired or already used. Run intunnel login again for a new one."


class DevicePage:
    def __init__(self, pages):
        self.pages = pages  # the dashboard (rendering, flash, CSRF and rate-limit helpers)

    def _user(self):
        """The logged-in user, or a redirect to the login that comes back with the code."""
        user = auth.current_user()
        if user is None:
            code = bottle.request.query.getunicode("code") or ""
            back = "/device" + ("?" + urlencode({"code": code[:32]}) if code else "")
            login.see_other("/login?" + urlencode({"next": back}))
        return user

    def show(self):
        user = self._user()
        typed = bottle.request.query.getunicode("code") or ""
        if not typed.strip():
            return self._form(user, "", {})
        # Each look-up is a guess at someone's code: the user's API read budget bounds them.
        self.pages.spend(current_state().get_limiter, user, "Too many codes tried in a minute; try again shortly")
        pending = deviceflow.find_pending(typed)
        if pending is None:
            return self._form(user, typed, {"code": UNKNOWN_CODE}, status=400)
        return self.pages.render("device.html", user=user, pending=pending, code=pending.user_code, errors={},
                                 token_name=device_auth.token_name(pending.client_name))

    def _form(self, user, code: str, errors: dict, status: int = 200):
        return self.pages.render("device.html", status=status, user=user, pending=None, code=code[:32],
                                 errors=errors)

    def decide(self):
        user = self.pages.form_user()
        typed = self.pages.field("user_code")
        decision = self.pages.field("decision")
        pending = deviceflow.find_pending(typed)
        if pending is None:
            return self._form(user, typed, {"code": UNKNOWN_CODE}, status=400)
        if decision == "deny":
            deviceflow.deny(pending, user)
            self.pages.done(f"Denied: “{pending.client_name}” was not logged in. Its intunnel login stops now.",
                            "/", kind="info")
        if decision != "approve":
            return self._form(user, typed, {"code": "Choose Approve or Deny."}, status=400)
        try:
            token = deviceflow.approve(pending, user)
        except ExpiredToken:
            return self._form(user, typed, {"code": UNKNOWN_CODE}, status=400)
        self.pages.done(f"Approved: “{pending.client_name}” is logged in as you with the API token "
                        f"“{token.name}”. You can close this page.", "/tokens")


def install(app: bottle.Bottle, pages) -> None:
    page = DevicePage(pages)
    app.route("/device", "GET", page.show)
    app.route("/device", "POST", page.decide)
