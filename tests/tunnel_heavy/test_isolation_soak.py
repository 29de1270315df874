"""Isolation soak: many visitors, 20 tenants, every answer checked against who asked for it.

20 tunnels, each with its own local app (``soak_apps.SoakApp``) that signs every answer
with its tunnel's name and the request's nonce (``X-App``, ``X-Nonce`` and a signature
line in the body) and records every request it executed; one real client
(``intunnel http``, a subprocess) per tunnel; the relay in this process (``RelayThread``),
so its visitor slots can be read.  Visitors are threads on raw sockets (every byte
theirs) running random scenarios: keep-alive connections switching Host between
requests, pipelined requests to different tunnels (and a request pipelined after
``Connection: close``, which must never run), ``Connection: close``, HEAD, 204/304,
chunked and ``Expect: 100-continue`` request bodies, chunked and bulk responses,
Upgrade requests (accepted with a 101 and a line echo by even-numbered apps, answered
with a plain 200 by the others, after which the connection must go on as HTTP),
malformed requests (a 4xx and a close), slow answers, and apps that close right after
or in the middle of an answer.  Request bodies carry fake heads of other tenants' requests
and responses, so a framing slip shows up as a wrong signature.

Run once straight at the relay, once through a real nginx with the project's generated
config and TLS, and once across two relays forwarding to each other (PostgreSQL only): two
relays in this process on the test's database, each with a peer listener and the same secret,
half the clients on each, every visitor at the first, so half the tunnels are served there and
half through the second (relay/peers.py) and a keep-alive connection switching Host crosses
between the two paths; it also checks on the relays' counters that forwarding really happened,
and counts the relays' connections to each other apart (parked ones are closed at the end, as
nginx's keep-alive connections go when it stops).

It fails on any answer with another identity, nonce, status or body; any request executed by
the wrong app, twice (a GET twice is nginx's right to retry an idempotent request on a dead
keep-alive connection, so it is only counted there), or at all when it must not be; any answer
that is missing while the connection stays open (a timeout); and, at the end, any visitor slot
still held, any relay socket left that is not an agent's (nor, with two relays, a peer
connection one of them parked), or open descriptors above the baseline.  The soak runs ``SOAK_SECONDS``
(``INTUNNEL_SOAK_SECONDS``, default 30) or ``SOAK_MAX_REQUESTS`` requests, whichever comes
first; a visitor blocked on a dead connection gives up after ``IO_TIMEOUT``.  Every run
prints one ``SOAK ...`` summary line (``-s`` to see it; it is also in a failure's message);
``INTUNNEL_SOAK_SEED`` replays a run's random choices (the scheduling still differs).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import re
import secrets
import socket
import ssl
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field

import pytest

from conftest import require_tool
from intunnel.models import Route, Tunnel
from intunnel.relay import store as relay_store
from tests.deploy.nginx_support import running_nginx, tls_front
from tests.support.tunnel import ClientProcess, RelayThread, make_tunnel, wait_for

from .soak_apps import SoakApp, big_body_for, body_for, tunnel_of

TUNNELS = 20
VISITORS = 24                    # concurrent visitor threads
SOAK_SECONDS = float(os.environ.get("INTUNNEL_SOAK_SECONDS") or 30)
SOAK_MAX_REQUESTS = int(os.environ.get("INTUNNEL_SOAK_MAX_REQUESTS") or 200_000)
IO_TIMEOUT = 10.0                # one read or write; the slowest app answers in 0.8 s
SETTLE_TIMEOUT = 30.0            # for slots and sockets to come back after the soak
FD_SLACK = 8                     # descriptors a settled process may hold beyond its baseline
DOMAIN = "localhost"             # the clients resolve the relay's name: loopback only
MAX_HEAD = 64 * 1024
SIGNATURE = re.compile(rb"app=(\S*) nonce=(\S*) method=\S* body=\S*\n")
# Baits in request bodies: if any framing slips, these become another tenant's request or answer.
BAITS = (b"\r\n\r\nHTTP/1.1 200 OK\r\nX-App: t99\r\nX-Nonce: forged\r\nContent-Length: 0\r\n\r\n",
         b"0\r\n\r\nGET /echo?n=forged-t00 HTTP/1.1\r\nHost: t00.localhost\r\n\r\n",
         b"POST /echo?n=forged-t01 HTTP/1.1\r\nHost: t01.localhost\r\nContent-Length: 3\r\n\r\nabc")


def tunnel_names(count: int = TUNNELS) -> list[str]:
    return [f"t{i:02d}" for i in range(count)]


def accepts_upgrade(name: str) -> bool:
    return int(name[1:]) % 2 == 0


# --- the visitor's HTTP/1.1, on raw sockets -----------------------------------------------------

class Closed(Exception):
    """The server closed (EOF or reset)."""


class Timeout(Exception):
    """Nothing for IO_TIMEOUT seconds on a connection that is still open."""


class Garbled(Exception):
    """Bytes that are not an HTTP/1.1 response where one must start."""


@dataclass
class Response:
    version: str
    status: int
    headers: dict[str, list[str]]
    body: bytes = b""
    interim: list[int] = field(default_factory=list)

    def values(self, name: str) -> list[str]:
        return self.headers.get(name, [])

    @property
    def closes(self) -> bool:
        return self.version == "HTTP/1.0" or "close" in ",".join(self.values("connection")).lower()


class Truncated(Exception):
    """The connection closed in the middle of a body: what came of the response."""

    def __init__(self, response: Response):
        super().__init__(response.status)
        self.response = response


class Wire:
    """A socket with a receive buffer; ``received`` counts every byte that came in."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()
        self.received = 0

    def mark(self) -> int:
        return self.received - len(self.buf)

    def since(self, mark: int) -> int:
        """Bytes that arrived after everything consumed at ``mark``."""
        return self.received - mark

    def fill(self) -> None:
        try:
            data = self.sock.recv(262144)
        except TimeoutError:
            raise Timeout() from None
        except OSError:  # reset, TLS EOF without close_notify, ...
            data = b""
        if not data:
            raise Closed()
        self.buf += data
        self.received += len(data)

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise Timeout() from None
        except OSError:
            raise Closed() from None

    def until(self, sep: bytes, limit: int = MAX_HEAD) -> bytes:
        start = 0
        while (end := self.buf.find(sep, start)) < 0:
            if len(self.buf) > limit:
                raise Garbled(f"no {sep!r} in {bytes(self.buf[:80])!r}")
            start = max(0, len(self.buf) - len(sep) + 1)
            self.fill()
        data = bytes(self.buf[:end])
        del self.buf[:end + len(sep)]
        return data

    def take(self, n: int, into: bytearray) -> None:
        while True:
            piece = min(n, len(self.buf))
            if piece:
                into += self.buf[:piece]
                del self.buf[:piece]
                n -= piece
            if not n:
                return
            self.fill()

    def to_eof(self, into: bytearray) -> None:
        while True:
            into += self.buf
            self.buf.clear()
            try:
                self.fill()
            except Closed:
                return


def read_head(wire: Wire) -> Response:
    raw = wire.until(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    m = re.fullmatch(r"(HTTP/1\.[01]) (\d{3})(?: .*)?", lines[0])
    if not m:
        raise Garbled(f"status line {lines[0][:80]!r}")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise Garbled(f"header line {line[:80]!r}")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return Response(m.group(1), int(m.group(2)), headers)


def read_body(wire: Wire, method: str, resp: Response) -> Response:
    """Read the body ``resp``'s head announces (RFC 9112 section 6.3); Truncated on a close."""
    if method == "HEAD" or resp.status in (204, 304) or resp.status < 200:
        return resp
    body = bytearray()
    te = ",".join(resp.values("transfer-encoding")).lower()
    lengths = set(resp.values("content-length"))
    try:
        if te:
            if not te.replace(" ", "").endswith("chunked"):
                wire.to_eof(body)
            else:
                while True:
                    size_field = wire.until(b"\r\n").split(b";", 1)[0].strip()
                    if not re.fullmatch(rb"[0-9a-fA-F]{1,8}", size_field):
                        raise Garbled(f"chunk size {size_field[:40]!r}")
                    size = int(size_field, 16)
                    if size == 0:
                        while wire.until(b"\r\n"):
                            pass
                        break
                    wire.take(size, body)
                    if wire.until(b"\r\n", limit=2):
                        raise Garbled("chunk data longer than its size")
        elif lengths:
            if len(lengths) > 1 or not next(iter(lengths)).isdigit():
                raise Garbled(f"Content-Length {sorted(lengths)}")
            wire.take(int(next(iter(lengths))), body)
        else:
            wire.to_eof(body)
    except Closed:
        resp.body = bytes(body)
        raise Truncated(resp) from None
    resp.body = bytes(body)
    return resp


def read_response(wire: Wire, method: str) -> Response:
    """The next final response (a 101 counts as final), skipping and noting 1xx ones."""
    interim = []
    while True:
        resp = read_head(wire)
        if 100 <= resp.status < 200 and resp.status != 101:
            interim.append(resp.status)
            continue
        resp.interim = interim
        return read_body(wire, method, resp)


# --- requests and the judgement of their answers ---------------------------------------------------

@dataclass
class Req:
    tunnel: str
    nonce: str
    kind: str
    method: str
    data: bytes                  # what goes on the wire (for an Expect request: the head only)
    body_data: bytes = b""       # an Expect request's body, sent after the 100
    expect_status: int = 200
    expect_body: bytes | None = b""   # None: not compared (a body the app cuts on purpose)
    head_length: int | None = None    # HEAD: the Content-Length the GET would have
    close: bool = False          # the request asks Connection: close
    forbidden: bool = False      # must never be executed (after a close, or malformed)


def check(req: Req, resp: Response, truncated: bool = False) -> tuple[str, list[str]]:
    """Judge one answer: ("ok", []), ("error", [kind]) for an unsigned 4xx/5xx (a relay or
    nginx page), or ("fail", kinds) for anything signed by another app or request, or wrong."""
    apps, nonces = resp.values("x-app"), resp.values("x-nonce")
    signed_body = SIGNATURE.findall(resp.body[:65536])
    if not (apps or nonces or signed_body):
        if resp.status >= 400:
            return "error", [f"status_{resp.status}"]
        return "fail", ["unsigned"]
    kinds = []
    if not apps or any(a != req.tunnel for a in apps) or \
            any(a.decode("latin-1") != req.tunnel for a, _ in signed_body):
        kinds.append("wrong_identity")
    if not nonces or any(n != req.nonce for n in nonces) or \
            any(n.decode("latin-1") != req.nonce for _, n in signed_body):
        kinds.append("wrong_nonce")
    if kinds:
        return "fail", kinds
    if resp.status != req.expect_status:
        kinds.append("wrong_status")
    elif not truncated and req.expect_body is not None and resp.body != req.expect_body:
        kinds.append("wrong_body")
    elif truncated and req.expect_body is not None and not req.expect_body.startswith(resp.body):
        kinds.append("wrong_body")
    elif req.head_length is not None and resp.values("content-length") != [str(req.head_length)]:
        kinds.append("wrong_head_length")
    return ("fail", kinds) if kinds else ("ok", [])


@dataclass
class Sent:
    tunnel: str
    method: str
    forbidden: bool


def audit(sent: dict[str, Sent], executed: dict[str, list[tuple[str, str, str]]], via_nginx: bool) -> Counter:
    """What the apps executed, against what the visitors sent: misroutes, duplicates, forbidden."""
    out: Counter = Counter()
    runs: Counter = Counter()
    methods: dict[str, str] = {}
    for app, records in executed.items():
        for nonce, method, _path in records:
            if not nonce:
                out["info:unsigned_request_at_app"] += 1
                continue
            runs[nonce] += 1
            methods[nonce] = method
            if tunnel_of(nonce) != app:
                out["fail:misrouted"] += 1
    for nonce, count in runs.items():
        s = sent.get(nonce)
        if s is None:
            out["fail:unknown_request_at_app"] += 1  # nobody sent this: a bait in a body became a request
            continue
        if s.forbidden:
            out["fail:executed_forbidden"] += 1
        if count > 1:
            if via_nginx and methods[nonce] in ("GET", "HEAD"):
                out["info:nginx_retried_idempotent"] += count - 1
            else:
                out["fail:duplicate"] += count - 1
    return out


class Tally:
    """Thread-safe counters ("ok", "requests", "fail:*", "error:*", "info:*") and a few examples."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, key: str, n: int = 1, example: str | None = None) -> None:
        with self.lock:
            self.counts[key] += n
            if example is not None and len(self.examples.setdefault(key, [])) < 4:
                self.examples[key].append(example[:600])

    def __getitem__(self, key: str) -> int:
        with self.lock:
            return self.counts[key]

    def prefixed(self, prefix: str) -> dict[str, int]:
        with self.lock:
            return {k[len(prefix):]: v for k, v in sorted(self.counts.items()) if k.startswith(prefix)}


# --- the front visitors talk to ------------------------------------------------------------------------

@functools.cache
def visitor_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the visitor's TLS is not what this test checks
    return ctx


@dataclass
class Front:
    name: str
    port: int
    tls: bool = False
    via_nginx: bool = False

    def host(self, tunnel: str) -> str:
        return f"{tunnel}.{DOMAIN}:{self.port}"

    def connect(self, tunnel: str) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=IO_TIMEOUT)
        if self.tls:
            try:
                sock = visitor_tls().wrap_socket(sock, server_hostname=f"{tunnel}.{DOMAIN}")
            except BaseException:
                sock.close()
                raise
        return sock


class Link:
    """One visitor connection."""

    def __init__(self, owner: "Visitor", tunnel: str):
        self.owner = owner
        self.sock = owner.front.connect(tunnel)
        self.wire = Wire(self.sock)
        self.exchanges = 0
        owner.links.add(self)

    def close(self) -> None:
        self.owner.links.discard(self)
        with contextlib.suppress(OSError):
            self.sock.close()


KEEPALIVE_KINDS = {"get": 20, "head": 6, "post": 12, "post_chunked": 8, "s204": 5, "s304": 5, "chunked": 8,
                   "slow": 4, "big": 2, "ws": 6, "close_silent": 3, "close_after": 2, "close_mid": 1}
PIPELINE_KINDS = {"get": 6, "head": 2, "post": 4, "post_chunked": 3, "s204": 2, "s304": 2, "chunked": 3,
                  "slow": 1, "big": 1}
SCENARIOS = {"keepalive": 30, "pipeline": 15, "close": 10, "expect": 10, "upgrade": 12, "malformed": 6,
             "closing": 10}
MALFORMED = ("no_colon", "bad_chunk", "two_lengths", "space_in_name")


class Visitor:
    """One visitor thread: random scenarios until the soak's time or request budget is spent."""

    def __init__(self, soak: "Soak", index: int):
        self.soak = soak
        self.front = soak.front
        self.tally = soak.tally
        self.index = index
        self.rng = random.Random(soak.seed * 1000 + index)
        self.seq = 0
        self.links: set[Link] = set()

    # --- building requests ---
    def nonce(self, tunnel: str) -> str:
        self.seq += 1
        return f"{self.front.name[0]}{self.index:02d}x{self.seq:06d}-{tunnel}"

    def body(self) -> bytes:
        rng = self.rng
        parts = [rng.randbytes(rng.randint(0, 1500))]
        if rng.random() < 0.5:
            parts.insert(rng.randint(0, 1), rng.choice(BAITS))
        return b"".join(parts)

    def chunked(self, body: bytes) -> bytes:
        out, i = [], 0
        while i < len(body):
            n = min(len(body) - i, self.rng.randint(1, max(1, len(body) // 2)))
            ext = b";soak=1" if self.rng.random() < 0.3 else b""
            out.append(b"%x%s\r\n%s\r\n" % (n, ext, body[i:i + n]))
            i += n
        return b"".join(out) + b"0\r\n\r\n"

    def make(self, tunnel: str, kind: str, close: bool = False, forbidden: bool = False) -> Req:
        rng = self.rng
        nonce = self.nonce(tunnel)
        method, path, body, framing = "GET", "/echo", b"", None
        expect_status, head_length, extra = 200, None, []
        if kind == "head":
            method = "HEAD"
        elif kind in ("post", "post_chunked", "expect"):
            method, body = "POST", self.body()
            framing = "chunked" if kind == "post_chunked" or (kind == "expect" and rng.random() < 0.4) else "length"
            if kind == "expect":
                extra.append("Expect: 100-continue")
        elif kind in ("s204", "s304"):
            path, expect_status = "/" + kind, int(kind[1:])
            if kind == "s304":
                extra.append(f'If-None-Match: "{nonce}"')
        elif kind == "chunked":
            path = "/chunked"
        elif kind == "slow":
            path = f"/slow?ms={rng.randint(20, 800)}"
            if rng.random() < 0.3:
                method, body, framing = "POST", self.body(), "length"
        elif kind == "big":
            size = rng.randint(130 * 1024, 600 * 1024)
            path = f"/big?size={size}"
        elif kind == "ws":
            path = "/ws"
            expect_status = 101 if accepts_upgrade(tunnel) else 200
            extra += ["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
                      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]
        elif kind in ("close_after", "close_silent", "close_mid"):
            path = "/" + kind.replace("_", "-")
            if kind != "close_mid" and rng.random() < 0.4:
                method, body, framing = "POST", self.body(), "length"
        sep = "&" if "?" in path else "?"
        lines = [f"{method} {path}{sep}n={nonce} HTTP/1.1", f"Host: {self.front.host(tunnel)}", *extra]
        if close:
            lines.append("Connection: close")
        wire_body = b""
        if framing == "chunked":
            lines.append("Transfer-Encoding: chunked")
            wire_body = self.chunked(body)
        elif framing == "length":
            lines.append(f"Content-Length: {len(body)}")
            wire_body = body
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        if kind in ("s204", "s304") or expect_status == 101:
            expect_body = b""
        elif kind == "big":
            expect_body = big_body_for(tunnel, nonce, size)
        elif kind == "close_mid":
            expect_body = None
        elif method == "HEAD":
            expect_body, head_length = b"", len(body_for(tunnel, nonce, "HEAD"))
        else:
            expect_body = body_for(tunnel, nonce, method, body)
        if kind == "expect":
            req = Req(tunnel, nonce, kind, method, head, wire_body, expect_status, expect_body, head_length,
                      close, forbidden)
        else:
            req = Req(tunnel, nonce, kind, method, head + wire_body, b"", expect_status, expect_body,
                      head_length, close, forbidden)
        self.soak.register(req)
        return req

    def pick(self, weights: dict[str, int]) -> str:
        return self.rng.choices(list(weights), list(weights.values()))[0]

    def tunnel(self, avoid: str | None = None) -> str:
        choices = [t for t in self.soak.tunnels if t != avoid] or self.soak.tunnels
        return self.rng.choice(choices)

    # --- running ---
    def run(self) -> None:
        scenarios = {k: v for k, v in SCENARIOS.items() if k in self.soak.scenarios}
        while not self.soak.over():
            name = self.pick(scenarios)
            try:
                getattr(self, "sc_" + name)()
            except Exception as e:  # the harness's own bug: must not pass silently
                self.tally.add("fail:visitor_bug", example=f"{name}: {e!r}\n{traceback.format_exc()}")
            finally:
                for link in list(self.links):
                    link.close()

    def open(self, tunnel: str) -> Link | None:
        try:
            return Link(self, tunnel)
        except TimeoutError:
            self.tally.add("fail:connect_timeout")
        except OSError as e:
            self.tally.add("fail:connect_failed", example=repr(e))
        return None

    def judge(self, req: Req, resp: Response, truncated: bool = False) -> None:
        verdict, kinds = check(req, resp, truncated)
        if verdict == "ok":
            self.tally.add("ok")
            if truncated:
                self.tally.add("info:truncated_as_the_app_meant" if req.kind == "close_mid"
                               else "error:closed_mid_response")
        elif verdict == "error":  # a relay's or nginx's page: which request got it, and what it says
            self.tally.add("error:" + kinds[0], example=f"{req.kind} {req.method} tunnel={req.tunnel} "
                           f"nonce={req.nonce} -> {resp.status} {resp.body[:240]!r}")
        else:
            about = (f"{req.kind} {req.method} tunnel={req.tunnel} nonce={req.nonce} -> {resp.status} "
                     f"X-App={resp.values('x-app')} X-Nonce={resp.values('x-nonce')} body={resp.body[:160]!r}")
            if "wrong_body" in kinds and req.expect_body is not None:
                got, want = resp.body, req.expect_body
                at = next((i for i, (x, y) in enumerate(zip(got, want)) if x != y), min(len(got), len(want)))
                about += f" [{len(got)} bytes, {len(want)} expected, first difference at {at}: {got[at:at + 80]!r}]"
            for kind in kinds:
                self.tally.add("fail:" + kind, example=about)
        if req.close and not truncated and not resp.closes:
            self.tally.add("info:close_not_announced")

    def receive(self, link: Link, req: Req, mark: int, retry: bool) -> tuple[Response | None, Link | None]:
        """Read and judge ``req``'s answer; returns it and the link to go on with (None: closed)."""
        try:
            resp = read_response(link.wire, req.method)
        except Closed:
            got = link.wire.since(mark)
            link.close()
            if got == 0 and link.exchanges and retry and not req.forbidden:
                # A stale keep-alive connection, no byte of an answer: send it again, as browsers do.
                self.tally.add("info:stale_retry")
                fresh = self.open(req.tunnel)
                if fresh is None:
                    return None, None
                return self.receive(fresh, req, self.send(fresh, req), retry=False)
            self.tally.add("error:closed_before_response" if got == 0 else "error:closed_mid_response")
            return None, None
        except Truncated as t:
            link.close()
            self.judge(req, t.response, truncated=True)
            return None, None
        except Timeout:
            link.close()
            self.tally.add("fail:timeout", example=f"{req.kind} {req.method} {req.tunnel} {req.nonce}")
            return None, None
        except Garbled as g:
            link.close()
            self.tally.add("fail:garbled", example=f"{req.kind} {req.tunnel} {req.nonce}: {g}")
            return None, None
        link.exchanges += 1
        self.judge(req, resp)
        if resp.status == 101 and req.expect_status == 101 and resp.values("x-app") == [req.tunnel]:
            self.raw_echo(link, req)
            return resp, None
        if req.close:
            self.after_close(link)
        if resp.closes or req.close or resp.status == 101 or req.kind in ("close_after", "close_mid"):
            link.close()
            return resp, None
        return resp, link

    def send(self, link: Link, req: Req) -> int:
        """Send ``req`` on ``link``; returns the mark its answer starts after."""
        mark = link.wire.mark()
        self.tally.add("requests")
        try:
            link.wire.send(req.data)
        except (Closed, Timeout):
            pass  # whatever the server said before closing is still to be read
        return mark

    def exchange(self, link: Link | None, req: Req, retry: bool = True) -> Link | None:
        """Send ``req`` (on ``link`` or a new connection), read and judge its answer."""
        if link is None:
            link = self.open(req.tunnel)
            if link is None:
                return None
        return self.receive(link, req, self.send(link, req), retry)[1]

    def after_close(self, link: Link) -> None:
        """Nothing may follow the answer to a Connection: close request, and the server closes."""
        rest = bytearray()
        link.sock.settimeout(2.0)
        try:
            link.wire.to_eof(rest)
        except Timeout:
            self.tally.add("info:open_after_close")
        except Garbled:
            pass
        if rest:
            self.tally.add("fail:answered_after_close", example=repr(bytes(rest[:200])))

    def raw_echo(self, link: Link, req: Req) -> None:
        """After a 101: the app echoes lines with its name; then say bye (or just hang up)."""
        try:
            for k in range(self.rng.randint(1, 3)):
                word = f"{req.nonce}.{k}"
                link.wire.send(f"ping {word}\n".encode())
                line = link.wire.until(b"\n", limit=4096)
                if line != f"{req.tunnel} {word}".encode():
                    self.tally.add("fail:raw_wrong_identity", example=f"{req.tunnel} {word} got {line[:120]!r}")
                else:
                    self.tally.add("ok_raw")
            if self.rng.random() < 0.5:
                link.wire.send(b"bye\n")
                rest = bytearray()
                link.wire.to_eof(rest)  # the app hangs up: its close must reach us
                if rest:
                    self.tally.add("fail:raw_bytes_after_bye", example=repr(bytes(rest[:120])))
        except Closed:
            self.tally.add("error:raw_closed")
        except Timeout:
            self.tally.add("fail:raw_timeout", example=f"{req.tunnel} {req.nonce}")
        except Garbled as g:
            self.tally.add("fail:garbled", example=str(g))
        finally:
            link.close()

    # --- scenarios ---
    def sc_keepalive(self) -> None:
        """Several requests on one connection, each to a random tunnel (Host switching)."""
        link = None
        for _ in range(self.rng.randint(2, 6)):
            link = self.exchange(link, self.make(self.tunnel(), self.pick(KEEPALIVE_KINDS)))

    def sc_closing(self) -> None:
        """An app closes after (or in the middle of) its answer; the visitor goes on."""
        kind = self.rng.choice(("close_after", "close_silent", "close_silent", "close_mid"))
        link = self.exchange(None, self.make(self.tunnel(), kind))
        for _ in range(self.rng.randint(1, 2)):
            link = self.exchange(link, self.make(self.tunnel(), self.rng.choice(("get", "post", "head"))))

    def sc_close(self) -> None:
        """One request with Connection: close: answered, then closed (and nothing else)."""
        req = self.make(self.tunnel(), self.rng.choice(("get", "post", "head", "s204", "chunked")), close=True)
        link = self.open(req.tunnel)
        if link is not None:
            self.receive(link, req, self.send(link, req), retry=False)

    def sc_pipeline(self) -> None:
        """2-4 requests to different tunnels in one write; maybe a Connection: close last,
        with one more request after it that must never be executed."""
        tunnels = self.rng.sample(self.soak.tunnels, min(len(self.soak.tunnels), self.rng.randint(2, 4)))
        closing = self.rng.random() < 0.4
        reqs = [self.make(t, self.pick(PIPELINE_KINDS), close=closing and i == len(tunnels) - 1)
                for i, t in enumerate(tunnels)]
        after = self.make(self.tunnel(), "post", forbidden=True) if closing else None
        link = self.open(reqs[0].tunnel)
        if link is None:
            return
        self.tally.add("requests", len(reqs))
        with contextlib.suppress(Closed, Timeout):
            link.wire.send(b"".join(r.data for r in reqs) + (after.data if after else b""))
        for i, req in enumerate(reqs):
            _, link_after = self.receive(link, req, link.wire.mark(), retry=False)
            if link_after is None:
                if len(reqs) - i - 1:
                    self.tally.add("error:pipelined_unanswered", len(reqs) - i - 1)
                return

    def sc_expect(self) -> None:
        """POST with Expect: 100-continue: the body goes once the 100 came; then one more request."""
        req = self.make(self.tunnel(), "expect")
        link = self.open(req.tunnel)
        if link is None:
            return
        mark = link.wire.mark()
        self.tally.add("requests")
        try:
            link.wire.send(req.data)
            first = read_head(link.wire)
        except Closed:
            link.close()
            self.tally.add("error:closed_before_response")
            return
        except Timeout:
            link.close()
            self.tally.add("fail:timeout", example=f"no 100 Continue: {req.tunnel} {req.nonce}")
            return
        except Garbled as g:
            link.close()
            self.tally.add("fail:garbled", example=str(g))
            return
        if first.status != 100:  # a final answer without the body: judge it, and this connection ends
            try:
                resp = read_body(link.wire, req.method, first)
                self.judge(req, resp)
            except Truncated as t:
                self.judge(req, t.response, truncated=True)
            except (Closed, Timeout, Garbled) as e:
                self.tally.add("error:expect_final_" + type(e).__name__.lower())
            link.close()
            return
        self.tally.add("info:got_100_continue")
        with contextlib.suppress(Closed, Timeout):
            link.wire.send(req.body_data)
        _, link = self.receive(link, req, mark, retry=False)
        if link is not None:
            self.exchange(link, self.make(self.tunnel(), self.rng.choice(("get", "post"))))

    def sc_upgrade(self) -> None:
        """Upgrade: websocket. Even apps answer 101 (then a line echo), odd ones a plain 200,
        after which the connection must go on as HTTP, routed by each request's own Host."""
        tunnel = self.tunnel()
        link = self.exchange(None, self.make(tunnel, "ws"))
        for _ in range(self.rng.randint(1, 3)):
            if link is None:
                return
            link = self.exchange(link, self.make(self.tunnel(avoid=tunnel),
                                                 self.rng.choice(("get", "post", "ws", "head"))))

    def sc_malformed(self) -> None:
        """A malformed request, maybe behind a valid one in the same packet: 4xx, then closed."""
        lead = self.make(self.tunnel(), self.rng.choice(("get", "post"))) if self.rng.random() < 0.5 else None
        kind = self.rng.choice(MALFORMED)
        label = kind + ("_after_a_valid_request" if lead else "")
        tunnel = self.tunnel()
        nonce = self.nonce(tunnel)
        host = self.front.host(tunnel)
        bad = {
            "no_colon": f"GET /echo?n={nonce} HTTP/1.1\r\nHost: {host}\r\nthis line has no colon\r\n\r\n",
            "bad_chunk": f"POST /echo?n={nonce} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
                         "zz\r\nhello\r\n0\r\n\r\n",
            "two_lengths": f"POST /echo?n={nonce} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\n"
                           "Content-Length: 7\r\n\r\nhello12",
            "space_in_name": f"GET /echo?n={nonce} HTTP/1.1\r\nHost: {host}\r\nX-Bad Name: 1\r\n\r\n",
        }[kind].encode()
        self.soak.register(Req(tunnel, nonce, "malformed", "POST", bad, forbidden=True))
        link = self.open(lead.tunnel if lead else tunnel)
        if link is None:
            return
        self.tally.add("requests", 2 if lead else 1)
        with contextlib.suppress(Closed, Timeout):
            link.wire.send((lead.data if lead else b"") + bad)
        if lead is not None:
            resp, after = self.receive(link, lead, link.wire.mark(), retry=False)
            if after is None:
                self.tally.add(f"error:malformed_lead_closed:{label}")
                return
        try:
            resp = read_response(link.wire, "GET")
        except Closed:
            self.tally.add(f"info:malformed_closed_without_answer:{label}")
            link.close()
            return
        except Truncated as t:
            resp = t.response
        except Timeout:
            self.tally.add("fail:malformed_timeout", example=kind)
            link.close()
            return
        except Garbled as g:
            self.tally.add("fail:garbled", example=f"malformed {kind}: {g}")
            link.close()
            return
        if resp.values("x-app") or SIGNATURE.search(resp.body):
            self.tally.add("fail:malformed_executed", example=f"{kind}: {resp.status} {resp.body[:120]!r}")
        elif not 400 <= resp.status < 500:
            self.tally.add("fail:malformed_not_4xx", example=f"{kind}: {resp.status}")
        else:
            self.tally.add(f"info:malformed_rejected:{label}")
        rest = bytearray()
        try:
            link.wire.to_eof(rest)
        except Timeout:
            self.tally.add("fail:malformed_kept_open", example=f"{kind} -> {resp.status}")
        except Garbled:
            pass
        if rest:
            self.tally.add("fail:bytes_after_malformed", example=f"{kind}: {bytes(rest[:160])!r}")
        link.close()


class Soak:
    """Visitors against one front until the time or request budget is spent."""

    def __init__(self, front: Front, tunnels: list[str], seconds: float = SOAK_SECONDS,
                 max_requests: int = SOAK_MAX_REQUESTS, visitors: int = VISITORS, seed: int | None = None,
                 scenarios=tuple(SCENARIOS)):
        self.front, self.tunnels = front, tunnels
        self.seconds, self.max_requests, self.visitor_count = seconds, max_requests, visitors
        self.seed = seed if seed is not None else int(os.environ.get("INTUNNEL_SOAK_SEED") or
                                                      random.SystemRandom().randrange(1 << 30))
        self.scenarios = scenarios
        self.tally = Tally()
        self.sent: dict[str, Sent] = {}
        self.sent_lock = threading.Lock()
        self.visitors: list[Visitor] = []
        self.deadline = 0.0
        self.took = 0.0

    def register(self, req: Req) -> None:
        with self.sent_lock:
            self.sent[req.nonce] = Sent(req.tunnel, req.method, req.forbidden)

    def over(self) -> bool:
        return time.monotonic() >= self.deadline or self.tally["requests"] >= self.max_requests

    def run(self) -> "Soak":
        started = time.monotonic()
        self.deadline = started + self.seconds
        self.visitors = [Visitor(self, i) for i in range(self.visitor_count)]
        threads = [threading.Thread(target=v.run, name=f"visitor-{v.index}", daemon=True) for v in self.visitors]
        for t in threads:
            t.start()
        # A scenario has at most a few blocking steps of IO_TIMEOUT each once the time is up.
        hard_stop = self.deadline + 4 * IO_TIMEOUT
        for t in threads:
            t.join(max(0.0, hard_stop - time.monotonic()))
        stuck = [t for t in threads if t.is_alive()]
        if stuck:
            self.tally.add("fail:visitor_stuck", len(stuck))
            for v in self.visitors:
                for link in list(v.links):
                    with contextlib.suppress(OSError):
                        link.sock.shutdown(socket.SHUT_RDWR)
            for t in stuck:
                t.join(IO_TIMEOUT)
        self.took = time.monotonic() - started
        return self


# --- the relay's side: slots and sockets -----------------------------------------------------------

TCP_LISTEN, TCP_CLOSE_WAIT = "0A", "08"


def _tcp_table() -> dict[int, tuple[int, int, str]]:
    """inode -> (local port, remote port, state) for every TCP socket of this network namespace."""
    table = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(name) as f:
            next(f)
            for line in f:
                cols = line.split()
                table[int(cols[9])] = (int(cols[1].rsplit(":", 1)[1], 16), int(cols[2].rsplit(":", 1)[1], 16), cols[3])
    return table


def _socket_inodes(pid: int | str) -> set[int]:
    inodes = set()
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def relay_sockets(relay_ports: list[int], client_pids: list[int], peer_ports: list[int] = ()) -> dict[str, int]:
    """The relays' sockets (in this process): the accepted ones, split by whether an agent holds
    the other end, and the relays' connections to each other's peer listeners (``peer_ports``),
    counted apart: known, not stray.  Both ends of a peer connection are in this process (the
    dialing relay's and the accepting one's): ``peers`` counts connections by their accepted end,
    ``peers_dialed`` by their dialing end; an end left alone is CLOSE_WAIT or unpaired."""
    table = _tcp_table()
    relay_ports, peer_ports = set(relay_ports), set(peer_ports)
    agent_ports = {table[i][0] for pid in client_pids for i in _socket_inodes(pid)
                   if i in table and table[i][1] in relay_ports}
    own = [table[i] for i in _socket_inodes("self") if i in table and table[i][2] != TCP_LISTEN]
    mine = [t for t in own if t[0] in relay_ports]
    accepted = [t for t in own if t[0] in peer_ports]
    dialed = [t for t in own if t[1] in peer_ports]
    unpaired = ({(lport, rport) for lport, rport, _ in accepted} ^
                {(rport, lport) for lport, rport, _ in dialed})
    return {"total": len(mine),
            "agents": sum(1 for _, rport, _ in mine if rport in agent_ports),
            "stray": sum(1 for _, rport, _ in mine if rport not in agent_ports),
            "peers": len(accepted), "peers_dialed": len(dialed), "peers_unpaired": len(unpaired),
            "close_wait": sum(1 for _, _, state in mine + accepted + dialed if state == TCP_CLOSE_WAIT),
            "fds": len(os.listdir("/proc/self/fd"))}


class ErrorLog(logging.Handler):
    """Records the relay's (and its event loop's) errors while the soak runs."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("intunnel", "asyncio")):
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                text += f": {record.exc_info[1]!r}"
            self.records.append(text[:300])


@dataclass
class SoakStack:
    tunnels: list[str]
    apps: dict[str, SoakApp]
    relays: list[RelayThread]    # visitors go to the first
    clients: list[ClientProcess]
    home: dict[str, int] = field(default_factory=dict)   # tunnel -> the relay its client connects to
    parked_at_end: int = 0       # peer connections parked when the visitors were gone

    @property
    def relay(self) -> RelayThread:
        return self.relays[0]

    @staticmethod
    def on(relay: RelayThread, fn):
        """``fn()`` run on ``relay``'s event loop, where its state lives."""
        async def run():
            return fn()
        return relay.call(run(), 10)

    def placement(self) -> dict[str, list[int]]:
        """tunnel -> the relays holding a session of it."""
        out: dict[str, list[int]] = {}
        for i, r in enumerate(self.relays):
            for name in self.on(r, lambda: list(r.relay.sessions)):
                out.setdefault(name, []).append(i)
        return out

    def slots(self) -> dict[str, int]:
        """Visitor slots held per tunnel, over every relay."""
        out: Counter = Counter()
        for r in self.relays:
            out.update(self.on(r, lambda: {name: s.visitors for name, s in r.relay.sessions.items()}))
        return dict(out)

    def peer_ports(self) -> list[int]:
        return [r.relay.peers.address[1] for r in self.relays if r.relay.peers is not None]

    def sockets(self) -> dict[str, int]:
        return relay_sockets([r.port for r in self.relays], [c.pid for c in self.clients], self.peer_ports())

    def routed(self) -> list[dict[str, int]]:
        """Each relay's /metrics counters: where requests were served, its peer dials and failures,
        and why it answered itself (its pages: bad requests, 502s...)."""
        def counts(stats):
            return {**stats.routed, "peer_dials": stats.peer_dials, "peer_failures": stats.peer_failures,
                    "refused": {why: n for why, n in stats.refusals.items() if n}}
        return [self.on(r, lambda: counts(r.relay.stats)) for r in self.relays]

    def _peer_books(self) -> dict[str, int]:
        def view(relay):
            return {"links": sum(1 for link in relay.visitors if not link.hop),
                    "hop_links": sum(1 for link in relay.visitors if link.hop),
                    "slots": sum(s.visitors for s in relay.sessions.values()),
                    "parked": sum(1 for queue in relay.peers.parked.values() for conn, _ in queue
                                  if not conn.closed)}
        books = Counter()
        for r in self.relays:
            books.update(self.on(r, lambda: view(r.relay)))
        return {**books, **{k: v for k, v in self.sockets().items() if k.startswith("peers")}}

    def release_peers(self) -> str | None:
        """Several relays: once the visitors are gone, every peer connection still open must be
        one a relay parked for its tunnel's next request (``peers.PEER_IDLE``), held on the other
        end by an idle forwarded visitor connection (which may keep that tunnel's slot, as an idle
        keep-alive visitor does); then they are closed, as stopping nginx closes its keep-alive
        connections, so the slots and sockets must settle to zero.  Returns what did not add up."""
        if not self.peer_ports():
            return None

        def balanced():
            b = self._peer_books()
            ok = (b["links"] == 0 and b["peers_unpaired"] == 0 and b["parked"] == b["peers_dialed"] == b["peers"]
                  == b["hop_links"] and b["slots"] <= b["hop_links"])
            return b if ok else None
        try:
            self.parked_at_end = wait_for(balanced, SETTLE_TIMEOUT, message="peer connections accounted for")["parked"]
            problem = None
        except AssertionError:
            problem = f"peer books {self._peer_books()}"

        def drop(relay):
            for queue in relay.peers.parked.values():
                for conn, _ in queue:
                    conn.close()
            relay.peers.parked.clear()
        for r in self.relays:
            self.on(r, lambda: drop(r.relay))
        return problem

    def describe(self, end: dict[str, int]) -> str:
        """The summary line's part about several relays (nothing for one)."""
        if len(self.relays) == 1:
            return ""
        routed = " ".join(f"{r.relay.relay_id}={counts}" for r, counts in zip(self.relays, self.routed()))
        return (f" relays={len(self.relays)} peer_conns parked_at_end={self.parked_at_end} end={end['peers']}"
                f" routed: {routed}")


@contextlib.contextmanager
def soak_stack(settings, **relay_settings):
    """20 apps, the relay in this process, 20 real clients (subprocesses) connected to it."""
    names = tunnel_names()
    with contextlib.ExitStack() as stack:
        apps = {name: stack.enter_context(SoakApp(name, accepts_upgrade(name))) for name in names}
        tokens = {name: make_tunnel(settings, name, apps[name].port).token for name in names}
        relay = stack.enter_context(RelayThread(settings.replace(log_level="warning", **relay_settings)))
        clients = [stack.enter_context(ClientProcess(relay.url, tokens[name], apps[name].port)) for name in names]
        for client in clients:
            client.wait_line(r"^connected: ", timeout=30)
        st = SoakStack(names, apps, [relay], clients, dict.fromkeys(names, 0))
        wait_for(lambda: len(st.slots()) == len(names), 10, message="every agent's session on the relay")
        yield st


def relay_of_client(index: int) -> int:
    """Two relays: t00 t01 on the first, t02 t03 on the second, ...: each holds both kinds of app
    (accepting upgrades or not), so 101s and refused upgrades both cross the forwarding path."""
    return (index // 2) % 2


@contextlib.contextmanager
def two_relay_soak_stack(settings, secret_file):
    """20 apps, two relays in this process sharing the test's PostgreSQL database, each with a
    peer listener on loopback and the same secret; half the clients connect to each relay."""
    names = tunnel_names()
    home = {name: relay_of_client(i) for i, name in enumerate(names)}
    with contextlib.ExitStack() as stack:
        apps = {name: stack.enter_context(SoakApp(name, accepts_upgrade(name))) for name in names}
        tokens = {name: make_tunnel(settings, name, apps[name].port).token for name in names}
        relays = [stack.enter_context(RelayThread(settings.replace(
            log_level="warning", relay_id=f"soak-{x}", relay_peer_listen="127.0.0.1:0",
            relay_peer_secret_file=str(secret_file)))) for x in "ab"]
        clients = [stack.enter_context(ClientProcess(relays[home[name]].url, tokens[name], apps[name].port))
                   for name in names]
        for client in clients:
            client.wait_line(r"^connected: ", timeout=30)
        st = SoakStack(names, apps, relays, clients, home)
        wait_for(lambda: st.placement() == {name: [home[name]] for name in names}, 10,
                 message="every agent's session on its relay")
        # The first relay forwards by the route rows: each tunnel's names the relay its agent is on.
        ids = {i: r.relay.relay_id for i, r in enumerate(relays)}
        routes = (Route.select(Tunnel.subdomain, Route.relay_id).join(Tunnel, on=(Route.tunnel == Tunnel.id)))
        wait_for(lambda: dict(routes.tuples()) == {name: ids[home[name]] for name in names}, 10,
                 message="every tunnel's route")
        yield st


def one_get_each(st: SoakStack, front: Front, index: int) -> Soak:
    """One GET with Connection: close to every tunnel through ``front``; the Soak holds the tally."""
    probe = Soak(front, st.tunnels, seed=index)
    visitor = Visitor(probe, index)
    for name in st.tunnels:
        visitor.exchange(None, visitor.make(name, "get", close=True), retry=False)
    return probe


def soak_and_check(st: SoakStack, front: Front, stop_front=None) -> None:
    """Take the baseline, warm up, soak, check every tunnel still answers, stop the front, settle,
    audit the apps' records; print the summary and fail on anything wrong."""
    base = st.sockets()  # no visitor yet: the agents' connections (their count is allowed to change)
    warm = one_get_each(st, front, 99)
    assert warm.tally["ok"] == len(st.tunnels), ("warm-up", warm.tally.counts, warm.tally.examples)
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    try:
        soak = Soak(front, st.tunnels).run()
        # Every tunnel still serves (a leaked slot or a wedged agent shows here), through the same front.
        final = one_get_each(st, front, 98)
        if stop_front is not None:
            stop_front()  # nginx's keep-alive connections to the relay go with it
        peer_problem = st.release_peers()  # several relays: their parked connections to each other go

        def settled():
            now = st.sockets()
            slots = st.slots()
            ok = (all(v == 0 for v in slots.values()) and now["stray"] == 0 and now["close_wait"] == 0
                  and now["peers"] == 0 and now["peers_dialed"] == 0
                  and now["fds"] <= base["fds"] + max(0, now["agents"] - base["agents"]) + FD_SLACK)
            return (slots, now) if ok else None
        try:
            slots, end = wait_for(settled, SETTLE_TIMEOUT, message="slots and sockets")
            unsettled = False
        except AssertionError:
            slots, end, unsettled = st.slots(), st.sockets(), True
    finally:
        logging.getLogger().removeHandler(errors)

    t = soak.tally
    with soak.sent_lock:
        sent = soak.sent | warm.sent | final.sent
    executed = {name: list(app.executed) for name, app in st.apps.items()}
    for key, n in audit(sent, executed, front.via_nginx).items():
        t.add(key, n)
    if final.tally["ok"] != len(st.tunnels):
        t.add("fail:final_check", len(st.tunnels) - final.tally["ok"],
              example=f"{final.tally.counts} {final.tally.examples}")
    if len(slots) != len(st.tunnels):
        t.add("fail:agents_lost", len(st.tunnels) - len(slots))
    placement = st.placement()
    moved = {name: where for name, where in placement.items() if where != [st.home[name]]}
    if moved:
        t.add("fail:sessions_moved", len(moved), example=f"tunnel -> relays holding it: {moved}")
    if peer_problem:
        t.add("fail:peer_accounting", example=peer_problem)
    if unsettled:
        t.add("fail:not_settled", example=f"slots={slots} sockets={end} baseline={base}")
    if errors.records:
        t.add("fail:relay_logged_errors", len(errors.records), example=" | ".join(errors.records[:4]))
    malformed_at_apps = sum(app.malformed_seen for app in st.apps.values())
    if malformed_at_apps:
        t.add("info:malformed_head_reached_an_app", malformed_at_apps)

    fails = t.prefixed("fail:")
    mismatches = sum(v for k, v in fails.items() if k.startswith((
        "wrong_", "unsigned", "garbled", "raw_wrong", "misrouted", "answered_after", "unknown_request",
        "malformed_executed")))
    summary = (f"SOAK {front.name}: {soak.took:.1f}s {len(st.tunnels)} tunnels {soak.visitor_count} visitors "
               f"seed={soak.seed} requests={t['requests']} ok={t['ok']} raw_echoes={t['ok_raw']} "
               f"mismatches={mismatches} duplicates={fails.get('duplicate', 0)} failures={fails} "
               f"errors={t.prefixed('error:')} info={t.prefixed('info:')} "
               f"slots_left={sum(slots.values())} relay_sockets base={base['total']} end={end['total']} "
               f"stray={end['stray']} close_wait={end['close_wait']} fds base={base['fds']} end={end['fds']}"
               f"{st.describe(end)}")
    print("\n" + summary)
    answered_by_the_relay = "\n".join(f"  {k}: {ex}" for k, exs in t.examples.items() if k.startswith("error:")
                                      for ex in exs)
    if answered_by_the_relay:
        print(answered_by_the_relay)
    details = "\n".join(f"  {k}: {ex}" for k, exs in t.examples.items() if k.startswith("fail:") for ex in exs)
    assert not fails, summary + "\n" + details
    assert t["ok"] > 0, summary


# --- the harness checks itself (fast) ----------------------------------------------------------------

def _resp(status=200, app="t01", nonce="d00x000001-t01", body=None, **headers) -> Response:
    h = {"x-app": [app], "x-nonce": [nonce], **{k.replace("_", "-"): [v] for k, v in headers.items()}}
    if app is None:
        del h["x-app"]
    if nonce is None:
        del h["x-nonce"]
    return Response("HTTP/1.1", status, h, body if body is not None else body_for(app or "?", nonce or "?", "GET"))


def test_the_judge_reports_a_swapped_identity_nonce_or_body():
    req = Req("t01", "d00x000001-t01", "get", "GET", b"", expect_body=body_for("t01", "d00x000001-t01", "GET"))
    assert check(req, _resp()) == ("ok", [])
    assert check(req, _resp(app="t02", body=body_for("t01", "d00x000001-t01", "GET")))[1] == ["wrong_identity"]
    assert check(req, _resp(app="t02", nonce="d00x000009-t02")) == ("fail", ["wrong_identity", "wrong_nonce"])
    assert check(req, _resp(nonce="d00x000002-t01", body=body_for("t01", "d00x000001-t01", "GET")))[1] == \
        ["wrong_nonce"]
    # The right head over another tenant's body: the body's signature gives it away.
    assert check(req, _resp(body=body_for("t02", "d05x000007-t02", "GET")))[1] == ["wrong_identity", "wrong_nonce"]
    assert check(req, _resp(body=b"app=t01 nonce=d00x000001-t01 method=GET body=0:0\n"))[1] == ["wrong_body"]
    assert check(req, _resp(status=204)) == ("fail", ["wrong_status"])
    # A relay's or nginx's own page is an error, not a mismatch; an unsigned 200 is a failure.
    assert check(req, _resp(status=502, app=None, nonce=None, body=b"bad gateway")) == ("error", ["status_502"])
    assert check(req, _resp(status=200, app=None, nonce=None, body=b"hello")) == ("fail", ["unsigned"])
    # A truncated answer is judged by what came.
    cut = Req("t01", "n-t01", "close_mid", "GET", b"", expect_body=None)
    assert check(cut, _resp(nonce="n-t01", body=b"app=t01 nonce=n-t0"), truncated=True) == ("ok", [])
    head = Req("t01", "n-t01", "head", "HEAD", b"", head_length=10)
    assert check(head, _resp(nonce="n-t01", body=b"", content_length="10")) == ("ok", [])
    assert check(head, _resp(nonce="n-t01", body=b"", content_length="11"))[1] == ["wrong_head_length"]


def test_the_audit_reports_misroutes_duplicates_and_forbidden_runs():
    sent = {"a-t00": Sent("t00", "POST", False), "b-t00": Sent("t00", "GET", False),
            "c-t01": Sent("t01", "POST", True), "d-t01": Sent("t01", "GET", False)}
    executed = {"t00": [("a-t00", "POST", "/echo"), ("a-t00", "POST", "/echo"), ("b-t00", "GET", "/echo"),
                        ("b-t00", "GET", "/echo"), ("d-t01", "GET", "/echo")],
                "t01": [("c-t01", "POST", "/echo"), ("forged-t01", "POST", "/echo")]}
    direct = audit(sent, executed, via_nginx=False)
    assert direct == Counter({"fail:duplicate": 2, "fail:misrouted": 1, "fail:executed_forbidden": 1,
                              "fail:unknown_request_at_app": 1})
    behind_nginx = audit(sent, executed, via_nginx=True)
    assert behind_nginx["fail:duplicate"] == 1 and behind_nginx["info:nginx_retried_idempotent"] == 1


def test_the_soak_passes_a_single_honest_app_and_catches_a_front_that_crosses_tenants():
    """The whole harness, no relay: straight at one app it finds nothing wrong (malformed requests
    aside: an app is no validating proxy); told that app serves two tunnels, it reports the
    other tunnel's answers and the misrouted executions."""
    with SoakApp("t00", accepts_upgrade=True) as app:
        honest = Soak(Front("direct", app.port), ["t00"], seconds=2, max_requests=400, visitors=4,
                      scenarios=tuple(s for s in SCENARIOS if s != "malformed")).run()
        executed = {"t00": list(app.executed)}
        problems = {k: v for k, v in audit(honest.sent, executed, via_nginx=False).items() if k.startswith("fail:")}
        assert not honest.tally.prefixed("fail:") and not problems, (honest.tally.counts, honest.tally.examples,
                                                                    problems)
        assert honest.tally["ok"] > 50
        app.executed.clear()
        crossed = Soak(Front("direct", app.port), ["t00", "t01"], seconds=2, max_requests=200, visitors=2,
                       scenarios=("keepalive", "pipeline")).run()
        fails = crossed.tally.prefixed("fail:")
        # t00 answers t01's requests: its own name, the nonce it was sent.
        assert fails.get("wrong_identity", 0) > 0, crossed.tally.counts
        assert audit(crossed.sent, {"t00": list(app.executed)}, via_nginx=False)["fail:misrouted"] > 0


# --- the soaks ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_isolation_soak_straight_at_the_relay(settings, db):
    with soak_stack(settings) as st:
        soak_and_check(st, Front("direct", st.relay.port))


@pytest.mark.slow
@pytest.mark.nginx
def test_isolation_soak_through_nginx_with_tls(settings, db, tmp_path):
    nginx = require_tool("nginx")
    require_tool("openssl")
    with soak_stack(settings, relay_trust_proxy=True) as st:  # as deployed behind nginx
        main, https_port = tls_front(st.relay.settings, tmp_path, nginx, DOMAIN)
        with running_nginx(nginx, main, https_port) as proc:
            def stop_nginx():
                proc.terminate()
                proc.wait(10)
            soak_and_check(st, Front("nginx", https_port, tls=True, via_nginx=True), stop_front=stop_nginx)


@pytest.fixture
def one_database_object(db, monkeypatch):
    """Several relays in one process: every relay's store on the test's one peewee Database.

    ``models.open_database`` binds the models' global proxy to a new Database object; a second
    relay's store rebinding it would leave the first one's queries (they go through the proxy)
    on the second's object, a connection of their own outside the first's ``atomic()`` (measured:
    the route claim's and release's transactions and row locks no longer cover their statements).
    One object shared is right: peewee keeps one connection per thread, and each store runs on
    its own thread, so each relay still has its own connection.  (One relay per process, as
    deployed, never meets this.)"""
    monkeypatch.setattr(relay_store, "open_database", lambda settings, migrate=True: db)
    return db


@pytest.fixture
def pg(db_backend):
    if db_backend != "postgresql":
        pytest.skip("forwarding between relays needs the shared PostgreSQL database (run with --db=postgresql)")


@pytest.mark.slow
@pytest.mark.postgresql_only("forwarding between relays needs the shared PostgreSQL database")
def test_isolation_soak_across_two_relays_forwarding(pg, settings, one_database_object, tmp_path):
    """Two relays in this process, half the agents on each, every visitor at the first: half the
    tunnels served there, half forwarded through the peer listener of the second, so every
    scenario (keep-alive connections switching Host between a local and a forwarded tunnel,
    pipelining, upgrades, bodies...) crosses the forwarding path."""
    secret_file = tmp_path / "peer.secret"
    secret_file.write_text(secrets.token_urlsafe(48))
    secret_file.chmod(0o600)
    with two_relay_soak_stack(settings, secret_file) as st:
        soak_and_check(st, Front("forwarded", st.relay.port))
        front, owner = st.routed()
        # The forwarding path was really taken (the /metrics counters), one hop, one way.
        assert front["forwarded_out"] > 0 and owner["forwarded_in"] > 0, (front, owner)
        assert front["local"] > 0 and front["forwarded_in"] == 0 and owner["forwarded_out"] == 0, (front, owner)
        assert front["peer_failures"] == 0 and owner["peer_failures"] == 0, (front, owner)
