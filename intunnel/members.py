"""Members only: which accounts of this InTunnel may open a tunnel (pure; no I/O).

The ``members`` mode of a tunnel's access policy (``intunnel.access``).  A visitor proves
who they are by logging in to the web app (``memberpass``: a one-time ticket, then an
access cookie on the tunnel's host); this module only decides whether that account may
pass:

  * ``{}`` (the API's ``"members": true``): any enabled account of this InTunnel;
  * ``{"owner_only": true}``: only the tunnel's owner;
  * ``{"users": [...], "email_domains": [...]}``: the owner, the named users, and accounts
    whose email address is at one of the domains (exactly: ``example.com`` admits
    ``ann@example.com``, not ``ann@mail.example.com``, as an allow list must be read).

The owner always passes: a rule that locks out the person who wrote it helps nobody.
Administrators pass only when listed: a private app stays private from them too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ValidationError

FIELD = "access.members"
KEYS = ("owner_only", "users", "email_domains")
_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")


@dataclass(frozen=True, slots=True)
class Identity:
    """A logged-in visitor, as the relay knows them from their access cookie."""
    user_id: int
    username: str
    email: str


@dataclass(frozen=True)
class Members:
    owner_only: bool = False
    users: tuple[str, ...] = ()
    email_domains: tuple[str, ...] = ()

    def admits(self, who: Identity, owner_id: int) -> bool:
        if who.user_id == owner_id:
            return True
        if self.owner_only:
            return False
        if not (self.users or self.email_domains):
            return True
        if who.username in self.users:
            return True
        domain = who.email.rpartition("@")[2].lower()
        return domain in self.email_domains

    def dump(self) -> dict:
        out: dict[str, Any] = {}
        if self.owner_only:
            out["owner_only"] = True
        if self.users:
            out["users"] = list(self.users)
        if self.email_domains:
            out["email_domains"] = list(self.email_domains)
        return out

    def view(self) -> dict:
        """What the API shows: every key, always."""
        return {"owner_only": self.owner_only, "users": list(self.users),
                "email_domains": list(self.email_domains)}

    def describe(self) -> str:
        if self.owner_only:
            return "only the owner"
        if not (self.users or self.email_domains):
            return "anyone who can log in"
        parts = [f"{len(self.users)} named user{'s' if len(self.users) != 1 else ''}"] if self.users else []
        parts += [f"@{d}" for d in self.email_domains]
        return "the owner, " + ", ".join(parts)


def load(data: Any) -> Members:
    """The stored form (``dump``); ValueError if it can't be read."""
    if not isinstance(data, dict) or set(data) - set(KEYS):
        raise ValueError("members")
    owner_only = data.get("owner_only", False)
    users = tuple(str(u) for u in data.get("users") or ())
    domains = tuple(str(d) for d in data.get("email_domains") or ())
    if not isinstance(owner_only, bool):
        raise ValueError("members")
    return Members(owner_only, users, domains)


def parse(value: Any, max_entries: int, user_exists: Callable[[str], bool]) -> Members | None:
    """The API's ``access.members``: ``true`` (any account), ``false``/``null`` (off), or an
    object of ``owner_only``, ``users`` (user names that exist), ``email_domains``."""
    if value is None or value is False:
        return None
    if value is True:
        return Members()
    if not isinstance(value, dict):
        raise ValidationError(f"{FIELD} must be true, false or an object with owner_only, users, "
                              "email_domains", field=FIELD)
    unknown = sorted(set(value) - set(KEYS))
    if unknown:
        raise ValidationError(f"{FIELD}.{unknown[0]} is not known (owner_only, users, email_domains)",
                              field=FIELD)
    owner_only = value.get("owner_only", False)
    if not isinstance(owner_only, bool):
        raise ValidationError(f"{FIELD}.owner_only must be true or false", field=FIELD)
    users = _strings(value, "users", max_entries)
    domains = tuple(d.lower().lstrip("@") for d in _strings(value, "email_domains", max_entries))
    if owner_only and (users or domains):
        raise ValidationError(f"{FIELD}: owner_only admits the owner alone; leave users and "
                              "email_domains empty with it", field=FIELD)
    for name in users:
        if not user_exists(name):
            raise ValidationError(f"{FIELD}.users: there is no user '{name}'", field=FIELD)
    for domain in domains:
        if not _DOMAIN.fullmatch(domain):
            raise ValidationError(f"{FIELD}.email_domains: '{domain}' is not a domain such as "
                                  "example.com", field=FIELD)
    return Members(owner_only, _unique(users), _unique(domains))


def _strings(value: dict, key: str, max_entries: int) -> tuple[str, ...]:
    items = value.get(key) or []
    if not isinstance(items, list) or not all(isinstance(i, str) and i.strip() for i in items):
        raise ValidationError(f"{FIELD}.{key} must be a list of non-empty strings", field=FIELD)
    if len(items) > max_entries:
        raise ValidationError(f"{FIELD}.{key} may hold at most {max_entries} entries", field=FIELD)
    return tuple(i.strip() for i in items)


def _unique(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))
