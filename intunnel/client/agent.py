"""The client agent: the reconnect loop around one control session at a time.

``Agent.run()`` reconnects forever (capped exponential backoff with jitter, resolving the
server name again on every attempt) and returns only when the relay refuses or revokes the
token (1), when the URL is not the relay's (2), or when cancelled (Ctrl-C).

Without a local port (``intunnel http`` with no PORT) the agent forwards to the tunnel's
stored local port, the dashboard's field, which each Welcome carries: it follows a change at
the next reconnect.  A given port wins over it, and the banner says when they differ.

The rooms: address.py (the server URL), dial.py (TCP, TLS and the Upgrade), session.py (one
control session: handshake and the relay's messages), pool.py (how many data connections,
pure), data.py (one data connection and its visitor), probe.py (the wrong-scheme hint),
errors.py (what failed and what to do about it).
"""

from __future__ import annotations

import asyncio
import sys
import traceback
from typing import Callable

from .. import __version__
from ..wire import protocol as p
from ..wire.netio import ConnClosed
from .address import ServerAddress, complete_server, parse_server
from .data import Upstream
from .dial import Dialer
from .errors import (ACCESS_UNSUPPORTED, ADVICE, NOT_THE_RELAY, HandshakeFailed, NeedPort, TokenRefused, WrongCommand,
                     WrongServer, advice_for, describe)
from .probe import PROBE_TIMEOUT, other_scheme_hint
from .session import Opened, Session, open_session

__all__ = ["Agent", "ServerAddress", "complete_server", "parse_server", "placement_of", "TokenRefused",
           "HandshakeFailed", "WrongServer", "ADVICE", "advice_for", "ACCESS_UNSUPPORTED", "NOT_THE_RELAY",
           "PROBE_TIMEOUT"]


class Agent:
    def __init__(self, server: str, token: str, local_port: int | None, upstream_host: str = "127.0.0.1",
                 host_header: str = "preserve", insecure: bool = False, verbose: bool = False,
                 say: Callable[[str], None] = print, handshake_timeout: float = 10.0,
                 access: dict | None = None, upstream_given: bool = False, inspector=None,
                 renew_token: Callable[[str], str | None] | None = None, protocol: str | None = None):
        self.server = parse_server(server)
        # "http" (`intunnel http`) or "tcp" (`intunnel tcp`): a tunnel of the other kind is refused
        # at its Welcome; None (`intunnel start`): whichever the token's tunnel is.
        self.protocol = protocol
        self.token = token
        # None: the tunnel's stored local port, from each Welcome (``local_port`` is then the
        # one of the last Welcome, 0 before the first).
        self.follow = local_port is None
        self.local_port = local_port or 0
        self.upstream_host = upstream_host
        self.upstream_given = upstream_given   # --upstream HOST:PORT (the banner names it)
        self._host_header = host_header
        self.verbose = verbose
        self.say = say
        self.access = access or None   # this session's own access rules (cli.session_rules), in the Hello
        self.dialer = Dialer(self.server, insecure, handshake_timeout)
        self.url: str | None = None
        self.connected: asyncio.Event | None = None  # created in run() (needs a running loop)
        # Placement (several relays behind nginx): the subdomain of the last Welcome, kept across
        # reconnects; a session names the value it started with on all its connections, so its
        # data connections reach the relay holding its control channel.
        self._placement = ""
        self._failure: BaseException | None = None  # why the last session failed (a scheme hint's clue)
        self._said_port: tuple | None = None  # (forwarded to, stored) of the last "forwarding to" line
        self.inspector = inspector   # the local inspector (inspect/server.py), or None: --no-inspect
        # An ephemeral tunnel deleted while this client was away (asleep longer than the server's
        # grace): renew_token(refusal code), run in a thread, makes a new one and gives its token
        # (None: stop).  Asked only when the refused token had worked, so a token refused at
        # once is never renewed in a loop.
        self.renew_token = renew_token
        self._token_worked = False

    @property
    def host_header(self) -> str:
        """The Hello's host_header: "" keeps the visitor's; ``rewrite`` is the upstream's address."""
        if self._host_header == "preserve":
            return ""
        if self._host_header == "rewrite":
            return f"{self.upstream_host}:{self.local_port}"
        return self._host_header

    def _say(self, line: str) -> None:
        self.say(line)   # looked up at each line: a caller may swap ``say`` while running

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
            except (WrongServer, NeedPort, WrongCommand) as e:
                self.say(f"intunnel: {e}")
                return 2
            except Exception as e:  # a bug must not end a tunnel that would work after a reconnect
                reason, up, opened = f"internal error ({type(e).__name__}: {e})", False, None
                traceback.print_exc(file=sys.stderr)
            if reason is None:  # final: token refused/revoked
                return 1
            if not (was_connected or up):
                hint = await other_scheme_hint(self.server, self._failure)
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

    def _capture(self):
        """The inspector's capture of one visitor connection, naming this tunnel."""
        return self.inspector.capture(self)

    def _hello(self) -> p.Hello:
        # Following the stored port: 0 lets the relay name its own in its 502 page.
        return p.Hello(client=f"intunnel/{__version__}", local_port=0 if self.follow else self.local_port,
                       host_header=self.host_header, access=self.access)

    def _follow(self, welcome: p.Welcome) -> bool:
        """Take the Welcome's stored local port when following it; True when the session's Hello
        named another in its rewritten Host header (the session must be opened again)."""
        if not self.follow:
            return False
        if not welcome.local_port:
            raise NeedPort("the server did not say the tunnel's local port (an older version): "
                           "give the port to expose, e.g. `intunnel http 3000`")
        sent = self.host_header
        self.local_port = welcome.local_port
        return self._host_header == "rewrite" and sent != self.host_header

    def _check_protocol(self, welcome: p.Welcome) -> None:
        tcp = welcome.url.startswith("tcp://")
        if self.protocol is None or tcp == (self.protocol == "tcp"):
            return
        kind, command = ("a TCP tunnel's", "intunnel tcp") if tcp else ("an HTTP tunnel's", "intunnel http")
        raise WrongCommand(f"this token is {kind}: serve it with `{command}` ({welcome.url})")

    def _port_line(self, welcome: p.Welcome) -> str:
        """The banner's "forwarding to" line, when the port is the stored one or overrides it
        ("" when there is nothing to say, or it was said already)."""
        stored, target = welcome.local_port, f"{self.upstream_host}:{self.local_port}"
        key = (target, stored)
        if not stored or key == self._said_port:
            return ""
        before, self._said_port = self._said_port, key
        if self.follow:
            changed = f"; it was {before[1]}" if before and before[1] != stored else ""
            return f"forwarding to {target} (the tunnel's local port, set in the dashboard{changed})"
        if stored != self.local_port:
            given = "--upstream" if self.upstream_given else "PORT"
            return f"forwarding to {target} ({given} given: the dashboard's local port {stored} is overridden)"
        return ""

    async def _open_session(self) -> Opened:
        """Dial the relay's control channel and get welcomed (session.open_session)."""
        return await open_session(self.dialer, self.token, self._placement, self._hello())

    async def _one_session(self, reconnecting: bool, opened: Opened | None) -> tuple[str | None, bool, Opened | None]:
        """Run one control session (``opened`` if one was welcomed ahead); return the reason it
        ended, whether it got connected, and the session that replaces it after a Move."""
        up = False
        session = None
        try:
            if opened is None:
                opened = await self._open_session()
            if self._follow(opened.welcome):
                # --host-header rewrite names the port, which the first Hello could not know:
                # a session that names it replaces this one at once.
                first, opened = opened, None
                try:
                    opened = await self._open_session()
                finally:
                    first.conn.close()
                self._follow(opened.welcome)
            welcome = opened.welcome
            self._check_protocol(welcome)
            up = True
            self.url = welcome.url
            self._placement = placement_of(welcome)
            session = Session(opened, self.dialer, Upstream(self.upstream_host, self.local_port), self._say,
                              self.verbose, lambda: self._open_session(),
                              self._capture if self.inspector is not None else None)
            self.say(f"{'reconnected' if reconnecting else 'connected'}: {welcome.url} -> "
                     f"http://{self.upstream_host}:{self.local_port}")
            line = self._port_line(welcome)
            if line:
                self.say(line)
            if welcome.access and not reconnecting:
                self.say(f"access: {welcome.access} for this session")
            if self.inspector is not None and not reconnecting:
                self.say(f"inspect: {self.inspector.url}")
            self.connected.set()
            self._token_worked = True
            reason, successor = await session.serve()
            return reason, True, successor
        except TokenRefused as e:
            if self.renew_token is not None and self._token_worked:
                token = await asyncio.get_running_loop().run_in_executor(None, self.renew_token, e.code)
                if token:
                    self.token, self._token_worked = token, False
                    return "the tunnel was replaced by a new one", up, None
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
            return describe(e), up, None
        finally:
            self.connected.clear()
            if session is not None:
                session.close()
            elif opened is not None:
                opened.conn.close()


def placement_of(welcome: p.Welcome) -> str:
    """The header value naming a Welcome's tunnel: its subdomain when it is one DNS label
    (what nginx's map hashes), else none."""
    label = welcome.subdomain
    ok = 0 < len(label) <= 63 and all(c in _LABEL_CHARS for c in label)
    return label if ok else ""


_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
