"""No tunnel may write the web app's cookies: ``Set-Cookie`` for the appliance's domain is dropped.

Tunnels live on subdomains of the web app's domain, so a tunnel's app could otherwise set
``intunnel_session=...; Domain=<domain>`` and log a visiting user into another account.
A cookie scoped to the tunnel's own host (no Domain, or a Domain at or below the tunnel's
host) is the app's own business and passes untouched.

A ``Domain`` is read the way a browser may read it (case, leading and trailing dots,
surrounding whitespace, percent-escapes): one that is still not a plain ASCII host name
after that can't be judged, and its cookie is dropped too (fail closed).  A folded
continuation line (obs-fold) belongs to the header before it.

The members-only access cookie (``memberpass.COOKIE``, set by the relay on a tunnel's host)
is the relay's, not the app's: the proxy strips it from every request it forwards
(``strip_access``), and an app's ``Set-Cookie`` of that name is dropped too, so no app can
read a visitor's access nor plant one of its own.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

_HOST_NAME = re.compile(r"[a-z0-9.-]*")


def _covers_web_app(domain_attr: str, domain: str) -> bool:
    """Whether a browser could scope a cookie with this Domain to ``domain`` (or beyond)."""
    d = unquote(domain_attr.strip(), encoding="latin-1").strip().lower()
    if not _HOST_NAME.fullmatch(d):
        return True   # not a host name we can compare: never let it through
    d = d.lstrip(".").rstrip(".")
    return bool(d) and (d == domain or domain.endswith("." + d))


ACCESS = "intunnel_access"   # memberpass.COOKIE (not imported: the proxy imports this module)
ACCESS_NAMES = (ACCESS, "__Host-" + ACCESS)


def access_tokens(cookie_values) -> list[str]:
    """The values of every access cookie (plain or ``__Host-``) in the Cookie header values.
    By hand, not split on every ';': a members-only tunnel's visitor pays this per request."""
    found = []
    for header in cookie_values or ():
        at = header.find(ACCESS)
        while at != -1:
            name = at - 7 if at >= 7 and header.startswith("__Host-", at - 7) else at
            i = name - 1
            while i >= 0 and header[i] in " \t":
                i -= 1
            after = at + len(ACCESS)
            if (i < 0 or header[i] in ";,") and header.startswith("=", after):
                ends = [e for e in (header.find(";", after), header.find(",", after)) if e != -1]
                value = header[after + 1:min(ends) if ends else len(header)].strip().strip('"')
                if value:
                    found.append(value)
            at = header.find(ACCESS, after)
    return found


def strip_access(cookie_values: list[str]) -> str | None:
    """None when no Cookie header value holds an access cookie; else the one Cookie header the
    app gets instead of them all ('' when nothing else is left)."""
    if not any(ACCESS in v for v in cookie_values):
        return None
    kept = [item.strip() for v in cookie_values for item in v.split(";")
            if item.strip() and item.partition("=")[0].strip() not in ACCESS_NAMES]
    return "; ".join(kept)


def _drops(header_value: bytes, domain: str, access_too: bool) -> bool:
    text = header_value.decode("latin-1")
    if access_too and text.partition("=")[0].strip() in ACCESS_NAMES:
        return True   # the relay's access cookie: never the app's to set
    attrs = text.split(";")[1:]
    return any(k.strip().lower() == "domain" and _covers_web_app(v, domain)
               for k, _, v in (a.partition("=") for a in attrs))


def scrub_set_cookies(head: bytes, domain: str, access_too: bool = True) -> bytes | None:
    """``head``: a response head without its blank line.  None when nothing changes, else the
    head without the ``Set-Cookie`` lines whose Domain covers the web app's ``domain``, and
    (``access_too``: from an app, not from the peer relay that set it) of the access cookie."""
    if b"set-cookie" not in head.lower():
        return None
    domain = domain.lower().strip(".")
    lines = head.split(b"\r\n")
    fields: list[list[bytes]] = []   # each header field: its line and any folded continuations
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    kept = [lines[0]]
    for field in fields:
        name, _, value = field[0].partition(b":")
        if name.strip().lower() == b"set-cookie" and _drops(b" ".join([value, *field[1:]]), domain, access_too):
            continue
        kept.extend(field)
    return None if len(kept) == len(lines) else b"\r\n".join(kept)
