"""The web app factory: ``create_app(settings) -> bottle.Bottle``.

Per request, in this order (before-request hooks):
  1. the worker thread's database connection is made ready (see ThreadConnections);
  2. for ``/api/*``: the caller is identified (user, or client address before
     login) and counted against the rate limits (429 with Retry-After);
  3. a body larger than ``api_max_body`` is refused with 413 before it is read;
  4. a state-changing request from another site's page is refused (403, see auth).
Every error, whether raised by our code (AppError), by Bottle (404, 405) or
unexpected (500), is rendered once by ``errors_render`` in the client's format.
Every response gets the security headers, ``X-RateLimit-*`` for the API, and one
access-log line (no query string, no credentials).

Pages: if ``intunnel/web/pages.py`` exists, ``pages.install(app, settings)`` runs
last, so the dashboard can add its routes and restyle ``GET /login`` and the
HTML error page (``app.intunnel.error_page``).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import re
import threading
import time
from urllib.parse import quote

import bottle

from .. import __version__, clientzip
from ..errors import AppError, InternalError, PayloadTooLarge, RateLimited
from ..models import SQLITE_PRAGMAS, database, open_database
from ..ratelimit import Clock
from . import api, auth, errors_render, login, member_access
from .metrics import RATE_LIMITED_KEY, WebMetrics
from .state import ENVIRON_KEY, WebState

log = logging.getLogger("intunnel.web")
access_log = logging.getLogger("intunnel.web.access")

# No inline script or style anywhere: the dashboard ships its CSS/JS as files.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data:; object-src 'none'; "
                           "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("X-Frame-Options", "DENY"),
)
REGENERATE_PATH = re.compile(r"^/api/tunnels/[^/]+/regenerate-token$")
_RATE_KEY = "intunnel.ratelimit"


class IntunnelApp(bottle.Bottle):
    """Bottle plus what every response needs: security headers, rate headers, access log."""

    intunnel: WebState
    metrics: WebMetrics | None = None

    def wsgi(self, environ, start_response):
        started = time.perf_counter()
        raw_path = environ.get("PATH_INFO", "")
        seen = {}

        def start(status, headers, exc_info=None):
            present = {name.lower() for name, _ in headers}
            for name, value in SECURITY_HEADERS:
                if name.lower() not in present:
                    headers.append((name, value))
            if "cache-control" not in present and not raw_path.startswith("/static/"):
                headers.append(("Cache-Control", "no-store"))
            decision = environ.get(_RATE_KEY)
            if decision is not None:
                headers.extend((
                    ("X-RateLimit-Limit", str(decision.limit)),
                    ("X-RateLimit-Remaining", str(decision.remaining)),
                    ("X-RateLimit-Reset", str(math.ceil(decision.reset_at))),
                ))
            seen["status"] = status
            seen["length"] = next((v for n, v in headers if n.lower() == "content-length"), "-")
            return start_response(status, headers, exc_info)

        try:
            return super().wsgi(environ, start)
        finally:
            elapsed = time.perf_counter() - started
            if self.metrics is not None:
                self.metrics.observe(self, environ, seen.get("status", ""), elapsed)
            access_log.info("%s %s %s %s %s %.1fms user=%s", auth.client_address(environ),
                            environ.get("REQUEST_METHOD", "-"), quote(raw_path, safe="/:@!$&'()*+,;=-._~"),
                            seen.get("status", "-")[:3], seen.get("length", "-"),
                            elapsed * 1000, environ.get("intunnel.user_id", "-"))

    def default_error_handler(self, res: bottle.HTTPError):
        """Bottle's own errors (no route, wrong method, a crash in a hook) in our format."""
        if res.status_code >= 500 and res.traceback:
            log.error("unhandled error in %s %s", bottle.request.method, bottle.request.path)
        rendered = errors_render.error_response(errors_render.from_bottle_error(res))
        for name, value in rendered.headerlist:
            bottle.response.set_header(name, value)
        return rendered.body


def render_app_errors(callback):
    """Route plugin: an AppError becomes its response; anything else a logged 500."""
    def wrapper(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except bottle.HTTPResponse:
            raise
        except AppError as err:
            return errors_render.error_response(err)
        except Exception:
            log.exception("unhandled error in %s %s", bottle.request.method, bottle.request.path)
            return errors_render.error_response(InternalError())
    return wrapper


def _rate_limit(state: WebState, environ: dict) -> None:
    """Count this /api request for its caller; raise RateLimited when over a limit."""
    user = auth.current_user()
    key = f"user:{user.id}" if user is not None else f"addr:{auth.client_address(environ)}"
    method = environ.get("REQUEST_METHOD", "GET")
    now = state.clock()
    limit = "write"
    if method in auth.SAFE_METHODS:
        decision, limit = state.get_limiter.hit(key), "get"
    elif method == "POST" and REGENERATE_PATH.match(environ.get("PATH_INFO", "")):
        decision, limit = state.regenerate_limiter.peek(key), "regenerate"
        if decision.allowed:
            write = state.write_limiter.hit(key)
            if write.allowed:
                decision = state.regenerate_limiter.hit(key)
            else:
                decision, limit = write, "write"
            if decision.allowed and write.remaining < decision.remaining:
                decision = write
    else:
        decision = state.write_limiter.hit(key)
    environ[_RATE_KEY] = decision
    if not decision.allowed:
        environ[RATE_LIMITED_KEY] = limit
        raise RateLimited(retry_after=decision.retry_after(now))


class ThreadConnections:
    """One database connection per worker thread, kept between requests.

    Opening a connection costs about 1 ms (pragmas, then SQLite parsing the
    schema at the first query): most of a small API request.  So each server
    thread keeps its connection; it is reopened when the database file was
    replaced (``intunnel-admin restore``: a new inode) and closed after a
    request that left a transaction open or failed.
    """

    def __init__(self, path):
        self.path = None if path is None else str(path)  # None: not a file (PostgreSQL)
        self.local = threading.local()

    def _file_identity(self):
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def ensure(self) -> None:
        identity = self._file_identity()
        if not database.is_closed() and getattr(self.local, "identity", None) != identity:
            database.close()
        if database.is_closed():
            database.connect()
            self.local.identity = identity

    def release(self) -> None:
        if database.is_closed():
            return
        if database.in_transaction():
            # A handler left a transaction open (a bug): drop it with the connection.
            database.obj._state.transactions.clear()
            with contextlib.suppress(Exception):
                database.rollback()
            database.close()
        elif bottle.response.status_code >= 500:
            database.close()  # start the next request from a clean connection


class SqliteWriters:
    """The web app's write requests on SQLite take turns on a lock of the process's own.

    SQLite lets one writer in at a time, and one that finds the file locked sleeps in its
    busy handler, in steps of 1, 2, 5 ... up to 100 ms, however soon the lock is free: with
    8 clients writing, those sleeps were the API's p99 (60-90 ms for POST/DELETE
    /api/tunnels, bench/RESULTS.md).  Queued on a Python lock a request waits only as long
    as the writes in front of it.  The body is read before the lock is taken (a slow
    client holds up nobody), and a wait longer than SQLite's own busy_timeout goes ahead
    unqueued, to SQLite's handler as before.  Other processes (the relay) are unaffected.
    """

    KEY = "intunnel.sqlite_writer"
    WAIT = SQLITE_PRAGMAS["busy_timeout"] / 1000

    def __init__(self):
        self.lock = threading.Lock()

    def enter(self, environ) -> None:
        if environ.get("REQUEST_METHOD") in auth.SAFE_METHODS:
            return
        bottle.request.body  # read (and kept by Bottle) now, outside the lock
        if self.lock.acquire(timeout=self.WAIT):
            environ[self.KEY] = True

    def leave(self, environ) -> None:
        if environ.pop(self.KEY, False):
            self.lock.release()


def create_app(settings, clock: Clock | None = None, registry=None) -> IntunnelApp:
    """Build the web app on ``settings`` (database migrated); ``clock`` drives rate limits.

    Its metrics go to ``registry`` (default: a new one, ``app.metrics.registry``)."""
    open_database(settings)
    connections = ThreadConnections(settings.db_path if settings.db_backend == "sqlite" else None)
    writers = SqliteWriters() if settings.db_backend == "sqlite" else None
    state = WebState.build(settings, clock or time.time)
    app = IntunnelApp()
    app.intunnel = state
    app.metrics = WebMetrics(settings, registry)
    app.metrics.instrument(database.obj)

    @app.hook("before_request")
    def before_request():
        environ = bottle.request.environ
        environ[ENVIRON_KEY] = state
        connections.ensure()
        try:
            if errors_render.is_api_path(environ.get("PATH_INFO", "")):
                _rate_limit(state, environ)
            if bottle.request.content_length > settings.api_max_body:
                raise PayloadTooLarge(f"Request body larger than {settings.api_max_body} bytes")
            auth.check_origin(environ, settings)
        except AppError as err:
            raise errors_render.error_response(err, environ) from None
        if writers is not None:
            writers.enter(environ)   # last: every refusal above comes first, unqueued

    @app.hook("after_request")
    def after_request():
        try:
            connections.release()
        finally:
            if writers is not None:
                writers.leave(bottle.request.environ)

    app.install(render_app_errors)

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.route("/_intunnel/<path:re:agent|data>", method="ANY")
    def not_the_relay(path):
        """A client given the web app's address (the dashboard's port, the natural mistake)
        dials the agent's paths here: say where the relay is (its client prints it and exits)."""
        return bottle.HTTPResponse(json.dumps({
            "error": True, "code": "NOT_THE_RELAY", "relay_url": settings.relay_url,
            "message": f"this is the InTunnel web app, not the relay; the relay is at {settings.relay_url}"}),
            status=421, headers={"Content-Type": "application/json", "Cache-Control": "no-store"})

    @app.get(clientzip.URL_PATH)
    def client_zipapp():
        """The client as one file for a plain ``python3`` (built into the data dir if missing)."""
        try:
            path, _ = clientzip.ensure(settings.data_dir)
        except OSError as e:
            return bottle.HTTPResponse(f"The client download is not available on this server: it could not be "
                                       f"built ({e.strerror or e}). Install it with: pip install intunnel\n",
                                       status=404, headers={"Content-Type": "text/plain; charset=utf-8"})
        # ETag and Last-Modified from the file: a cache revalidates (no-cache) and gets a 304, and
        # never keeps an old release's client past an upgrade.
        response = bottle.static_file(path.name, root=str(path.parent), mimetype="application/zip",
                                      download="intunnel.pyz")
        response.set_header("Cache-Control", "no-cache")
        response.set_header("X-Content-Type-Options", "nosniff")
        response.set_header("X-Intunnel-Version", __version__)
        return response

    login.install(app)
    member_access.install(app)
    api.install(app, settings)
    _install_pages(app, settings)
    return app


def _install_pages(app: bottle.Bottle, settings) -> None:
    try:
        pages = importlib.import_module("intunnel.web.pages")
    except ModuleNotFoundError as e:
        if e.name != "intunnel.web.pages":
            raise
        return
    pages.install(app, settings)
