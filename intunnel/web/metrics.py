"""The web app's Prometheus metrics and its ``/metrics`` listener (``web_metrics_listen``).

    intunnel_web_requests_total{route, method, status}   by the matched route's rule
                                                          ("/api/tunnels/<tunnel_id>"), never the raw
                                                          path; "(unmatched)" for 404/405 without a route
    intunnel_web_request_duration_seconds{route}          time to produce the response
    intunnel_web_rate_limited_total{limit}                requests refused by a rate limit:
                                                          get, write, regenerate, login (the throttle)
    intunnel_db_query_seconds{statement}                  (intunnel.metrics)
    intunnel_backup_last_success_timestamp_seconds        mtime of the newest backup in backup_dir
    intunnel_backups                                      backups kept in backup_dir

Backup age comes from here rather than a node-exporter textfile written by
``intunnel-admin backup``: a backup file under its final name exists only once it is
complete and verified (written to a temporary name, then renamed), so the newest one's
mtime *is* the last success; nothing else (node-exporter, a textfile directory, its
permissions) has to be installed or kept in step, and a backup restored or copied in by
hand counts too.  Alert on ``time() - intunnel_backup_last_success_timestamp_seconds``.

Labels are bounded: routes are the app's own rules, methods the route's, statuses what
the app answers; no user, tunnel, address or token ever becomes a label.
"""

from __future__ import annotations

import logging

import bottle
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from ..metrics import instrument_queries, new_registry, wsgi_app

log = logging.getLogger("intunnel.web")

RATE_LIMITED_KEY = "intunnel.rate_limited"   # environ: which limit refused this request
UNMATCHED = "(unmatched)"
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class WebMetrics:
    """One per ``create_app``: its registry and what the request wrapper counts."""

    def __init__(self, settings, registry=None):
        self.registry = registry if registry is not None else new_registry()
        r = self.registry
        self.requests = Counter("intunnel_web_requests", "Requests the web app answered, by route rule, "
                                "method and status.", ["route", "method", "status"], registry=r)
        self.duration = Histogram("intunnel_web_request_duration_seconds", "Time the web app took to "
                                  "answer, by route rule.", ["route"], registry=r, buckets=DURATION_BUCKETS)
        self.rate_limited = Counter("intunnel_web_rate_limited", "Requests refused by a rate limit "
                                    "or the login throttle.", ["limit"], registry=r)
        for limit in ("get", "write", "regenerate", "login"):
            self.rate_limited.labels(limit)   # present at 0 from the start: rate() needs a baseline
        r.register(BackupCollector(settings))

    def instrument(self, db) -> None:
        instrument_queries(db, self.registry)

    def observe(self, app, environ: dict, status: str, seconds: float) -> None:
        """One answered request (``status``: WSGI status line, '' if none was started)."""
        route = environ.get("bottle.route")
        if route is None:   # refused by a before-request hook (429, 413, 403): Bottle matches after them
            try:
                route = app.router.match(environ)[0]
            except bottle.HTTPError:
                pass        # no such route (404) or method (405)
        rule, method = (route.rule, route.method) if route is not None else (UNMATCHED, "-")
        self.requests.labels(rule, method, status[:3] or "-").inc()
        self.duration.labels(rule).observe(seconds)
        limited = environ.get(RATE_LIMITED_KEY)
        if limited is not None:
            self.rate_limited.labels(limited).inc()


class BackupCollector:
    """The newest backup's mtime and the number of backups, read at scrape time."""

    def __init__(self, settings):
        self.settings = settings

    def describe(self):
        return []   # the families depend on what the directory holds

    def collect(self):
        from ..admin.backup import list_backups
        try:
            found = list_backups(self.settings.backup_path)
            newest = found[0][1].stat().st_mtime if found else None
        except OSError as e:
            log.warning("metrics: cannot read the backup directory (%s)", e.strerror)
            return
        count = GaugeMetricFamily("intunnel_backups", "Backups kept in backup_dir.")
        count.add_metric([], len(found))
        yield count
        if newest is not None:
            last = GaugeMetricFamily("intunnel_backup_last_success_timestamp_seconds",
                                     "When the newest backup in backup_dir was completed (its mtime), "
                                     "Unix time; absent while there is none.")
            last.add_metric([], newest)
            yield last


def start_listener(listen_address: tuple[str, int], registry, setting: str = "web_metrics_listen"):
    """Serve ``registry`` at ``/metrics`` on ``listen_address`` with waitress in a thread.

    Returns the server (``effective_host``/``effective_port``; stop it with ``stop_listener``),
    or None when the address can't be had: metrics never keep the service from serving, so
    that is one warning naming the setting, and the service runs on without them.
    """
    import waitress
    from .serve import start_in_thread
    host, port = listen_address
    try:
        server = waitress.create_server(wsgi_app(registry), host=host, port=port, threads=1,
                                        ident="intunnel-metrics", map={})
    except OSError as e:
        log.warning("no metrics: setting %r: cannot listen on %s:%s (%s)", setting, host, port, e.strerror)
        return None
    server.intunnel_thread = start_in_thread(server)
    log.info("metrics at http://%s:%s/metrics", server.effective_host, server.effective_port)
    return server


def stop_listener(server) -> None:
    from .serve import stop_server
    stop_server(server, server.intunnel_thread)
