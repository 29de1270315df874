"""One-shot messages carried across a POST -> redirect -> GET in a signed cookie.

The cookie holds a short JSON list of ``[kind, text]`` pairs plus an HMAC made
with the app's secret key, so a third party can't plant messages.  It is read
once and cleared.  Besides ``success``/``error``/``info`` messages, the kind
``secret`` carries the reference of a value to show exactly once (a new API
token) on the page the browser is redirected to: the value itself stays
server-side (``onetime``), since this cookie is signed, not encrypted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import bottle

from . import cookies

COOKIE = "intunnel_flash"  # the base name: __Host-intunnel_flash under https (see cookies)
KINDS = ("success", "error", "info", "secret")
MAX_TEXT = 300
MAX_AGE = 300  # seconds a message waits for the next page


def _sign(secret_key: str, payload: bytes) -> str:
    return hmac.new(secret_key.encode(), b"flash:" + payload, hashlib.sha256).hexdigest()[:32]


def encode(secret_key: str, messages: list[tuple[str, str]]) -> str:
    payload = base64.urlsafe_b64encode(json.dumps(messages).encode()).rstrip(b"=")
    return payload.decode() + "." + _sign(secret_key, payload)


def decode(secret_key: str, value: str | None) -> list[tuple[str, str]]:
    """The messages, or [] for a missing, forged or malformed cookie."""
    if not value or "." not in value:
        return []
    payload, sig = value.rsplit(".", 1)
    if not hmac.compare_digest(_sign(secret_key, payload.encode()), sig):
        return []
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        items = json.loads(raw)
    except ValueError:
        return []
    if not isinstance(items, list):
        return []
    return [(k, t) for k, t in (i for i in items if isinstance(i, list) and len(i) == 2)
            if k in KINDS and isinstance(t, str)]


class Flash:
    """Per-app helper bound to the secret key, the cookie's Secure flag (and name) and the domain."""

    def __init__(self, secret_key: str, secure: bool, domain: str):
        self.secret_key = secret_key
        self.secure = secure
        self.domain = domain
        self.name = cookies.name(COOKIE, secure)

    def add(self, kind: str, text: str) -> None:
        """Queue a message for the next page (call before ``bottle.redirect``)."""
        assert kind in KINDS
        pending = bottle.request.environ.setdefault("intunnel.flash", [])
        pending.append((kind, text[:MAX_TEXT] if kind != "secret" else text))
        bottle.response.set_cookie(self.name, encode(self.secret_key, pending), path="/",
                                   httponly=True, samesite="lax", secure=self.secure, max_age=MAX_AGE)

    def pop(self) -> list[tuple[str, str]]:
        """This request's messages (none when two flash cookies came: one was planted); clears the cookie."""
        environ = bottle.request.environ
        found = cookies.pairs(environ.get("HTTP_COOKIE", ""), COOKIE)
        if not found:
            return []
        bottle.response.delete_cookie(self.name, path="/", httponly=True, samesite="lax", secure=self.secure)
        if len(found) > 1 or found[0][0] != self.name:  # a copy the app never set
            for value in cookies.strays(COOKIE, secure=self.secure, domain=self.domain):
                bottle.response.add_header("Set-Cookie", value)
        return decode(self.secret_key, cookies.single(environ, COOKIE, self.secure))
