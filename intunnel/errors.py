"""The one place for errors.

    Exception
     +-- ConfigError              bad setting: one line naming the key, exit 2
     +-- AppError                 rendered once as {"error": true, "message", "code"}
          +-- BadRequest          400 BAD_REQUEST (malformed HTTP: the request, not a field)
          +-- ValidationError     400 VALIDATION_ERROR (message names the field)
          +-- SubdomainTaken      400 SUBDOMAIN_TAKEN
          +-- AuthorizationPending 400 AUTHORIZATION_PENDING (device login: poll again)
          +-- SlowDown            400 SLOW_DOWN             (device login: poll 5 s slower)
          +-- ExpiredToken        400 EXPIRED_TOKEN         (device login: expired or used)
          +-- Unauthorized        401 UNAUTHORIZED
          +-- Forbidden           403 FORBIDDEN
          +-- AccessDenied        403 ACCESS_DENIED         (device login denied)
          +-- NotFound            404 NOT_FOUND
          +-- MethodNotAllowed    405 METHOD_NOT_ALLOWED
          +-- RequestTimeout      408 REQUEST_TIMEOUT      (relay)
          +-- Conflict            409 CONFLICT
          +-- PayloadTooLarge     413 PAYLOAD_TOO_LARGE
          +-- UnsupportedMedia    415 UNSUPPORTED_MEDIA_TYPE
          +-- RateLimited         429 RATE_LIMITED (retry_after seconds)
          +-- HeadersTooLarge     431 HEADERS_TOO_LARGE    (relay)
          +-- InternalError       500 INTERNAL_ERROR (never carries internal text)
          +-- NotSupported        501 NOT_IMPLEMENTED      (relay)
          +-- BadGateway          502 BAD_GATEWAY          (relay)
          +-- TunnelOffline       503 TUNNEL_OFFLINE       (relay)
          +-- GatewayTimeout      504 GATEWAY_TIMEOUT      (relay)

Business code raises these; the web layer renders them (JSON for the API, a page
for browsers).  No internal exception text ever reaches a client.

Both services answer by the same two rules, kept here: ``BY_STATUS`` (the code a
bare status gets: Bottle's own errors in the web app, the relay's pages) and
``wants_json`` (JSON or an HTML page for a caller's ``Accept``).
"""

from __future__ import annotations


class ConfigError(Exception):
    """A setting is wrong; the message is one line naming the key."""


class AppError(Exception):
    status = 500
    code = "INTERNAL_ERROR"
    default_message = "Internal server error"

    def __init__(self, message: str | None = None, *, field: str | None = None):
        self.message = message or self.default_message
        self.field = field
        super().__init__(self.message)

    def to_dict(self) -> dict:
        return {"error": True, "message": self.message, "code": self.code}


class ValidationError(AppError):
    status, code, default_message = 400, "VALIDATION_ERROR", "Invalid input data"


class SubdomainTaken(AppError):
    status, code, default_message = 400, "SUBDOMAIN_TAKEN", "Subdomain already in use"


class AuthorizationPending(AppError):
    """``intunnel login``'s poll before anyone approved its code (RFC 8628 authorization_pending)."""
    status, code, default_message = 400, "AUTHORIZATION_PENDING", "Not approved yet; poll again after the interval"


class SlowDown(AppError):
    status, code, default_message = 400, "SLOW_DOWN", "Polling too fast; wait 5 seconds longer between polls"


class ExpiredToken(AppError):
    status, code, default_message = 400, "EXPIRED_TOKEN", "This login code has expired or was already used"


class AccessDenied(AppError):
    status, code, default_message = 403, "ACCESS_DENIED", "The login was denied on the dashboard"


class Unauthorized(AppError):
    status, code, default_message = 401, "UNAUTHORIZED", "Not logged in or session expired"


class Forbidden(AppError):
    status, code, default_message = 403, "FORBIDDEN", "No permission for this action"


class NotFound(AppError):
    status, code, default_message = 404, "NOT_FOUND", "Resource not found"


class MethodNotAllowed(AppError):
    status, code, default_message = 405, "METHOD_NOT_ALLOWED", "Method not allowed"


class Conflict(AppError):
    status, code, default_message = 409, "CONFLICT", "Conflict"


class PayloadTooLarge(AppError):
    status, code, default_message = 413, "PAYLOAD_TOO_LARGE", "Request body too large"


class UnsupportedMedia(AppError):
    status, code, default_message = 415, "UNSUPPORTED_MEDIA_TYPE", "Content-Type must be application/json"


class RateLimited(AppError):
    status, code, default_message = 429, "RATE_LIMITED", "Too many requests"

    def __init__(self, message: str | None = None, *, retry_after: int = 60):
        super().__init__(message)
        self.retry_after = retry_after


class InternalError(AppError):
    pass


class BadRequest(AppError):
    status, code, default_message = 400, "BAD_REQUEST", "Malformed request"


class RequestTimeout(AppError):
    status, code, default_message = 408, "REQUEST_TIMEOUT", "The request took too long"


class HeadersTooLarge(AppError):
    status, code, default_message = 431, "HEADERS_TOO_LARGE", "Request head too large"


class NotSupported(AppError):
    status, code, default_message = 501, "NOT_IMPLEMENTED", "Not implemented"


class BadGateway(AppError):
    status, code, default_message = 502, "BAD_GATEWAY", "Bad gateway"


class TunnelOffline(AppError):
    status, code, default_message = 503, "TUNNEL_OFFLINE", "The tunnel is offline"


class GatewayTimeout(AppError):
    status, code, default_message = 504, "GATEWAY_TIMEOUT", "The local app did not answer in time"


BY_STATUS = {cls.status: cls for cls in (
    BadRequest, Unauthorized, Forbidden, NotFound, MethodNotAllowed, RequestTimeout, Conflict,
    PayloadTooLarge, UnsupportedMedia, RateLimited, HeadersTooLarge, InternalError, NotSupported,
    BadGateway, TunnelOffline, GatewayTimeout)}
"""The class (so the code) a bare status gets.  A 400 without a field is a malformed request
(BAD_REQUEST); validation code raises ValidationError itself."""


def code_for(status: int) -> str:
    """The error code of ``status`` in the seed's JSON format (``ERROR`` for one not in the tree)."""
    cls = BY_STATUS.get(status)
    return cls.code if cls is not None else "ERROR"


_JSON_TYPES = ("application/json",)
_HTML_TYPES = ("text/html", "application/xhtml+xml")


def wants_json(accept: str | None, *, api: bool = False, default: bool = False) -> bool:
    """Does this caller want the seed's JSON error format rather than an HTML page?

    The rules, for both services:

    - ``api`` (the web app's ``/api`` paths): always JSON.
    - Otherwise the ``Accept`` header's preference between JSON (``application/json``,
      any ``+json``) and HTML (``text/html``, ``application/xhtml+xml``) by their q
      values: the higher wins, a tie of two named types is HTML (browsers).
    - An ``Accept`` that names neither with q > 0 (absent, ``*/*``, ``text/plain``) gets
      ``default``: the relay answers tunnel visitors, mostly browsers, with HTML
      (False); the web app answers scripts (curl, requests, fetch) with JSON (True).
    """
    if api:
        return True
    best_json = best_html = 0.0
    for part in (accept or "").split(","):
        media, *params = [p.strip() for p in part.split(";")]
        media = media.lower()
        is_json = media in _JSON_TYPES or media.endswith("+json")
        if not is_json and media not in _HTML_TYPES:
            continue
        q = 1.0
        for param in params:
            if param[:2].lower() == "q=":
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:  # NaN, or out of range: not a weight
                    q = 0.0
        if is_json:
            best_json = max(best_json, q)
        else:
            best_html = max(best_html, q)
    if best_json == best_html == 0.0:
        return default
    return best_json > best_html
