"""Reading a JSON request body strictly: media type, size, shape and field names.

Every failure is an AppError naming what is wrong: 415 for a body that is not
``application/json``, 413 above ``api_max_body``, 400 VALIDATION_ERROR for
malformed JSON, nesting deeper than ``MAX_JSON_DEPTH``, a non-object, a missing
or an unknown field.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable

import bottle

from ..errors import PayloadTooLarge, UnsupportedMedia, ValidationError

# Deepest nesting of arrays/objects accepted in a body.  No request of the API
# needs more than 2; the limit keeps the parser (which recurses once per level)
# far from Python's recursion limit, whose RecursionError was a 500.
MAX_JSON_DEPTH = 64
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def nesting_depth(text: str, limit: int = MAX_JSON_DEPTH) -> int:
    """How deep arrays and objects nest in ``text`` (stops counting past ``limit``).

    String literals are removed first, so brackets inside them don't count.  The
    count is exact up to the first syntax error, which is as far as the parser goes.
    """
    depth = deepest = 0
    for c in _NOT_BRACKET.sub("", _STRING.sub("", text)):
        if c in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        else:
            depth -= 1
    return deepest


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
        # Decoded the way json.loads decodes bytes (UTF-8, -16 or -32), so the
        # depth is counted on the very text that is parsed.
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")
        if nesting_depth(text) > MAX_JSON_DEPTH:
            raise ValidationError(f"request body nests deeper than {MAX_JSON_DEPTH} levels", field="body")
        data = json.loads(text)
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
