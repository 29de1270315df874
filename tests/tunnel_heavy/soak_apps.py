"""Local apps for the isolation soak: each one signs every answer with its own name and the
request's nonce, and records every request it executed.

Raw blocking sockets, one thread per connection, HTTP/1.1 keep-alive, so that every byte and
every close is under the app's control.  The nonce rides in the query (``?n=<nonce>``); the
answer carries it back in ``X-Nonce`` and, with the app's name (``X-App``), in the body
(``body_for``), so a visitor can tell exactly whose answer it got.

    /echo      200, Content-Length (any method; HEAD: the head only)
    /chunked   200, the same body in three chunks
    /s204      204 (head only)          /s304   304 (head only)
    /slow      200 after ``ms`` milliseconds
    /big       200, ``size`` bytes: the signature line repeated (the relay's bulk path)
    /close-after   200 with ``Connection: close``, then the app closes
    /close-silent  200 (keep-alive by default), then the app closes anyway
    /close-mid     200 announcing more body than it sends, then the app closes
    /ws        101 and a line echo (``ping X`` -> ``<name> X``) when the app accepts upgrades,
               otherwise a plain 200 and the connection stays HTTP

A request is *executed* (``executed``: nonce, method, path) once its head and whole body
have arrived, before the answer is written; an ``Expect: 100-continue`` gets a
``100 Continue`` first.  Request bodies are read by their framing (Content-Length or
chunked) and acknowledged in the answer as ``<length>:<sha256 prefix>``.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from urllib.parse import parse_qs, urlsplit

SIGNATURE = "app={name} nonce={nonce} method={method} body={body}\n"
MAX_HEAD = 64 * 1024


class Malformed(Exception):
    pass


def body_digest(body: bytes) -> str:
    return f"{len(body)}:{hashlib.sha256(body).hexdigest()[:16]}"


def body_for(name: str, nonce: str, method: str, request_body: bytes = b"") -> bytes:
    """The body an app answers ``/echo`` (and /chunked, /slow, /close-*) with."""
    return SIGNATURE.format(name=name, nonce=nonce, method=method, body=body_digest(request_body)).encode()


def big_body_for(name: str, nonce: str, size: int) -> bytes:
    line = body_for(name, nonce, "GET")
    return (line * (size // len(line) + 1))[:size]


def tunnel_of(nonce: str) -> str:
    """Visitors name the tunnel a request is meant for at the end of its nonce: ``...-t07``."""
    return nonce.rsplit("-", 1)[-1]


class Reader:
    """A buffered reader over a blocking socket (EOF: ``None`` from ``head``, else ``Malformed``)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()

    def _more(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def head(self) -> bytes | None:
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self.buf[:end])
                del self.buf[:end + 4]
                return head
            if len(self.buf) > MAX_HEAD:
                raise Malformed("head too large")
            if not self._more():
                if self.buf:
                    raise Malformed("EOF inside a head")
                return None

    def line(self) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            if len(self.buf) > MAX_HEAD or not self._more():
                raise Malformed("no line")
        line = bytes(self.buf[:end])
        del self.buf[:end + 2]
        return line

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._more():
                raise Malformed("EOF inside a body")
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def chunked(self) -> bytes:
        body = bytearray()
        while True:
            size_field = self.line().split(b";", 1)[0].strip()
            try:
                size = int(size_field, 16)
            except ValueError:
                raise Malformed(f"bad chunk size {size_field!r}") from None
            if size == 0:
                while self.line():  # trailers
                    pass
                return bytes(body)
            body += self.exact(size)
            if self.exact(2) != b"\r\n":
                raise Malformed("chunk not followed by CRLF")


def parse_head(raw: bytes) -> tuple[str, str, str, dict[str, list[str]]]:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise Malformed(f"bad request line {lines[0]!r}")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise Malformed(f"bad header line {line!r}")
        headers.setdefault(name.lower(), []).append(value.strip())
    return parts[0], parts[1], parts[2], headers


class SoakApp:
    """One tunnel's local app on 127.0.0.1:<port>; ``close()`` stops it and its connections."""

    def __init__(self, name: str, accepts_upgrade: bool):
        self.name = name
        self.accepts_upgrade = accepts_upgrade
        self.executed: list[tuple[str, str, str]] = []
        self.malformed_seen = 0        # heads the relay should never have passed on
        self.lock = threading.Lock()
        self.conns: set[socket.socket] = set()
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.port = self.listener.getsockname()[1]
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, name=f"app-{name}", daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def close(self) -> None:
        self.stopping = True
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self.listener.close()
        self.thread.join(5)
        with self.lock:
            conns = list(self.conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- one connection ---
    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(120)
            reader = Reader(conn)
            while self._one(conn, reader):
                pass
        except (OSError, Malformed):
            pass
        finally:
            with self.lock:
                self.conns.discard(conn)
            conn.close()

    def _one(self, conn: socket.socket, reader: Reader) -> bool:
        """Serve one request; False: the connection ends."""
        raw = reader.head()
        if raw is None:
            return False
        try:
            method, target, version, headers = parse_head(raw)
        except Malformed:
            with self.lock:
                self.malformed_seen += 1
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return False
        url = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        nonce, path = query.get("n", ""), url.path
        te = ",".join(headers.get("transfer-encoding", [])).lower()
        length = int(headers.get("content-length", ["0"])[0] or 0)
        if "100-continue" in ",".join(headers.get("expect", [])).lower() and (te or length):
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = reader.chunked() if "chunked" in te else reader.exact(length)
        with self.lock:
            self.executed.append((nonce, method, path))
        sign = {"X-App": self.name, "X-Nonce": nonce}
        wants_close = "close" in ",".join(headers.get("connection", [])).lower() or version == "HTTP/1.0"

        if path == "/ws" and self.accepts_upgrade and "upgrade" in headers:
            self._head(conn, "101 Switching Protocols", {"Upgrade": "websocket", "Connection": "Upgrade", **sign})
            self._line_echo(conn, reader)
            return False
        if path in ("/s204", "/s304"):
            code = "204 No Content" if path == "/s204" else "304 Not Modified"
            extra = {"ETag": f'"{nonce}"'} if path == "/s304" else {}
            self._head(conn, code, {**sign, **extra})
            return self._keep(conn, wants_close)
        if path == "/big":
            payload = big_body_for(self.name, nonce, int(query.get("size", "0")))
        else:
            if path == "/slow":
                time.sleep(int(query.get("ms", "100")) / 1000)  # the app is slow: not a synchronisation
            payload = body_for(self.name, nonce, method, body)
        send = payload if method != "HEAD" else b""
        if path == "/chunked":
            self._head(conn, "200 OK", {"Transfer-Encoding": "chunked", **sign})
            if method != "HEAD":
                third = len(payload) // 3
                pieces = (payload[:third], payload[third:2 * third], payload[2 * third:])
                conn.sendall(b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n\r\n")
            return self._keep(conn, wants_close)
        if path == "/close-after":
            self._head(conn, "200 OK", {"Content-Length": str(len(payload)), "Connection": "close", **sign}, send)
            self._hang_up(conn)
            return False
        if path == "/close-silent":
            self._head(conn, "200 OK", {"Content-Length": str(len(payload)), **sign}, send)
            self._hang_up(conn)
            return False
        if path == "/close-mid":
            self._head(conn, "200 OK", {"Content-Length": str(len(payload) + 1000), **sign},
                       send[:len(send) // 2])
            self._hang_up(conn)
            return False
        self._head(conn, "200 OK", {"Content-Length": str(len(payload)), **sign}, send)
        return self._keep(conn, wants_close)

    @staticmethod
    def _head(conn: socket.socket, status: str, headers: dict[str, str], body: bytes = b"") -> None:
        lines = [f"HTTP/1.1 {status}", "Content-Type: text/plain"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    def _keep(self, conn: socket.socket, wants_close: bool) -> bool:
        if wants_close:
            self._hang_up(conn)
        return not wants_close

    @staticmethod
    def _hang_up(conn: socket.socket) -> None:
        """Close our side cleanly: FIN, then let whatever was on its way in arrive (a close with
        unread input would reset the connection and could destroy the answer in flight)."""
        try:
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(5)
            while conn.recv(65536):
                pass
        except OSError:
            pass

    def _line_echo(self, conn: socket.socket, reader: Reader) -> None:
        """After a 101: ``ping X\\n`` -> ``<name> X\\n``; ``bye`` or EOF ends it."""
        buf = reader.buf
        while True:
            while (end := buf.find(b"\n")) >= 0:
                line = bytes(buf[:end]).strip()
                del buf[:end + 1]
                if line == b"bye":
                    self._hang_up(conn)
                    return
                word = line.split(b" ", 1)[1] if line.startswith(b"ping ") else b"?" + line[:64]
                conn.sendall(self.name.encode() + b" " + word + b"\n")
            data = conn.recv(65536)
            if not data:
                return
            buf += data
