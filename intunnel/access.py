"""Who may visit a tunnel: its access policy, validated, stored and decided (pure; no I/O).

A policy is a combination of modes; none of them is ``public`` (the default, every
visitor is let through, as before policies existed):

  * ``basic_auth``: HTTP basic auth; one of the listed ``user:password`` pairs must be
    given (RFC 7617), else 401 with ``WWW-Authenticate: Basic realm="<subdomain>"``;
  * ``ip_allow``: the visitor's address must be in one of these CIDRs, else 403;
  * ``ip_deny``: the visitor's address must be in none of these CIDRs, else 403;
  * ``bypass_paths``: path prefixes (``/webhooks/stripe``) that skip the password (and every
    later sign-in mode), for callers that can't sign in, such as a webhook's sender.  The IP
    rules still apply.  A prefix matches on segment boundaries (``/webhooks/stripe`` and
    ``/webhooks/stripe/x`` and ``/webhooks/stripe?x``, never ``/webhooks/stripe-admin``), and
    only a canonical request path can match (``bypassed``): no ``.``/``..`` segments, ``//``,
    backslash or percent-encoded ``.``, ``/``, ``\\`` or ``%``, origin-form only, since the app
    may normalise such a path into one the password protects.  On their own (no rule to skip)
    they change nothing: the policy is still public;
  * ``members``: only accounts of this InTunnel, logged in through the web app
    (``intunnel.members`` says which accounts; ``memberpass`` how a browser gets its access
    cookie; the relay checks it, ``relay/members``).

The order of the checks: IP rules first (a refused address is never asked for a
password, and costs no hash), then the bypass paths (a match costs no hash either), then
members only (a login), then credentials.

Stored with the tunnel (``Tunnel.access``, JSON text; NULL is public).  Passwords are
stored as the project's password hashes (``security.hash_password``), never as text,
and never leave the server: ``public_view`` names the users only.  Stored form::

    {"v": 1, "basic_auth": [{"user": "alice", "hash": "$argon2id$..."}],
     "ip_allow": ["10.0.0.0/8", "2001:db8::/32"], "ip_deny": [], "bypass_paths": ["/webhooks"]}

Members only is stored as ``"members": {...}`` (``members.Members.dump``).  A reader
meeting a key it does not know refuses the policy (``PolicyError``): a relay older than the policy it is
given forbids every visitor rather than serving a tunnel less protected than its owner
asked (fail closed).

Changes come as the ``access`` object of ``PATCH /api/tunnels/:id`` (the dashboard and
``intunnel-admin tunnel access`` build the same object): each key given replaces that
part, keys not given keep theirs, ``{"public": true}`` clears everything.  In
``basic_auth`` a ``"user:password"`` string (or ``{"username", "password"}``) sets a
user, ``{"username": "alice"}`` keeps alice's stored hash; users not listed go.

The decision (``evaluate``) is a function of (policy, visitor address, Authorization
header, request target): ``ALLOW``, ``CHALLENGE`` (401), ``FORBID`` (403), or
``Verify``: a password to check against a stored hash, which the caller does (the relay
off its event loop, with a cache of verified credentials: ``relay/access.py``).  It leaves
members only to the relay (``relay/members``: it needs the visitor's access cookie looked up).  Every limit is a setting
(``access_max_*``).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, Callable

from . import members as members_rule
from .errors import ValidationError

STORED_VERSION = 1
ALLOW, CHALLENGE, FORBID = "allow", "challenge", "forbid"
UPDATE_KEYS = ("public", "basic_auth", "ip_allow", "ip_deny", "members", "bypass_paths")
STORED_KEYS = frozenset(("v", "basic_auth", "ip_allow", "ip_deny", "members", "bypass_paths"))


class PolicyError(ValueError):
    """A stored policy this code can't read (malformed, or written by a newer version)."""


@dataclass(frozen=True)
class Limits:
    """The ``access_*`` settings."""
    max_users: int = 20
    max_cidrs: int = 100
    max_username: int = 64
    min_password: int = 8
    max_password: int = 256
    max_members: int = 100
    max_bypass_paths: int = 20


def limits_of(settings) -> Limits:
    return Limits(settings.access_max_users, settings.access_max_cidrs, settings.access_max_username,
                  settings.access_min_password, settings.access_max_password, settings.access_max_members,
                  max_bypass_paths=settings.access_max_bypass_paths)


@dataclass(frozen=True)
class Policy:
    users: tuple[tuple[str, str], ...] = ()   # (user name, password hash), in the owner's order
    allow: tuple = ()                         # ipaddress networks
    deny: tuple = ()
    members: members_rule.Members | None = None  # members only (intunnel.members); None: off
    bypass: tuple[str, ...] = ()   # bypass_paths: canonical prefixes without a trailing '/'

    @property
    def public(self) -> bool:
        """No rule restricts a visitor (bypass paths alone restrict nothing)."""
        return not (self.users or self.allow or self.deny or self.members is not None)

    def bypasses(self, target: str | None) -> bool:
        """Does the request target ``target`` skip the sign-in checks (``bypass_paths``)?"""
        return bool(self.bypass) and bypassed(self.bypass, target)

    def hash_of(self, user: str) -> str | None:
        for name, hashed in self.users:
            if name == user:
                return hashed
        return None

    # The rules as integer ranges (version, first, last): a visitor's check is a few integer
    # comparisons per rule, not ipaddress's containment test (measured ~10x slower).
    @cached_property
    def allow_ranges(self) -> tuple:
        return tuple((n.version, int(n.network_address), int(n.broadcast_address)) for n in self.allow)

    @cached_property
    def deny_ranges(self) -> tuple:
        return tuple((n.version, int(n.network_address), int(n.broadcast_address)) for n in self.deny)


PUBLIC = Policy()


@dataclass(frozen=True, slots=True)
class Verify:
    """Credentials to check: ``password`` against ``hash`` (None: no such user; the caller still
    spends a hash on it, so an unknown name costs the time a known one does)."""
    user: str
    password: str
    hash: str | None


# --- addresses ---------------------------------------------------------------------------------

@lru_cache(maxsize=4096)  # the relay asks for the same few visitor addresses over and over
def parse_address(text: str | None):
    """An ``ipaddress`` address, IPv4-mapped IPv6 (``::ffff:1.2.3.4``) as the IPv4 it is; None if
    ``text`` is not an address."""
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def visitor_address(peer: str, forwarded_for: str | None, trust_proxy: bool, hop: bool = False) -> str:
    """The visitor's real address, the one the relay's proxy forwards too (``X-Forwarded-For``):

      * the connection's peer;
      * behind our nginx (``relay_trust_proxy``, and the peer on loopback or a private network:
        never a public address), the last ``X-Forwarded-For`` entry, the address nginx saw
        (``$proxy_add_x_forwarded_for`` appends it; what a visitor wrote before it is not believed);
      * forwarded by a peer relay (``hop``, authenticated: relay/peers), what that relay saw: the
        entry it appended last, or, behind nginx, the one before it (nginx's own address follows it).
    """
    entries = [e.strip() for e in forwarded_for.split(",")] if forwarded_for else []
    if hop:
        entries = entries[:-1] if trust_proxy else entries
    elif not trust_proxy:
        return peer
    else:
        address = parse_address(peer)
        if address is None or not _in_any(address, PROXY_NETWORKS):
            return peer
    return entries[-1] if entries and entries[-1] else peer


# Where our nginx may be: loopback (one host) or the hosts' private network (several relays).
# Written out: ipaddress's is_private also counts documentation and reserved ranges.
PROXY_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "::1/128", "fc00::/7"))


def _in_any(address, networks) -> bool:
    return any(address.version == n.version and address in n for n in networks)


def _in_ranges(address, ranges) -> bool:
    version, x = address.version, int(address)
    return any(v == version and lo <= x <= hi for v, lo, hi in ranges)


def address_admitted(policy: Policy, address: str) -> bool:
    """The IP rules alone: ``address`` is in no ``ip_deny`` CIDR and, if ``ip_allow`` lists any,
    in one of them.  An address that can't be read is not admitted by any rule (fail closed)."""
    if not (policy.allow or policy.deny):
        return True
    parsed = parse_address(address)
    if parsed is None:
        return False
    if policy.deny and _in_ranges(parsed, policy.deny_ranges):
        return False
    return not policy.allow or _in_ranges(parsed, policy.allow_ranges)


def raw_admitted(policies, address: str) -> bool:
    """A TCP tunnel's visitor (no HTTP: no password, no cookie, only its address): admitted by
    every policy of ``policies`` (the tunnel's, a session's own; None: public).  One that asks
    for a password or members only can't be met without HTTP: nobody passes it (fail closed)."""
    for policy in policies:
        if policy is None:
            continue
        if policy.users or policy.members is not None or not address_admitted(policy, address):
            return False
    return True


# --- bypass paths ------------------------------------------------------------------------------

MAX_BYPASS_PATH = 256   # characters of one prefix
RESERVED_PATH = "/_intunnel"   # the relay answers below it itself (memberpass.AUTH_PATH): no bypass
# In a path, percent-encoded '.', '/', '\\' and '%' (any case): an app that decodes them may make
# another path of it ('/webhooks/stripe/%2e%2e/admin' is '/admin' to it).
_ENCODED_SEPARATORS = ("%2e", "%2f", "%5c", "%25")


def canonical_path(target: str | None) -> str | None:
    """The path of an origin-form request target (``/a/b?q``: ``/a/b``) if no app could make
    another path of it, else None: no ``.`` or ``..`` segment (also as ``..;x``, which some
    servers read as ``..``), no empty segment (``//``), no backslash, no percent-encoded ``.``,
    ``/``, ``\\`` or ``%``, only printable ASCII, no fragment."""
    if not target or target[0] != "/":
        return None     # '*', absolute-form (http://...), authority-form: not a path to trust
    path = target.split("?", 1)[0]
    if "\\" in path or "//" in path or "#" in target or not path.isascii() or not path.isprintable() \
            or " " in path:
        return None
    if "%" in path:
        lowered = path.lower()
        if any(e in lowered for e in _ENCODED_SEPARATORS):
            return None
    if "." in path:
        for segment in path.split("/"):
            if segment.split(";", 1)[0] in (".", ".."):
                return None
    return path


def bypassed(prefixes: tuple[str, ...], target: str | None) -> bool:
    """Is ``target`` under one of ``prefixes`` (canonical, no trailing '/'), on a segment
    boundary, and canonical itself?  (See the module's docstring.)"""
    path = canonical_path(target)
    if path is None:
        return False
    for prefix in prefixes:
        if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
            return True
    return False


def parse_bypass_path(value: Any, field: str = "access.bypass_paths") -> str:
    """A bypass prefix as stored: starts with '/', canonical (``canonical_path``), no query, not
    ``/`` itself (that would skip the password everywhere), a trailing '/' dropped."""
    if not isinstance(value, str) or not 1 <= len(value.strip()) <= MAX_BYPASS_PATH:
        raise ValidationError(f"{field}: each entry is a path prefix such as /webhooks/stripe "
                              f"(1-{MAX_BYPASS_PATH} characters)", field=field)
    text = value.strip()
    if text[0] != "/":
        raise ValidationError(f"{field}: {text!r} must start with '/'", field=field)
    if "?" in text or canonical_path(text) != text:
        raise ValidationError(f"{field}: {text!r} must be a plain path: no '.' or '..' segments, no '//', "
                              "'?', spaces, backslashes or percent-encoded '.', '/', backslash or '%'",
                              field=field)
    prefix = text.rstrip("/")
    if not prefix:
        raise ValidationError(f"{field}: '/' would skip the password on every path; remove the "
                              "password instead", field=field)
    if prefix == RESERVED_PATH or prefix.startswith(RESERVED_PATH + "/"):
        raise ValidationError(f"{field}: {RESERVED_PATH}/ is the relay's own (the members-only "
                              "login ticket), never the app's", field=field)
    return prefix


def _bypass_paths(data: dict, limits: Limits) -> tuple:
    prefixes: list[str] = []
    for entry in _list(data, "bypass_paths", limits.max_bypass_paths):
        prefix = parse_bypass_path(entry, _field("bypass_paths"))
        if prefix not in prefixes:
            prefixes.append(prefix)
    return tuple(prefixes)


# --- credentials -------------------------------------------------------------------------------

def parse_basic(authorization: str | None) -> tuple[str, str] | None:
    """(user, password) of an ``Authorization: Basic ...`` header; None for anything else."""
    if not authorization:
        return None
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # older browsers send ISO-8859-1 (RFC 7617 §2.1)
    user, colon, password = text.partition(":")
    if not colon:
        return None
    return user, password


def basic_header(user: str, password: str) -> str:
    """The Authorization header value a browser sends for ``user:password``."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode("utf-8")).decode("ascii")


# --- the decision ------------------------------------------------------------------------------

def evaluate(policy: Policy, address: str, authorization: str | None, target: str | None = None):
    """ALLOW, FORBID, CHALLENGE, or a ``Verify`` the caller settles (then ALLOW or CHALLENGE).
    ``target``: the request target, for the bypass paths (None: none applies); every sign-in
    check comes after them."""
    if policy.public:
        return ALLOW
    if not address_admitted(policy, address):
        return FORBID
    if not policy.users or policy.bypasses(target):
        return ALLOW
    credentials = parse_basic(authorization)
    if credentials is None:
        return CHALLENGE
    user, password = credentials
    return Verify(user, password, policy.hash_of(user))


def decide(policy: Policy, address: str, authorization: str | None,
           verify: Callable[[Verify], bool], target: str | None = None) -> str:
    """``evaluate`` with the password check done by ``verify``: ALLOW, CHALLENGE or FORBID."""
    verdict = evaluate(policy, address, authorization, target)
    if isinstance(verdict, Verify):
        return ALLOW if verify(verdict) else CHALLENGE  # (verify spends a hash on an unknown user too)
    return verdict


# --- stored form -------------------------------------------------------------------------------

def dump(policy: Policy) -> str | None:
    """The stored JSON (None for public without bypass paths, which a later rule may need)."""
    if policy.public and not policy.bypass:
        return None
    stored = {"v": STORED_VERSION, "basic_auth": [{"user": u, "hash": h} for u, h in policy.users],
              "ip_allow": [str(n) for n in policy.allow], "ip_deny": [str(n) for n in policy.deny]}
    if policy.members is not None:
        stored["members"] = policy.members.dump()
    if policy.bypass:
        stored["bypass_paths"] = list(policy.bypass)
    return json.dumps(stored, separators=(",", ":"))


def load(stored: str | None) -> Policy:
    """The policy of a stored JSON text (NULL/empty: public); PolicyError if it can't be read."""
    if not stored:
        return PUBLIC
    try:
        data = json.loads(stored)
    except ValueError:
        raise PolicyError("the stored access policy is not JSON") from None
    if not isinstance(data, dict) or data.get("v") != STORED_VERSION:
        raise PolicyError("the stored access policy has an unknown version")
    unknown = set(data) - STORED_KEYS
    if unknown:
        raise PolicyError(f"the stored access policy has modes this version can't enforce: {sorted(unknown)}")
    try:
        users = tuple((str(e["user"]), str(e["hash"])) for e in data.get("basic_auth") or ())
        allow = tuple(ipaddress.ip_network(n) for n in data.get("ip_allow") or ())
        deny = tuple(ipaddress.ip_network(n) for n in data.get("ip_deny") or ())
        bypass = tuple(parse_bypass_path(p) for p in data.get("bypass_paths") or ())
        members = members_rule.load(data["members"]) if "members" in data else None
    except (KeyError, TypeError, ValueError, ValidationError):
        raise PolicyError("the stored access policy is malformed") from None
    return Policy(users, allow, deny, members, bypass=bypass)


def public_view(policy: Policy) -> dict[str, Any]:
    """What the API and the dashboard show: no password hash, ever."""
    return {"public": policy.public, "bypass_paths": list(policy.bypass),
            "basic_auth": [u for u, _ in policy.users],
            "ip_allow": [str(n) for n in policy.allow], "ip_deny": [str(n) for n in policy.deny],
            "members": None if policy.members is None else policy.members.view()}


# --- changes (the API's ``access`` object) -----------------------------------------------------

def _field(key: str) -> str:
    return f"access.{key}"


def _list(data: dict, key: str, limit: int) -> list:
    value = data[key]
    if not isinstance(value, list):
        raise ValidationError(f"{_field(key)} must be a list", field=_field(key))
    if len(value) > limit:
        raise ValidationError(f"{_field(key)} may hold at most {limit} entries", field=_field(key))
    return value


def parse_cidr(value: Any, field: str = "access.ip_allow"):
    """A network from ``10.0.0.0/8``, ``2001:db8::/32`` or a bare address (one host).  Host bits
    are cleared (``10.1.2.3/8`` is ``10.0.0.0/8``), IPv4-mapped IPv6 becomes IPv4."""
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        raise ValidationError(f"{field}: each entry must be an IP address or CIDR such as 10.0.0.0/8",
                              field=field)
    text = value.strip()
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValidationError(f"{field}: {text!r} is not an IP address or CIDR (such as 10.0.0.0/8 "
                              "or 2001:db8::/32)", field=field) from None
    if network.version == 6 and network.network_address.ipv4_mapped is not None and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        network = ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}", strict=False)
    return network


def _cidrs(data: dict, key: str, limits: Limits) -> tuple:
    networks = []
    for entry in _list(data, key, limits.max_cidrs):
        network = parse_cidr(entry, _field(key))
        if network not in networks:
            networks.append(network)
    return tuple(networks)


def _user_name(value: Any, limits: Limits) -> str:
    field = _field("basic_auth")
    if not isinstance(value, str) or not 1 <= len(value) <= limits.max_username:
        raise ValidationError(f"{field}: a user name must be 1-{limits.max_username} characters", field=field)
    if ":" in value or any(ord(c) < 32 or ord(c) == 127 for c in value) or value != value.strip():
        raise ValidationError(f"{field}: a user name must not contain ':', control characters or "
                              "surrounding spaces", field=field)
    return value


def _password(value: Any, user: str, limits: Limits) -> str:
    field = _field("basic_auth")
    if not isinstance(value, str) or not limits.min_password <= len(value) <= limits.max_password:
        raise ValidationError(f"{field}: the password of '{user}' must be {limits.min_password}-"
                              f"{limits.max_password} characters", field=field)
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValidationError(f"{field}: the password of '{user}' must not contain control characters",
                              field=field)
    return value


def _users(data: dict, current: Policy, limits: Limits, hash_password: Callable[[str], str]) -> tuple:
    field = _field("basic_auth")
    parsed: list[tuple[str, str | None]] = []  # (user, new password or None: keep the stored hash)
    for entry in _list(data, "basic_auth", limits.max_users):
        if isinstance(entry, str):
            user, colon, password = entry.partition(":")
            if not colon:
                raise ValidationError(f"{field}: each entry is \"user:password\" (or an object with "
                                      "username and password)", field=field)
        elif isinstance(entry, dict):
            extra = sorted(set(entry) - {"username", "password"})
            if extra or "username" not in entry:
                raise ValidationError(f"{field}: an object entry has username and, to set it, password",
                                      field=field)
            user, password = entry["username"], entry.get("password")
        else:
            raise ValidationError(f"{field}: each entry is \"user:password\" or an object", field=field)
        user = _user_name(user, limits)
        if any(user == u for u, _ in parsed):
            raise ValidationError(f"{field}: user '{user}' is listed twice", field=field)
        if password is None:
            if current.hash_of(user) is None:
                raise ValidationError(f"{field}: user '{user}' has no password yet: give one", field=field)
        else:
            password = _password(password, user, limits)
        parsed.append((user, password))
    # Validate everything before hashing anything: a hash costs tens of milliseconds.
    return tuple((u, current.hash_of(u) if p is None else hash_password(p)) for u, p in parsed)


def apply_update(current: Policy, data: Any, limits: Limits, hash_password: Callable[[str], str],
                 user_exists: Callable[[str], bool] = lambda name: False) -> Policy:
    """The policy after the API's ``access`` object ``data``; ValidationError naming the field."""
    if not isinstance(data, dict):
        raise ValidationError("access must be an object (see GET /api/tunnels/:id for its shape)",
                              field="access")
    unknown = sorted(set(data) - set(UPDATE_KEYS))
    if unknown:
        raise ValidationError(f"access.{unknown[0]} is not an access mode (modes: basic_auth, ip_allow, "
                              "ip_deny, members, bypass_paths; or public: true)", field=_field(unknown[0]))
    if "public" in data:
        if data["public"] is not True or len(data) > 1:
            raise ValidationError("access.public can only be true, alone: it clears every rule",
                                  field=_field("public"))
        return PUBLIC
    allow = _cidrs(data, "ip_allow", limits) if "ip_allow" in data else current.allow
    deny = _cidrs(data, "ip_deny", limits) if "ip_deny" in data else current.deny
    bypass = _bypass_paths(data, limits) if "bypass_paths" in data else current.bypass
    members = members_rule.parse(data["members"], limits.max_members, user_exists) if "members" in data \
        else current.members
    users = _users(data, current, limits, hash_password) if "basic_auth" in data else current.users
    return Policy(users, allow, deny, members, bypass=bypass)
