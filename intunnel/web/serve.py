"""`intunnel web`: serve the web app with waitress; ``make_server`` for embedding.

    server = make_server(settings)        # bound and listening (port 0 works)
    thread = start_in_thread(server)      # or server.run() in the foreground
    ...
    stop_server(server, thread)

Behind nginx (``web_trust_proxy``), waitress takes the client address and scheme
from X-Forwarded-For/-Proto sent by the proxy on loopback, so rate limits and the
login throttle see real clients.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

import waitress
from waitress import wasyncore

from ..settings import load_settings, prepare_data_dir

HELP = "Run the web app (dashboard and REST API) with waitress."
log = logging.getLogger("intunnel.web")

# waitress buffers a whole request body (to a temporary file above 512 KiB)
# before the app sees it; the app refuses bodies above api_max_body with a JSON
# 413.  Only bodies above this ceiling get waitress's own plain-text 413.
BODY_CEILING = 16 << 20


def add_arguments(parser) -> None:
    from ..cli import add_config_argument
    add_config_argument(parser)


def make_server(settings, app=None, **adjustments):
    """A waitress server for ``app`` (default: ``create_app(settings)``) on ``web_listen``."""
    if app is None:
        from .app import create_app
        app = create_app(settings)
    host, port = settings.web_address
    options = dict(host=host, port=port, threads=settings.web_threads, ident="intunnel",
                   max_request_body_size=max(settings.api_max_body, BODY_CEILING),
                   clear_untrusted_proxy_headers=True)
    if settings.web_trust_proxy:
        # The proxy (nginx) reaches us over loopback, on the family we listen on.
        options.update(trusted_proxy="::1" if ":" in host else "127.0.0.1",
                       trusted_proxy_headers={"x-forwarded-for", "x-forwarded-proto"})
    options.update(adjustments)
    server = waitress.create_server(app, **options)
    log.info("web app listening on http://%s:%s", server.effective_host, server.effective_port)
    return server


# How often a server run by start_in_thread looks at its stop flag (seconds).
STOP_POLL_INTERVAL = 0.05


def start_in_thread(server) -> threading.Thread:
    """Serve in a daemon thread until ``stop_server``; the loop checks a flag, so
    stopping needs no cross-thread write to waitress's trigger pipe."""
    server.intunnel_stop = threading.Event()

    def serve() -> None:
        server_map = server._map
        try:
            while server_map and not server.intunnel_stop.is_set():
                wasyncore.loop(timeout=STOP_POLL_INTERVAL, map=server_map, use_poll=True, count=1)
        finally:
            wasyncore.close_all(server_map, ignore_all=True)

    thread = threading.Thread(target=serve, name="intunnel-web", daemon=True)
    thread.start()
    return thread


def stop_server(server, thread: threading.Thread, timeout: float = 5.0) -> None:
    """Stop a server started by ``start_in_thread``: listener and connections closed, workers joined."""
    server.intunnel_stop.set()
    thread.join(timeout)
    server.task_dispatcher.shutdown(timeout=timeout)


def configure_logging(settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run(args) -> int:
    settings = prepare_data_dir(load_settings(args.config))
    configure_logging(settings)
    from .app import create_app
    from .metrics import start_listener, stop_listener
    app = create_app(settings)
    server = make_server(settings, app)
    metrics = start_listener(settings.web_metrics_address, app.metrics.registry) \
        if settings.web_metrics_address else None

    def terminate(signum, frame):
        raise SystemExit(0)  # waitress's run() shuts its workers down on SystemExit

    signal.signal(signal.SIGTERM, terminate)
    try:
        server.run()
    finally:
        if metrics is not None:
            stop_listener(metrics)
    return 0
