"""Reusable tunnel fixtures: a relay on port 0, a client, local upstream servers, a visitor.

In-process helpers (``RelayThread``, ``ClientThread``) run the real relay and
client on their own event loop in a thread: fast to start, easy to inspect.
Process helpers (``RelayProcess``, ``ClientProcess``) run the real commands
(``python -m intunnel.cli relay|http``) for kill/restart and memory tests.
Upstreams: ``HttpUpstream`` (echo, upload hash, download, chunked, SSE, slow)
and ``WebSocketUpstream`` (echo).  Everything binds 127.0.0.1 port 0 and is
stopped by its ``close()``/context manager.

Typical use::

    with tunnel_setup(settings) as t:          # relay + tunnel row + client + upstream
        status, headers, body = t.get("/hello")
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from bench import procs
from intunnel import accounts, tunnels
from intunnel.client.agent import Agent
from intunnel.relay.server import Relay
from support.backends import database_env

REPO = Path(__file__).resolve().parents[2]
PATTERN_BLOCK = bytes(range(256)) * 256  # 64 KiB


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.01, message: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    try:
        return procs.wait_until(predicate, timeout, message, interval)
    except TimeoutError as e:
        raise AssertionError(str(e)) from None


def pattern(size: int):
    """Deterministic bytes, as chunks of at most 64 KiB."""
    full, rest = divmod(size, len(PATTERN_BLOCK))
    for _ in range(full):
        yield PATTERN_BLOCK
    if rest:
        yield PATTERN_BLOCK[:rest]


def pattern_sha256(size: int) -> str:
    h = hashlib.sha256()
    for chunk in pattern(size):
        h.update(chunk)
    return h.hexdigest()


def read_response(f) -> tuple[int, dict, bytes]:
    """One Content-Length response off a socket file (keep-alive safe): status, headers, body."""
    status = int(f.readline().split()[1])
    headers = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, f.read(int(headers.get("content-length", 0)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- database rows ------------------------------------------------------------------

def make_tunnel(settings, subdomain: str = "myapp", local_port: int = 3000, username: str | None = None):
    """A user and a tunnel row in the bound database; returns the Tunnel."""
    username = username or f"u{subdomain}"
    user = accounts.create_user(f"{username}@example.com", username, "correct horse battery")
    return tunnels.create(settings, user, subdomain.title(), subdomain, local_port)


# --- loops in threads ------------------------------------------------------------------

class LoopThread:
    """An asyncio loop running in a daemon thread; ``call(coro)`` runs a coroutine on it."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def call(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def shutdown(self):
        if self.loop.is_closed():
            return

        async def cancel_all():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            # A cancellation that races an inner future's completion can be swallowed (Python
            # 3.11's wait_for): a task still running a moment later is cancelled again, instead of
            # being left pending on a closed loop (then its close at garbage collection runs the
            # agent's code without a loop: an unraisable error in some later test).
            for _ in range(5):
                pending = [t for t in tasks if not t.done()]
                if not pending:
                    break
                for t in pending:
                    t.cancel()
                await asyncio.wait(pending, timeout=2)
        with contextlib.suppress(Exception):
            self.call(cancel_all(), 15)
            self.call(asyncio.sleep(0.02), 5)  # let closing transports really close their sockets
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class RelayThread(LoopThread):
    """The real relay on 127.0.0.1 port 0, in this process."""

    def __init__(self, settings):
        super().__init__("relay")
        settings = settings.replace(relay_listen="127.0.0.1:0")
        self.relay = Relay(settings)
        self.host, self.port = self.call(self.relay.start())
        self.settings = self.relay.settings
        self.url = f"http://{settings.domain}:{self.port}"
        self._stopped = False

    def stop(self, grace: float = 2.0):
        if not self._stopped:
            self._stopped = True
            with contextlib.suppress(Exception):
                self.call(self.relay.stop(grace))
            self.shutdown()

    close = stop

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class ClientThread(LoopThread):
    """The real client agent (``intunnel http``) in this process; ``lines`` collects its output."""

    def __init__(self, server: str, token: str, port: int, **kwargs):
        super().__init__("client")
        self.lines: list[str] = []
        self.agent = Agent(server, token, port, say=self.lines.append, **kwargs)
        self.result: queue.Queue = queue.Queue()
        self.future = asyncio.run_coroutine_threadsafe(self._run(), self.loop)

    async def _run(self):
        try:
            code = await self.agent.run()
        except asyncio.CancelledError:
            code = "cancelled"
        self.result.put(code)
        return code

    def wait_connected(self, timeout: float = 10.0, count: int = 1):
        """Wait until the agent printed its ``count``-th (re)connected line."""
        wait_for(lambda: sum(1 for l in self.lines if l.startswith(("connected:", "reconnected:"))) >= count,
                 timeout, message=f"client connected (output: {self.lines})")
        return self.agent.url

    def wait_exit(self, timeout: float = 10.0):
        return self.result.get(timeout=timeout)

    def stop(self):
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.future.cancel)
            self.shutdown()

    close = stop

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# --- processes ----------------------------------------------------------------------------

def _python_env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTUNNEL_")}
    env.update({"INTUNNEL_CONFIG": "", "PYTHONUNBUFFERED": "1", **extra})
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class _Process:
    def __init__(self, argv, env, prefix: tuple = (), command: tuple = (sys.executable, "-m", "intunnel.cli"),
                 pass_fds: tuple = ()):
        # prefix: what runs the command elsewhere (``ip netns exec HOST``: support/netns.py, or
        # passing_socket's trampoline with its pass_fds); command: the client as installed
        # elsewhere (tests/client_install: a venv's, a zipapp)
        self.proc = subprocess.Popen([*prefix, *command, *argv], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True, pass_fds=pass_fds)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, regex: str, timeout: float = 15.0, count: int = 1) -> re.Match:
        def found():
            matches = [m for m in map(re.compile(regex).search, list(self.lines)) if m]
            return matches[count - 1] if len(matches) >= count else None
        try:
            return wait_for(found, timeout, message=f"line /{regex}/")
        except AssertionError:
            raise AssertionError(f"no line /{regex}/ (x{count}) in output:\n" + "\n".join(self.lines)) from None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self):
        self.signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self._reader.join(5)
            # what it printed says where it was stuck (the exception alone names only the command)
            raise AssertionError(f"{self.proc.args[-1]!r} still running {timeout:g} s after SIGTERM; its output:\n"
                                 + "\n".join(self.lines)) from None

    def close(self):
        if self.proc.poll() is None:
            self.kill()
        self._reader.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def relay_env(settings, port: int = 0, env: dict | None = None) -> dict:
    """The environment of an ``intunnel relay`` process for ``settings`` on 127.0.0.1:``port``."""
    return _python_env({"INTUNNEL_DATA_DIR": str(settings.data_dir), **database_env(settings),
                        "INTUNNEL_DOMAIN": settings.domain, "INTUNNEL_RELAY_LISTEN": f"127.0.0.1:{port}",
                        **(env or {})})


def passing_socket(sock) -> dict:
    """_Process arguments that hand ``sock`` to the command as systemd's socket activation does
    (relay/activation)."""
    return {"prefix": tuple(procs.socket_activated([], sock)), "pass_fds": (sock.fileno(),)}


class RelayProcess(_Process):
    """``intunnel relay`` as a real process on ``port`` (0 = pick one; read from its log), or on
    ``sock``, a listening socket passed as systemd passes intunnel-relay.socket's."""

    def __init__(self, settings, port: int = 0, env: dict | None = None, command: tuple = (), sock=None):
        super().__init__(["relay"], relay_env(settings, port, env), **({"command": command} if command else {}),
                         **(passing_socket(sock) if sock else {}))
        m = self.wait_line(r"relay listening on http://127\.0\.0\.1:(\d+)")
        self.port = int(m.group(1))
        self.url = f"http://{settings.domain}:{self.port}"


class ClientProcess(_Process):
    """``intunnel http PORT --server URL --token TOKEN [extra...]`` as a real process."""

    def __init__(self, server: str, token: str, port: int, *extra: str, env: dict | None = None,
                 command: tuple = ()):
        super().__init__(["http", str(port), "--server", server, "--token", token, *extra],
                         _python_env(env or {}), **({"command": command} if command else {}))


# --- a visitor ----------------------------------------------------------------------------

def visit(relay_port: int, host: str, path: str = "/", method: str = "GET", body=None,
          headers: dict | None = None, timeout: float = 10.0):
    """One request to the relay with a given Host; returns (status, headers dict, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", relay_port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Host": host, **(headers or {})})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


# --- local upstream servers ------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "upstream/1"

    def log_message(self, *args):
        pass

    def _body(self) -> bytes:
        h = hashlib.sha256()
        n = 0
        for chunk in self._iter_body():
            h.update(chunk)
            n += len(chunk)
        self.body_sha, self.body_len = h.hexdigest(), n
        return b""

    def _iter_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                remaining = size
                while remaining:
                    chunk = self.rfile.read(min(remaining, 1 << 16))
                    if not chunk:
                        return
                    remaining -= len(chunk)
                    yield chunk
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                chunk = self.rfile.read(min(remaining, 1 << 16))
                if not chunk:
                    return
                remaining -= len(chunk)
                yield chunk

    def _send(self, status: int, body: bytes, ctype: str = "application/json", extra: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _dispatch(self):
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        self._body()
        self.server.seen.append((self.command, self.path, dict(self.headers)))
        route = url.path
        if route == "/download":
            size = int(q.get("size", "0"))
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if self.command != "HEAD":
                for chunk in pattern(size):
                    self.wfile.write(chunk)
        elif route == "/chunked":
            parts = int(q.get("parts", "3"))
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(parts):
                data = f"part {i}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        elif route == "/sse":
            count, interval = int(q.get("n", "3")), float(q.get("interval", "0.2"))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.flush()
            for i in range(count):
                time.sleep(interval)
                self.wfile.write(f"id: {i}\ndata: {time.time():.6f}\n\n".encode())
                self.wfile.flush()
            self.close_connection = True
        elif route == "/status":  # an empty answer: 204, 304, ...
            self.send_response(int(q.get("code", "204")))
            self.send_header("X-Upstream-Conn", str(self.client_address[1]))
            self.end_headers()
        elif route == "/until-close":  # HTTP/1.1 body delimited by closing the connection
            self.send_response(200)
            self.send_header("X-Upstream-Conn", str(self.client_address[1]))
            self.end_headers()
            self.wfile.write(b"all of it\n")
            self.close_connection = True
        elif route == "/closing":  # Content-Length, then the app closes
            self._send(200, b"bye\n", "text/plain", extra={"Connection": "close",
                                                          "X-Upstream-Conn": str(self.client_address[1])})
            self.close_connection = True
        elif route == "/slow":
            time.sleep(float(q.get("delay", "1")))
            self._send(200, b"slow\n", "text/plain")
        else:  # echo
            self._send(200, json.dumps({
                "method": self.command, "path": self.path, "headers": dict(self.headers),
                "body_sha256": self.body_sha, "body_length": self.body_len,
                "port": self.server.server_address[1],
            }).encode(), extra={"X-Upstream-Port": str(self.server.server_address[1]),
                                # which local connection answered (upstream keep-alive tests)
                                "X-Upstream-Conn": str(self.client_address[1])})

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _dispatch


class HttpUpstream:
    """A threaded HTTP/1.1 keep-alive server: echo, /download, /chunked, /sse, /slow.

    ``seen`` records (method, path, headers) of every request it answered.
    """

    def __init__(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.seen = []
        self.port = self.server.server_address[1]
        self.seen = self.server.seen
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class WebSocketUpstream(LoopThread):
    """A ``websockets`` echo server (text and binary, messages up to 64 MiB)."""

    def __init__(self):
        super().__init__("ws-upstream")
        import websockets

        async def echo(ws):
            async for message in ws:
                await ws.send(message)

        async def start():
            return await websockets.serve(echo, "127.0.0.1", 0, max_size=64 * 1024 * 1024)
        self.server = self.call(start())
        self.port = self.server.sockets[0].getsockname()[1]

    def close(self):
        async def stop():
            self.server.close()
            await self.server.wait_closed()
        with contextlib.suppress(Exception):
            self.call(stop(), 10)
        self.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class TunnelSetup:
    """Relay + one tunnel row + a connected client + an HTTP upstream, all in-process."""

    def __init__(self, settings, subdomain: str = "myapp", client_kwargs: dict | None = None,
                 upstream=None):
        self.stack = contextlib.ExitStack()
        try:
            self.upstream = upstream or self.stack.enter_context(HttpUpstream())
            self.relay = self.stack.enter_context(RelayThread(settings))
            self.tunnel = make_tunnel(settings, subdomain, self.upstream.port)
            self.host = f"{subdomain}.{settings.domain}"
            self.client = self.stack.enter_context(
                ClientThread(self.relay.url, self.tunnel.token, self.upstream.port, **(client_kwargs or {})))
            self.public_url = self.client.wait_connected()
        except BaseException:
            self.stack.close()
            raise

    def get(self, path: str = "/", **kwargs):
        return visit(self.relay.port, self.host, path, **kwargs)

    def close(self):
        self.stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def tunnel_setup(settings, **kwargs) -> TunnelSetup:
    return TunnelSetup(settings, **kwargs)
