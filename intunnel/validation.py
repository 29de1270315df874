"""Input rules for users and tunnels (pure).  Each failure names its field."""

from __future__ import annotations

import re
from typing import Any, Iterable

from .errors import ValidationError

DNS_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{1,63}$")
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
NAME_MAX = 100


def require_str(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a string", field=field)
    return value


def subdomain(value: Any, reserved: Iterable[str] = ()) -> str:
    value = require_str(value, "subdomain").strip().lower()
    if not DNS_LABEL.match(value):
        raise ValidationError(
            "subdomain must be 1-63 characters of a-z, 0-9 and inner hyphens", field="subdomain")
    if value in {r.lower() for r in reserved}:
        raise ValidationError(f"subdomain '{value}' is reserved", field="subdomain")
    return value


def local_port(value: Any) -> int:
    # bool is an int in Python; JSON true is not a port.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError("local_port must be an integer", field="local_port")
    if not 1 <= value <= 65535:
        raise ValidationError("local_port must be between 1 and 65535", field="local_port")
    return value


def name(value: Any, field: str = "name") -> str:
    value = require_str(value, field).strip()
    if not 1 <= len(value) <= NAME_MAX:
        raise ValidationError(f"{field} must be 1-{NAME_MAX} characters", field=field)
    if any(ord(c) < 32 for c in value):
        raise ValidationError(f"{field} must not contain control characters", field=field)
    return value


def username(value: Any) -> str:
    value = require_str(value, "username").strip()
    if not USERNAME.match(value):
        raise ValidationError(
            "username must be 2-64 characters of letters, digits, '.', '_' and '-'", field="username")
    return value


def email(value: Any) -> str:
    value = require_str(value, "email").strip().lower()
    if len(value) > 254 or not EMAIL.match(value):
        raise ValidationError("email must be a valid email address", field="email")
    return value


def password(value: Any, min_length: int = 8) -> str:
    value = require_str(value, "password")
    if len(value) < min_length:
        raise ValidationError(f"password must be at least {min_length} characters", field="password")
    if len(value) > 1024:
        raise ValidationError("password must be at most 1024 characters", field="password")
    return value


def reserved_subdomains(settings) -> set[str]:
    """The configured list plus the web app's own host label."""
    reserved = {r.lower() for r in settings.reserved_subdomains}
    reserved.add(settings.domain.split(".")[0].lower())
    return reserved
