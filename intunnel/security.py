"""Passwords, random secrets and token hashing (pure; no I/O)."""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets


@functools.cache
def _passwords():
    """argon2id with OWASP's second recommended profile (19 MiB, t=2): strong, and fast enough
    that a login costs tens of milliseconds, not hundreds.  Made at the first password: passlib
    and argon2 stay out of a process that never checks one (an idle relay: about 1.5 MiB)."""
    from passlib.context import CryptContext
    return CryptContext(schemes=["argon2"], argon2__memory_cost=19456, argon2__time_cost=2,
                        argon2__parallelism=1)


MIN_PASSWORD_LENGTH = 8
TUNNEL_TOKEN_BYTES = 24
API_TOKEN_PREFIX = "itk_"


@functools.cache
def _dummy_hash() -> str:
    """A hash of some fixed password, so a login for an unknown account costs the same time as
    one for a real account (no user enumeration by timing); made once, at the first need (an
    argon2 hash at import cost every process 0.2 s of start-up, a relay's restart included)."""
    return _passwords().hash("not-a-real-password")


def hash_password(password: str) -> str:
    return _passwords().hash(password)


def verify_password(password: str, password_hash: str | None) -> bool:
    if not password_hash:
        _passwords().verify(password, _dummy_hash())
        return False
    try:
        return _passwords().verify(password, password_hash)
    except (ValueError, TypeError):
        return False


def new_tunnel_token() -> str:
    # Never a leading "-": `intunnel http 3000 --token -abc...` would read it as an option
    # (about 1 token in 64 otherwise).
    while (token := secrets.token_urlsafe(TUNNEL_TOKEN_BYTES)).startswith("-"):
        pass
    return token


def new_api_token() -> str:
    return API_TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


def sha256_hex(value: str) -> str:
    """Digest used to store bearer secrets (API tokens, session ids)."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))
