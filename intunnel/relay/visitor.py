"""One visitor connection on the relay: route each request by its Host, then move bytes.

Request heads are parsed (routing, X-Forwarded-*), request bodies are followed
by their framing and forwarded untouched, responses flow back raw.  When a
keep-alive connection names another Host, the current data connection is
half-closed (the local app finishes its response and closes) before the new
request goes to the other tunnel, so a request only ever reaches the tunnel
its own Host names.

Upstream keep-alive: when a visitor whose first request on a data connection
asked ``Connection: close`` (hop-by-hop: not passed on) leaves, and every
response on that data connection is complete (``ResponseEnds``), the data
connection, still spliced to its keep-alive connection to the local app at the
agent, is parked in the tunnel's session for the tunnel's next visitor
(``relay_upstream_keepalive`` seconds at most).  Upgrades, read-until-close
bodies, HTTP/1.0 and ``Connection: close`` responses are never reused.

Behind a proxy (``relay_trust_proxy``: nginx keeps a pool of keep-alive
connections to the relay, each carrying requests for any tunnel), every
response is followed, so that a request naming another Host parks the idle
data connection and takes the other tunnel's at once instead of closing it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from ..wire import protocol as p
from ..wire.http1 import HttpError, RequestHead, RequestStream, ResponseEnds
from ..wire.netio import Conn, ConnClosed, pump_through_kernel
from . import pages

log = logging.getLogger("intunnel.relay")

FORWARDED = frozenset(("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"))
# Requests that may be sent again when a reused connection turns out dead before answering
# (what nginx's proxy_next_upstream retries by default).
IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"))
# A response read in a piece this big (or with this much body still to come) is bulk: the
# kernel moves the rest (netio.pump_through_kernel), not the event loop.
BULK = 128 * 1024


class Visitor:
    def __init__(self, relay, conn: Conn, first: RequestHead):
        self.relay = relay
        self.settings = relay.tunables
        self.conn = conn
        self.stream = RequestStream(self.settings.relay_max_header_size)
        self.stream.after_head(first)
        self.pending: deque = deque([first])
        self.session = None
        self.data: Conn | None = None
        self.host = None
        self.busy = False          # waiting for a data connection: visitor reading paused
        self.timer: asyncio.TimerHandle | None = None
        self.head_timer: asyncio.TimerHandle | None = None
        self.last_head: RequestHead = first
        self.counted = False
        self.done = False
        self.loop = asyncio.get_running_loop()
        self.last_activity = 0.0
        self.awaiting = False      # a request was sent and no response byte came back since
        self.ends: ResponseEnds | None = None  # where responses end on self.data (for reuse)
        self.leaving = False       # the visitor sent EOF: leave once every response is through
        self.reuse = self.settings.relay_upstream_keepalive > 0
        # A proxy's connection moves between tunnels: follow every response (see above).
        self.follow_all = self.reuse and self.settings.relay_trust_proxy
        self.track_next = False    # decide at the next request whether to follow self.data's responses
        self.reused = False        # self.data came from the parking and has not answered yet
        self.retry: RequestHead | None = None  # its first request, if it may be sent again
        conn.on_close = self.on_visitor_closed
        conn.on_eof = self.on_visitor_eof
        # The first request is routed by serve_first(), in the caller's task (one task less).
        self.busy = True
        conn.forward_to(self.on_bytes)
        conn.pause()

    async def serve_first(self) -> None:
        await self.route(self.pending[0])

    def route_now(self, head: RequestHead) -> bool:
        """Route a request at once when a parked data connection can take it (the common case
        of a new connection per request, or of a proxy's connection moving to another tunnel);
        False: ``route`` must run."""
        if not self.reuse:
            return False
        subdomain = self.relay.subdomain_of(head.host)
        session = self.relay.sessions.get(subdomain) if subdomain else None
        if session is None or not session.parked or \
                session.visitors >= self.settings.relay_max_visitors_per_tunnel:
            return False
        data = session.take_parked()
        if data is None:
            return False
        session.visitors += 1
        self.counted, self.session = True, session
        self._attach_parked(data, head)
        return True

    def _attach_parked(self, data: Conn, head: RequestHead) -> None:
        """``data`` is already spliced to the local app at the agent: no Bind, no dial."""
        self.data, self.host = data, head.host
        self.ends, self.track_next = None, True
        self.reused, self.retry = True, None
        self._wire(data, b"")

    # --- visitor -> agent ---
    def on_bytes(self, data: bytes) -> None:
        try:
            events = self.stream.feed(data)
        except HttpError as e:
            self.fail(pages.response(e.status, e.message, self.last_head.get("accept")))
            return
        self.pending.extend(events)
        if self.stream.partial_head and self.head_timer is None:
            self.head_timer = asyncio.get_running_loop().call_later(
                self.settings.relay_handshake_timeout, self._head_too_slow)
        elif not self.stream.partial_head and self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        self.pump()

    def _head_too_slow(self):
        self.head_timer = None
        if self.stream.partial_head:
            self.conn.abort()

    def pump(self) -> None:
        while self.pending and not self.busy and not self.done:
            event = self.pending[0]
            if isinstance(event, RequestHead):
                if self.data is None or self.data.closed or event.host != self.host:
                    if self.data is not None and self._switch_when_idle(event):
                        continue
                    self._route_later(event)
                    return
                self.pending.popleft()
                self.send_head(event)
            else:
                self.pending.popleft()
                self.last_activity = self.loop.time()
                self.data.write(event)
        if not self.pending and self.stream.body_left >= BULK:
            self._pump_request_body()

    def _pump_request_body(self) -> None:
        """The rest of a big Content-Length request body goes to the app through the kernel."""
        data, left = self.data, self.stream.body_left
        if self.busy or self.done or data is None or self.conn.pump is not None:
            return

        def moved():
            self.last_activity = self.loop.time()  # the upstream timeout runs from the last byte sent

        def failed():
            data.abort()
            self.conn.abort()
        pump_through_kernel(self.conn, data, self.conn.eof_received, failed, left, moved,
                            lambda: self.stream.skip_body(left))

    def _route_later(self, head: RequestHead) -> None:
        """Hold the visitor's bytes while ``route`` finds ``head`` a data connection."""
        self.busy = True
        self.conn.pause()
        self.relay.spawn(self.route(head))

    def _switch_when_idle(self, head: RequestHead) -> bool:
        """Another Host while every response is through: park the data connection for its
        tunnel and take the new tunnel's parked one (True) or let route() find one (False)."""
        data = self.data
        if self.ends is None or not self.ends.idle or data.eof or data.closed:
            return False  # not followed, or a response still coming: route() closes it first
        self._unwire(data)
        self.data = None
        self.session.park(data)
        self._release()
        return self.route_now(head)

    def send_head(self, head: RequestHead) -> None:
        self.last_head = head
        if self.reused:  # the first request on a parked connection: the app may have closed it
            self.reused = False
            self.retry = head if head.body == "none" and head.method in IDEMPOTENT else None
        else:
            self.retry = None
        s = self.session
        peer = self.conn.peername
        if self.settings.relay_trust_proxy:
            xff = head.get("x-forwarded-for")
            add = [("X-Forwarded-For", f"{xff}, {peer}" if xff else peer),
                   ("X-Forwarded-Proto", head.get("x-forwarded-proto") or self.settings.public_scheme),
                   ("X-Forwarded-Host", head.get("x-forwarded-host") or head.get("host"))]
        else:
            add = [("X-Forwarded-For", peer), ("X-Forwarded-Proto", self.settings.public_scheme),
                   ("X-Forwarded-Host", head.get("host"))]
        replace = {"host": s.host_header} if s.host_header else None
        remove = self._track(head, add) if self.ends is not None or self.track_next else FORWARDED
        self.data.write(head.wire(remove=remove, add=add, replace=replace))
        self.last_activity = self.loop.time()
        self.awaiting = True
        if self.timer is None:  # one lazy timer per connection, not one per request
            self.timer = self.loop.call_later(self.settings.relay_upstream_timeout, self._upstream_timeout)

    def _track(self, head: RequestHead, add: list) -> frozenset:
        """Upstream keep-alive bookkeeping for a request about to go out; returns the headers to drop.

        Only a data connection whose first request asks ``Connection: close`` (a visitor that
        will leave after one response: the costly new-connection-per-request case), or any
        one behind a proxy (``follow_all``), has its responses followed; a browser's keep-alive
        connection's are not (that would cost every request ~30 % of the relay's time) and its
        data connection is closed with it, as before.
        """
        first, self.track_next = self.track_next, False
        close, remove = False, FORWARDED
        if head.version == "HTTP/1.1" and head.body != "upgrade" and "connection" in head.index:
            tokens = [t.strip() for v in head.index["connection"] for t in v.split(",")]
            kept = [t for t in tokens if t and t.lower() != "close"]
            if len(kept) < len(tokens):
                # Connection is hop-by-hop: the app keeps its connection for the next visitor,
                # and the relay closes the visitor's once this response is through.
                close, remove = True, FORWARDED | {"connection"}
                if kept:
                    add.append(("Connection", ", ".join(kept)))
        if first:
            if not close and not self.follow_all:
                return FORWARDED
            self.ends = ResponseEnds()
        if head.version != "HTTP/1.1" or head.body == "upgrade":
            self.ends.reusable = False  # HTTP/1.0 or an upgrade: the connection ends with this visitor
        self.ends.request(head.method == "HEAD", close)
        return remove

    async def route(self, head: RequestHead) -> None:
        try:
            await self._route(head)
        except Exception:  # never let one visitor take the relay down
            log.exception("visitor %s: routing failed", self.conn.peername)
            self.fail(pages.response(502, "The relay could not reach the tunnel.", head.get("accept")))

    async def _route(self, head: RequestHead) -> None:
        accept, head_only = head.get("accept"), head.method == "HEAD"
        if self.data is not None:  # another Host on this keep-alive connection
            old = self.data
            self.data = None
            self.session.active.discard(old)
            self._release()
            old.write_eof()
            await self._wait_closed(old, self.settings.relay_upstream_timeout)
            old.close()
            if self.done:
                return
        subdomain = self.relay.subdomain_of(head.host)
        if subdomain is None:
            self.fail(pages.unknown_tunnel(head.host, accept, head_only))
            return
        session = self.relay.sessions.get(subdomain)
        if session is None:
            known = await self.relay.store.exists(subdomain)
            page = pages.tunnel_offline(subdomain, accept, head_only) if known else \
                pages.unknown_tunnel(head.host, accept, head_only)
            self.fail(page)
            return
        if session.visitors >= self.settings.relay_max_visitors_per_tunnel:
            self.fail(pages.response(503, f"The tunnel '{subdomain}' has too many open connections; "
                                     "try again shortly.", accept, code="TOO_MANY_CONNECTIONS",
                                     head_only=head_only))
            return
        session.visitors += 1
        self.counted, self.session = True, session
        data = session.take_parked() if self.reuse else None
        if data is not None:
            self._attach_parked(data, head)
            return
        data = await session.acquire_data(p.DATA_CONNECT_TIMEOUT)
        if self.done:
            if data is not None:
                data.close()
            return
        if data is None:
            self.fail(pages.tunnel_offline(subdomain, accept, head_only))
            return
        data.write(p.encode(p.Bind(self.conn.peername)))
        self.data, self.host = data, head.host
        self.ends, self.track_next = None, self.reuse
        self.reused = False
        # Send the head (and whatever body is here) now; the agent answers while it flows.
        self.pending.popleft()
        self.send_head(head)
        decoder = p.FrameDecoder()
        try:
            # The agent answers as soon as it has dialed the local app (which it bounds itself).
            async with asyncio.timeout(p.DATA_CONNECT_TIMEOUT + p.LOCAL_CONNECT_TIMEOUT):
                messages = await data.read_messages(decoder, limit=1)
        except (ConnClosed, p.ProtocolError, TimeoutError) as e:
            log.info("tunnel %s: data connection failed: %s", subdomain, e)
            self.fail(pages.tunnel_offline(subdomain, accept, head_only))
            return
        reply = messages[0]
        if isinstance(reply, p.DataRefused):
            self.fail(pages.local_refused(subdomain, reply.port or session.local_port, accept, head_only))
            return
        if not isinstance(reply, p.DataReady):
            self.fail(pages.response(502, "The tunnel client misbehaved.", accept))
            return
        if self.done:
            data.close()
            return
        self._wire(data, decoder.take_rest())

    def _wire(self, data: Conn, initial: bytes) -> None:
        """Wire the two sockets: responses raw to the visitor, backpressure both ways."""
        data.feeders.append(self.conn)
        self.conn.feeders.append(data)
        data.on_close = self.on_data_closed
        data.on_eof = self.on_data_eof
        # Not busy before the first response bytes go through: they may have come in with the
        # agent's DataReady, complete, and the connection must then be parkable.
        self.busy = False
        data.forward_to(self.on_response, initial)
        self.conn.resume()
        self.pump()
        if self.conn.eof and not self.pending and not self.done:
            self.on_visitor_eof()

    async def _wait_closed(self, conn: Conn, timeout: float) -> None:
        closed = asyncio.get_running_loop().create_future()
        conn.on_close = lambda: closed.done() or closed.set_result(None)
        if conn.closed:
            return
        try:
            await asyncio.wait_for(closed, timeout)
        except asyncio.TimeoutError:
            pass

    # --- agent -> visitor ---
    def on_response(self, data: bytes) -> None:
        self.awaiting = False
        self.retry = None
        self.conn.write(data)
        ends = self.ends
        if ends is None:
            if len(data) >= BULK:
                self._pump_responses(None)  # nobody follows these responses: all of them, from now on
            return
        self._responses_through(ends.feed(data))
        if self.data is not None and not self.done and ends.body_left >= BULK:
            self._pump_responses(ends.body_left)  # the rest of this body, then follow again

    def _responses_through(self, closes: int) -> None:
        ends = self.ends
        if closes or (self.leaving and ends.idle):
            self.leave()  # the visitor asked to close (or is gone) and its responses are through
        elif not ends.reusable and self.leaving:
            # We can't follow these responses: let the app end them by closing, as without reuse.
            self.leaving = False
            self.data.write_eof()

    def _pump_responses(self, limit: int | None) -> None:
        data = self.data

        def moved():
            self.awaiting = False
            self.retry = None

        def body_through():
            if self.data is data and not self.done:
                self._responses_through(self.ends.skip_body(limit))

        def failed():
            data.abort()
            self.conn.abort()
        pump_through_kernel(data, self.conn, data.eof_received, failed, limit, moved, body_through)

    def _can_park(self, data: Conn) -> bool:
        """Every request sent got its whole response, and nothing of the visitor's is half-sent."""
        return (self.ends is not None and self.ends.idle and not self.busy and not self.pending
                and self.stream.between_requests and not data.eof and not data.closed)

    def _detach(self) -> Conn | None:
        """Unwire self.data from the visitor and park it for the tunnel's next visitor when it is
        idle; otherwise return it (the caller closes it)."""
        data, self.data = self.data, None
        if data is None:
            return None
        if self._can_park(data):
            self._unwire(data)
            self.session.park(data)
            return None
        if self.session is not None:
            self.session.active.discard(data)
        return data

    def _unwire(self, data: Conn) -> None:
        for a, b in ((data, self.conn), (self.conn, data)):
            if b in a.feeders:
                a.feeders.remove(b)

    def leave(self) -> None:
        """The visitor's last response is through: keep the data connection if idle, close the visitor."""
        data = self._detach()
        if data is not None:
            data.close()
        self.finish()

    def _upstream_timeout(self) -> None:
        if not self.awaiting:
            self.timer = None
            return
        # The clock runs from the last request byte sent: a slow upload is not a slow app.
        left = self.last_activity + self.settings.relay_upstream_timeout - self.loop.time()
        if left > 0.01:
            self.timer = self.loop.call_later(left, self._upstream_timeout)
            return
        self.timer = None
        s = self.session
        h = self.last_head
        self.fail(pages.upstream_timeout(s.subdomain if s else "?", self.settings.relay_upstream_timeout,
                                         h.get("accept"), h.method == "HEAD"))

    def on_data_closed(self) -> None:
        if self.session is not None:
            self.session.active.discard(self.data)
        if self.busy:  # we are switching hosts; route() handles it
            return
        if self.retry is not None and not self.done:
            self._send_again()
            return
        if self._between_exchanges():
            self.data = None  # the proxy's connection stays: its next request is routed anew
            self._release()
            return
        self.finish()

    def on_data_eof(self) -> None:
        """The local app half-closed (e.g. a WebSocket server after the close handshake): pass it on."""
        if self.retry is not None and not self.busy and not self.done:
            self._send_again()
        elif self._between_exchanges():
            # The app closed an idle keep-alive connection.  Closing the proxy's connection too
            # would race the request it may be sending on it right now (nginx then answers 502).
            self.data.close()
        elif not self.busy:
            self.conn.write_eof()

    def _send_again(self) -> None:
        """The app closed the parked connection just as it got our request (its keep-alive
        timeout raced the reuse): send that request again on a fresh data connection."""
        head, self.retry = self.retry, None
        data, self.data = self.data, None
        self._unwire(data)
        data.on_close = data.on_eof = None  # its close comes later: it must not touch the new one
        self.session.active.discard(data)
        data.close()
        self._release()
        self.pending.appendleft(head)
        self._route_later(head)

    def _between_exchanges(self) -> bool:
        return (self.follow_all and self.ends is not None and self.ends.complete and not self.busy
                and not self.pending and self.stream.between_requests)

    def on_visitor_eof(self) -> None:
        if self.data is not None and not self.busy and not self.pending:
            ends = self.ends
            if ends is not None and ends.reusable and self.stream.between_requests:
                if ends.idle:
                    self.leave()
                else:
                    self.leaving = True  # on_response leaves when the last response is through
                return
            self.data.write_eof()
        elif self.data is None and not self.busy:
            self.finish()

    def on_visitor_closed(self) -> None:
        self.done = True
        data = self._detach()
        if data is not None:
            data.close()
        self._cleanup()

    # --- endings ---
    def fail(self, page: bytes) -> None:
        """Answer with a relay page and close (its Connection: close says so)."""
        self.done = True
        if self.data is not None:
            self.data.close()
        self.conn.write(page)
        self.conn.close()
        self._cleanup()

    def finish(self) -> None:
        self.done = True
        self.conn.close()
        self._cleanup()

    def _release(self) -> None:
        if self.counted:
            self.counted = False
            self.session.visitors -= 1

    def _cleanup(self) -> None:
        for t in (self.timer, self.head_timer):
            if t is not None:
                t.cancel()
        self.timer = self.head_timer = None
        self._release()
        self.relay.visitors.discard(self)
