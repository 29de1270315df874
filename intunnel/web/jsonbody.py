"""Reading a JSON request body strictly: media type, size, shape and field names.

Every failure is an AppError naming what is wrong: 415 for a body that is not
``application/json``, 413 above ``api_max_body``, 400 VALIDATION_ERROR for
malformed JSON, a non-object, a missing or an unknown field.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

import bottle

from ..errors import PayloadTooLarge, UnsupportedMedia, ValidationError


def is_json_media_type(content_type: str) -> bool:
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


def read_object(max_bytes: int) -> dict[str, Any]:
    request = bottle.request
    content_type = request.environ.get("CONTENT_TYPE", "")
    length = request.content_length
    if not content_type and length <= 0:
        raise ValidationError("request body must be a JSON object", field="body")
    if not is_json_media_type(content_type):
        raise UnsupportedMedia()
    if length > max_bytes:
        raise PayloadTooLarge(f"Request body larger than {max_bytes} bytes")
    raw = request.body.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"Request body larger than {max_bytes} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ValidationError("request body is not valid JSON", field="body") from None
    if not isinstance(data, dict):
        raise ValidationError("request body must be a JSON object", field="body")
    try:
        # JSON may carry lone surrogates ("\ud800") that no database or page can store.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("request body contains invalid Unicode", field="body") from None
    return data


def check_fields(data: dict[str, Any], required: Iterable[str] = (), optional: Iterable[str] = ()) -> None:
    """Refuse unknown fields and missing required ones, naming the first such field."""
    required, optional = tuple(required), tuple(optional)
    for key in data:
        if key not in required and key not in optional:
            raise ValidationError(f"unknown field '{key}'", field=key)
    for key in required:
        if key not in data:
            raise ValidationError(f"{key} is required", field=key)
