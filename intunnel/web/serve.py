"""`intunnel web`: serve the web app with cheroot or waitress (``web_server``); ``make_server`` for embedding.

    server = make_server(settings)        # bound and listening (port 0 works)
    thread = start_in_thread(server)
    ...
    stop_server(server, thread)

Both servers are set up alike from the settings: ``web_threads`` workers, the
same request header and body ceilings, ``Server: intunnel``, and the same proxy
header handling.  Behind nginx (``web_trust_proxy``) the client address and
scheme come from X-Forwarded-For/-Proto sent by the proxy on loopback, so rate
limits and the login throttle see real clients; from anyone else those headers
(and the other X-Forwarded-*/Forwarded ones) are dropped.  That is waitress's
own proxy-header middleware, which wraps the app under cheroot too, so the two
servers cannot differ on it.

Why cheroot is the default: bench/RESULTS.md ("API"), the whole app and a bare
hello-world app measured under both servers in one run.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from ..settings import load_settings, prepare_data_dir

HELP = "Run the web app (dashboard and REST API) with cheroot or waitress (the web_server setting)."
log = logging.getLogger("intunnel.web")

# The server buffers (waitress) or streams (cheroot) a request body to the app;
# the app refuses bodies above api_max_body with a JSON 413 before reading them.
# Only bodies above this ceiling get the server's own plain-text 413.
BODY_CEILING = 16 << 20
# Largest request head (request line and headers), waitress's default, for both servers.
HEADER_CEILING = 256 << 10
# Seconds a connection may sit idle (keep-alive) or stall mid-request: waitress's channel_timeout.
IDLE_TIMEOUT = 120
# Open connections kept alive between requests: waitress's connection_limit.
KEEPALIVE_CONNECTIONS = 100
# Seconds a stop gives requests in progress to finish.
SHUTDOWN_TIMEOUT = 5.0
# How often a waitress server run by start_in_thread looks at its stop flag (seconds).
STOP_POLL_INTERVAL = 0.05
# Seconds a stop waits past SHUTDOWN_TIMEOUT for the server's threads before it gives up on them.
STOP_GRACE = 1.0
# How often `intunnel web` looks whether its serving thread died while it waits for a stop signal.
LIVENESS_INTERVAL = 1.0


def add_arguments(parser) -> None:
    from ..cli import add_config_argument
    add_config_argument(parser)


def proxy_options(settings, host: str) -> dict:
    """waitress's proxy-header adjustments for these settings (the same for cheroot's middleware)."""
    options = {"clear_untrusted_proxy_headers": True}
    if settings.web_trust_proxy:
        # The proxy (nginx) reaches us over loopback, on the family we listen on.
        options.update(trusted_proxy="::1" if ":" in host else "127.0.0.1",
                       trusted_proxy_headers={"x-forwarded-for", "x-forwarded-proto"})
    return options


def make_server(settings, app=None, threads: int | None = None, server: str | None = None, **adjustments):
    """The ``web_server`` (or ``server``) for ``app`` (default: ``create_app(settings)``) on ``web_listen``,
    bound and listening; ``threads`` overrides ``web_threads``, ``adjustments`` are waitress-only."""
    if app is None:
        from .app import create_app
        app = create_app(settings)
    kind = server or settings.web_server
    host, port = settings.web_address
    threads = threads or settings.web_threads
    body_ceiling = max(settings.api_max_body, BODY_CEILING)
    if kind == "cheroot":
        if adjustments:
            raise TypeError(f"waitress adjustments given for cheroot: {sorted(adjustments)}")
        made = CherootServer(app, host, port, threads, body_ceiling, proxy_options(settings, host))
    elif kind == "waitress":
        made = WaitressServer(app, host, port, threads, body_ceiling, proxy_options(settings, host), adjustments)
    else:
        raise ValueError(f"unknown web server {kind!r}")
    log.info("web server: %s, %d threads", kind, threads)
    log.info("web app listening on http://%s:%s", made.effective_host, made.effective_port)
    return made


class WaitressServer:
    """A waitress server (its own socket map) and how to run and stop it."""

    name = "waitress"

    def __init__(self, app, host, port, threads, body_ceiling, proxy, adjustments=None, server=None):
        if server is None:
            import waitress
            options = dict(host=host, port=port, threads=threads, ident="intunnel",
                           max_request_body_size=body_ceiling, max_request_header_size=HEADER_CEILING,
                           channel_timeout=IDLE_TIMEOUT, connection_limit=KEEPALIVE_CONNECTIONS, **proxy)
            options.update(adjustments or {})
            server = waitress.create_server(app, **options)
        self.server = server
        self.effective_host, self.effective_port = server.effective_host, server.effective_port
        self._stop = threading.Event()

    def serve_until_stopped(self) -> None:
        """Serve until ``stop``; the loop checks a flag, so stopping needs no cross-thread
        write to waitress's trigger pipe."""
        from waitress import wasyncore
        server_map = self.server._map
        try:
            while server_map and not self._stop.is_set():
                wasyncore.loop(timeout=STOP_POLL_INTERVAL, map=server_map, use_poll=True, count=1)
        finally:
            wasyncore.close_all(server_map, ignore_all=True)

    def stop(self, thread: threading.Thread, timeout: float) -> None:
        self._stop.set()
        thread.join(timeout)
        self.server.task_dispatcher.shutdown(timeout=timeout)


class CherootServer:
    """A cheroot WSGI server set up like the waitress one: the same threads, ceilings, timeouts
    and proxy-header handling (waitress's middleware), bound at construction."""

    name = "cheroot"

    def __init__(self, app, host, port, threads, body_ceiling, proxy):
        from waitress.proxy_headers import proxy_headers_middleware
        wrapped = proxy_headers_middleware(
            dechunk_body(app, body_ceiling), trusted_proxy=proxy.get("trusted_proxy"), trusted_proxy_count=1,
            trusted_proxy_headers=proxy.get("trusted_proxy_headers"),
            clear_untrusted=proxy["clear_untrusted_proxy_headers"], logger=log)
        server = _cheroot_class()((host, port), wrapped, numthreads=threads, max=threads, server_name="intunnel",
                                  request_queue_size=1024, timeout=IDLE_TIMEOUT, shutdown_timeout=SHUTDOWN_TIMEOUT)
        server.max_request_body_size = body_ceiling
        server.max_request_header_size = HEADER_CEILING
        server.keep_alive_conn_limit = KEEPALIVE_CONNECTIONS
        try:
            server.prepare()    # binds and listens (port 0: the real one in bind_addr), starts the workers
        except OSError as e:
            # cheroot's own error has no errno; the bind's (EADDRINUSE...) is what `listening` reports
            raise getattr(server, "intunnel_bind_error", None) or e from None
        self.server = server
        self.effective_host, self.effective_port = server.bind_addr[:2]

    def serve_until_stopped(self) -> None:
        self.server.serve()

    def stop(self, thread: threading.Thread, timeout: float) -> None:
        """Listener closed, requests in progress given ``timeout`` to finish, workers joined: all
        bounded, because cheroot's own stop ends in an untimed join of a worker that outlived its
        timeout; it runs in a daemon thread that the process may leave behind."""
        self.server.shutdown_timeout = timeout
        stopper = threading.Thread(target=self.server.stop, name="intunnel-web-stop", daemon=True)
        stopper.start()
        stopper.join(timeout + STOP_GRACE)
        thread.join(STOP_GRACE)
        if stopper.is_alive():
            log.warning("web server workers still busy %.0f s after the stop; leaving them", timeout)


_CHEROOT = []


def _cheroot_class():
    """cheroot's WSGI server, keeping the OSError of a failed bind (imported at first use)."""
    if not _CHEROOT:
        from cheroot import wsgi

        class Server(wsgi.Server):
            def bind(self, family, type, proto=0):
                try:
                    return super().bind(family, type, proto)
                except OSError as e:
                    self.intunnel_bind_error = e
                    raise

        _CHEROOT.append(Server)
    return _CHEROOT[0]


# A chunked body up to this size stays in memory; a larger one goes to a temporary file (waitress's figure).
SPOOL_IN_MEMORY = 512 << 10


def dechunk_body(app, ceiling: int):
    """A chunked request body read whole (at most ``ceiling`` bytes, else cheroot's 413) and given
    to ``app`` with a Content-Length and no Transfer-Encoding, as waitress hands one over:
    cheroot passes the header on with its already-decoded stream, which Bottle would decode again."""
    import shutil
    import tempfile

    def dechunked(environ, start_response):
        if "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            return app(environ, start_response)
        with tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY) as body:
            # cheroot's ChunkedRFile: decoded; past the ceiling it raises and cheroot answers 413
            shutil.copyfileobj(environ["wsgi.input"], body, 64 << 10)
            environ.pop("HTTP_TRANSFER_ENCODING")
            environ["CONTENT_LENGTH"] = str(body.tell())
            body.seek(0)
            environ["wsgi.input"] = body
            return app(environ, start_response)   # Bottle reads a body inside the call

    return dechunked


def _adapter(server):
    """A server from make_server, or a bare waitress server (the metrics listener's)."""
    return server if isinstance(server, (WaitressServer, CherootServer)) else WaitressServer(
        None, None, None, None, None, None, server=server)


def start_in_thread(server) -> threading.Thread:
    """Serve ``server`` in a daemon thread until ``stop_server``."""
    adapter = _adapter(server)
    server.intunnel_adapter = adapter
    thread = threading.Thread(target=adapter.serve_until_stopped, name="intunnel-web", daemon=True)
    thread.start()
    return thread


def stop_server(server, thread: threading.Thread, timeout: float = SHUTDOWN_TIMEOUT) -> None:
    """Stop a server started by ``start_in_thread``: listener and connections closed, workers joined."""
    server.intunnel_adapter.stop(thread, timeout)


def configure_logging(settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# `intunnel web` stops on these, taken by the main thread with sigwait rather than by a handler:
# a handler raising SystemExit into the serving loop at an arbitrary bytecode once left cheroot's
# worker pool unjoinable, and the stop hung until systemd's SIGKILL.
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


def run(args) -> int:
    # Blocked before any thread starts, so that every thread inherits the mask and the signals
    # stay pending until the main thread's sigtimedwait takes them.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    settings = prepare_data_dir(load_settings(args.config))
    configure_logging(settings)
    from .app import create_app
    from .metrics import start_listener, stop_listener
    app = create_app(settings)
    server = make_server(settings, app)
    metrics = start_listener(settings.web_metrics_address, app.metrics.registry) \
        if settings.web_metrics_address else None
    try:
        return serve_until_signalled(server)
    finally:
        if metrics is not None:
            stop_listener(metrics)


def serve_until_signalled(server) -> int:
    """Serve ``server`` (made after ``STOP_SIGNALS`` were blocked) until one of them arrives, then
    stop it; 1 if its thread ended by itself."""
    thread = start_in_thread(server)
    try:
        while thread.is_alive():
            received = signal.sigtimedwait(STOP_SIGNALS, LIVENESS_INTERVAL)
            if received is not None:
                log.info("stopping on %s", signal.Signals(received.si_signo).name)
                return 0
        log.error("the web server's thread ended by itself")
        return 1
    finally:
        stop_server(server, thread)
