"""The web app's own cookies (session, flash) against cookies planted by a tunnel.

Tunnels live on subdomains of the web app's domain, so a tunnel's app can set
``intunnel_session=...; Domain=<domain>`` and the browser sends it to the web
app too, before or after the app's own cookie.  Hence:

* under https each cookie is named ``__Host-<base>`` (``name()``): browsers take
  such a cookie only with Secure, Path=/ and no Domain, so only the web app's
  own host can set it; over http the plain ``<base>`` is kept;
* ``single()`` reads a cookie only when exactly one cookie of that base name, in
  either form, came with the request: with two, one was planted and neither is
  trusted (for the session cookie: not logged in);
* ``strays()`` are the Set-Cookie values deleting the copies the app never sets
  itself (``<base>`` with Domain=<domain>; under https also the plain host-only
  ``<base>`` of earlier versions), sent at login and logout so a planted copy
  can't keep its owner logged out.

Only the pure parts live here; callers add the headers to the response.
"""

from __future__ import annotations

import re

HOST_PREFIX = "__Host-"
# RFC 6265 cookie-octets exclude ',' and ';': a header joined from two Cookie
# headers with ", " still splits into the right pairs.
_PAIR_SEPARATOR = re.compile(r"[;,]")
_EXPIRED = "Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT"


def name(base: str, secure: bool) -> str:
    """The cookie's name: ``__Host-<base>`` under https, ``<base>`` over http."""
    return HOST_PREFIX + base if secure else base


def pairs(cookie_header: str, base: str) -> list[tuple[str, str]]:
    """Every (name, value) in a Cookie header named ``base`` or ``__Host-<base>``, in order."""
    found = []
    for item in _PAIR_SEPARATOR.split(cookie_header):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if sep and key in (base, HOST_PREFIX + base):
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            found.append((key, value))
    return found


def single(environ: dict, base: str, secure: bool) -> str | None:
    """The value of the app's cookie ``base``, or None when it is missing or came more than once."""
    found = pairs(environ.get("HTTP_COOKIE", ""), base)
    if len(found) != 1 or found[0][0] != name(base, secure):
        return None
    return found[0][1]


def header(cookie_name: str, value: str, *, secure: bool, max_age: int | None = None,
           domain: str | None = None) -> str:
    """A Set-Cookie value: HttpOnly, SameSite=Lax, Path=/ (and Secure under https)."""
    parts = [f"{cookie_name}={value}"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}" if max_age > 0 else _EXPIRED)
    if domain:
        parts.append(f"Domain={domain}")
    parts += ["Path=/", "HttpOnly", "SameSite=Lax"] + (["Secure"] if secure else [])
    return "; ".join(parts)


def deletion(cookie_name: str, *, secure: bool) -> str:
    """Set-Cookie deleting the app's own (host-only) cookie."""
    return header(cookie_name, "", secure=secure, max_age=0)


def strays(base: str, *, secure: bool, domain: str) -> list[str]:
    """Set-Cookie values deleting the copies of ``base`` the app itself never sets.

    Not for a single-label domain (``localhost``, as ``intunnel serve`` runs): a browser keeps
    no domain cookie there (Chromium takes ``Domain=localhost`` on localhost as host-only, so
    the "stray" deletion would delete the session cookie just set), and no tunnel on
    ``<sub>.localhost`` can plant one either."""
    found = [header(base, "", secure=secure, max_age=0, domain=domain)] if "." in domain else []
    if secure:
        found.append(deletion(base, secure=True))  # the plain name, from before the prefix
    return found
