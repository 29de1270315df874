"""A local app for the heavy tests: streams and swallows huge bodies without holding them.

    GET  /stream?size=N   N bytes of ``pattern_stream(N)`` (Content-Length)
    PUT  /sink            reads the whole body; answers ``<sha256 hex> <byte count>``
    GET  /                a small HTML page
    anything else         404

Blocking sockets, one thread per connection, 1 MiB buffers: several GB/s, so
the app is never what limits a tunnel test.  Bodies are generated and hashed
on the fly; nothing is kept in memory.
"""

from __future__ import annotations

import hashlib
import random
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass

BLOCK = 1 << 20
PAGE = b"<!doctype html><title>heavy</title><p>hello through the tunnel</p>"
_BASE_BLOCK = random.Random(20261128).randbytes(BLOCK)


def pattern_stream(size: int):
    """Deterministic pseudo-random bytes, as 1 MiB blocks each stamped with its index.

    The stamp makes a duplicated, dropped or reordered block change the hash.
    """
    index = 0
    left = size
    while left > 0:
        block = index.to_bytes(8, "big") + _BASE_BLOCK[8:]
        piece = block[:min(BLOCK, left)]
        yield piece
        left -= len(piece)
        index += 1


def pattern_sha256(size: int) -> str:
    h = hashlib.sha256()
    for piece in pattern_stream(size):
        h.update(piece)
    return h.hexdigest()


def _read_head(conn: socket.socket) -> tuple[str, str, dict[str, str], bytes] | None:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            return None
        buf += data
        if len(buf) > 256 * 1024:
            return None
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return method, target, headers, rest


def _respond(conn, status: str, body: bytes, ctype: str = "text/plain") -> None:
    conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                 f"Connection: close\r\n\r\n".encode() + body)


def _serve_one(conn: socket.socket) -> None:
    with conn:
        conn.settimeout(60)
        parsed = _read_head(conn)
        if parsed is None:
            return
        method, target, headers, rest = parsed
        path, _, query = target.partition("?")
        if method == "GET" and path == "/stream":
            size = int(dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("size", "0"))
            conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         f"Content-Length: {size}\r\nConnection: close\r\n\r\n".encode())
            for piece in pattern_stream(size):
                conn.sendall(piece)
        elif method in ("PUT", "POST") and path == "/sink":
            want = int(headers.get("content-length", "0"))
            h = hashlib.sha256(rest[:want])
            got = min(len(rest), want)
            buf = bytearray(BLOCK)
            view = memoryview(buf)
            while got < want:
                n = conn.recv_into(view[:min(BLOCK, want - got)])
                if not n:
                    return
                h.update(view[:n])
                got += n
            _respond(conn, "200 OK", f"{h.hexdigest()} {got}".encode())
        elif method == "GET" and path == "/":
            _respond(conn, "200 OK", PAGE, "text/html; charset=utf-8")
        else:
            _respond(conn, "404 Not Found", b"not found")


@dataclass
class Upstream:
    port: int


@contextmanager
def running_upstream():
    """The app on 127.0.0.1:<free port>; stopped (listener closed, threads daemonic) on exit."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    stopping = threading.Event()

    def accept_loop():
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=_serve_one, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield Upstream(listener.getsockname()[1])
    finally:
        stopping.set()
        try:
            listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        listener.close()
        thread.join(5)
