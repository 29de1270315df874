"""The relay behind a real nginx with TLS, for both the public and the agent endpoint.

nginx (private instance, loopback port, a self-signed certificate made here)
terminates TLS and proxies everything to the relay, keeping the Host header
and passing Upgrade, like production.  Two clients connect through it with
``https://``: one verifies the certificate (it is given as the trusted CA via
SSL_CERT_FILE), one uses ``--insecure``.  A visitor then gets an HTTP page and
a WebSocket echo (text and binary) through nginx, relay and client.
"""

from __future__ import annotations

import socket
import ssl
import threading
from contextlib import contextmanager
from http import HTTPStatus

import pytest
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import serve as ws_serve

from bench import procs, servers
from bench.stack import http_request
from conftest import require_tool

pytestmark = [pytest.mark.nginx, pytest.mark.slow]

PAGE = "hello through nginx, the relay and the client\n"


@contextmanager
def page_and_echo_app():
    """Local app: GET / -> a text page, /ws -> WebSocket echo."""
    def echo(ws):
        for message in ws:
            ws.send(message)

    def process_request(connection, request):
        if request.path == "/ws":
            return None
        return connection.respond(HTTPStatus.OK, PAGE)

    server = ws_serve(echo, "127.0.0.1", 0, process_request=process_request)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.socket.getsockname()[1]
    finally:
        server.shutdown()
        thread.join(5)


def visitor_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the visitor side is not what this test checks
    return ctx


def test_public_and_agent_endpoints_through_nginx_with_tls(make_stack, tmp_path):
    require_tool("nginx")
    require_tool("openssl")
    with page_and_echo_app() as app_port:
        st = make_stack()
        verified = st.add_tunnel("verified", app_port)
        insecure = st.add_tunnel("insecure", app_port)
        st.start_relay()
        front = servers.start_front(tmp_path / "nginx", app_port, st.relay_port)
        try:
            server = f"https://localhost:{front.tls_port}"
            clients = {
                "verified": st.start_client(app_port, verified, server=server,
                                            env={"SSL_CERT_FILE": str(tmp_path / "nginx" / "cert.pem")}),
                "insecure": st.start_client(app_port, insecure, server=server, extra=["--insecure"]),
            }
            for sub, client in clients.items():
                host = f"{sub}.localhost:{front.tls_port}"
                st.wait_serving(front.tls_port, host, "/", tls=True, watch=client)

                status, headers, body = http_request(front.tls_port, host, "/", tls=True)
                assert status == 200, (status, body[:200])
                assert body.decode() == PAGE

                raw = socket.create_connection(("127.0.0.1", front.tls_port), timeout=10)
                with ws_connect(f"wss://{host}/ws", sock=raw, ssl=visitor_tls(),
                                server_hostname=f"{sub}.localhost", open_timeout=10,
                                max_size=None, proxy=None) as ws:
                    ws.send("text through TLS")
                    assert ws.recv(timeout=10) == "text through TLS"
                    blob = bytes(range(256)) * 4096  # 1 MiB binary message
                    ws.send(blob)
                    assert ws.recv(timeout=10) == blob
            # Both agents came in through nginx: the relay counts them.
            assert st.agents() == 2
        finally:
            procs.stop(front.proc)
