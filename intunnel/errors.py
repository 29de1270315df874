"""The one place for errors.

    Exception
     +-- ConfigError              bad setting: one line naming the key, exit 2
     +-- AppError                 rendered once as {"error": true, "message", "code"}
          +-- ValidationError     400 VALIDATION_ERROR (message names the field)
          +-- SubdomainTaken      400 SUBDOMAIN_TAKEN
          +-- Unauthorized        401 UNAUTHORIZED
          +-- Forbidden           403 FORBIDDEN
          +-- NotFound            404 NOT_FOUND
          +-- MethodNotAllowed    405 METHOD_NOT_ALLOWED
          +-- Conflict            409 CONFLICT
          +-- PayloadTooLarge     413 PAYLOAD_TOO_LARGE
          +-- UnsupportedMedia    415 UNSUPPORTED_MEDIA_TYPE
          +-- RateLimited         429 RATE_LIMITED (retry_after seconds)
          +-- InternalError       500 INTERNAL_ERROR (never carries internal text)

Business code raises these; the web layer renders them (JSON for the API, a page
for browsers).  No internal exception text ever reaches a client.
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


BY_STATUS = {cls.status: cls for cls in (
    ValidationError, Unauthorized, Forbidden, NotFound, MethodNotAllowed, Conflict,
    PayloadTooLarge, UnsupportedMedia, RateLimited, InternalError)}
