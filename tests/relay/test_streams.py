"""Everything passes through the tunnel: keep-alive with host switching, chunked, SSE,
WebSocket, Expect: 100-continue, HEAD, big headers."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import time

import pytest

from tests.support.tunnel import (ClientThread, HttpUpstream, WebSocketUpstream, make_tunnel,
                                  pattern_sha256, tunnel_setup)


@pytest.fixture
def tunnel(settings, db):
    with tunnel_setup(settings) as t:
        yield t


class _NoClose:
    """HTTPResponse closes its file when a response ends; the next one needs it."""

    def __init__(self, f):
        self._f = f

    def close(self):
        pass

    def __getattr__(self, name):
        return getattr(self._f, name)


class Reader:
    """Read HTTP responses one after another off a raw socket (pipelining-safe)."""

    def __init__(self, sock):
        self.sock = sock
        self.file = sock.makefile("rb")

    def makefile(self, *args, **kwargs):
        return _NoClose(self.file)

    def response(self, method="GET"):
        resp = http.client.HTTPResponse(self, method=method)
        resp.begin()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()


def raw_socket(port):
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def test_keep_alive_connection_routes_each_request_by_its_own_host(settings, db):
    with HttpUpstream() as other_upstream, tunnel_setup(settings) as t:
        other = make_tunnel(settings, "other", other_upstream.port)
        with ClientThread(t.relay.url, other.token, other_upstream.port) as c2:
            c2.wait_connected()
            sock = raw_socket(t.relay.port)
            r = Reader(sock)
            # Sequential keep-alive: a, a, other, a.
            ports = []
            for host in ("myapp", "myapp", "other", "myapp"):
                sock.sendall(f"GET /{host} HTTP/1.1\r\nHost: {host}.localhost\r\n\r\n".encode())
                status, headers, _ = r.response()
                assert status == 200
                ports.append(int(headers["x-upstream-port"]))
            assert ports == [t.upstream.port] * 2 + [other_upstream.port, t.upstream.port]
            # Pipelined: both requests in one write; each still goes to its own tunnel.
            sock.sendall(b"GET /p1 HTTP/1.1\r\nHost: other.localhost\r\n\r\n"
                         b"GET /p2 HTTP/1.1\r\nHost: myapp.localhost\r\n\r\n")
            assert int(r.response()[1]["x-upstream-port"]) == other_upstream.port
            assert int(r.response()[1]["x-upstream-port"]) == t.upstream.port
            sock.close()
            assert {p for _, p, _ in other_upstream.seen} == {"/other", "/p1"}
            assert "/other" not in {p for _, p, _ in t.upstream.seen}


def test_chunked_request_and_response(tunnel):
    parts = [bytes([i]) * (1000 + i) for i in range(50)]
    conn = http.client.HTTPConnection("127.0.0.1", tunnel.relay.port, timeout=10)
    conn.request("POST", "/upload", body=iter(parts), encode_chunked=True,
                 headers={"Host": tunnel.host, "Transfer-Encoding": "chunked"})
    echo = json.loads(conn.getresponse().read())
    assert echo["body_sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()
    assert echo["headers"]["Transfer-Encoding"] == "chunked"
    conn.request("GET", "/chunked?parts=4", headers={"Host": tunnel.host})
    resp = conn.getresponse()
    assert resp.getheader("Transfer-Encoding") == "chunked"
    assert resp.read() == b"part 0\npart 1\npart 2\npart 3\n"


def test_download_and_upload_of_some_megabytes_by_hash(tunnel):
    size = 32 * 1024 * 1024 + 17
    status, headers, body = tunnel.get(f"/download?size={size}", timeout=30)
    assert status == 200 and len(body) == size
    assert hashlib.sha256(body).hexdigest() == pattern_sha256(size)
    status, _, data = tunnel.get("/upload", method="POST", body=body, timeout=30)
    assert json.loads(data)["body_sha256"] == pattern_sha256(size)


def test_server_sent_events_arrive_as_soon_as_written(tunnel):
    sock = raw_socket(tunnel.relay.port)
    sock.sendall(f"GET /sse?n=5&interval=0.2 HTTP/1.1\r\nHost: {tunnel.host}\r\nAccept: text/event-stream\r\n\r\n"
                 .encode())
    f = sock.makefile("rb")
    assert f.readline().startswith(b"HTTP/1.1 200")
    while f.readline() not in (b"\r\n", b""):
        pass
    latencies = []
    for _ in range(5):
        assert f.readline().startswith(b"id: ")
        data = f.readline()
        latencies.append(time.time() - float(data.split(b": ")[1]))
        assert f.readline() == b"\n"
    sock.close()
    assert max(latencies) < 0.1, latencies  # no buffering anywhere: milliseconds, not the 0.2 s interval


def test_websocket_text_binary_big_and_idle_with_pings(settings, db):
    from websockets.sync.client import connect
    with WebSocketUpstream() as ws_up, tunnel_setup(settings, upstream=ws_up) as t:
        sock = raw_socket(t.relay.port)
        with connect(f"ws://{t.host}:{t.relay.port}/chat", sock=sock, max_size=64 * 1024 * 1024,
                     ping_interval=None) as ws:
            ws.send("héllo")
            assert ws.recv(timeout=5) == "héllo"
            ws.send(b"\x00\xff" * 10)
            assert ws.recv(timeout=5) == b"\x00\xff" * 10
            big = bytes(range(256)) * (10 * 1024 * 1024 // 256)
            ws.send(big)
            assert ws.recv(timeout=30) == big
            time.sleep(1.5)  # idle: nothing times the socket out
            for _ in range(3):
                ws.ping().wait(5)
            ws.send("still here")
            assert ws.recv(timeout=5) == "still here"


def test_expect_100_continue(tunnel):
    sock = raw_socket(tunnel.relay.port)
    body = b"x" * 5000
    sock.sendall(f"POST /upload HTTP/1.1\r\nHost: {tunnel.host}\r\nContent-Length: {len(body)}\r\n"
                 f"Expect: 100-continue\r\n\r\n".encode())
    f = sock.makefile("rb")
    assert f.readline().startswith(b"HTTP/1.1 100")  # the app said go on, before we sent the body
    assert f.readline() == b"\r\n"
    sock.sendall(body)
    r = Reader(sock)
    r.file = f
    status, _, data = r.response()
    assert status == 200 and json.loads(data)["body_length"] == len(body)
    sock.close()


def test_head_then_get_on_the_same_connection(tunnel):
    sock = raw_socket(tunnel.relay.port)
    r = Reader(sock)
    sock.sendall(f"HEAD /download?size=1000 HTTP/1.1\r\nHost: {tunnel.host}\r\n\r\n".encode())
    status, headers, body = r.response("HEAD")
    assert status == 200 and headers["content-length"] == "1000" and body == b""
    sock.sendall(f"GET /download?size=10 HTTP/1.1\r\nHost: {tunnel.host}\r\n\r\n".encode())
    assert r.response()[2] == bytes(range(10))
    sock.close()


def test_32_kib_of_headers_pass_and_oversized_heads_get_431(tunnel):
    big = "v" * (32 * 1024)
    status, _, data = tunnel.get("/h", headers={"X-Big": big})
    assert status == 200 and json.loads(data)["headers"]["X-Big"] == big
    status, _, _ = tunnel.get("/h", headers={f"X-Big-{i}": big for i in range(3)})
    assert status == 431


def test_forwarded_headers_from_visitors_are_not_trusted_by_default(tunnel):
    _, _, data = tunnel.get("/", headers={"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Host": "evil"})
    headers = json.loads(data)["headers"]
    assert headers["X-Forwarded-For"] == "127.0.0.1" and headers["X-Forwarded-Host"] == tunnel.host


def test_host_header_rewrite(settings, db):
    with tunnel_setup(settings, client_kwargs={"host_header": "rewrite"}) as t:
        _, _, data = t.get("/")
        headers = json.loads(data)["headers"]
        assert headers["Host"] == f"127.0.0.1:{t.upstream.port}"
        assert headers["X-Forwarded-Host"] == t.host
