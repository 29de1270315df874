"""A client session's own access rules: ``intunnel http --basic-auth/--allow-ip/--deny-ip`` (pure).

The client sends them in its ``Hello`` (``access``: the API's access object without
``public``: ``{"basic_auth": ["user:password"], "ip_allow": [CIDR], "ip_deny": [CIDR]}``).
The relay validates them with the API's rules and limits (``access.apply_update``, the
``access_*`` settings) and refuses invalid ones with a final ``Error`` (``ACCESS_INVALID``).

They can only narrow: a visitor must pass the tunnel's stored policy *and* the session's
rules (``relay/access.NarrowedGate``):

  * the address must be admitted by both policies' IP rules (else 403);
  * a password is asked if either asks one; a visitor sends one ``Authorization`` header,
    which must be right for each list that has users: on a tunnel with stored users, a
    session that names one of them (with the same password) lets only that user in;
  * on the tunnel's bypass paths and members mode the stored policy decides as always,
    and the session's rules still apply (nothing the session adds widens anything).

They end with the session: kept by the relay in memory for that session only, never in
the database (the dashboard sees a summary without passwords: ``view``).  Passwords arrive
in plain text over the agent's connection (TLS in production).  They are kept as keyed
BLAKE2b digests under a random key of the session (not argon2: a session starts often and
its passwords never rest on disk, so a slow hash would only cost each start ~50 ms a user;
a digest under a key that never leaves the process is worthless outside it), compared in
constant time; the plain text is dropped once digested and never logged.  Guessing is
throttled like the stored passwords (``relay_access_max_failures``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from . import access
from .errors import ValidationError

KEYS = ("basic_auth", "ip_allow", "ip_deny")
DIGEST_SIZE = 32


@dataclass(frozen=True)
class Narrowing:
    """One session's rules: ``rules`` has the IP lists and (user, keyed digest) pairs."""
    rules: access.Policy
    key: bytes      # the digests' key, random per session
    stamp: bytes    # random per session: part of the relay's credential-cache key

    def accepts(self, user: str, password: str) -> bool:
        """Is ``user:password`` one of the session's pairs?  (Constant time in the password.)"""
        digest = _digest(self.key, password)
        expected = self.rules.hash_of(user)
        if expected is None:
            hmac.compare_digest(digest, digest)  # an unknown name costs what a known one does
            return False
        return hmac.compare_digest(digest, expected)


def _digest(key: bytes, password: str) -> str:
    return hashlib.blake2b(password.encode("utf-8", "surrogateescape"), key=key,
                           digest_size=DIGEST_SIZE).hexdigest()


def parse(data: Any, limits: access.Limits) -> Narrowing | None:
    """The session rules of a Hello's ``access`` (None: no rules); ValidationError naming the
    field (``access.basic_auth``, ...), with the API's messages; never a password in it."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValidationError("access must be an object", field="access")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ValidationError(f"access.{unknown[0]} is not a rule a session can add (basic_auth, "
                              "ip_allow, ip_deny)", field=f"access.{unknown[0]}")
    key = secrets.token_bytes(32)
    rules = access.apply_update(access.PUBLIC, data, limits, lambda password: _digest(key, password))
    if rules.public:
        return None
    return Narrowing(rules, key, secrets.token_bytes(16))


def view(narrowing: Narrowing | None) -> dict[str, list[str]] | None:
    """What the dashboard and the API show of a session's rules: user names and CIDRs."""
    if narrowing is None:
        return None
    rules = narrowing.rules
    return {"basic_auth": [u for u, _ in rules.users], "ip_allow": [str(n) for n in rules.allow],
            "ip_deny": [str(n) for n in rules.deny]}


def summary(shown: dict | None) -> str:
    """One line for a ``view`` (or a Hello's rules): ``basic auth (1 user), only from 1 CIDR``."""
    if not shown:
        return ""

    def count(n: int, what: str) -> str:
        return f"{n} {what}{'' if n == 1 else 's'}"

    parts = []
    if shown.get("basic_auth"):
        parts.append(f"basic auth ({count(len(shown['basic_auth']), 'user')})")
    if shown.get("ip_allow"):
        parts.append(f"only from {count(len(shown['ip_allow']), 'address range')}")
    if shown.get("ip_deny"):
        parts.append(f"not from {count(len(shown['ip_deny']), 'address range')}")
    return ", ".join(parts)
