"""Who is making this request: login sessions, API tokens, CSRF checks.

Credentials
    * Session cookie ``__Host-intunnel_session`` under https (HttpOnly,
      SameSite=Lax, Secure, Path=/, no Domain), ``intunnel_session`` over http.
      The cookie holds a random id; the database keeps only its SHA-256
      (``Session.id_hash``) with an expiry.  Every login gets a new id
      (``start_session``), logout deletes the row (``end_session``).  A request
      with more than one session cookie (one planted by a tunnel's app, see
      ``cookies``) is not logged in; login and logout delete planted copies.
    * ``Authorization: Bearer itk_...`` personal API tokens (``ApiToken``, stored
      as SHA-256).  When an Authorization header is present it is the only
      credential looked at: a malformed or revoked token is 401 even if a valid
      cookie came along.
    A disabled user's sessions and tokens stop working at the next request.

Use from a route (the result is cached for the request, one query at most):
    user = current_user()        # User or None
    user = require_user()        # User, or raises Unauthorized (401)

CSRF, in two layers:
    1. Automatic, in the app's before-request hook (``check_origin``): a
       state-changing request (POST/PUT/PATCH/DELETE) not authenticated by a
       bearer token whose Origin (or, lacking it, Referer) names another site is
       refused with 403 FORBIDDEN.  Requests with neither header pass (curl,
       scripts); browsers always send Origin on a cross-site POST.
    2. For HTML forms (the dashboard): put the session's token in every form
           <input type="hidden" name="csrf_token" value="{{csrf_token()}}">
       and start each POST handler with ``check_csrf_form()``, which raises
       Forbidden (403) unless the posted ``csrf_token`` matches the session's.
       ``csrf_token()`` is None for anonymous visitors (no session, no form).

Login failures are throttled per (account, client address) and per address
(``LoginThrottle``; counters in memory of the web process on SQLite, shared by
every web process in the database on PostgreSQL), so guesses from elsewhere
never lock an owner out of their own address.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

import bottle

from .. import accounts, security
from ..errors import Forbidden, RateLimited, Unauthorized
from ..models import ApiToken, Session, User
from ..timeutil import utcnow
from . import cookies
from . import state as web_state
from ..sqlcache import cached_sql

SESSION_COOKIE = "intunnel_session"  # the base name; see session_cookie_name()
CSRF_FIELD = "csrf_token"
# last_used_at of an API token is written at most this often (seconds), so a busy
# script does not turn every read into a database write.
TOKEN_TOUCH_INTERVAL = 60
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_ENV_KEY = "intunnel.auth"
_MAX_CREDENTIAL_LENGTH = 256


@dataclass(frozen=True)
class Auth:
    """The outcome of authenticating one request."""
    user: User | None = None
    method: str | None = None          # "session", "token" or None
    session: Session | None = None
    api_token: ApiToken | None = None
    error: str | None = None           # why a presented credential was refused


ANONYMOUS = Auth()


def client_address(environ: dict | None = None) -> str:
    """The peer address (rewritten from X-Forwarded-For only for a trusted proxy, by waitress's
    proxy-header middleware under either server: web/serve.py)."""
    environ = bottle.request.environ if environ is None else environ
    return environ.get("REMOTE_ADDR") or "unknown"


def session_cookie_name(settings) -> str:
    return cookies.name(SESSION_COOKIE, settings.cookie_secure)


def _session_cookie(environ: dict) -> str | None:
    """The session cookie's value; None without one, or with more than one."""
    return cookies.single(environ, SESSION_COOKIE, web_state.current().settings.cookie_secure)


# --- resolving the credential -------------------------------------------------

def authenticate_request() -> Auth:
    environ = bottle.request.environ
    cached = environ.get(_ENV_KEY)
    if cached is None:
        header = environ.get("HTTP_AUTHORIZATION")
        if header is not None:
            cached = _from_bearer(header)
        else:
            cookie = _session_cookie(environ)
            cached = _from_session_cookie(cookie) if cookie else ANONYMOUS
        environ[_ENV_KEY] = cached
        if cached.user is not None:
            environ["intunnel.user_id"] = cached.user.id  # for the access log
    return cached


def _user_with(hash_column, owner_column, extra_columns: tuple, secret: str, name: str) -> User | None:
    """The user owning the credential row whose ``hash_column`` is sha256(secret),
    carrying ``extra_columns`` of that row as attributes.  One query, its SQL cached."""
    digest = security.sha256_hex(secret)
    sql = cached_sql(name, lambda: (User.select(User, *extra_columns)
                                    .join(hash_column.model, on=(owner_column == User.id))
                                    .where(hash_column == digest)), [digest])
    return next(iter(User.raw(sql, digest)), None)


def _from_session_cookie(cookie: str) -> Auth:
    if len(cookie) > _MAX_CREDENTIAL_LENGTH:
        return ANONYMOUS
    user = _user_with(Session.id_hash, Session.user, (Session.csrf_token.alias("session_csrf"),
                                                      Session.expires_at.alias("session_expires")),
                      cookie, "session user")
    if user is None or user.disabled:
        return ANONYMOUS
    expires_at = Session.expires_at.python_value(user.session_expires)
    if expires_at <= utcnow():
        return ANONYMOUS
    session = Session(id_hash=security.sha256_hex(cookie), user=user, csrf_token=user.session_csrf,
                      expires_at=expires_at)
    return Auth(user=user, method="session", session=session)


def _from_bearer(header: str) -> Auth:
    scheme, _, secret = header.strip().partition(" ")
    secret = secret.strip()
    refused = Auth(error="Invalid or revoked API token")
    if (scheme.lower() != "bearer" or not secret.startswith(security.API_TOKEN_PREFIX)
            or len(secret) > _MAX_CREDENTIAL_LENGTH):
        return refused
    user = _user_with(ApiToken.token_hash, ApiToken.user, (ApiToken.id.alias("api_token_id"),
                                                           ApiToken.last_used_at.alias("api_token_last_used")),
                      secret, "api token user")
    if user is None or user.disabled:
        return refused
    now = utcnow()
    last_used = ApiToken.last_used_at.python_value(user.api_token_last_used)
    if last_used is None or (now - last_used).total_seconds() >= TOKEN_TOUCH_INTERVAL:
        ApiToken.update(last_used_at=now).where(ApiToken.id == user.api_token_id).execute()
    return Auth(user=user, method="token", api_token=ApiToken(id=user.api_token_id, user=user))


def current_user() -> User | None:
    return authenticate_request().user


def require_user() -> User:
    auth = authenticate_request()
    if auth.user is None:
        raise Unauthorized(auth.error)
    return auth.user


# --- sessions -------------------------------------------------------------------

def start_session(user: User) -> Session:
    """Log ``user`` in: a new session id (never reuse one), cookie set on the response."""
    settings = web_state.current().settings
    end_session(clear_cookie=False)
    now = utcnow()
    Session.delete().where(Session.expires_at <= now).execute()  # housekeeping
    session_id = security.new_session_id()
    session = Session.create(id_hash=security.sha256_hex(session_id), user=user,
                             csrf_token=security.new_session_id(), created_at=now,
                             expires_at=now + timedelta(seconds=settings.session_lifetime))
    # First the cookie (scripts that read one Set-Cookie read this one), then the
    # deletions of planted copies.
    bottle.response.add_header("Set-Cookie", cookies.header(
        session_cookie_name(settings), session_id, secure=settings.cookie_secure,
        max_age=settings.session_lifetime))
    _delete_strays(settings)
    bottle.request.environ[_ENV_KEY] = Auth(user=user, method="session", session=session)
    bottle.request.environ["intunnel.user_id"] = user.id
    return session


def end_session(clear_cookie: bool = True) -> None:
    """Delete the current session row (if any) and, by default, the cookie."""
    cookie = _session_cookie(bottle.request.environ)
    if cookie and len(cookie) <= _MAX_CREDENTIAL_LENGTH:
        accounts.end_sessions(Session.id_hash == security.sha256_hex(cookie))
    if clear_cookie:
        settings = web_state.current().settings
        bottle.response.add_header("Set-Cookie", cookies.deletion(session_cookie_name(settings),
                                                                  secure=settings.cookie_secure))
        _delete_strays(settings)
    bottle.request.environ[_ENV_KEY] = ANONYMOUS


def _delete_strays(settings) -> None:
    for value in cookies.strays(SESSION_COOKIE, secure=settings.cookie_secure, domain=settings.domain):
        bottle.response.add_header("Set-Cookie", value)


# --- CSRF -----------------------------------------------------------------------

def csrf_token() -> str | None:
    """The current session's form token (None without a session)."""
    session = authenticate_request().session
    return session.csrf_token if session is not None else None


def check_csrf_form() -> None:
    """Raise Forbidden unless the posted ``csrf_token`` field matches the session's."""
    expected = csrf_token()
    posted = bottle.request.forms.getunicode(CSRF_FIELD) or ""
    if expected is None or not security.constant_time_equal(posted, expected):
        raise Forbidden("Invalid or missing CSRF token; reload the page and try again")


def request_origin(environ: dict) -> str | None:
    """host[:port] named by Origin, else by Referer; "null" for an opaque origin; None if neither."""
    origin = environ.get("HTTP_ORIGIN")
    if origin is None:
        origin = environ.get("HTTP_REFERER")
        if origin is None:
            return None
    if origin.strip().lower() == "null":
        return "null"
    try:
        return urlsplit(origin.strip()).netloc.lower() or "null"
    except ValueError:
        return "null"


def check_origin(environ: dict, settings) -> None:
    """Refuse (403) a state-changing request sent by another site's page."""
    if environ.get("REQUEST_METHOD", "GET") in SAFE_METHODS:
        return
    if environ.get("HTTP_AUTHORIZATION") is not None:
        return  # bearer tokens are never sent by a browser on its own
    origin = request_origin(environ)
    if origin is None:
        return
    own = {environ.get("HTTP_HOST", "").lower(), settings.domain.lower()}
    if origin not in own:
        raise Forbidden("Cross-site request refused")


# --- login throttle -------------------------------------------------------------

class LoginThrottle:
    """Failed logins per (account, client address) and per address, from the web state's counters.

    An account is one budget whichever name it is given as (email in any case,
    or username); a name no account has is its own budget, counted the same way.
    """

    def __init__(self, state: web_state.WebState):
        self.by_account_address = state.login_failures_by_account_address
        self.by_address = state.login_failures_by_address
        self.clock = state.clock

    @staticmethod
    def account_key(login: str) -> str:
        user = accounts.find_by_login(login)
        # (no account has a longer name than an email may be: the key stays small)
        return f"user:{user.id}" if user is not None else "name:" + login.strip().lower()[:254]

    def check(self, account: str, address: str) -> None:
        for limiter, key in ((self.by_account_address, f"{account} {address}"), (self.by_address, address)):
            decision = limiter.peek(key)
            if not decision.allowed:
                raise RateLimited("Too many failed logins; try again later",
                                  retry_after=decision.retry_after(self.clock()))

    def failed(self, account: str, address: str) -> None:
        self.by_account_address.hit(f"{account} {address}")
        self.by_address.hit(address)

    def succeeded(self, account: str, address: str) -> None:
        # The address counter is kept: logging into one's own account must not
        # reset the count of guesses made at others.
        self.by_account_address.reset(f"{account} {address}")
