"""Business rules for personal API tokens, shared by the REST API and the dashboard.

A token is ``itk_`` + 43 random characters, shown once at creation; the database
keeps its SHA-256 and a short ``prefix`` so the owner can tell tokens apart.
Another user's token id is NotFound, exactly like a missing one.
"""

from __future__ import annotations

from typing import Any

from . import validation
from .errors import NotFound
from .models import ApiToken, User
from .security import new_api_token, sha256_hex
from .timeutil import iso, utcnow
from .tunnels import parse_id

PREFIX_LENGTH = 12  # "itk_" + 8 random characters: enough to recognise, useless to guess


def create(user: User, name: Any) -> tuple[ApiToken, str]:
    """A new token for ``user``: the row and the secret (never stored, never shown again)."""
    name = validation.name(name)
    secret = new_api_token()
    row = ApiToken.create(user=user, name=name, prefix=secret[:PREFIX_LENGTH],
                          token_hash=sha256_hex(secret), created_at=utcnow())
    return row, secret


def list_for(user: User) -> list[ApiToken]:
    return list(ApiToken.select().where(ApiToken.user == user).order_by(ApiToken.id))


def get_owned(user: User, token_id: Any) -> ApiToken:
    try:
        n = parse_id(token_id)
    except NotFound:
        raise NotFound("Token not found") from None
    row = ApiToken.get_or_none((ApiToken.id == n) & (ApiToken.user == user))
    if row is None:
        raise NotFound("Token not found")
    return row


def revoke(user: User, token_id: Any) -> str:
    """Delete the token (it stops working at once); returns its name."""
    row = get_owned(user, token_id)
    row.delete_instance()
    return row.name


def summary(row: ApiToken) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "prefix": row.prefix,
            "created_at": iso(row.created_at), "last_used_at": iso(row.last_used_at)}
