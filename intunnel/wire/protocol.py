"""The agent <-> relay wire protocol, sans I/O: messages, framing, limits, session rules.

Shape (control channel + raw data connections, like ngrok v1 / bore / rathole):

1. The agent opens the *control channel*: ``GET /_intunnel/agent`` with
   ``Upgrade: intunnel``, ``Connection: Upgrade`` and ``Authorization: Bearer
   <tunnel token>`` (a header, never the URL, so proxies don't log it).  The
   relay checks the token and answers ``101 Switching Protocols`` (or 401/403/
   429/503 with the seed's JSON error body).
2. Both sides then exchange *frames*: a 4-byte big-endian length followed by
   that many bytes of UTF-8 JSON, an object whose ``"type"`` names the message.
   The agent speaks first (``Hello``); the relay answers ``Welcome`` with the
   public URL and a per-session secret, then sends ``Ping`` every heartbeat
   interval and ``OpenData`` when it needs data connections.
3. *Data connections*: the agent dials ``GET /_intunnel/data`` (Upgrade again)
   with the session secret in the ``X-Intunnel-Session`` header and keeps
   ``pool_size`` of them warm.  To use one for a visitor the relay sends one
   ``Bind`` frame; the agent dials the local app and answers ``DataReady`` or
   ``DataRefused``.  From then on the connection carries raw HTTP bytes in
   both directions, untouched.

Rules of the control channel (the transition table ``TRANSITIONS`` is the truth):

- The agent's first frame is ``Hello``; nothing else is accepted before it.
- The relay's first frame is ``Welcome`` (or a final ``Revoked``/``GoAway``/``Error``).
- ``Revoked``, ``GoAway`` and ``Error`` are final: the sender closes afterwards.
- Either side may send ``Ping``; the other answers ``Pong`` with the same ``seq``.
- A ``Hello`` may carry the session's own access rules (``access``: the client's
  ``--basic-auth``/``--allow-ip``/``--deny-ip``); they only narrow the tunnel's policy and
  end with the session (``intunnel.session_access``).  A relay that takes them says what it
  enforces in ``Welcome.access``; one that finds them invalid answers a final ``Error`` with
  ``code`` ``ACCESS_INVALID`` (the client exits: retrying can't help).  A client that sent
  rules and gets a ``Welcome`` without ``access`` (an older relay, which ignores the field)
  does not serve: its tunnel would be less protected than it asked.
- ``Welcome.local_port`` is the tunnel's stored local port (the dashboard's field): a client
  started without a port forwards to it, and follows it when a later Welcome brings another.
  An older relay leaves it out (0); an older client ignores it.
- ``Move`` (relay -> agent) is not final: the agent opens a new session and closes this one
  once the new one is welcomed (make before break).
- Any frame is proof of life; silence longer than the dead-peer timeout ends the session.
- A frame larger than ``MAX_FRAME_SIZE``, bad JSON, an unknown type, a missing
  or mistyped field, or a message not allowed in the current state is a
  ``ProtocolError`` and ends the session.
"""

from __future__ import annotations

import json
import random
import struct
from dataclasses import MISSING, asdict, dataclass, fields
from typing import ClassVar

PROTOCOL_VERSION = 1

# --- HTTP handshake -----------------------------------------------------------
AGENT_PATH = "/_intunnel/agent"
DATA_PATH = "/_intunnel/data"
HEALTH_PATH = "/_intunnel/healthz"
RELAY_PATH_PREFIX = "/_intunnel/"
UPGRADE_TOKEN = "intunnel"           # value of the Upgrade header on both channels
SESSION_HEADER = "X-Intunnel-Session"  # data connections: the session secret
# Both channels: the subdomain of the tunnel the agent serves (from its last Welcome), so a
# front nginx balancing several relays sends the agent where that tunnel's visitors go.
# Only nginx reads it; the relay ignores it (the token and the session secret authenticate).
PLACEMENT_HEADER = "X-InTunnel-Tunnel"

# --- limits (the relay's tunables live in settings: relay_*) ---------------------
FRAME_HEADER = struct.Struct("!I")
MAX_FRAME_SIZE = 16 * 1024           # control messages are tiny; anything bigger is hostile
MAX_HANDSHAKE_RESPONSE = 16 * 1024   # the relay's answer to an agent's Upgrade request
DEFAULT_POOL_SIZE = 8                # warm data connections an agent keeps open
MAX_POOL_SIZE = 64                   # an agent grows its pool up to this under bursts of visitors
POOL_SHRINK_AFTER = 10.0             # ...and shrinks it back after this many calm seconds
MAX_OPEN_DATA_BATCH = 16             # OpenData.count upper bound
DATA_CONNECT_TIMEOUT = 10.0          # relay: seconds to wait for a data connection for a visitor
# relay: data connections one visitor may be given that close unanswered after their Bind (the
# agent's pool closing an idle one as the Bind crossed it) before the tunnel counts as offline
DATA_BIND_ATTEMPTS = 3
LOCAL_CONNECT_TIMEOUT = 10.0         # agent: seconds to dial the local app
SHUTDOWN_GRACE = 5.0                 # relay: seconds visitors get to finish after SIGTERM
# Agent reconnects: capped exponential backoff with jitter.
RECONNECT_MIN_DELAY = 0.1
RECONNECT_MAX_DELAY = 15.0
RECONNECT_FACTOR = 2.0
MAX_AUTH_FAILURES = 1                # auth failures are final: the token is wrong or revoked


class ProtocolError(Exception):
    """The peer broke the protocol; the session must end."""


# --- messages --------------------------------------------------------------------

_REGISTRY: dict[str, type["Message"]] = {}


@dataclass(frozen=True)
class Message:
    type: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.type] = cls


@dataclass(frozen=True)
class Hello(Message):
    """Agent -> relay, first frame: who I am and how to treat requests."""
    type: ClassVar[str] = "hello"
    version: int = PROTOCOL_VERSION
    client: str = ""
    local_port: int = 0          # named in the relay's 502 page
    host_header: str = ""        # "" = preserve the visitor's Host; else the value to send
    # The session's own access rules, {"basic_auth": ["user:password"], "ip_allow": [CIDR],
    # "ip_deny": [CIDR]} (the API's access object without public); None (left out): none.
    access: dict | None = None


@dataclass(frozen=True)
class Welcome(Message):
    """Relay -> agent: authenticated; here is your URL and session secret."""
    type: ClassVar[str] = "welcome"
    url: str
    subdomain: str
    session: str
    heartbeat_interval: float
    dead_peer_timeout: float
    pool_size: int = DEFAULT_POOL_SIZE
    access: str = ""             # the Hello's access rules as the relay enforces them (a summary)
    local_port: int = 0          # the tunnel's local port as stored (the dashboard's); 0: an older relay


@dataclass(frozen=True)
class Ping(Message):
    """Either way: are you alive?"""
    type: ClassVar[str] = "ping"
    seq: int


@dataclass(frozen=True)
class Pong(Message):
    """Either way: answer to Ping with the same seq."""
    type: ClassVar[str] = "pong"
    seq: int


@dataclass(frozen=True)
class Move(Message):
    """Relay -> agent: this tunnel's visitors arrive at another relay (several relays): open a
    new session through the front, which places it with them, and close this one only once
    the new one is welcomed; this one serves meanwhile (no gap)."""
    type: ClassVar[str] = "move"
    reason: str = "this tunnel's visitors arrive at another relay"


@dataclass(frozen=True)
class OpenData(Message):
    """Relay -> agent: dial this many more data connections."""
    type: ClassVar[str] = "open_data"
    count: int = 1


@dataclass(frozen=True)
class GoAway(Message):
    """Relay -> agent, final: the relay is stopping; reconnect."""
    type: ClassVar[str] = "go_away"
    reason: str = "relay is shutting down"


# Revoked.code (and the matching HTTP error codes of a refused agent): why, so the
# client can say what to do about it.
REVOKED_TOKEN = "TOKEN_REGENERATED"
REVOKED_DELETED = "TUNNEL_DELETED"
REVOKED_DISCONNECTED = "DISCONNECTED"
REVOKED_DISABLED = "ACCOUNT_DISABLED"
REVOKED_REPLACED = "REPLACED"
ACCESS_INVALID = "ACCESS_INVALID"   # Error.code: the Hello's access rules are invalid; final


@dataclass(frozen=True)
class Revoked(Message):
    """Relay -> agent, final: this token may not connect any more; do not retry."""
    type: ClassVar[str] = "revoked"
    reason: str = "token revoked"
    code: str = ""               # one of REVOKED_*; "" from an older relay


@dataclass(frozen=True)
class Error(Message):
    """Either way, final: a protocol violation or internal failure."""
    type: ClassVar[str] = "error"
    message: str
    code: str = ""               # ACCESS_INVALID: the Hello's access rules were refused


@dataclass(frozen=True)
class Bind(Message):
    """Relay -> agent on a data connection: a visitor is here; dial the local app."""
    type: ClassVar[str] = "bind"
    visitor: str = ""            # visitor address, for the agent's log


@dataclass(frozen=True)
class DataReady(Message):
    """Agent -> relay on a data connection: the local app answered; raw bytes follow."""
    type: ClassVar[str] = "ready"


@dataclass(frozen=True)
class DataRefused(Message):
    """Agent -> relay on a data connection, final: the local app refused the connection."""
    type: ClassVar[str] = "refused"
    port: int = 0
    message: str = ""


# Annotations are strings here.  An optional field (``X | None``, default None) is left out of
# a frame when None, and null reads as absent.
_TYPE_NAMES = {"int": int, "float": float, "str": str, "dict | None": dict}
_FIELD_TYPES = {int: (int,), float: (int, float), str: (str,), dict: (dict,)}


def encode(message: Message) -> bytes:
    """One frame: length prefix + compact JSON."""
    values = {k: v for k, v in asdict(message).items() if v is not None}
    body = json.dumps({"type": message.type, **values}, separators=(",", ":"),
                      ensure_ascii=True).encode("ascii")
    if len(body) > MAX_FRAME_SIZE:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds {MAX_FRAME_SIZE}")
    return FRAME_HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> Message:
    """Parse one frame body (without its length prefix) into a message."""
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("frame is not UTF-8 JSON") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ProtocolError("frame is not an object with a type")
    cls = _REGISTRY.get(obj.pop("type"))
    if cls is None or cls is Message:
        raise ProtocolError("unknown message type")
    kwargs = {}
    for f in fields(cls):
        if f.name not in obj or (obj[f.name] is None and f.default is None):
            if f.default is MISSING:
                raise ProtocolError(f"{cls.type}: missing field {f.name!r}")
            continue
        value = obj[f.name]
        ftype = _TYPE_NAMES[f.type]
        if isinstance(value, bool) or not isinstance(value, _FIELD_TYPES[ftype]):
            raise ProtocolError(f"{cls.type}: field {f.name!r} must be {ftype.__name__}")
        kwargs[f.name] = ftype(value) if ftype is float else value
    # Unknown extra fields are ignored: newer peers may add some.
    return cls(**kwargs)


class FrameDecoder:
    """Splits a byte stream into messages; keeps what follows the last whole frame."""

    def __init__(self, max_frame: int = MAX_FRAME_SIZE):
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes, limit: int | None = None) -> list[Message]:
        """Add bytes; return the complete messages (at most ``limit`` of them)."""
        self._buf += data
        out: list[Message] = []
        while limit is None or len(out) < limit:
            if len(self._buf) < FRAME_HEADER.size:
                break
            (size,) = FRAME_HEADER.unpack_from(self._buf)
            if size > self.max_frame:
                raise ProtocolError(f"frame of {size} bytes exceeds {self.max_frame}")
            end = FRAME_HEADER.size + size
            if len(self._buf) < end:
                break
            body = bytes(self._buf[FRAME_HEADER.size:end])
            del self._buf[:end]
            out.append(decode_body(body))
        return out

    def take_rest(self) -> bytes:
        """Bytes received after the frames returned so far (raw data on a data connection)."""
        rest, self._buf = bytes(self._buf), bytearray()
        return rest


# --- the control channel's state machine --------------------------------------------

RELAY, AGENT = "relay", "agent"
AWAIT_HELLO, AWAIT_WELCOME, ACTIVE, CLOSED = "await_hello", "await_welcome", "active", "closed"
FINAL = (GoAway, Revoked, Error)

# (role, state, direction, message class) -> next state.  Anything else is a ProtocolError.
TRANSITIONS: dict[tuple[str, str, str], dict[type[Message], str]] = {
    (RELAY, AWAIT_HELLO, "recv"): {Hello: ACTIVE, Error: CLOSED},
    (RELAY, AWAIT_HELLO, "send"): {GoAway: CLOSED, Revoked: CLOSED, Error: CLOSED},
    (RELAY, ACTIVE, "send"): {Welcome: ACTIVE, Ping: ACTIVE, Pong: ACTIVE, OpenData: ACTIVE, Move: ACTIVE,
                              GoAway: CLOSED, Revoked: CLOSED, Error: CLOSED},
    (RELAY, ACTIVE, "recv"): {Ping: ACTIVE, Pong: ACTIVE, Error: CLOSED},
    (AGENT, AWAIT_HELLO, "send"): {Hello: AWAIT_WELCOME},
    (AGENT, AWAIT_WELCOME, "recv"): {Welcome: ACTIVE, GoAway: CLOSED, Revoked: CLOSED, Error: CLOSED},
    (AGENT, AWAIT_WELCOME, "send"): {Error: CLOSED},
    (AGENT, ACTIVE, "recv"): {Ping: ACTIVE, Pong: ACTIVE, OpenData: ACTIVE, Move: ACTIVE,
                              GoAway: CLOSED, Revoked: CLOSED, Error: CLOSED},
    (AGENT, ACTIVE, "send"): {Ping: ACTIVE, Pong: ACTIVE, Error: CLOSED},
}


class ControlSession:
    """Sans-I/O control channel for one side: feed bytes in, get messages; encode messages out.

    The I/O layer calls ``receive_data`` with whatever arrived and ``send`` for
    every message it wants to write (both validate against ``TRANSITIONS``),
    and uses ``last_seen``/``is_dead`` with its own clock for heartbeats.
    """

    def __init__(self, role: str, now: float = 0.0, dead_peer_timeout: float = 30.0):
        assert role in (RELAY, AGENT)
        self.role = role
        self.state = AWAIT_HELLO
        self.decoder = FrameDecoder()
        self.last_seen = now
        self.dead_peer_timeout = dead_peer_timeout
        self._ping_seq = 0

    def _step(self, direction: str, message: Message) -> None:
        allowed = TRANSITIONS.get((self.role, self.state, direction), {})
        next_state = allowed.get(type(message))
        if next_state is None:
            verb = "received" if direction == "recv" else "may not send"
            error = ProtocolError(f"{self.role} {verb} {message.type!r} in state {self.state}")
            self.state = CLOSED
            raise error
        self.state = next_state

    def receive_data(self, data: bytes, now: float) -> list[Message]:
        if self.state == CLOSED:
            return []
        if data:
            self.last_seen = now
        return self.receive_messages(self.decoder.feed(data))

    def receive_messages(self, messages: list[Message]) -> list[Message]:
        """Validate messages decoded elsewhere (from ``self.decoder``); stop at a final one."""
        accepted = []
        for message in messages:
            self._step("recv", message)
            accepted.append(message)
            if self.state == CLOSED:
                break
        return accepted

    def send(self, message: Message) -> bytes:
        self._step("send", message)
        return encode(message)

    def next_ping(self) -> Ping:
        self._ping_seq += 1
        return Ping(self._ping_seq)

    def is_dead(self, now: float) -> bool:
        return now - self.last_seen > self.dead_peer_timeout


def backoff_delay(attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (0-based): capped exponential, jittered.

    Jitter is "equal jitter": half fixed, half random, so agents that lost the
    same relay don't all come back in the same millisecond.
    """
    rng = rng or random
    ceiling = min(RECONNECT_MAX_DELAY, RECONNECT_MIN_DELAY * RECONNECT_FACTOR ** min(attempt, 32))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)
