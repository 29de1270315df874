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
import time
from contextlib import contextmanager
from http import HTTPStatus

import pytest
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import serve as ws_serve

from bench import procs, servers
from bench.stack import http_request
from conftest import require_tool
from tests.support.tunnel import HttpUpstream, read_response

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


@contextmanager
def behind_nginx(make_stack, tmp_path, app_port: int, ports: dict[str, int] | None = None, **settings):
    """Relay + TLS nginx in front + two clients through it (verified CA, --insecure); yields (stack, port).
    ``ports`` gives a tunnel another local app; ``settings`` go to the relay."""
    require_tool("nginx")
    require_tool("openssl")
    st = make_stack(relay_trust_proxy=True, **settings)  # as deployed behind nginx
    ports = {sub: (ports or {}).get(sub, app_port) for sub in ("verified", "insecure")}
    tokens = {sub: st.add_tunnel(sub, ports[sub]) for sub in ports}
    st.start_relay()
    front = servers.start_front(tmp_path / "nginx", app_port, st.relay_port)
    try:
        server = f"https://localhost:{front.tls_port}"
        clients = {
            "verified": st.start_client(ports["verified"], tokens["verified"], server=server,
                                        env={"SSL_CERT_FILE": str(tmp_path / "nginx" / "cert.pem")}),
            "insecure": st.start_client(ports["insecure"], tokens["insecure"], server=server, extra=["--insecure"]),
        }
        for sub, client in clients.items():
            st.wait_serving(front.tls_port, f"{sub}.localhost:{front.tls_port}", "/", tls=True, watch=client)
        yield st, front.tls_port
    finally:
        procs.stop(front.proc)


def open_ws(port: int, sub: str, **kwargs):
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ws_connect(f"wss://{sub}.localhost:{port}/ws", sock=raw, ssl=visitor_tls(),
                      server_hostname=f"{sub}.localhost", open_timeout=10, max_size=None, proxy=None, **kwargs)


def test_public_and_agent_endpoints_through_nginx_with_tls(make_stack, tmp_path):
    with page_and_echo_app() as app_port, behind_nginx(make_stack, tmp_path, app_port) as (st, port):
        for sub in ("verified", "insecure"):
            status, headers, body = http_request(port, f"{sub}.localhost:{port}", "/", tls=True)
            assert status == 200, (status, body[:200])
            assert body.decode() == PAGE

            # close_timeout: the close handshake's TCP close is the next test's business
            with open_ws(port, sub, close_timeout=0.5) as ws:
                ws.send("text through TLS")
                assert ws.recv(timeout=10) == "text through TLS"
                blob = bytes(range(256)) * 4096  # 1 MiB binary message
                ws.send(blob)
                assert ws.recv(timeout=10) == blob
        # Both agents came in through nginx: the relay counts them.
        assert st.agents() == 2


def test_local_app_closing_a_websocket_closes_the_visitor_through_tls(make_stack, tmp_path):
    with page_and_echo_app() as app_port, behind_nginx(make_stack, tmp_path, app_port) as (st, port):
        with open_ws(port, "insecure", close_timeout=5) as ws:
            ws.send("bye")
            assert ws.recv(timeout=10) == "bye"
            started = time.monotonic()
            ws.close()  # close handshake, then the server closes TCP: that close must reach us
            took = time.monotonic() - started
        assert took < 2.0, f"the app's TCP close took {took:.1f}s to reach the visitor"


def test_nginx_keep_alive_connections_to_the_relay_carry_any_tunnel(make_stack, tmp_path):
    """nginx sends every tunnel's requests over its pool of keep-alive connections to the relay:
    each still reaches only its own tunnel, and the relay moves a connection between tunnels
    without closing the apps' keep-alive connections."""
    with HttpUpstream() as one, HttpUpstream() as two, \
            behind_nginx(make_stack, tmp_path, one.port, {"insecure": two.port}) as (st, port):
        app_port = {"verified": one.port, "insecure": two.port}
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with visitor_tls().wrap_socket(raw, server_hostname="localhost") as sock, sock.makefile("rb") as f:
            seen = set()
            for i in range(20):
                sub = ("verified", "insecure")[i % 2]
                sock.sendall(f"GET /{i} HTTP/1.1\r\nHost: {sub}.localhost:{port}\r\n\r\n".encode())
                status, headers, _ = read_response(f)
                assert status == 200 and int(headers["x-upstream-port"]) == app_port[sub]
                seen.add((sub, headers["x-upstream-conn"]))
        assert len(seen) == 2, seen  # one local keep-alive connection per tunnel, all along
