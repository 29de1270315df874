"""No tunnel may write the web app's cookies: ``Set-Cookie`` for the appliance's domain is dropped.

Tunnels live on subdomains of the web app's domain, so a tunnel's app could otherwise set
``intunnel_session=...; Domain=<domain>`` and log a visiting user into another account.
A cookie scoped to the tunnel's own host (no Domain, or a Domain at or below the tunnel's
host) is the app's own business and passes untouched.
"""

from __future__ import annotations


def _covers_web_app(domain_attr: str, domain: str) -> bool:
    d = domain_attr.strip().lstrip(".").lower().rstrip(".")
    return d == domain or domain.endswith("." + d)


def scrub_set_cookies(head: bytes, domain: str) -> bytes | None:
    """``head``: a response head without its blank line.  None when nothing changes, else the
    head without the ``Set-Cookie`` lines whose Domain covers the web app's ``domain``."""
    if b"set-cookie" not in head.lower():
        return None
    domain = domain.lower().rstrip(".")
    lines = head.split(b"\r\n")
    kept = [lines[0]]
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"set-cookie":
            attrs = value.decode("latin-1").split(";")[1:]
            if any(k.strip().lower() == "domain" and _covers_web_app(v, domain)
                   for k, _, v in (a.partition("=") for a in attrs)):
                continue
        kept.append(line)
    return None if len(kept) == len(lines) else b"\r\n".join(kept)
