"""The inspector's HTTP server: the page and the JSON API, on loopback, in the client's loop.

Safe by construction, since it holds visitors' cookies and bodies:

- it binds to a loopback address only (``parse_address`` refuses any other);
- the ``Host`` header must name its own address (a DNS-rebinding page can't read it);
- a random per-run secret is required: ``/?secret=...`` (the printed URL) sets it as a
  SameSite=Strict cookie, scripts send ``Authorization: Bearer ...``;
- writes (POST, DELETE) must not come from another origin (``Origin``, ``Sec-Fetch-Site``)
  and a replay must be ``application/json`` (a form can't send that cross-site);
- requests are bounded (head and body) and answered one per connection;
- nothing is logged, bodies least of all.

Requests are parsed by the project's own HTTP/1.1 code (``wire/http1.parse_request_head``).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import secrets
import socket
import urllib.parse
from typing import Callable, Optional, Tuple

from ...wire.http1 import HttpError, parse_request_head
from ...wire.netio import wait_for
from . import page, views
from .capture import Capture, Store
from .replay import MAX_REPLAY_BODY, ReplayError, replay

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 4040
PORT_TRIES = 20                      # the default port taken: the next ones, this many in all
MAX_HEAD = 16 * 1024                 # an API request's head
MAX_BODY = MAX_REPLAY_BODY * 2       # an API request's body (a replay's JSON, its body base64'd)
READ_TIMEOUT = 10.0                  # seconds to receive a whole API request
LIST_LIMIT = 50                      # GET /api/requests/http's default limit (ngrok's)
MAX_LIST_LIMIT = 500
API = "/api/requests/http"


def parse_address(value: str) -> Tuple[str, int]:
    """``--inspect HOST:PORT`` (or ``PORT``): ValueError unless HOST is a loopback address."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = DEFAULT_HOST, value
    host = host.strip("[]") or DEFAULT_HOST
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("--inspect takes HOST:PORT, e.g. 127.0.0.1:4040")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"--inspect must be a loopback address such as 127.0.0.1 (the inspector shows "
                         f"visitors' cookies and bodies), not {host}")
    return host, int(port)


class Inspector:
    def __init__(self, store: Store, upstream: Callable[[], Tuple[str, int]],
                 public_url: Callable[[], Optional[str]], secret: Optional[str] = None):
        self.store = store
        self.upstream = upstream
        self.public_url = public_url
        self.secret = secret or secrets.token_urlsafe(24)
        self.host, self.port = DEFAULT_HOST, 0
        self._server: Optional[asyncio.AbstractServer] = None

    # --- what the tunnel uses ------------------------------------------------------------------
    def capture(self, origin=None) -> Capture:
        """A connection's capture; ``origin`` (an Agent: ``url``, ``upstream_host``, ``local_port``)
        is the tunnel it came through, where its replays go (several with ``intunnel start``)."""
        return Capture(self.store, origin=origin)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The printed URL: it carries the secret."""
        return f"http://{self.address}/?secret={self.secret}"

    async def start(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, next_free: bool = True) -> None:
        """Listen on host:port (when taken and ``next_free``: the next free port, or any); OSError."""
        ports = [port + i for i in range(PORT_TRIES) if port + i <= 65535] + [0] if next_free and port else [port]
        for i, candidate in enumerate(ports):
            try:   # after PORT_TRIES taken ones, any free port: several clients on one machine all start
                # bind and listen here, at once: two clients starting together may both bind a port
                # (SO_REUSEADDR) and only one listen; a loop's start_server can report the loser's
                # failure late (uvloop: a server without a socket), this says it now.
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                sock = socket.create_server((host, candidate), family=family)
                break
            except OSError:
                if i == len(ports) - 1:
                    raise
        self.host, self.port = host, sock.getsockname()[1]
        self._server = await asyncio.start_server(self._serve, sock=sock, limit=MAX_HEAD + 4)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    # --- one request per connection ------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, headers, body = await wait_for(self._answer(reader), READ_TIMEOUT * 2)
        except asyncio.TimeoutError:
            status, headers, body = _error(408, "TIMEOUT", "the request took too long")
        except Exception:   # a bug here must not end the client: the page gets a 500
            status, headers, body = _error(500, "INTERNAL", "the inspector failed on this request")
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", f"Content-Length: {len(body)}",
                "Connection: close", "Cache-Control: no-store", "X-Content-Type-Options: nosniff",
                "Referrer-Policy: no-referrer", "X-Frame-Options: DENY"] + [f"{k}: {v}" for k, v in headers]
        try:
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader):
        try:
            raw = await wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            head = parse_request_head(raw[:-4])
        except (asyncio.LimitOverrunError, ValueError):
            return _error(431, "HEAD_TOO_LARGE", "request head too large")
        except asyncio.IncompleteReadError:
            return _error(400, "BAD_REQUEST", "incomplete request")
        except HttpError as e:
            return _error(e.status, "BAD_REQUEST", e.message)
        if head.get("host") not in self._hosts():
            return _error(403, "WRONG_HOST", "the Host header is not the inspector's address")
        if head.body == "chunked":
            return _error(411, "LENGTH_REQUIRED", "send a Content-Length")
        if head.length > MAX_BODY:
            return _error(413, "BODY_TOO_LARGE", f"at most {MAX_BODY} bytes")
        body = await wait_for(reader.readexactly(head.length), READ_TIMEOUT) if head.length else b""
        url = urllib.parse.urlsplit(head.target)
        query = dict(urllib.parse.parse_qsl(url.query))
        method, path = head.method, url.path
        if method == "GET" and path == "/" and "secret" in query:
            if not hmac.compare_digest(query["secret"].encode(), self.secret.encode()):
                return _error(403, "WRONG_SECRET", "this is not the secret the client printed")
            cookie = f"{self._cookie_name()}={self.secret}; Path=/; HttpOnly; SameSite=Strict"
            return 303, [("Location", "/"), ("Set-Cookie", cookie)], b""
        if not self._authorized(head):
            if path.startswith("/api/"):
                return _error(401, "SECRET_REQUIRED", "open the inspector URL the client printed, or send "
                                                      "Authorization: Bearer SECRET")
            return 401, [("Content-Type", "text/plain; charset=utf-8")], \
                b"Open the inspector with the URL intunnel printed (it carries this run's secret).\n"
        if method not in ("GET", "HEAD"):
            refused = self._cross_origin(head)
            if refused:
                return _error(403, "CROSS_ORIGIN", refused)
        if path == "/" and method == "GET":
            return 200, [("Content-Type", "text/html; charset=utf-8"),
                         ("Content-Security-Policy", page.CSP)], page.HTML.encode("utf-8")
        if path == API:
            if method == "GET":
                return self._list(query)
            if method == "DELETE":
                self.store.clear()
                return 204, [], b""
            if method == "POST":
                return await self._replay(head, body)
            return _error(405, "METHOD_NOT_ALLOWED", "GET, POST or DELETE")
        if path.startswith(API + "/") and method == "GET":
            record = self.store.get(path[len(API) + 1:])
            if record is None:
                return _error(404, "NOT_FOUND", "no such exchange (cleared, or dropped as the store filled)")
            return _json(200, views.summary(record, detail=True))
        return _error(404, "NOT_FOUND", "no such page")

    def _hosts(self) -> set:
        names = {self.address}
        if self.host == "127.0.0.1":
            names.add(f"localhost:{self.port}")
        return names

    def _cookie_name(self) -> str:
        return f"intunnel_inspect_{self.port}"   # cookies ignore ports: one per inspector

    def _authorized(self, head) -> bool:
        given = ""
        auth = head.get("authorization") or ""
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        else:
            for part in (head.get("cookie") or "").split(";"):
                name, _, value = part.strip().partition("=")
                if name == self._cookie_name():
                    given = value
        return bool(given) and hmac.compare_digest(given.encode(), self.secret.encode())

    def _cross_origin(self, head) -> str:
        origin = head.get("origin")
        if origin is not None and origin not in {f"http://{h}" for h in self._hosts()}:
            return "a write from another origin"
        site = head.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return "a write from another site"
        return ""

    def _list(self, query: dict):
        try:
            limit = min(MAX_LIST_LIMIT, max(0, int(query.get("limit", LIST_LIMIT))))
        except ValueError:
            return _error(400, "INVALID_LIMIT", "limit must be a number")
        path, method, status = query.get("path"), query.get("method"), query.get("status")
        found = []
        for record in self.store.records():
            if len(found) >= limit:
                break
            if views.matches(record, path, method, status):
                found.append(views.summary(record))
        return _json(200, {"requests": found, "uri": API, "version": self.store.version,
                           "public_url": self.public_url(), "body_limit": self.store.body_limit})

    async def _replay(self, head, body: bytes):
        if (head.get("content-type") or "").split(";")[0].strip().lower() != "application/json":
            return _error(415, "JSON_REQUIRED", "send the replay as application/json")
        try:
            edits = json.loads(body)
        except ValueError:
            return _error(400, "INVALID_JSON", "the body is not JSON")
        if not isinstance(edits, dict) or not isinstance(edits.get("id"), str):
            return _error(400, "INVALID_REPLAY", 'send {"id": "..."} and optionally method, path, headers, body')
        record = self.store.get(edits["id"])
        if record is None:
            return _error(404, "NOT_FOUND", "no such exchange")
        origin = record.origin
        host, port = (origin.upstream_host, origin.local_port) if origin is not None else self.upstream()
        try:
            new = await replay(self.store, record, edits, host, port)
        except ReplayError as e:
            return _error(e.status, e.code, e.message)
        if new is None:
            return _error(502, "NOT_RECORDED", "the replay was sent but not recorded")
        return _json(201, views.summary(new, detail=True))


_REASONS = {200: "OK", 201: "Created", 204: "No Content", 303: "See Other", 400: "Bad Request",
            401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 409: "Conflict", 411: "Length Required", 413: "Content Too Large",
            415: "Unsupported Media Type", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
            502: "Bad Gateway"}


def _json(status: int, obj) -> tuple:
    return status, [("Content-Type", "application/json")], json.dumps(obj).encode("utf-8")


def _error(status: int, code: str, message: str) -> tuple:
    return _json(status, {"error": True, "message": message, "code": code})
