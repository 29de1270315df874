"""Raw local apps, raw visitors and a hand-made agent, for tests that need every byte their own.

* ``RawApp``: a local app on 127.0.0.1 port 0, one thread per connection, that reads
  requests (head + Content-Length or chunked body) and answers them with a behaviour
  given as a function: honest (``identity``, signs every answer with the app's name),
  or misbehaving (a 200 to an Upgrade, bare-LF heads, chunk extensions after a space,
  duplicate Content-Length, a forged extra response, 103 then 200, closing keep-alive
  connections...).  ``requests`` records every request the app read, i.e. executed.
* ``RawVisitor``: a visitor on a raw (or TLS) socket: exact bytes out, a strict
  response reader in (interim 1xx, Content-Length, chunked, until-close), EOF detection.
* ``HandAgent``: an agent that authenticates and then never opens a data connection
  (a slowed agent: every route to its tunnel stays pending).
* ``Tenants``: the relay in this process (``RelayThread``), one tunnel per app with a real
  agent (``ClientThread``) or a ``HandAgent``; ``assert_settled()`` after a hostile test.
* ``relay_stray_sockets``: the relay's accepted sockets (in this process) whose other end
  is not an open socket of this process, i.e. not an agent's or a live test visitor's.

Every blocking call has a deadline; nothing sleeps.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field

from tests.support.tunnel import ClientThread, RelayThread, make_tunnel, wait_for

IO_TIMEOUT = 10.0
SETTLE = 5.0   # seconds for the relay to let go of everything after a test's visitors left


# --- requests as a local app reads them ----------------------------------------------------------

@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    connection: int = 0          # which of the app's connections carried it (1, 2, ...)

    def get(self, name: str, default: str | None = None) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


class AppConn:
    """One accepted connection of a ``RawApp``: a socket with a read buffer."""

    def __init__(self, app: "RawApp", sock: socket.socket, number: int):
        self.app, self.sock, self.number = app, sock, number
        self.buf = b""
        self.eof = False

    def _recv(self, timeout: float | None) -> bool:
        """One read; False on EOF, reset or timeout."""
        self.sock.settimeout(timeout if timeout is not None else IO_TIMEOUT)
        try:
            data = self.sock.recv(65536)
        except (OSError, ValueError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_until(self, marker: bytes, idle: float | None = None) -> bytes | None:
        while marker not in self.buf:
            if self.eof or not self._recv(idle):
                return None
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_exactly(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            if self.eof or not self._recv(None):
                return None
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_request(self, idle: float | None = None) -> Request | None:
        """The next request (recorded in ``app.requests``), or None when the peer closed, reset,
        sent garbage, or stayed silent ``idle`` seconds between requests."""
        while self.buf.startswith(b"\r\n"):
            self.buf = self.buf[2:]
        raw = self.read_until(b"\r\n\r\n", idle)
        if raw is None:
            return None
        lines = raw[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return None
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
        req = Request(parts[0], parts[1], parts[2], headers, connection=self.number)
        if "chunked" in (req.get("transfer-encoding") or "").lower():
            body = b""
            while True:
                size_line = self.read_until(b"\r\n")
                if size_line is None:
                    return None
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.read_until(b"\r\n") not in (b"\r\n", None):
                        pass  # trailer lines
                    break
                piece = self.read_exactly(size + 2)
                if piece is None:
                    return None
                body += piece[:-2]
            req.body = body
        elif req.get("content-length"):
            body = self.read_exactly(int(req.get("content-length")))
            if body is None:
                return None
            req.body = body
        self.app.record(req)
        return req

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def shutdown_write(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)


def http_response(status: int, body: bytes = b"", headers: list[tuple[str, str]] | None = None,
                  reason: str = "OK", length: bool = True) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers or []]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def identity_body(name: str, req: Request) -> bytes:
    return f"{name} {req.method} {req.target}".encode()


def identity(app: "RawApp", conn: AppConn, req: Request) -> bool:
    """The honest answer: 200, ``X-App: <name>``, body ``<name> <METHOD> <target>``; keep-alive.
    ``/big/<n>``: n bytes of ``pattern_bytes``.  ``/closing``: ``Connection: close``, then close."""
    if req.path.startswith("/big/"):
        body = pattern_bytes(int(req.path[5:]))
        return conn.send(http_response(200, body, [("X-App", app.name)]))
    if req.path == "/closing":
        conn.send(http_response(200, identity_body(app.name, req), [("X-App", app.name), ("Connection", "close")]))
        return False
    return conn.send(http_response(200, identity_body(app.name, req), [("X-App", app.name)]))


def pattern_bytes(n: int) -> bytes:
    block = bytes(range(256))
    return (block * (n // 256 + 1))[:n]


class RawApp:
    """A local app on 127.0.0.1 port 0.  ``respond(app, conn, req) -> bool`` answers one request
    (False: close the connection).  ``idle_close``: close a connection after that many idle seconds
    between requests (an app's own keep-alive timeout)."""

    def __init__(self, name: str, respond=identity, idle_close: float | None = None):
        self.name, self.respond, self.idle_close = name, respond, idle_close
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[Request] = []
        self.connections = 0
        self.lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, name=f"app-{name}", daemon=True)
        self._accepter.start()

    def record(self, req: Request) -> None:
        with self.lock:
            self.requests.append(req)

    def targets(self) -> list[str]:
        with self.lock:
            return [r.target for r in self.requests]

    def _accept(self):
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                number = self.connections
                self._socks.append(sock)
            t = threading.Thread(target=self._serve, args=(sock, number), name=f"app-{self.name}-{number}",
                                 daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, sock: socket.socket, number: int):
        conn = AppConn(self, sock, number)
        try:
            while True:
                req = conn.read_request(self.idle_close)
                if req is None or not self.respond(self, conn, req):
                    return
        except Exception:  # a broken test app must not hang the test: the assertions will tell
            return
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def close(self):
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (Linux); close() alone does not
        with contextlib.suppress(OSError):
            self.listener.close()
        with self.lock:
            socks = list(self._socks)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(5)
        self._accepter.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --- a visitor on a raw socket -------------------------------------------------------------------

class Closed(Exception):
    """The server closed (EOF or reset) where a response had to start."""


class Stalled(AssertionError):
    """Nothing more arrived before the deadline on a connection still open."""


class Garbled(AssertionError):
    """Bytes that are not an HTTP/1.1 response where one must start or go on."""


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    interim: list[int] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        values = self.values(name)
        return ", ".join(values) if values else None

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def connection_tokens(self) -> set[str]:
        return {t.strip().lower() for v in self.values("connection") for t in v.split(",") if t.strip()}


class RawVisitor:
    """A visitor connection; ``received`` keeps every byte that came in, for failure messages."""

    def __init__(self, port: int, tls_host: str | None = None, sndbuf: int | None = None):
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if sndbuf is not None:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        raw.settimeout(IO_TIMEOUT)
        raw.connect(("127.0.0.1", port))
        self.local_port = raw.getsockname()[1]
        if tls_host is not None:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # the visitor's side is not what these tests check
            raw = ctx.wrap_socket(raw, server_hostname=tls_host)
        self.sock = raw
        self.buf = b""
        self.received = b""
        self.eof = False

    def send(self, data: bytes) -> bool:
        """False if the relay already closed (reset, broken pipe)."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def _fill(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Stalled(f"nothing more within the deadline; received so far: {self.received[-600:]!r}")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            raise Stalled(f"nothing more within the deadline; received so far: {self.received[-600:]!r}") from None
        except (ssl.SSLError, OSError):
            data = b""
        if not data:
            self.eof = True
            raise Closed(f"closed; received so far: {self.received[-600:]!r}")
        self.buf += data
        self.received += data

    def _until(self, marker: bytes, deadline: float) -> bytes:
        while marker not in self.buf:
            self._fill(deadline)
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def _exactly(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n:
            self._fill(deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_response(self, method: str = "GET", timeout: float = 5.0) -> Response:
        """The next final response (1xx interim responses other than 101 are collected and
        skipped).  Closed: EOF before a response started; Stalled: the deadline passed;
        Garbled: not HTTP/1.1; a body cut short by a close raises Closed too."""
        deadline = time.monotonic() + timeout
        interim = []
        while True:
            head = self._until(b"\r\n\r\n", deadline)
            lines = head[:-4].decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise Garbled(f"not a status line: {lines[0]!r}; received so far: {self.received[-600:]!r}")
            status = int(parts[1])
            headers = []
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep:
                    raise Garbled(f"not a header line: {line!r}")
                headers.append((name.strip(), value.strip()))
            resp = Response(status, parts[2] if len(parts) > 2 else "", headers, interim=interim)
            if 100 <= status < 200 and status != 101:
                interim.append(status)
                continue
            break
        if method == "HEAD" or status in (101, 204, 304):
            return resp
        if "chunked" in (resp.get("transfer-encoding") or "").lower():
            body = b""
            while True:
                size_line = self._until(b"\r\n", deadline)
                try:
                    size = int(size_line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise Garbled(f"bad chunk size line {size_line!r}") from None
                if size == 0:
                    while self._until(b"\r\n", deadline) != b"\r\n":
                        pass
                    break
                body += self._exactly(size + 2, deadline)[:-2]
            resp.body = body
        elif resp.get("content-length") is not None:
            values = {v.strip() for v in resp.values("content-length")}
            if len(values) != 1 or not next(iter(values)).isdigit():
                raise Garbled(f"Content-Length {resp.values('content-length')}")
            resp.body = self._exactly(int(next(iter(values))), deadline)
        else:  # until close
            with contextlib.suppress(Closed):
                while True:
                    self._fill(deadline)
            resp.body, self.buf = self.buf, b""
        return resp

    def wait_closed(self, timeout: float = 5.0) -> bytes:
        """Read until the server closes; returns what came (beyond what was already parsed).
        Raises Stalled if the connection is still open after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        start = len(self.received) - len(self.buf)
        with contextlib.suppress(Closed):
            while not self.eof:
                self._fill(deadline)
        return self.received[start:]

    def close(self):
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def request(method: str, target: str, host: str, headers: list[tuple[str, str]] | None = None,
            body: bytes = b"", length: bool | None = None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"] + [f"{k}: {v}" for k, v in headers or []]
    if length or (length is None and body):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --- a hand-made agent that never opens a data connection ------------------------------------------

class HandAgent:
    """Authenticates a tunnel's control channel (Hello/Welcome) and then does nothing: the relay's
    requests for data connections go unanswered, so a route to its tunnel stays pending."""

    def __init__(self, relay_port: int, token: str):
        from intunnel.wire import protocol as p
        s = socket.create_connection(("127.0.0.1", relay_port), timeout=IO_TIMEOUT)
        s.sendall(f"GET {p.AGENT_PATH} HTTP/1.1\r\nHost: localhost\r\nUpgrade: {p.UPGRADE_TOKEN}\r\n"
                  f"Connection: Upgrade\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                raise AssertionError(f"the relay refused the hand-made agent: {data!r}")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        s.sendall(p.encode(p.Hello()))
        decoder = p.FrameDecoder()
        messages = decoder.feed(rest)
        while not messages:
            chunk = s.recv(65536)
            if not chunk:
                raise AssertionError("the relay closed the hand-made agent's control channel")
            messages = decoder.feed(chunk)
        assert isinstance(messages[0], p.Welcome), messages
        self.sock = s

    def close(self):
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --- the relay's sockets, seen from /proc -----------------------------------------------------------

_LISTEN = "0A"


def _tcp_table() -> dict[int, tuple[int, int, str]]:
    """inode -> (local port, remote port, state) for every TCP socket of this network namespace."""
    table = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(name) as f:
            next(f)
            for line in f:
                cols = line.split()
                table[int(cols[9])] = (int(cols[1].rsplit(":", 1)[1], 16), int(cols[2].rsplit(":", 1)[1], 16),
                                       cols[3])
    return table


def _my_socket_inodes() -> set[int]:
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def relay_stray_sockets(relay_port: int) -> list[tuple[int, str]]:
    """The in-process relay's accepted sockets whose peer is no open socket of this process
    (agents and test visitors are in this process; nginx, or a visitor the test already
    closed, is not): (peer port, TCP state) each.  Empty once the relay let every one go."""
    table = _tcp_table()
    mine = [table[i] for i in _my_socket_inodes() if i in table]
    peers_here = {local for local, remote, _ in mine if remote == relay_port}
    return [(remote, state) for local, remote, state in mine
            if local == relay_port and state != _LISTEN and remote not in peers_here]


# --- tenants: the relay in this process, one tunnel per app ----------------------------------------

class Tenants:
    """The relay in this process, one tunnel per app (``<name>.localhost``), each with a real agent
    (``ClientThread``) or, for names in ``slow``, a ``HandAgent`` that never opens a data connection."""

    def __init__(self, settings, apps: dict[str, RawApp], slow: tuple[str, ...] = (), **relay_settings):
        self.stack = contextlib.ExitStack()
        try:
            self.apps = apps
            for app in apps.values():
                self.stack.enter_context(app)
            tokens = {name: make_tunnel(settings, name, app.port).token for name, app in apps.items()}
            slow_tokens = {name: make_tunnel(settings, name, 9).token for name in slow}
            self.relay = self.stack.enter_context(RelayThread(settings.replace(log_level="warning", **relay_settings)))
            self.port = self.relay.port
            for name, app in apps.items():
                client = self.stack.enter_context(ClientThread(self.relay.url, tokens[name], app.port))
                client.wait_connected()
            self.hand = {name: self.stack.enter_context(HandAgent(self.port, slow_tokens[name])) for name in slow}
            names = set(apps) | set(slow)
            wait_for(lambda: names <= set(self.slots()), 10, message="every agent's session on the relay")
        except BaseException:
            self.stack.close()
            raise

    @staticmethod
    def host(name: str) -> str:
        return f"{name}.localhost"

    def slots(self) -> dict[str, int]:
        async def read():
            return {name: s.visitors for name, s in self.relay.relay.sessions.items()}
        return self.relay.call(read(), 10)

    def visitor(self, **kwargs) -> RawVisitor:
        return self.stack.enter_context(RawVisitor(self.port, **kwargs))

    def get(self, name: str, target: str = "/") -> tuple[int, bytes]:
        """One honest request on a fresh connection (a fence, or a probe of the tunnel)."""
        with RawVisitor(self.port) as v:
            v.send(request("GET", target, self.host(name), [("Connection", "close")]))
            r = v.read_response()
            return r.status, r.body

    def assert_settled(self, *visitors: RawVisitor) -> None:
        """Close the test's visitors; then every slot is free and the relay holds none of their sockets."""
        for v in visitors:
            v.close()

        def settled():
            slots, stray = self.slots(), relay_stray_sockets(self.port)
            return (slots, stray) if not any(slots.values()) and not stray else None
        try:
            wait_for(settled, SETTLE, message="slots and sockets")
        except AssertionError:
            raise AssertionError(f"the relay did not let go within {SETTLE}s: slots {self.slots()}, "
                                 f"sockets of gone visitors (peer port, TCP state) {relay_stray_sockets(self.port)}"
                                 ) from None

    def close(self):
        self.stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
