"""The client agent: keeps a control channel to the relay and splices visitors to the local app.

``Agent.run()`` reconnects forever (capped exponential backoff with jitter,
resolving the server name again on every attempt) and returns only when the
relay refuses or revokes the token, or when cancelled (Ctrl-C).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import ssl
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

from .. import __version__
from ..wire import protocol as p
from ..wire.netio import Conn, ConnClosed, splice
from .exchanges import ExchangeLog


class TokenRefused(Exception):
    """The relay refused or revoked the token: retrying won't help.  ``code`` says why."""

    def __init__(self, message: str, code: str = ""):
        super().__init__(message)
        self.code = code


# An older relay ignores a Hello's access rules: the client must not serve without them.
ACCESS_UNSUPPORTED = "ACCESS_UNSUPPORTED"

# What the user can do about each reason the relay gives for a final refusal.
_CURRENT_TOKEN = "get the tunnel's current token from the dashboard and run the command again"
ADVICE = {
    p.REVOKED_TOKEN: _CURRENT_TOKEN,
    "UNAUTHORIZED": _CURRENT_TOKEN,
    p.REVOKED_DELETED: "the tunnel no longer exists; create it again in the dashboard and use its token",
    p.REVOKED_DISCONNECTED: "an administrator disconnected this tunnel; its token is unchanged, "
                            "so run the command again when you may reconnect",
    p.REVOKED_DISABLED: "the account that owns this tunnel is disabled; ask an administrator to enable it",
    p.REVOKED_REPLACED: "another client now serves this tunnel with the same token; "
                        "stop that one (or run this command again to take the tunnel back)",
    p.ACCESS_INVALID: "fix the --basic-auth, --allow-ip and --deny-ip options and run the command again",
    ACCESS_UNSUPPORTED: "upgrade the server, or run without --basic-auth, --allow-ip and --deny-ip",
}


def advice_for(code: str) -> str:
    return ADVICE.get(code, "check the tunnel's token in the dashboard and run the command again")


class HandshakeFailed(Exception):
    """The relay answered, but not with an upgrade (wrong URL, restarting...): retry later."""


class WrongServer(Exception):
    """The URL reaches something that is not the relay (the web app, the other scheme): the
    message says what to type instead.  Final, exit status 2."""


NOT_THE_RELAY = "NOT_THE_RELAY"  # the web app's answer on the agent's paths (its relay_url says where)
PROBE_TIMEOUT = 3.0  # asking the server in the other scheme, when the first session failed


@dataclass(frozen=True)
class ServerAddress:
    scheme: str
    host: str
    port: int

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def complete_server(url: str) -> tuple[str, str]:
    """The server URL with its scheme, and a note saying which one was chosen when it had none:
    ``http://`` for a loopback host (``localhost``, ``*.localhost``, 127.x, ::1: the embedded
    mode's plain-HTTP relay), ``https://`` for any other (a deployed appliance behind nginx)."""
    if "://" in url:
        return url, ""
    host = urlsplit("//" + url).hostname or ""
    scheme = "http" if _is_loopback(host) else "https"
    why = "a loopback address" if scheme == "http" else "not a loopback address"
    completed = f"{scheme}://{url}"
    return completed, (f"no scheme in {url!r}: using {completed} ({why}); "
                       "write http:// or https:// to choose")


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_server(url: str) -> ServerAddress:
    """``https://example.com`` / ``http://localhost:8080`` -> address; ValueError when unusable.
    Without a scheme: see ``complete_server``."""
    parts = urlsplit(complete_server(url)[0])
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"server URL must look like https://example.com, got {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError(f"bad port in server URL {url!r}") from None
    return ServerAddress(parts.scheme, parts.hostname, port)


class Agent:
    def __init__(self, server: str, token: str, local_port: int, upstream_host: str = "127.0.0.1",
                 host_header: str = "preserve", insecure: bool = False, verbose: bool = False,
                 say: Callable[[str], None] = print, handshake_timeout: float = 10.0,
                 access: dict | None = None):
        self.server = parse_server(server)
        self.token = token
        self.local_port = local_port
        self.upstream_host = upstream_host
        self.host_header = "" if host_header == "preserve" else (
            f"{upstream_host}:{local_port}" if host_header == "rewrite" else host_header)
        self.verbose = verbose
        self.say = say
        self.access = access or None   # this session's own access rules (cli.session_rules), in the Hello
        self.handshake_timeout = handshake_timeout
        self.ssl = None
        if self.server.scheme == "https":
            self.ssl = ssl.create_default_context()
            if insecure:
                self.ssl.check_hostname = False
                self.ssl.verify_mode = ssl.CERT_NONE
        self.url: str | None = None
        self.connected: asyncio.Event | None = None  # created in run() (needs a running loop)
        self._session: str | None = None
        # Placement (several relays behind nginx): the subdomain of the last Welcome, kept across
        # reconnects; a session names the value it started with on all its connections, so its
        # data connections reach the relay holding its control channel.
        self._placement = ""
        self._placed: dict[str, str] = {}  # the header this session sends ({} when none)
        self._address = self.server.host
        self._failure: BaseException | None = None  # why the last session failed (a scheme hint's clue)
        self._idle = 0
        self._dialing = 0
        self._pool_size = self._base_pool = p.DEFAULT_POOL_SIZE
        self._last_burst = 0.0
        self._tasks: set[asyncio.Task] = set()
        self._data_conns: set[Conn] = set()

    # --- the reconnect loop ---
    async def run(self) -> int:
        self.connected = asyncio.Event()
        attempt = 0
        was_connected = False
        opened = None  # a session already welcomed (after a Move): served next, at once
        said = None  # the last "cannot connect" reason printed (before the first connection)
        while True:
            self._failure = None
            try:
                reason, up, opened = await self._one_session(was_connected, opened)
            except WrongServer as e:
                self.say(f"intunnel: {e}")
                return 2
            except Exception as e:  # a bug must not end a tunnel that would work after a reconnect
                reason, up, opened = f"internal error ({type(e).__name__}: {e})", False, None
                traceback.print_exc(file=sys.stderr)
            if reason is None:  # final: token refused/revoked
                return 1
            if not (was_connected or up):
                hint = await self._other_scheme_hint(self._failure)
                if hint:
                    self.say(f"intunnel: {hint}")
                    return 2
            was_connected = was_connected or up
            if opened is not None:
                continue
            if up:
                attempt = 0
            delay = p.backoff_delay(attempt)
            attempt += 1
            # One line when the tunnel goes down (the retries after it are quiet until
            # "reconnected", or one line each with -v); before the first connection, one line
            # per new reason.
            if up:
                self.say(f"disconnected: {reason}; reconnecting in {delay:.1f}s")
            elif (self.verbose or not was_connected) and (self.verbose or reason != said):
                said = reason
                self.say(f"cannot connect to {self.server.scheme}://{self.server.host_header}: {reason}; "
                         f"retrying in {delay:.1f}s")
            await asyncio.sleep(delay)

    async def _other_scheme_hint(self, failure: BaseException | None) -> str:
        """When a session that never got connected failed in a way the wrong scheme explains
        (a TLS hello sent to a plain-HTTP port, or the reverse), ask the server in the other
        scheme; if it answers, what to type instead, else ""."""
        if failure is None or isinstance(failure, (ConnectionRefusedError, socket.gaierror,
                                                   ssl.SSLCertVerificationError, TokenRefused)):
            return ""
        other = "http" if self.server.scheme == "https" else "https"
        url = f"{other}://{ServerAddress(other, self.server.host, self.server.port).host_header}"
        # nginx's TLS port answers plain HTTP too (its 400): only a server that fails the TLS
        # handshake now is one that doesn't speak TLS (a first failure may have been transient).
        if other == "http" and not await self._answers_tls() and await self._answers_plain_http():
            return f"{self.server.host_header} speaks plain HTTP, not TLS (https): use --server {url}"
        if other == "https" and await self._answers_tls():
            return f"{self.server.host_header} speaks TLS (https), not plain HTTP: use --server {url}"
        return ""

    async def _answers_plain_http(self) -> bool:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                reader, writer = await asyncio.open_connection(self.server.host, self.server.port)
                try:
                    writer.write(f"HEAD / HTTP/1.1\r\nHost: {self.server.host_header}\r\n"
                                 "Connection: close\r\n\r\n".encode("latin-1"))
                    return await reader.readexactly(5) == b"HTTP/"
                finally:
                    writer.close()
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            return False

    async def _answers_tls(self) -> bool:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # only asking whether it speaks TLS: nothing is sent
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                _, writer = await asyncio.open_connection(self.server.host, self.server.port, ssl=context,
                                                          server_hostname=self.server.host)
                writer.close()
                return True
        except (OSError, asyncio.TimeoutError):
            return False

    async def _open_session(self) -> tuple:
        """Dial the relay's control channel and get welcomed: (conn, control, welcome, address,
        placement headers).  Raises TokenRefused, HandshakeFailed, OSError, ... ."""
        address = await self._resolve()  # every session: the relay may have moved
        placed = {p.PLACEMENT_HEADER: self._placement} if self._placement else {}
        conn = await self._dial(p.AGENT_PATH, {"Authorization": f"Bearer {self.token}", **placed}, address)
        try:
            control = p.ControlSession(p.AGENT, time.monotonic())
            conn.write(control.send(p.Hello(client=f"intunnel/{__version__}", local_port=self.local_port,
                                            host_header=self.host_header, access=self.access)))
            messages = await asyncio.wait_for(conn.read_messages(control.decoder, limit=1),
                                              self.handshake_timeout)
            first = control.receive_messages(messages)[0]
            if isinstance(first, p.Revoked):
                raise TokenRefused(first.reason, first.code)
            if isinstance(first, p.Error) and first.code == p.ACCESS_INVALID:
                raise TokenRefused(first.message, first.code)
            if isinstance(first, p.Welcome) and self.access and not first.access:
                raise TokenRefused("the relay does not enforce this session's access rules (an older "
                                   "version ignores them)", ACCESS_UNSUPPORTED)
            if not isinstance(first, p.Welcome):
                raise HandshakeFailed(f"relay said: {getattr(first, 'reason', '') or getattr(first, 'message', '')}")
            return conn, control, first, address, placed
        except BaseException:
            conn.close()
            raise

    async def _one_session(self, reconnecting: bool, opened: tuple | None) -> tuple[str | None, bool, tuple | None]:
        """Run one control session (``opened`` if one was welcomed ahead); return the reason it
        ended, whether it got connected, and the session that replaces it after a Move."""
        up = False
        control_conn = None
        try:
            if opened is None:
                opened = await self._open_session()
            control_conn, control, first, self._address, self._placed = opened
            up = True
            control.dead_peer_timeout = first.dead_peer_timeout
            self.url = first.url
            self._session = first.session
            self._placement = placement_of(first)
            self._base_pool = self._pool_size = max(0, min(first.pool_size, p.MAX_POOL_SIZE))
            self._idle = self._dialing = 0  # a new session starts with an empty pool
            self.say(f"{'reconnected' if reconnecting else 'connected'}: {first.url} -> "
                     f"http://{self.upstream_host}:{self.local_port}")
            if first.access and not reconnecting:
                self.say(f"access: {first.access} for this session")
            self.connected.set()
            self._top_up()
            reason, successor = await self._serve_control(control_conn, control)
            return reason, True, successor
        except TokenRefused as e:
            self.say(f"intunnel: {e}. Not retrying: {advice_for(e.code)}.")
            return None, up, None
        except asyncio.TimeoutError as e:
            self._failure = e
            return "the relay did not answer in time", up, None
        except HandshakeFailed as e:
            self._failure = e
            return str(e), up, None
        except (OSError, ConnClosed, p.ProtocolError) as e:
            self._failure = e
            return _describe(e), up, None
        finally:
            self.connected.clear()
            self._session = None
            if control_conn is not None:
                control_conn.close()
            for task in list(self._tasks):
                task.cancel()
            for conn in list(self._data_conns):
                conn.close()  # idle pool connections; spliced ones are owned by their visitors

    async def _serve_control(self, conn: Conn, control: p.ControlSession) -> tuple[str, tuple | None]:
        """Answer pings and OpenData until the channel ends; return why it ended, and the session
        that takes over from it (a Move: opened while this one kept serving, make before break)."""
        ended: asyncio.Future = asyncio.get_running_loop().create_future()
        successor: asyncio.Task | None = None

        def finish(reason):
            if not ended.done():
                ended.set_result(reason)

        def moved(task: asyncio.Task):
            nonlocal successor
            if task.cancelled():
                return
            if task.exception() is not None:
                self.say(f"could not open the new session the relay asked for ({_describe(task.exception())}); "
                         "this one goes on")
                successor = None
                return
            finish("moved to the relay that takes this tunnel's visitors")

        def on_bytes(data: bytes):
            nonlocal successor
            try:
                messages = control.receive_data(data, time.monotonic())
            except p.ProtocolError as e:
                finish(f"protocol error: {e}")
                return
            for m in messages:
                if isinstance(m, p.Ping):
                    conn.write(control.send(p.Pong(m.seq)))
                elif isinstance(m, p.OpenData):
                    # The pool ran dry: grow it for this burst (it shrinks back when calm).
                    count = max(0, min(m.count, p.MAX_OPEN_DATA_BATCH))
                    self._pool_size = min(p.MAX_POOL_SIZE, self._pool_size + count)
                    self._last_burst = time.monotonic()
                    for _ in range(count):
                        self._spawn(self._data_connection(counted=False))
                elif isinstance(m, p.Move):
                    if successor is None and not ended.done():
                        self.say(f"moving: {m.reason}")
                        successor = asyncio.ensure_future(self._open_session())
                        successor.add_done_callback(moved)
                elif isinstance(m, p.Revoked):
                    if successor is not None and m.code == p.REVOKED_REPLACED:
                        continue  # replaced by our own new session: it takes over once welcomed
                    ended.done() or ended.set_exception(
                        TokenRefused(f"the relay cut this tunnel: {m.reason}", m.code))
                elif isinstance(m, p.GoAway):
                    finish(f"the relay is going away ({m.reason})")
                elif isinstance(m, p.Error):
                    finish(f"relay error: {m.message}")

        conn.on_close = lambda: finish("connection to the relay lost")
        conn.on_eof = lambda: finish("the relay closed the connection")
        conn.forward_to(on_bytes)
        on_bytes(b"")
        try:
            while not ended.done():
                await asyncio.wait([ended], timeout=1.0)
                now = time.monotonic()
                if control.is_dead(now):
                    finish(f"no heartbeat from the relay for {control.dead_peer_timeout:.0f}s")
                if self._pool_size > self._base_pool and now - self._last_burst > p.POOL_SHRINK_AFTER:
                    self._shrink_pool()
            reason = ended.result()
        except BaseException:
            if successor is not None:
                successor.cancel()
            raise
        if successor is None:
            return reason, None
        try:   # under way, or done: the new session takes over when it is welcomed
            return reason, await successor
        except Exception:
            return reason, None

    # --- data connections ---
    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _top_up(self) -> None:
        while self._session and self._idle + self._dialing < self._pool_size:
            self._dialing += 1
            self._spawn(self._data_connection(counted=True))

    def _shrink_pool(self) -> None:
        """Back to the relay's pool size: an idle agent should cost the relay little memory."""
        self._pool_size = self._base_pool
        for conn in list(self._data_conns)[: max(0, self._idle - self._base_pool)]:
            conn.close()

    async def _data_connection(self, counted: bool) -> None:
        """One data connection: dial, wait idle for a Bind, then serve that visitor."""
        counted_dialing = counted
        session, placed = self._session, self._placed
        conn = None
        try:
            conn = await self._dial(p.DATA_PATH, {p.SESSION_HEADER: session, **placed})
        except (OSError, ConnClosed, HandshakeFailed, TokenRefused, WrongServer, asyncio.TimeoutError):
            if counted_dialing:
                self._dialing -= 1
            return
        if counted_dialing:
            self._dialing -= 1
        self._idle += 1
        self._data_conns.add(conn)
        decoder = p.FrameDecoder()
        try:
            messages = await conn.read_messages(decoder, limit=1)
        except (ConnClosed, p.ProtocolError, asyncio.CancelledError):
            self._idle -= 1
            self._data_conns.discard(conn)
            conn.close()
            return
        self._idle -= 1
        self._data_conns.discard(conn)
        self._top_up()
        if not isinstance(messages[0], p.Bind):
            conn.close()
            return
        await self._serve_visitor(conn, decoder.take_rest())

    async def _serve_visitor(self, conn: Conn, first_bytes: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(p.LOCAL_CONNECT_TIMEOUT):
                _, local = await loop.create_connection(Conn, self.upstream_host, self.local_port)
        except (OSError, asyncio.TimeoutError) as e:
            conn.write(p.encode(p.DataRefused(self.local_port, _describe(e))))
            conn.close()
            self.say(f"local app on {self.upstream_host}:{self.local_port} refused a visitor: {_describe(e)}")
            return
        conn.write(p.encode(p.DataReady()))
        log = None
        if self.verbose:   # -v: one line per exchange, from a passive look at both directions
            log = ExchangeLog(lambda exchange: self.say(exchange.line(time.monotonic())))
            conn.taps, local.taps = log.requests, log.responses
        if first_bytes:
            local.write(first_bytes)
            if conn.taps is not None:  # the request head often rides in with the Bind frame
                conn.taps(first_bytes)
        splice(conn, local, on_close=log.closed if log else None)

    # --- dialing the relay ---
    async def _resolve(self) -> str:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.handshake_timeout):
            infos = await loop.getaddrinfo(self.server.host, self.server.port, type=socket.SOCK_STREAM)
        if not infos:
            raise OSError(f"cannot resolve {self.server.host}")
        return infos[0][4][0]

    async def _dial(self, path: str, headers: dict[str, str], address: str | None = None) -> Conn:
        loop = asyncio.get_running_loop()
        kwargs = {"ssl": self.ssl, "server_hostname": self.server.host} if self.ssl else {}
        async with asyncio.timeout(self.handshake_timeout):
            # By address: the name was resolved once for this session (no resolver thread per visitor).
            _, conn = await loop.create_connection(Conn, address or self._address, self.server.port, **kwargs)
        try:
            lines = [f"GET {path} HTTP/1.1", f"Host: {self.server.host_header}",
                     f"Upgrade: {p.UPGRADE_TOKEN}", "Connection: Upgrade",
                     f"User-Agent: intunnel/{__version__}"]
            lines += [f"{k}: {v}" for k, v in headers.items()]
            conn.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            async with asyncio.timeout(self.handshake_timeout):
                try:
                    raw = await conn.read_head(p.MAX_HANDSHAKE_RESPONSE)
                except ValueError:
                    raise HandshakeFailed("the relay answered with something that is not HTTP") from None
            status_line = raw.split(b"\r\n", 1)[0].decode("latin-1")
            parts = status_line.split(" ", 2)
            status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            if status == 101:
                return conn
            message, code, relay_url = await self._error_message(conn, raw)
            message = message or status_line
            if status == 421 and code == NOT_THE_RELAY:
                where = f"the relay is at {relay_url}: use --server {relay_url}" if relay_url else message
                raise WrongServer(f"that is the InTunnel web app, not the relay; {where}")
            if status in (401, 403):
                raise TokenRefused(f"the relay refused the token ({message})", code)
            raise HandshakeFailed(f"the relay answered {status or status_line!r}: {message}")
        except BaseException:
            conn.close()
            raise

    async def _error_message(self, conn: Conn, raw: bytes) -> tuple[str, str, str]:
        """The ``message``, ``code`` and ``relay_url`` of a JSON error body, if one comes within a moment."""
        length = 0
        for line in raw.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length" and value.strip().isdigit():
                length = int(value.strip())
        if not 0 < length <= p.MAX_HANDSHAKE_RESPONSE:
            return "", "", ""
        try:
            body = json.loads(await asyncio.wait_for(conn.read_exactly(length), 2.0))
            return (str(body.get("message", ""))[:200], str(body.get("code", ""))[:64],
                    str(body.get("relay_url", ""))[:200])
        except (asyncio.TimeoutError, ConnClosed, ValueError, AttributeError):
            return "", "", ""


def placement_of(welcome: p.Welcome) -> str:
    """The header value naming a Welcome's tunnel: its subdomain when it is one DNS label
    (what nginx's map hashes), else none."""
    label = welcome.subdomain
    ok = 0 < len(label) <= 63 and all(c in _LABEL_CHARS for c in label)
    return label if ok else ""


_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({exc.verify_message}); use --insecure only for a self-signed test server"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    if isinstance(exc, ConnClosed):
        return "connection closed"
    return str(exc) or type(exc).__name__
