"""Dialing the relay: TCP (TLS for https), the HTTP Upgrade request, and reading its answer.

Both channels start the same way (protocol.py, steps 1 and 3): ``GET <path>`` with
``Upgrade: intunnel``.  A ``101`` hands the connection back for frames; any other answer is
turned into the exception that says what to do about it (``refusal``, errors.py).  The
answer's head is parsed by the project's HTTP/1 parser (``http1.parse_response_head``, as
strict as the relay is with apps), its JSON error body read by the length that head gives.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl

from .. import __version__
from ..wire import protocol as p
from ..wire.http1 import HttpError, ResponseHead, parse_response_head
from ..wire.netio import Conn, ConnClosed, wait_for
from .address import ServerAddress
from .errors import NOT_THE_RELAY, HandshakeFailed, TokenRefused, WrongServer

ERROR_BODY_TIMEOUT = 2.0  # seconds to wait for a refusal's JSON body (only its words depend on it)
USER_AGENT = f"intunnel/{__version__}"


def tls_context(server: ServerAddress, insecure: bool) -> ssl.SSLContext | None:
    """None for plain HTTP; ``insecure`` accepts any certificate (a self-signed test server)."""
    if server.scheme != "https":
        return None
    context = ssl.create_default_context()
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def upgrade_request(server: ServerAddress, path: str, headers: dict[str, str]) -> bytes:
    """The Upgrade request for ``path`` (``p.AGENT_PATH`` or ``p.DATA_PATH``) with ``headers``."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {server.host_header}",
             f"Upgrade: {p.UPGRADE_TOKEN}", "Connection: Upgrade", f"User-Agent: {USER_AGENT}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_answer(raw: bytes) -> ResponseHead:
    """The relay's answer head (``raw`` without its blank line); HandshakeFailed when it is
    not HTTP/1.x at all (a TLS port's garbage, something else on the port)."""
    try:
        return parse_response_head(raw + b"\r\n\r\n", head_only=False, upgrade_asked=True)
    except HttpError:
        first = raw.split(b"\r\n", 1)[0][:80].decode("latin-1")
        raise HandshakeFailed(f"the relay answered with something that is not HTTP ({first!r})") from None


def error_fields(body: bytes) -> tuple[str, str, str]:
    """The ``message``, ``code`` and ``relay_url`` of a JSON error body ("" for each one missing)."""
    try:
        obj = json.loads(body)
        return (str(obj.get("message", ""))[:200], str(obj.get("code", ""))[:64],
                str(obj.get("relay_url", ""))[:200])
    except (ValueError, AttributeError):
        return "", "", ""


def refusal(head: ResponseHead, body: bytes) -> Exception:
    """What a non-101 answer means, as the exception to raise (errors.py)."""
    message, code, relay_url = error_fields(body)
    status_line = head.raw.split(b"\r\n", 1)[0].decode("latin-1")
    message = message or status_line
    if head.status == 421 and code == NOT_THE_RELAY:
        where = f"the relay is at {relay_url}: use --server {relay_url}" if relay_url else message
        return WrongServer(f"that is the InTunnel web app, not the relay; {where}")
    if head.status in (401, 403):
        return TokenRefused(f"the relay refused the token ({message})", code)
    return HandshakeFailed(f"the relay answered {head.status}: {message}")


class Dialer:
    """Opens upgraded connections to one relay; ``timeout`` bounds each step."""

    def __init__(self, server: ServerAddress, insecure: bool = False, timeout: float = 10.0):
        self.server = server
        self.timeout = timeout
        self.ssl = tls_context(server, insecure)

    async def resolve(self) -> str:
        """The server's address, resolved now (every session: the relay may have moved)."""
        loop = asyncio.get_running_loop()
        infos = await wait_for(
            loop.getaddrinfo(self.server.host, self.server.port, type=socket.SOCK_STREAM), self.timeout)
        if not infos:
            raise OSError(f"cannot resolve {self.server.host}")
        return infos[0][4][0]

    async def upgrade(self, address: str, path: str, headers: dict[str, str]) -> Conn:
        """A connection to ``address`` upgraded on ``path``: raises TokenRefused, WrongServer,
        HandshakeFailed, OSError, ConnClosed, asyncio.TimeoutError."""
        loop = asyncio.get_running_loop()
        kwargs = {"ssl": self.ssl, "server_hostname": self.server.host} if self.ssl else {}
        # By address: the name was resolved once for the session (no resolver thread per visitor).
        _, conn = await wait_for(
            loop.create_connection(Conn, address, self.server.port, **kwargs), self.timeout)
        try:
            conn.write(upgrade_request(self.server, path, headers))
            try:
                raw = await wait_for(conn.read_head(p.MAX_HANDSHAKE_RESPONSE), self.timeout)
            except ValueError:
                raise HandshakeFailed("the relay answered with something that is not HTTP") from None
            head = parse_answer(raw)
            if head.status == 101:
                return conn
            raise refusal(head, await self._body(conn, head))
        except BaseException:
            conn.close()
            raise

    async def _body(self, conn: Conn, head: ResponseHead) -> bytes:
        """A refusal's body when it says its length and comes within a moment, else b""."""
        if head.body != "length" or head.length > p.MAX_HANDSHAKE_RESPONSE:
            return b""
        try:
            return await wait_for(conn.read_exactly(head.length), ERROR_BODY_TIMEOUT)
        except (asyncio.TimeoutError, ConnClosed):
            return b""
