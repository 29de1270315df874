"""The relay's HTTP proxy for one visitor connection: a pure state machine (no sockets, no asyncio).

Like h11, each side of the connection has its own state, and every transition the
code takes is a row of ``TABLE`` (``_req_go``/``_resp_go`` refuse any other).  The I/O layer
(``relay/link.py``) feeds events in and carries the returned actions out:

    events:  visitor_data, visitor_eof, attached, route_failed, upstream_data,
             upstream_ended, kernel_done, timer
    actions: Route, ToUpstream, ToVisitor, KernelUp, KernelDown, Detach, Splice, Close

The rules, each a row or a named guard below:

R1  A request reaches only the tunnel its own Host names: every request head is routed by
    its Host; another Host detaches the current upstream first (parked only when idle).
R2  Raw mode begins only at the app's 101 to a request that asked to upgrade (``SWITCHING``
    -> ``TUNNEL``); any other answer is an ordinary response, after which the next request
    is parsed and routed again.
R3  A response that can't be delimited exactly (RFC 9112, ``http1.parse_response_head``) is
    poison: not one more byte of it is forwarded; the visitor gets a 502 if nothing of the
    response went out yet, else its connection is closed.  The upstream is never reused.
R4  Visitor reads are paused whenever nothing is attached, while a route is pending, while a
    request waits for the previous exchange (pipelining) and while an upgrade is answered:
    a visitor holds at most one read plus one head (``wants_visitor_input``).
R5  Exchanges are answered strictly in order, one at a time, each from its own tunnel; once
    the relay decided to close (``Connection: close``, HTTP/1.0, the app's close, an error),
    nothing more the visitor sent is forwarded (RFC 9112 §9.6).
R6  Bytes the app sends outside an exchange are never forwarded; that upstream is dropped.
R7  Every exchange ends in exactly one of: response complete, connection closed, error page.
R8  Timers: a head must be complete within ``handshake_timeout`` of its first byte; an idle
    keep-alive visitor is closed after ``keepalive_timeout``; a request body must bring
    ``body_min_rate`` bytes/s over each ``body_timeout`` window; the app must start its
    answer within ``upstream_timeout`` of the last request byte sent (else 504).
R9  A response after which the relay closes the visitor says ``Connection: close``.
R10 A reused upstream (parked, or kept from the connection's last exchange) that closes before
    answering an idempotent, bodiless request gets that request again on a fresh upstream, once
    (as nginx's proxy_next_upstream does).
R11 Interim responses: 103 (and every 1xx but 101 behind a proxy, which can't read them) are
    dropped; the final response follows.  ``Set-Cookie`` for the web app's domain is removed.
R12 Every request head passes its tunnel's access policy before it goes out: a head for the
    attached tunnel goes straight on only if ``guard.admits(head)`` (the I/O layer's, relay/access)
    says so at once; otherwise it is routed anew, where the policy is decided (401/403, or a
    password checked first).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..wire.http1 import END, HttpError, MessageReader, RequestHead, ResponseHead, has_token
from . import cookies, pages
from .metrics import DISCARD

# A body piece this big (or this much Content-Length body still to come) goes through the kernel.
BULK = 128 * 1024
FORWARDED = frozenset(("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"))
FORWARDED_AND_CONNECTION = FORWARDED | {"connection"}
OUTCOMES = ("complete", "closed", "error", "tunnel")
IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"))


class Req:
    """The visitor's side: its requests.  (Plain strings, not an Enum: every transition is
    checked against TABLE, and Enum members hash in Python.)"""
    IDLE = "req idle"            # between requests (keep-alive or head arriving)
    ROUTING = "req routing"      # a head waits for an upstream of its tunnel
    BODY = "req body"            # the head went out; body bytes follow
    DONE = "req done"            # the whole request went out
    SWITCHING = "req switching"  # an upgrade request went out: what follows waits for the answer
    TUNNEL = "req tunnel"        # raw bytes both ways (after a 101)
    CLOSED = "req closed"
    ALL = (IDLE, ROUTING, BODY, DONE, SWITCHING, TUNNEL, CLOSED)


class Resp:
    """The app's side: its responses on the attached upstream."""
    IDLE = "resp idle"           # no request outstanding
    WAITING = "resp waiting"     # a request went out, no final response head yet
    BODY = "resp body"           # the final head went out; body bytes follow
    DONE = "resp done"           # the whole response went out
    TUNNEL = "resp tunnel"
    CLOSED = "resp closed"
    ALL = (IDLE, WAITING, BODY, DONE, TUNNEL, CLOSED)


# (side, from, event, to): every transition the machine may take.  Events in words:
#   head      a request head is parsed            body   the request/response's body bytes
#   routed    an upstream of the head's tunnel is attached
#   end       the message's last byte             sent   the request head went out
#   final     the app's final response head       101    the app switched protocols
#   refused   the app answered an upgrade request without switching
#   reset     both sides back to IDLE: the exchange is complete
#   retry     a reused upstream closed before answering: the request goes out again (R10)
#   close     the visitor's connection closes (any reason)
TABLE = frozenset({
    ("req", Req.IDLE, "head", Req.ROUTING),          # R1: a Host not attached (or nothing attached)
    ("req", Req.IDLE, "head", Req.BODY),             # the same Host as the attached upstream
    ("req", Req.ROUTING, "routed", Req.BODY),
    ("req", Req.BODY, "end", Req.DONE),
    ("req", Req.BODY, "end", Req.SWITCHING),         # R2: an upgrade request is complete
    ("req", Req.SWITCHING, "101", Req.TUNNEL),
    ("req", Req.SWITCHING, "refused", Req.DONE),     # R2: a 200 to an upgrade: plain HTTP again
    ("req", Req.DONE, "reset", Req.IDLE),
    ("req", Req.DONE, "retry", Req.ROUTING),         # R10
    ("resp", Resp.WAITING, "retry", Resp.IDLE),      # R10
    ("resp", Resp.IDLE, "sent", Resp.WAITING),
    ("resp", Resp.WAITING, "final", Resp.BODY),
    ("resp", Resp.WAITING, "101", Resp.TUNNEL),
    ("resp", Resp.BODY, "end", Resp.DONE),
    ("resp", Resp.DONE, "reset", Resp.IDLE),
}   # a tunnel (after 101) is handed to netio.splice and ends there: no close row for TUNNEL
  | {("req", s, "close", Req.CLOSED) for s in Req.ALL if s not in (Req.CLOSED, Req.TUNNEL)}
  | {("resp", s, "close", Resp.CLOSED) for s in Resp.ALL if s not in (Resp.CLOSED, Resp.TUNNEL)})
# The same rows without their side (every state's name says its side): what ``_req_go``/``_resp_go`` look up.
_STEPS = frozenset((frm, event, to) for _, frm, event, to in TABLE)


# --- actions (treated as immutable; not frozen=True, whose __init__ costs a call per field) ---
@dataclass(slots=True)
class Route:
    """Attach an upstream of the tunnel ``head`` names (then ``attached`` or ``route_failed``)."""
    head: RequestHead


@dataclass(slots=True)
class ToUpstream:
    """Write these bytes to the attached upstream."""
    data: bytes


@dataclass(slots=True)
class ToVisitor:
    """Write these bytes to the visitor."""
    data: bytes


@dataclass(slots=True)
class KernelUp:
    """Move the next ``n`` request body bytes visitor -> upstream in the kernel (then ``kernel_done``)."""
    n: int


@dataclass(slots=True)
class KernelDown:
    """Move the next ``n`` response body bytes upstream -> visitor in the kernel (then ``kernel_done``)."""
    n: int


@dataclass(slots=True)
class Detach:
    """Let go of the upstream: park it for the tunnel's next visitor when ``park``, else close it."""
    park: bool


@dataclass(slots=True)
class Splice:
    """Raw bytes both ways from now on, until either side closes (after a 101)."""


@dataclass(slots=True)
class Close:
    """Close the visitor's connection (after what was written; at once when ``abort``)."""
    abort: bool = False


@dataclass(frozen=True, slots=True)
class Limits:
    """What one visitor connection needs to know of the settings and of itself."""
    max_head: int
    handshake_timeout: float
    keepalive_timeout: float
    body_timeout: float
    body_min_rate: int
    upstream_timeout: float
    trust_proxy: bool
    public_scheme: str
    cookie_domain: str
    reuse: bool = True        # upstream keep-alive on (relay_upstream_keepalive > 0)
    hop: bool = False         # a peer relay forwarded this connection: its X-Forwarded-* are ours, as they are
    stats: object = DISCARD   # the relay's metrics.RelayStats: counted in plain ints


class ProxyState:
    """One visitor connection.  Every event method returns the actions to carry out, in order."""

    def __init__(self, limits: Limits, peer: str, now: float):
        self.limits = limits
        self.peer = peer
        self.req = Req.IDLE
        self.resp = Resp.IDLE
        self.requests = MessageReader("request", limits.max_head)
        self.responses = MessageReader("response", 64 * 1024)
        self.held = b""              # visitor bytes not parsed yet: they wait their turn (R4, R5)
        self.head: RequestHead | None = None   # the current exchange's request
        self.host: str | None = None           # the Host the attached upstream serves
        self.host_header: str | None = None    # the tunnel's Host override
        self.reused = False          # the upstream came from parking and hasn't answered yet
        self.to_peer = False         # the upstream is a peer relay (relay/peers): it strips the access cookie
        self.retried = False
        self.answered = False        # a byte of the current response went to the visitor
        self.reusable = True         # the attached upstream may be parked after this exchange
        self.must_close = False      # R5/R9: close the visitor after this exchange
        self.visitor_gone = False    # the visitor sent EOF
        self.kernel = None           # "up"/"down" while the kernel moves body bytes
        self.idle_since = now        # R8 timers
        self.head_since: float | None = None
        self.last_sent = now
        self.window_start = now
        self.window_bytes = 0
        self.begun = 0               # exchanges begun (request heads taken)
        self.forwarded = ("", "")    # (Host, its X-Forwarded-* lines) of the last request
        self.stats = limits.stats
        self.head_at = now           # when the current exchange's head was taken (metrics)
        self.outcomes = dict.fromkeys(OUTCOMES, 0)  # R7: how the exchanges that began ended
        self.guard = None            # R12: guard.admits(head): the attached tunnel's policy admits it now
        # The dashboard's traffic view (relay/traffic): while the attached tunnel's view is on, the
        # I/O layer's journal.exchange(head, status, began, now) hears of each exchange that completed,
        # was upgraded or got the relay's own answer while attached.  (The facts only: what is kept of them is the journal's business.)
        self.journal = None
        self.status = 0              # the current exchange's final status

    # --- derived -----------------------------------------------------------------------------
    # (For the I/O layer and the tests.  The methods below test ``self.req is Req.CLOSED`` and
    # ``self.host is not None`` themselves: a property is a call, on every event.)
    @property
    def attached(self) -> bool:
        return self.host is not None

    @property
    def wants_visitor_input(self) -> bool:
        """R4: read the visitor only when what it sends can go somewhere now."""
        if self.held or self.kernel == "up":
            return False
        # IDLE: a head is parsed (at most max_head) and then routed; DONE: a read that comes
        # while the response flows is held (one read), and then reading pauses.
        return self.req in (Req.IDLE, Req.BODY, Req.DONE)

    @property
    def wants_upstream_input(self) -> bool:
        return self.host is not None and self.kernel != "down" and self.resp is not Resp.CLOSED

    @property
    def closed(self) -> bool:
        return self.req is Req.CLOSED

    @property
    def between_requests(self) -> bool:
        return self.req is Req.IDLE and not self.held and self.requests.between_messages

    def deadline(self) -> float | None:
        """When ``timer`` must run next (None: no timer)."""
        lim = self.limits
        if self.req is Req.IDLE:
            if self.head_since is not None:
                return self.head_since + lim.handshake_timeout
            return self.idle_since + lim.keepalive_timeout
        if self.req is Req.BODY and self.kernel != "up":
            return self.window_start + lim.body_timeout
        if self.resp is Resp.WAITING and self.req in (Req.DONE, Req.SWITCHING, Req.BODY):
            return self.last_sent + lim.upstream_timeout
        return None

    # --- transitions -------------------------------------------------------------------------
    # One method per side (not one taking the side's name): a checked transition runs on every
    # step of every exchange, seven times a keep-alive request.
    def _req_go(self, event: str, to: str) -> None:
        if (self.req, event, to) not in _STEPS:
            raise AssertionError(f"no transition req {self.req} --{event}--> {to}")
        self.req = to

    def _resp_go(self, event: str, to: str) -> None:
        if (self.resp, event, to) not in _STEPS:
            raise AssertionError(f"no transition resp {self.resp} --{event}--> {to}")
        self.resp = to

    # --- visitor events ----------------------------------------------------------------------
    def start(self, head: RequestHead, rest: bytes, now: float) -> list:
        """The connection's first head was read by the relay's dispatcher; ``rest`` followed it."""
        self.requests.expect_body(head)
        self.held = rest
        return self._request_head([head], now)

    def evict(self, now: float) -> list:
        """The tunnel is full and this visitor is the idlest between requests: close it (R8)."""
        return self._close(now, None) if self.between_requests and self.req is not Req.CLOSED else []

    def visitor_data(self, data: bytes, now: float) -> list:
        if self.req is Req.CLOSED:
            return []
        if self.req is Req.BODY:
            self.window_bytes += len(data)
        self.held += data
        return self._advance(now)

    def visitor_eof(self, now: float) -> list:
        if self.req is Req.CLOSED:
            return []
        self.visitor_gone = True
        if self.req is Req.TUNNEL:
            return []             # netio.splice passes half-closes on itself
        if self.between_requests:
            return self._close(now, None)
        if (self.req in (Req.DONE, Req.SWITCHING) and not self.held) or \
                (self.req is Req.ROUTING and self.head.body == "none"):
            self.must_close = True  # the answer still goes out, then the connection closes
            return []
        return self._close(now, "closed", abort=True)  # mid-request: the request can't complete

    # --- routing -----------------------------------------------------------------------------
    def attached_upstream(self, host_header: str | None, reused: bool, now: float, to_peer: bool = False) -> list:
        """The I/O layer attached an upstream of ``self.head``'s tunnel (``to_peer``: a peer relay,
        which judges the request, access cookie included, itself)."""
        if self.req is Req.CLOSED:
            return [Detach(park=reused)]
        self.host = self.head.host
        self.host_header, self.reused, self.to_peer = host_header, reused, to_peer
        self.reusable = True
        self.stats.route.observe(now - self.head_at)
        self.responses = MessageReader("response", 64 * 1024)
        self._req_go("routed", Req.BODY)
        return self._send_head(now) + self._advance(now)

    def route_failed(self, page: bytes, now: float) -> list:
        """No upstream for the head: answer with the relay's page and close (R7)."""
        if self.req is Req.CLOSED:
            return []
        return self._fail(page, now)

    # --- upstream events ---------------------------------------------------------------------
    def upstream_data(self, data: bytes, now: float) -> list:
        if self.req is Req.CLOSED or self.host is None:
            return []
        if self.resp is Resp.TUNNEL:
            return [ToVisitor(data)]
        if self.resp in (Resp.IDLE, Resp.DONE):
            # R6: the app spoke out of turn; its bytes go nowhere and it is not reused.
            return self._drop_upstream(now)
        try:
            events, rest = self.responses.feed(data)
        except HttpError as e:
            return self._poisoned(e, now)
        self.reused = False
        out: list = []
        if rest and not (events and isinstance(events[-1], ResponseHead) and events[-1].status == 101):
            # R6: bytes after the response's end.  Known before the exchange completes, so the
            # upstream is let go then and a pipelined request goes to a fresh one, not to it.
            self.reusable = False
        for ev in events:
            if ev is END:
                out += self._response_end(now)
            elif isinstance(ev, ResponseHead):
                out += self._response_head(ev, now)
            elif ev:
                self.answered = True
                out.append(ToVisitor(ev))
            if self.req is Req.CLOSED:
                return out
        if rest:
            if self.resp is Resp.TUNNEL:
                out.append(ToVisitor(rest))
            elif self.host is not None and self.resp is not Resp.IDLE:
                out += self._drop_upstream(now)   # still mid-exchange (its request body goes on)
        elif self.resp is Resp.BODY and self.responses.body_left >= BULK:
            self.kernel = "down"
            out.append(KernelDown(self.responses.body_left))
        return out

    def upstream_ended(self, now: float) -> list:
        """The upstream closed (or sent EOF) outside tunnel mode."""
        if self.req is Req.CLOSED or self.host is None:
            return []
        if self.resp is Resp.IDLE or self.resp is Resp.DONE:
            self.host = None         # an idle keep-alive upstream went away: route anew next time
            return [Detach(park=False)] + self._advance(now)
        if self.resp is Resp.WAITING and not self.answered:
            head = self.head
            if self.reused and not self.retried and self.req is Req.DONE and \
                    head.method in IDEMPOTENT and head.body == "none":
                self.retried = True   # R10
                self.host = None
                self._req_go("retry", Req.ROUTING)
                self._resp_go("retry", Resp.IDLE)
                return [Detach(park=False), Route(head)]
            return self._fail(pages.response(502, "The local app closed the connection without "
                                             "answering.", head.get("accept"),
                                             head_only=head.method == "HEAD", why="upstream_closed"), now)
        if self.resp is Resp.BODY and self.responses.eof():
            return self._response_end(now, upstream_gone=True)   # a read-until-close body ended
        return self._close(now, "closed", abort=True)   # a framed response cut short

    def kernel_done(self, moved: int, now: float) -> list:
        """The kernel moved ``moved`` body bytes (a ``KernelUp``/``KernelDown`` finished or gave up)."""
        direction, self.kernel = self.kernel, None
        if self.req is Req.CLOSED:
            return []
        out: list = []
        if direction == "up" and moved:
            self.window_bytes += moved
            self.last_sent = now
            if self.requests.skip_body(moved):
                out += self._request_end(now)
        elif direction == "down" and moved:
            self.answered = True
            if self.responses.skip_body(moved):
                out += self._response_end(now)
        return out + self._advance(now)

    def timer(self, now: float) -> list:
        if self.req is Req.CLOSED:
            return []
        when = self.deadline()
        if when is None or now < when - 1e-3:
            return []
        lim = self.limits
        if self.req is Req.IDLE:
            if self.head_since is not None:
                return self._fail(pages.response(408, "The request head took too long."), now)
            return self._close(now, None)      # R8: idle keep-alive visitor
        if self.req is Req.BODY:
            if self.window_bytes >= max(1, lim.body_min_rate * lim.body_timeout):
                self.window_start, self.window_bytes = now, 0
                return []
            return self._fail(pages.response(408, "The request body arrived too slowly.",
                                             self.head.get("accept"), why="body_timeout"), now)
        head = self.head
        return self._fail(pages.upstream_timeout(self.host or "?", lim.upstream_timeout, head.get("accept"),
                                                 head.method == "HEAD"), now)

    def note_kernel_progress(self, moved_so_far: int) -> None:
        """While the kernel moves a request body: count its bytes towards the body rate (R8)."""
        self.window_bytes = max(self.window_bytes, moved_so_far)

    # --- internals ---------------------------------------------------------------------------
    def _advance(self, now: float) -> list:
        """Parse held visitor bytes as far as the current state lets them go."""
        out: list = []
        while self.held and self.req is not Req.CLOSED:
            if self.req is Req.IDLE:
                if self.must_close:
                    self.held = b""      # R5: nothing after the last request is forwarded
                    break
                try:
                    events, rest = self.requests.feed(self.held)
                except HttpError as e:
                    return out + self._fail(pages.response(e.status, e.message), now)
                self.held = rest
                if not events:
                    if self.head_since is None and self.requests.partial_head:
                        self.head_since = now
                    break
                out += self._request_head(events, now)
            elif self.req is Req.BODY:
                try:
                    events, rest = self.requests.feed(self.held)
                except HttpError as e:
                    return out + self._body_error(e, now)
                self.held = rest
                for ev in events:
                    if ev is END:
                        out += self._request_end(now)
                    elif ev:
                        out.append(ToUpstream(ev))
                        self.last_sent = now
            else:
                break   # ROUTING, DONE, SWITCHING: the bytes wait (R4)
        if not self.held and self.req is Req.BODY and self.kernel is None and \
                self.requests.body_left >= BULK and self.req is not Req.CLOSED:
            self.kernel = "up"
            out.append(KernelUp(self.requests.body_left))
        if self.req is Req.IDLE and self.requests.between_messages:
            self.head_since = None
        return out

    def _request_head(self, events: list, now: float) -> list:
        """A head (``events[0]``; a bodiless request's END may follow: ``_send_head`` ends it)."""
        head = events[0]
        self.begun += 1
        self.head_at = now
        self.head, self.answered, self.retried = head, False, False
        self.head_since = None
        if head.version != "HTTP/1.1" or "connection" in head.index and _asks_close(head):
            self.must_close = True
        if head.host == self.host and (self.guard is None or self.guard.admits(head)):
            # Kept from the last exchange: the app may have closed it meanwhile, as a parked one (R10).
            self.reused = True
            self._req_go("head", Req.BODY)
            return self._send_head(now)
        out: list = []
        if self.host is not None:
            out.append(Detach(park=self.reusable))  # R1: another tunnel's turn
            self.host = None
        self._req_go("head", Req.ROUTING)
        return out + [Route(head)]

    def _send_head(self, now: float) -> list:
        head, lim, peer = self.head, self.limits, self.peer
        add: list = []
        remove = FORWARDED
        if lim.hop:
            rendered, remove = "", ()   # the first relay wrote them, for the app to see (relay/peers)
        elif lim.trust_proxy:
            xff = head.get("x-forwarded-for")
            add = [("X-Forwarded-For", f"{xff}, {peer}" if xff else peer),
                   ("X-Forwarded-Proto", head.get("x-forwarded-proto") or lim.public_scheme),
                   ("X-Forwarded-Host", head.get("x-forwarded-host") or head.get("host"))]
            rendered = ""
        else:
            host = head.index["host"][0]
            if self.forwarded[0] != host:   # the same for every request of one Host: made once
                self.forwarded = (host, f"\r\nX-Forwarded-For: {peer}\r\nX-Forwarded-Proto: "
                                        f"{lim.public_scheme}\r\nX-Forwarded-Host: {host}")
            rendered = self.forwarded[1]
        if lim.reuse and head.version == "HTTP/1.1" and head.body != "upgrade" and self.must_close:
            # Connection is hop-by-hop: the app keeps its connection for the tunnel's next
            # visitor; the relay itself closes the visitor after the response (R9).  (Without
            # a close token the header goes as it came.)
            kept = [t.strip() for v in head.index.get("connection", ()) for t in v.split(",")
                    if t.strip() and t.strip().lower() != "close"]
            remove = ("connection",) if lim.hop else FORWARDED_AND_CONNECTION
            if kept:
                add.append(("Connection", ", ".join(kept)))
        if head.version != "HTTP/1.1":
            self.reusable = False     # HTTP/1.0: the app's connection ends with this exchange
        replace = {"host": self.host_header} if self.host_header else None
        cookie = head.index.get("cookie")
        if cookie is not None and not self.to_peer:
            kept = cookies.strip_access(cookie)   # the relay's access cookie: never the app's (relay/cookies)
            if kept is not None:
                remove = frozenset(remove) | {"cookie"}
                add = [*add, ("Cookie", kept)] if kept else add
        self.responses.head_only = head.method == "HEAD"
        self.responses.upgrade_asked = head.body == "upgrade"
        self._resp_go("sent", Resp.WAITING)
        self.last_sent = now
        self.window_start, self.window_bytes = now, 0
        out = [ToUpstream(head.wire(remove=remove, add=add, replace=replace, rendered=rendered))]
        if head.body in ("none", "upgrade"):
            out += self._request_end(now)
        return out

    def _request_end(self, now: float) -> list:
        if self.head.body == "upgrade":
            self._req_go("end", Req.SWITCHING)
            return []
        self._req_go("end", Req.DONE)
        return self._maybe_complete(now)

    def _response_head(self, head: ResponseHead, now: float) -> list:
        if head.status == 101:
            self._resp_go("101", Resp.TUNNEL)
            self._req_go("101", Req.TUNNEL)
            self.requests.switch_to_raw()
            self.answered = True
            self.stats.response(101)
            if self.journal is not None:
                self.journal.exchange(self.head, 101, self.head_at, now)
            out: list = [ToVisitor(head.raw)]
            if self.held:
                out.append(ToUpstream(self.held))
                self.held = b""
            self.outcomes["tunnel"] += 1
            return out + [Splice()]
        if head.status < 200:
            if head.status == 103 or self.limits.trust_proxy or \
                    self.head.version != "HTTP/1.1":
                return []                             # R11
            self.answered = True
            return [ToVisitor(head.raw)]
        self._resp_go("final", Resp.BODY)
        self.status = head.status
        self.stats.response(head.status)
        hop = False
        if not head.keep_alive:
            self.reusable = False    # the app closes after this response
            if head.body == "close" or head.version != "HTTP/1.1":
                self.must_close = True   # its close delimits the body (or HTTP/1.0): so does ours
            else:
                hop = True   # Connection is hop-by-hop: the visitor's connection may stay open
        if self.req is Req.SWITCHING:
            self._req_go("refused", Req.DONE)     # R2
            self.requests.after_upgrade_refused()
        # (An answer may come before the whole request body went out: the exchange completes
        # when both halves have, _maybe_complete.)
        raw = head.raw
        scrubbed = cookies.scrub_set_cookies(raw[:-4], self.limits.cookie_domain, not self.to_peer) \
            if head.sets_cookies else None
        if scrubbed is not None:
            raw = scrubbed + b"\r\n\r\n"
        if self.must_close and head.version == "HTTP/1.1":
            raw = _say_close(raw)                   # R9
        elif hop:
            raw = _say_close(raw, close=False)
        self.answered = True
        return [ToVisitor(raw)]   # a bodiless response's END comes from the reader next

    def _response_end(self, now: float, upstream_gone: bool = False) -> list:
        self._resp_go("end", Resp.DONE)
        if upstream_gone:
            self.reusable = False
            self.host = None
            self.must_close = True
            return [Detach(park=False)] + self._maybe_complete(now)
        return self._maybe_complete(now)

    def _maybe_complete(self, now: float) -> list:
        """R7: an exchange is complete when both its request and its response are."""
        if self.req is not Req.DONE or self.resp is not Resp.DONE:
            return []
        self._req_go("reset", Req.IDLE)
        self._resp_go("reset", Resp.IDLE)
        self.outcomes["complete"] += 1
        self.stats.duration.observe(now - self.head_at)
        if self.journal is not None:
            self.journal.exchange(self.head, self.status, self.head_at, now)
        self.idle_since = now
        self.answered = False
        if self.must_close or self.visitor_gone:
            return self._close(now, None)
        out: list = []
        if self.host is not None and not self.reusable:
            out.append(Detach(park=False))
            self.host = None
        return out + self._advance(now) if self.held else out   # (nothing held: nothing to parse)

    def _body_error(self, e: HttpError, now: float) -> list:
        """A malformed request body: the request can't be completed; the app must not see more."""
        if self.answered:
            return self._close(now, "closed", abort=True)
        return self._fail(pages.response(e.status, e.message, self.head.get("accept")), now)

    def _poisoned(self, e: HttpError, now: float) -> list:
        """R3: the app's response can't be delimited exactly."""
        self.reusable = False
        if self.answered:
            return self._close(now, "closed", abort=True)
        return self._fail(pages.response(502, "The local app sent a response the relay can't "
                                         "forward safely.", self.head.get("accept"),
                                         head_only=self.head.method == "HEAD", why="unframable"), now)

    def _drop_upstream(self, now: float) -> list:
        """R6: an upstream that spoke out of turn is closed; the visitor's connection stays."""
        self.reusable = False
        if self.resp is Resp.IDLE:   # between exchanges: the next request routes anew
            self.host = None
            return [Detach(park=False)]
        return self._close(now, "closed", abort=True)  # mid-exchange (after END of the response)

    def _fail(self, page: bytes, now: float) -> list:
        """Answer with a relay page (only if nothing of a response went out yet) and close."""
        out = [] if self.answered else [ToVisitor(page)]
        if self.journal is not None and self.resp is Resp.WAITING and self.host is not None and not self.answered:
            # the attached tunnel's request got the relay's answer (a 504, the app's 502): it is listed too
            self.journal.exchange(self.head, int(page[9:12]), self.head_at, now)
        self.stats.refused(page, not self.answered)
        return out + self._close(now, "error" if not self.answered else "closed")

    def _close(self, now: float, outcome: str | None, abort: bool = False) -> list:
        out: list = []
        if self.req not in (Req.IDLE,) and outcome is not None:
            self.outcomes[outcome] += 1
        if self.host is not None:
            idle = self.req is Req.IDLE and self.resp is Resp.IDLE and self.reusable and self.kernel is None
            out.append(Detach(park=idle))
            self.host = None
        self.held = b""
        self._req_go("close", Req.CLOSED)
        if self.resp is not Resp.CLOSED:
            self._resp_go("close", Resp.CLOSED)
        return out + [Close(abort=abort)]


def _asks_close(head: RequestHead) -> bool:
    return has_token(head.index.get("connection"), "close")


def _say_close(raw: bytes, close: bool = True) -> bytes:
    """The head with its Connection/Keep-Alive headers replaced by ``Connection: close``
    (or just dropped)."""
    lines = raw[:-4].split(b"\r\n")
    kept = [ln for ln in lines[1:] if ln.split(b":", 1)[0].strip().lower() not in (b"connection", b"keep-alive")]
    return b"\r\n".join([lines[0], *kept] + ([b"Connection: close"] if close else [])) + b"\r\n\r\n"
