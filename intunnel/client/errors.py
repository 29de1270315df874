"""Why a client session failed, and what the user can do about it.

The tree (``run()`` in agent.py decides on these):

- ``TokenRefused``: the relay refused or revoked the token, or refused the session's access
  rules: final (exit 1), with ``advice_for(code)``.
- ``WrongServer``: the URL reaches something that is not the relay: final (exit 2), the
  message says what to type instead.
- ``WrongCommand``: the token is a TCP tunnel's and the command `intunnel http`, or the other
  way round: final (exit 2), the message names the command to use.
- ``NeedPort``: no PORT was given and the relay does not say the tunnel's stored local port
  (an older relay): final (exit 2).
- ``HandshakeFailed``: the relay answered, but not with an upgrade (restarting, a proxy's
  error page): retried.
- ``OSError``, ``ConnClosed``, ``ProtocolError``, ``asyncio.TimeoutError``: retried;
  ``describe`` words them.
"""

from __future__ import annotations

import ssl

from ..wire import protocol as p
from ..wire.netio import ConnClosed


class TokenRefused(Exception):
    """The relay refused or revoked the token: retrying won't help.  ``code`` says why."""

    def __init__(self, message: str, code: str = ""):
        super().__init__(message)
        self.code = code


class HandshakeFailed(Exception):
    """The relay answered, but not with an upgrade (wrong URL, restarting...): retry later."""


class WrongServer(Exception):
    """The URL reaches something that is not the relay (the web app, the other scheme): the
    message says what to type instead.  Final, exit status 2."""


class WrongCommand(Exception):
    """The tunnel is of the other protocol than the command serves (http / tcp).  Final, exit 2."""


class NeedPort(Exception):
    """No local port: none was given and the relay's Welcome has none (an older relay).  Final, exit 2."""


# An older relay ignores a Hello's access rules: the client must not serve without them.
ACCESS_UNSUPPORTED = "ACCESS_UNSUPPORTED"
NOT_THE_RELAY = "NOT_THE_RELAY"  # the web app's answer on the agent's paths (its relay_url says where)

# What the user can do about each reason the relay gives for a final refusal.
_CURRENT_TOKEN = "get the tunnel's current token from the dashboard and run the command again"
ADVICE = {
    p.REVOKED_TOKEN: _CURRENT_TOKEN,
    "UNAUTHORIZED": _CURRENT_TOKEN,
    p.REVOKED_DELETED: "the tunnel no longer exists; create it again in the dashboard and use its token",
    p.REVOKED_DISCONNECTED: "an administrator disconnected this tunnel; its token is unchanged, "
                            "so run the command again when you may reconnect",
    p.REVOKED_DISABLED: "the account that owns this tunnel is disabled; ask an administrator to enable it",
    p.REVOKED_REPLACED: "another client now serves this tunnel with the same token; "
                        "stop that one (or run this command again to take the tunnel back)",
    p.ACCESS_INVALID: "fix the --basic-auth, --allow-ip and --deny-ip options and run the command again",
    ACCESS_UNSUPPORTED: "upgrade the server, or run without --basic-auth, --allow-ip and --deny-ip",
}


def advice_for(code: str) -> str:
    return ADVICE.get(code, "check the tunnel's token in the dashboard and run the command again")


def describe(exc: BaseException) -> str:
    """A failure in a few words for a "cannot connect"/"disconnected" line."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({exc.verify_message}); use --insecure only for a self-signed test server"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    if isinstance(exc, ConnClosed):
        return "connection closed"
    return str(exc) or type(exc).__name__
