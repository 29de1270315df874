"""``POST /api/device/code`` and ``POST /api/device/token``: ``intunnel login``'s two calls.

Both are anonymous (the client has no credential yet) and count against the per-address
write rate limit like every anonymous POST; ``device_max_pending_per_address`` caps the codes
one address may have waiting.  The rules are ``deviceflow``'s; errors are the API's format
with the codes of RFC 8628 (AUTHORIZATION_PENDING, SLOW_DOWN, EXPIRED_TOKEN, ACCESS_DENIED).
"""

from __future__ import annotations

from urllib.parse import urlencode

from .. import apitokens, deviceflow
from . import jsonbody
from .auth import client_address
from .state import current as current_state

DEVICE_PAGE = "/device"


def _body(required: tuple) -> dict:
    data = jsonbody.read_object(current_state().settings.api_max_body)
    jsonbody.check_fields(data, required)
    return data


def request_code():
    settings = current_state().settings
    data = _body(("client_name",))
    row, device_code = deviceflow.start(settings, data["client_name"], client_address())
    page = settings.web_url + DEVICE_PAGE
    return {"device_code": device_code, "user_code": row.user_code, "verification_uri": page,
            "verification_uri_complete": page + "?" + urlencode({"code": row.user_code}),
            "expires_in": settings.device_code_lifetime, "interval": row.interval}


def redeem_code():
    settings = current_state().settings
    data = _body(("device_code",))
    row, secret = deviceflow.redeem(data["device_code"])
    user, token = row.approved_by, row.api_token
    return {"token": secret, "api_token": apitokens.summary(token),
            "user": {"id": user.id, "username": user.username, "email": user.email},
            "relay_url": settings.relay_url, "web_url": settings.web_url}
