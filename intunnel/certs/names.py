"""Which hostnames an owner may add to a tunnel (pure).

``normalize(value, domain)`` returns the hostname as stored and compared: lower case, ASCII
(an internationalised name in its IDNA ``xn--`` form), no trailing dot; or raises
``ValidationError`` naming the field ``hostname``.  Rules: at least two labels, each 1-63 letters,
digits and inner hyphens (RFC 1123), at most 253 characters, a top-level label that is not all
digits (no IP addresses), and never the appliance's own ``<domain>`` or a name under it (those
are the tunnels' subdomains).
"""

from __future__ import annotations

import re

from ..errors import ValidationError

MAX_LENGTH = 253
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def normalize(value: object, domain: str) -> str:
    """The canonical form of ``value``, or ValidationError (field ``hostname``)."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("hostname must be a host name such as app.example.org", field="hostname")
    name = value.strip().rstrip(".").lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValidationError("hostname is not a valid internationalised name", field="hostname") from None
    labels = name.split(".")
    if len(name) > MAX_LENGTH or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise ValidationError("hostname must be a host name such as app.example.org (letters, digits and "
                              "hyphens, dot-separated labels of at most 63 characters)", field="hostname")
    if labels[-1].isdigit():
        raise ValidationError("hostname must be a name, not an IP address", field="hostname")
    own = domain.lower().rstrip(".")
    if name == own or name.endswith("." + own):
        raise ValidationError(f"hostname can't be {own} or a name under it: those are the tunnels' own "
                              "addresses", field="hostname")
    return name
