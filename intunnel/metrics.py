"""Prometheus metrics plumbing shared by the web app and the relay (``prometheus_client``).

Each process builds its own ``CollectorRegistry`` (tests build several apps and relays in
one process; the library's global registry would mix them) and serves it on a listener of
its own, bound to loopback by default (``web_metrics_listen``, ``relay_metrics_listen``),
never on a public port: nginx has no route to it, and the public ports answer ``/metrics``
like any other path (the web app: 404; a tunnel host: the user's own app).

    registry = new_registry()
    instrument_queries(db, registry)        # intunnel_db_query_seconds{statement}
    status, headers, body = exposition(registry, "GET", "/metrics")

Only ``GET``/``HEAD /metrics`` is answered (anything else: 404/405); a metrics body never
holds a secret: no label carries a token, an address, a user or a tunnel name.
"""

from __future__ import annotations

import time
import weakref

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, disable_created_metrics,
                               generate_latest)

METRICS_PATH = "/metrics"

# Seconds; SQLite answers most queries in well under a millisecond, PostgreSQL over a network in a few.
DB_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
STATEMENTS = ("select", "insert", "update", "delete")

# No ``*_created`` series next to every counter and histogram: half the series, nothing an
# operator's queries use (rate() and increase() handle restarts by themselves).
disable_created_metrics()

_db_histograms: "weakref.WeakKeyDictionary[CollectorRegistry, Histogram]" = weakref.WeakKeyDictionary()


def new_registry() -> CollectorRegistry:
    """A registry of this process's own (not prometheus_client's global one)."""
    return CollectorRegistry(auto_describe=True)


def db_histogram(registry: CollectorRegistry) -> Histogram:
    """``intunnel_db_query_seconds`` in ``registry`` (one per registry, however many databases)."""
    hist = _db_histograms.get(registry)
    if hist is None:
        hist = Histogram("intunnel_db_query_seconds",
                         "Time the database took to run one SQL statement, by statement kind.",
                         ["statement"], registry=registry, buckets=DB_BUCKETS)
        _db_histograms[registry] = hist
    return hist


def instrument_queries(db, registry: CollectorRegistry) -> None:
    """Time every statement ``db`` (a peewee Database) runs into ``registry``.

    Wraps the instance's ``execute_sql`` (every peewee query goes through it): two clock
    reads and one histogram observation, about 1-2 µs against the tens of µs a query costs.
    Calling it again for the same database only re-points it at ``registry``.
    """
    hist = db_histogram(registry)
    children = {kind: hist.labels(kind) for kind in STATEMENTS + ("other",)}
    other = children["other"]
    execute = type(db).execute_sql   # the class's own, never an earlier wrapper
    clock = time.perf_counter

    def execute_sql(sql, *args, **kwargs):
        started = clock()
        try:
            return execute(db, sql, *args, **kwargs)
        finally:
            elapsed = clock() - started
            children.get(sql[:6].lower(), other).observe(elapsed)

    db.execute_sql = execute_sql


def exposition(registry: CollectorRegistry, method: str, path: str) -> tuple[str, list, bytes]:
    """The answer to one request on a metrics listener: (status line, headers, body)."""
    path = path.split("?", 1)[0]
    if path != METRICS_PATH:
        return _plain("404 Not Found", b"Not found: metrics are at /metrics\n")
    if method not in ("GET", "HEAD"):
        status, headers, body = _plain("405 Method Not Allowed", b"Use GET\n")
        return status, headers + [("Allow", "GET, HEAD")], body
    body = generate_latest(registry)
    headers = [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body))),
               ("Cache-Control", "no-store")]
    return "200 OK", headers, (b"" if method == "HEAD" else body)


def _plain(status: str, body: bytes) -> tuple[str, list, bytes]:
    return status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))], body


def wsgi_app(registry: CollectorRegistry):
    """A WSGI app answering ``/metrics`` from ``registry`` (the web app's metrics listener)."""
    def app(environ, start_response):
        method = environ.get("REQUEST_METHOD", "GET")
        status, headers, body = exposition(registry, method, environ.get("PATH_INFO", ""))
        start_response(status, headers)
        return [body]
    return app
