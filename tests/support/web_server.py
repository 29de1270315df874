"""Run the real web app under its web_server (cheroot by default; ``web_server="waitress"``
as a setting override) on 127.0.0.1:0 in a thread.

    from support.web_server import running_web_app
    with running_web_app(settings, clock=ManualClock()) as web:
        urllib.request.urlopen(web.url + "/healthz")

``web.url`` is ``http://127.0.0.1:PORT``; ``web.app`` the Bottle app (``web.app.intunnel``
its state), ``web.settings`` the settings it runs with (web_listen rewritten to
the real port).  The server and its threads are stopped on exit, even on failure.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from intunnel.web.app import create_app
from intunnel.web.serve import make_server, start_in_thread, stop_server


@dataclass
class RunningWebApp:
    url: str
    host: str
    port: int
    app: object
    settings: object


@contextlib.contextmanager
def running_web_app(settings, clock=None, threads: int = 4, **setting_overrides):
    settings = settings.replace(**{"web_listen": "127.0.0.1:0", **setting_overrides})
    app = create_app(settings, clock=clock)
    server = make_server(settings, app=app, threads=threads)
    thread = start_in_thread(server)
    try:
        host, port = server.effective_host, server.effective_port
        yield RunningWebApp(f"http://{host}:{port}", host, port, app,
                            settings.replace(web_listen=f"{host}:{port}"))
    finally:
        stop_server(server, thread)


def answers_200(url: str) -> bool:
    """``url`` answers 200 now (for waiting on a web process that is starting)."""
    import requests
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False
