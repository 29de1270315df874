"""Per-app state shared by the web modules: settings, clock, limiters, hooks.

One ``WebState`` per ``create_app``; it is reachable as ``app.intunnel`` and,
during a request, through ``current()``.  Rate-limit and login-throttle counters
live here: in the memory of the web process on SQLite (a restart forgets them),
in the database on PostgreSQL, shared by every web process (``sharedlimits``).
The not-yet-shown secrets stay in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import bottle

from ..ratelimit import Clock, RateLimiter
from ..sharedlimits import limiter_for
from .flash import MAX_AGE as FLASH_MAX_AGE
from .onetime import OneTimeSecrets

ENVIRON_KEY = "intunnel.state"

# Failed logins are counted over this window (the login_max_failures setting's help says 15 min).
LOGIN_FAILURE_WINDOW = 15 * 60
# One client address may fail login_max_failures times on each of this many
# accounts (typos on a shared office address) before the address is stopped.
LOGIN_ADDRESS_ACCOUNTS = 4


@dataclass
class WebState:
    settings: object
    clock: Clock
    # RateLimiter, or DatabaseRateLimiter on PostgreSQL (the same hit/peek/reset)
    get_limiter: RateLimiter
    write_limiter: RateLimiter
    regenerate_limiter: RateLimiter
    login_failures_by_account_address: RateLimiter
    login_failures_by_address: RateLimiter
    one_time_secrets: OneTimeSecrets
    # (status, message) -> HTML text for browser-facing errors; the dashboard may replace it.
    error_page: Callable[[int, str], str] | None = field(default=None)

    @classmethod
    def build(cls, settings, clock: Clock) -> "WebState":
        def limiter(scope: str, limit: int, period: float):
            return limiter_for(settings, scope, limit, period, clock)
        return cls(
            settings=settings,
            clock=clock,
            get_limiter=limiter("api_get", settings.rate_limit_get, 60),
            write_limiter=limiter("api_write", settings.rate_limit_write, 60),
            regenerate_limiter=limiter("api_regenerate", settings.rate_limit_regenerate, 3600),
            login_failures_by_account_address=limiter("login_account_address", settings.login_max_failures,
                                                      LOGIN_FAILURE_WINDOW),
            login_failures_by_address=limiter("login_address", settings.login_max_failures * LOGIN_ADDRESS_ACCOUNTS,
                                              LOGIN_FAILURE_WINDOW),
            one_time_secrets=OneTimeSecrets(FLASH_MAX_AGE, clock),
        )


def current() -> WebState:
    """The state of the app serving the current request."""
    return bottle.request.environ[ENVIRON_KEY]
