"""GET /access?to=<tunnel URL>: the web app's half of members-only tunnels (intunnel.memberpass).

The relay sends an anonymous visitor of a members-only tunnel here.  Not logged in: the
login page, which comes back here.  Logged in and admitted by the tunnel's members rule:
a one-time ticket, and a page that moves on at once to ``<tunnel origin>/_intunnel/auth?ticket=...``,
where the relay turns it into the tunnel's access cookie.  Logged in but not admitted: 403, said here
(the visitor can log in as someone else) rather than on the tunnel's host.

``to`` must be an address of one of this InTunnel's tunnels (its public origin, then a path):
anything else is a 400, never a redirect (no open redirect through the login).
"""

from __future__ import annotations

import html
from urllib.parse import quote, urlencode, urlsplit

import bottle

from .. import access, memberpass
from ..members import Identity
from ..errors import Forbidden, NotFound, ValidationError
from ..models import Tunnel
from . import auth, login
from . import state as web_state


def tunnel_target(settings, to: str) -> tuple[Tunnel, str]:
    """(tunnel, path and query) of a tunnel URL; ValidationError / NotFound otherwise."""
    if not to or len(to) > memberpass.MAX_TARGET or any(ord(c) < 33 or ord(c) == 127 for c in to):
        raise ValidationError("to must be the address of a tunnel", field="to")
    parts = urlsplit(to)
    host = (parts.hostname or "").lower()
    suffix = "." + settings.domain
    subdomain = host[: -len(suffix)] if host.endswith(suffix) else ""
    origin = settings.tunnel_url(subdomain) if subdomain and "." not in subdomain else None
    if origin is None or not to.startswith(origin + "/") or parts.username or parts.password:
        raise ValidationError("to must be the address of a tunnel of this InTunnel", field="to")
    tunnel = Tunnel.get_or_none(Tunnel.subdomain == subdomain)
    if tunnel is None:
        raise NotFound("No such tunnel")
    return tunnel, to[len(origin):].split("#", 1)[0]


def access_page():
    state = web_state.current()
    settings = state.settings
    to = bottle.request.query.getunicode("to") or ""
    tunnel, target = tunnel_target(settings, to)
    signed_in = auth.authenticate_request()
    user, session = signed_in.user, signed_in.session
    if user is None or session is None:  # an API token is no browser login: log in
        login.see_other("/login?" + urlencode({"next": "/access?" + urlencode({"to": to})}))
    try:
        policy = access.load(tunnel.access)
    except access.PolicyError:
        policy = access.PUBLIC
    if policy.members is not None and not policy.members.admits(
            Identity(user.id, user.username, user.email), tunnel.owner_id):
        raise Forbidden(f"Your account ({user.username}) may not open {tunnel.subdomain}.{settings.domain}. "
                        "Ask the person who shared it, or log in as someone else.")
    if policy.members is None:  # not (or no longer) members-only: no ticket, which the app would see
        return _continue_page(to, f"{tunnel.subdomain}.{settings.domain}")
    ticket = memberpass.issue_ticket(session, tunnel.id, target, settings.access_ticket_ttl)
    return _continue_page(settings.tunnel_url(tunnel.subdomain) + memberpass.AUTH_PATH + "?ticket=" + quote(ticket),
                          f"{tunnel.subdomain}.{settings.domain}")


def _continue_page(url: str, host: str) -> str:
    """A page that moves on to the tunnel at once (meta refresh), not a redirect: right after the
    login form a redirect to another origin is blocked by the web app's CSP (form-action 'self'),
    which stays as strict as it is.  The link is for a browser that doesn't refresh."""
    bottle.response.content_type = "text/html; charset=utf-8"
    bottle.response.set_header("Cache-Control", "no-store")
    bottle.response.set_header("Referrer-Policy", "no-referrer")
    target = html.escape(url)
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"refresh\" content=\"0;url={target}\"><title>Continuing to {html.escape(host)}"
            f"</title></head>\n<body><p>Signed in. <a id=\"continue\" href=\"{target}\">Continue to "
            f"{html.escape(host)}</a></p></body></html>\n")


def install(app: bottle.Bottle) -> None:
    app.route("/access", "GET", access_page)
