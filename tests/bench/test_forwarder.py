"""bench.forwarder, the Python floor of bench.tunnel's ``python-2hop`` target: two real forwarder
processes chained in front of a real HTTP server on port 0 carry keep-alive requests and a 20 MB
body byte for byte, mirror a half-close, and exit 0 on SIGTERM.  (Its figures are only worth
anything if it forwards exactly what a tunnel would.)"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


class _Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self._answer(self.path.encode() * 100)

    def do_PUT(self):
        self._answer(hashlib.sha256(self.rfile.read(int(self.headers["Content-Length"]))).hexdigest().encode())

    def _answer(self, body: bytes):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _forwarder(to: int) -> tuple[subprocess.Popen, int]:
    with socket.socket() as probe:   # a free port for it (it prints "listening" once bound)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "bench.forwarder", "--listen", f"127.0.0.1:{port}",
                             "--to", f"127.0.0.1:{to}"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "listening"
    return proc, port


@pytest.fixture
def chain():
    app = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    second, second_port = _forwarder(app.server_port)
    first, first_port = _forwarder(second_port)
    yield first_port, (first, second)
    for proc in (first, second):
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stdout.close()
    app.shutdown()
    app.server_close()


def test_two_forwarders_carry_keep_alive_requests_and_bulk_bodies_exactly(chain):
    port, procs = chain
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for i in range(5):
        conn.request("GET", f"/r{i}")
        assert conn.getresponse().read() == f"/r{i}".encode() * 100
    body = os.urandom(20_000_000)
    conn.request("PUT", "/up", body=body)
    assert conn.getresponse().read() == hashlib.sha256(body).hexdigest().encode()
    conn.close()
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_a_half_close_reaches_the_app_and_the_answer_still_comes_back(chain):
    port, _ = chain
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /half HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.") and data.endswith(b"/half" * 100)
