"""The relay's own answers to visitors: fault pages (HTML, or the seed's JSON error format;
``errors.wants_json`` picks, ``errors.BY_STATUS`` names the code of a bare status)."""

from __future__ import annotations

import html
import json

from ..errors import code_for, wants_json
from .metrics import CODE_REASONS

REASONS = {
    101: "Switching Protocols", 200: "OK", 302: "Found", 400: "Bad Request", 401: "Unauthorized",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    421: "Misdirected Request", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}


class Page(bytes):
    """A relay page: the bytes of a complete response, and ``reason``, why the relay answered
    instead of the local app (``metrics.REASONS``: the refusals the relay counts)."""

    reason: str = "bad_request"


def response(status: int, message: str, accept: str | None = None, title: str | None = None,
             code: str | None = None, head_only: bool = False, extra_headers: tuple = (),
             why: str | None = None) -> Page:
    """A complete HTTP/1.1 response that closes the connection; ``why``: its ``Page.reason``
    (default: from ``code``)."""
    code = code or code_for(status)
    reason = REASONS.get(status, "Error")
    if wants_json(accept):
        body = json.dumps({"error": True, "message": message, "code": code})
        ctype = "application/json"
    else:
        title = title or f"{status} {reason}"
        body = (
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title>"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"></head>\n"
            f"<body><h1>{html.escape(title)}</h1>\n<p>{html.escape(message)}</p>\n"
            "<hr><p><small>InTunnel relay</small></p></body></html>\n")
        ctype = "text/html; charset=utf-8"
    data = body.encode("utf-8")
    headers = [
        f"HTTP/1.1 {status} {reason}",
        f"Content-Type: {ctype}",
        f"Content-Length: {len(data)}",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
        "Connection: close",
        *extra_headers,
    ]
    page = Page(("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else data))
    page.reason = why or CODE_REASONS.get(code, "bad_request")
    return page


def tunnel_offline(subdomain: str, accept: str | None, head_only: bool = False) -> bytes:
    return response(503, f"The tunnel '{subdomain}' is offline: no client is connected right now. "
                    "Start it with \"intunnel http PORT\" and reload this page.", accept,
                    title=f"Tunnel {subdomain} is offline", code="TUNNEL_OFFLINE",
                    head_only=head_only, extra_headers=("Retry-After: 5",))


def unknown_tunnel(host: str, accept: str | None, head_only: bool = False) -> bytes:
    return response(404, f"There is no tunnel at {host}.", accept, title="Tunnel not found",
                    code="NOT_FOUND", head_only=head_only)


def local_refused(subdomain: str, port: int, accept: str | None, head_only: bool = False) -> bytes:
    where = f"port {port}" if port else "its local port"
    return response(502, f"The tunnel '{subdomain}' is connected, but nothing answered on {where} "
                    "of the client's machine (connection refused). Start the local app.", accept,
                    title=f"Local app on {where} is not responding", code="BAD_GATEWAY",
                    head_only=head_only, why="local_refused")


def upstream_timeout(subdomain: str, seconds: float, accept: str | None, head_only: bool = False) -> bytes:
    return response(504, f"The local app behind '{subdomain}' did not answer within {seconds:g} seconds.",
                    accept, title="Local app timed out", code="GATEWAY_TIMEOUT", head_only=head_only)


def auth_required(subdomain: str, accept: str | None, head_only: bool = False) -> bytes:
    """401 for a tunnel whose access policy asks for a password (the realm names the subdomain)."""
    return response(401, "This tunnel is protected by a password. Sign in with the user name and "
                    "password its owner gave you.", accept, title="Password required", code="UNAUTHORIZED",
                    head_only=head_only, why="access_challenge",
                    extra_headers=(f'WWW-Authenticate: Basic realm="{subdomain}", charset="UTF-8"',))


def access_forbidden(accept: str | None, head_only: bool = False) -> bytes:
    """403 for a visitor address the tunnel's access policy does not admit."""
    return response(403, "Visitors from your network address may not open this tunnel.", accept,
                    title="Access denied", code="FORBIDDEN", head_only=head_only, why="access_forbidden")


def access_throttled(retry_after: int, accept: str | None, head_only: bool = False) -> bytes:
    """429: too many wrong passwords from this address, or for this tunnel (relay_access_max_failures)."""
    return response(429, f"Too many wrong passwords; try again in {retry_after} seconds.", accept,
                    title="Too many attempts", code="RATE_LIMITED", head_only=head_only, why="access_throttled",
                    extra_headers=(f"Retry-After: {retry_after}",))


def access_busy(accept: str | None, head_only: bool = False) -> bytes:
    """429: too many password checks under way on this relay (relay_access_max_pending)."""
    return response(429, "Too many sign-ins are being checked right now; try again in a moment.", accept,
                    title="Try again shortly", code="RATE_LIMITED", head_only=head_only, why="access_busy",
                    extra_headers=("Retry-After: 1",))


def login_required(login_url: str, accept: str | None, head_only: bool, redirect: bool) -> bytes:
    """Members only, nobody logged in: a browser's GET goes to the web app's login (302); anything
    else (a POST's body would be lost on the way, a script can't log in) gets 401 saying where."""
    if redirect:
        return response(302, f"Log in to open this tunnel: {login_url}", accept, title="Log in to continue",
                        code="UNAUTHORIZED", head_only=head_only, why="access_login",
                        extra_headers=(f"Location: {login_url}",))
    return response(401, f"This tunnel is open to members only. Log in in a browser at {login_url}",
                    accept, title="Members only", code="UNAUTHORIZED", head_only=head_only, why="access_login")


def not_member(accept: str | None, head_only: bool = False) -> bytes:
    """Members only: logged in, but as an account the tunnel's rule does not admit."""
    return response(403, "Your account may not open this tunnel. Ask the person who shared it with you "
                    "to add you, or log in as someone else.", accept, title="Access denied",
                    code="FORBIDDEN", head_only=head_only, why="access_not_member")


def signed_in(target: str, set_cookie: str) -> bytes:
    """A login ticket redeemed: the access cookie, and on to where the visitor was going."""
    return response(302, "Signed in.", None, title="Signed in", code="FOUND", why="access_ticket",
                    extra_headers=(f"Location: {target}", set_cookie, "Referrer-Policy: no-referrer"))


def ticket_refused(login_url: str, accept: str | None, head_only: bool = False) -> bytes:
    """A ticket that was used already, has expired, or is another tunnel's."""
    return response(403, f"This sign-in link has expired or was used already. Start again: {login_url}",
                    accept, title="Sign-in link expired", code="FORBIDDEN", head_only=head_only,
                    why="access_ticket_refused")


def json_response(status: int, payload: dict) -> bytes:
    data = json.dumps(payload).encode()
    return (f"HTTP/1.1 {status} {REASONS.get(status, 'OK')}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
            ).encode() + data
