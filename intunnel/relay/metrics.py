"""The relay's Prometheus metrics: plain ints in the hot path, turned into metrics at scrape time.

The relay is the performance-critical process, so a visitor's request never touches
``prometheus_client`` (whose ``Counter.inc`` takes a lock: measured below).  The proxy
counts into one ``RelayStats`` per relay (list slots, dict entries, ints); the scrape
(``RelayCollector.collect``, run on the relay's own event loop by ``start_listener``)
reads those and the live state (agents, pools) and builds the families:

    intunnel_relay_info{relay_id}                  1: the relay's id (relay_id; one series)
    intunnel_relay_agents_connected                agent control channels open
    intunnel_relay_tunnels_active                  tunnels with a connected agent
    intunnel_relay_tunnels_busy                    of those, tunnels with a visitor attached now
    intunnel_relay_visitor_connections             visitor connections open
    intunnel_relay_data_connections{state}         data connections: idle (the warm pool),
                                                   parked (kept for the next visitor), active
    intunnel_relay_attached_total{path}            upstreams attached: local, forwarded_out, forwarded_in
    intunnel_relay_peer_connections_opened_total   connections opened to peer relays (relay/peers)
    intunnel_relay_peer_failures_total             forwards to a peer relay that failed
    intunnel_relay_requests_total{class}           visitor requests answered, by response class
                                                   (1xx = upgrades: 101), the relay's own pages included
    intunnel_relay_refusals_total{reason}          exchanges the relay ended itself, by reason (REASONS)
    intunnel_relay_visitor_bytes_received_total    bytes from visitors (heads, bodies, upgraded streams)
    intunnel_relay_visitor_bytes_sent_total        bytes to visitors
    intunnel_relay_route_seconds                   request head parsed -> upstream attached
    intunnel_relay_request_duration_seconds        request head parsed -> response complete
    intunnel_db_query_seconds{statement}           (intunnel.metrics)

No label names a tunnel, a user or an address: cardinality is fixed by the code
(``relay_id`` is one value per process).
Bytes are counted where they cross the visitor's socket (``netio.Conn.meter``, and
``zerocopy.Pump`` for the bytes the kernel moves), so upgraded and bulk streams count too.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from ..metrics import exposition

log = logging.getLogger("intunnel.relay")

# Why the relay answered (or ended an exchange) itself instead of the local app.
REASONS = (
    "offline",            # no agent connected for the tunnel (503), or it gave no data connection
    "unknown_tunnel",     # no such tunnel (404)
    "access_challenge",   # the tunnel's access policy wants a password: none or a wrong one (401)
    "access_forbidden",   # the tunnel's access policy does not admit the visitor's address (403)
    "access_busy",        # too many password checks under way (429, relay_access_max_pending)
    "access_throttled",   # too many wrong passwords from the address or for the tunnel (429)
    "access_login",       # members only: not logged in, sent to the web app's login (302, or 401)
    "access_not_member",  # members only: logged in as an account the tunnel's rule doesn't admit (403)
    "access_ticket",      # members only: a login ticket redeemed (302 setting the access cookie)
    "access_ticket_refused",  # members only: a used, expired or another tunnel's ticket (403)
    "limits",             # relay_max_visitors_per_tunnel reached (503)
    "local_refused",      # the agent could not reach the local app (502)
    "upstream_timeout",   # the app did not start its answer within relay_upstream_timeout (504)
    "upstream_closed",    # the app closed without answering (502)
    "unframable",         # the app's response can't be delimited exactly (502, or a close)
    "head_timeout",       # the visitor's request head took too long (408)
    "body_timeout",       # the visitor's request body came too slowly (408)
    "bad_request",        # a malformed request (400, 501, ...)
    "head_too_large",     # request head above relay_max_header_size (431)
    "bad_gateway",        # any other 502
    "relay_error",        # a bug in the relay (502)
    "peer_unreachable",   # the relay holding the tunnel's agent could not be reached (502; relay/peers)
)
# Where a routed request was served (relay/peers): by an agent here, passed on to the relay
# holding its agent, or received from a relay that passed it on.
ROUTED = ("local", "forwarded_out", "forwarded_in")
# The reason of a page that doesn't name its own, from its error code.
CODE_REASONS = {
    "TUNNEL_OFFLINE": "offline", "NOT_FOUND": "unknown_tunnel", "TOO_MANY_CONNECTIONS": "limits",
    "GATEWAY_TIMEOUT": "upstream_timeout", "HEADERS_TOO_LARGE": "head_too_large",
    "REQUEST_TIMEOUT": "head_timeout", "BAD_GATEWAY": "bad_gateway",
}
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")

ROUTE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                 2.5, 5.0)
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0)


class Buckets:
    """A histogram in plain numbers: ``counts[i]`` holds observations <= ``bounds[i]`` (non-cumulative;
    the last slot is +Inf)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        cumulative, buckets = 0, []
        for bound, count in zip(self.bounds + (float("inf"),), self.counts):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=self.sum)


class RelayStats:
    """What the hot path counts, one per relay.  Only the event loop thread writes it."""

    __slots__ = ("rx", "tx", "responses", "refusals", "route", "duration", "routed", "peer_dials",
                 "peer_failures")

    def __init__(self):
        self.rx = 0                      # netio.Conn.meter / zerocopy.Pump add to these
        self.tx = 0
        self.responses = [0] * 10        # by status // 100
        self.refusals = dict.fromkeys(REASONS, 0)
        self.route = Buckets(ROUTE_BUCKETS)
        self.duration = Buckets(DURATION_BUCKETS)
        self.routed = dict.fromkeys(ROUTED, 0)
        self.peer_dials = 0              # connections opened to peer relays (relay/peers)
        self.peer_failures = 0           # peer relays that could not be reached or refused us

    def response(self, status: int) -> None:
        self.responses[status // 100] += 1

    def refused(self, page: bytes, sent: bool = True) -> None:
        """The relay ended an exchange with ``page`` (a ``pages.Page``); ``sent``: the visitor got it."""
        reason = getattr(page, "reason", None) or "bad_request"
        self.refusals[reason] = self.refusals.get(reason, 0) + 1
        if sent:
            self.responses[int(page[9:12]) // 100] += 1


# A sink for state machines built without a relay (unit tests): counted, never read.
DISCARD = RelayStats()


class RelayCollector:
    """Reads a relay's ``RelayStats`` and live state when the registry is collected."""

    def __init__(self, relay):
        self.relay = relay

    def describe(self):
        return []

    def collect(self):
        relay, st = self.relay, self.relay.stats
        sessions = list(relay.sessions.values())
        info = GaugeMetricFamily("intunnel_relay_info", "This relay (1); its id in a label: one series per "
                                 "relay, to tell relays apart when several share a database.", labels=["relay_id"])
        info.add_metric([relay.relay_id], 1)
        yield info
        yield _gauge("intunnel_relay_agents_connected", "Agent control channels open.", len(relay.by_secret))
        yield _gauge("intunnel_relay_tunnels_active", "Tunnels with a connected agent.", len(sessions))
        yield _gauge("intunnel_relay_tunnels_busy", "Tunnels with at least one visitor attached now.",
                     sum(1 for s in sessions if s.visitors))
        yield _gauge("intunnel_relay_visitor_connections", "Visitor connections open.", len(relay.visitors))
        pool = GaugeMetricFamily("intunnel_relay_data_connections", "Data connections of connected agents: "
                                 "idle (the warm pool), parked (kept for the next visitor), active.",
                                 labels=["state"])
        pool.add_metric(["idle"], sum(len(s.idle) for s in sessions))
        pool.add_metric(["parked"], sum(len(s.parked) for s in sessions))
        pool.add_metric(["active"], sum(len(s.active) for s in sessions))
        yield pool
        requests = CounterMetricFamily("intunnel_relay_requests", "Visitor requests answered, by response "
                                       "class (the relay's own error pages included).", labels=["class"])
        counts = st.responses
        for i, name in enumerate(CLASSES, start=1):
            requests.add_metric([name], counts[i])
        yield requests
        refusals = CounterMetricFamily("intunnel_relay_refusals", "Exchanges the relay ended itself "
                                       "instead of the local app, by reason.", labels=["reason"])
        for reason, count in list(st.refusals.items()):
            refusals.add_metric([reason], count)
        yield refusals
        routed = CounterMetricFamily("intunnel_relay_attached", "Upstreams attached to visitors' requests, "
                                     "by path: an agent on this relay (local), the relay holding the agent "
                                     "(forwarded_out), or an agent here for a request another relay passed "
                                     "on (forwarded_in).  A keep-alive connection's next request to the "
                                     "same tunnel keeps its upstream and is not counted again.",
                                     labels=["path"])
        for path, count in st.routed.items():
            routed.add_metric([path], count)
        yield routed
        yield CounterMetricFamily("intunnel_relay_peer_connections_opened", "Connections opened to peer relays "
                                  "to forward visitors (each carries many requests).", value=st.peer_dials)
        yield CounterMetricFamily("intunnel_relay_peer_failures", "Forwards to a peer relay that could not "
                                  "connect or were refused (the visitor got a 502).", value=st.peer_failures)
        yield CounterMetricFamily("intunnel_relay_visitor_bytes_received", "Bytes received from visitors.",
                                  value=st.rx)
        yield CounterMetricFamily("intunnel_relay_visitor_bytes_sent", "Bytes sent to visitors.", value=st.tx)
        yield st.route.family("intunnel_relay_route_seconds", "From a request head to an upstream of its "
                              "tunnel attached (a parked one, or a fresh data connection).")
        yield st.duration.family("intunnel_relay_request_duration_seconds", "From a request head to the "
                                 "end of its response.")


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


# --- the listener, on the relay's own event loop (a scrape sees one consistent moment) ---

SCRAPE_HEAD_LIMIT = 8192
SCRAPE_TIMEOUT = 5.0


async def start_listener(listen_address: tuple[str, int], registry,
                         setting: str = "relay_metrics_listen") -> asyncio.AbstractServer | None:
    """Serve ``registry`` at ``/metrics`` on ``listen_address``; ``server.sockets[0]`` says where.

    None when the address can't be had: one warning naming the setting, and the relay serves
    on without metrics (they must never take the data path down)."""
    async def scrape(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(SCRAPE_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            if len(parts) == 3:
                status, headers, body = exposition(registry, parts[0], parts[1])
            else:
                status, headers, body = "400 Bad Request", [("Content-Length", "0")], b""
            writer.write(("HTTP/1.1 " + status + "\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers)
                          + "Connection: close\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, OSError):
            pass   # a client that sends nonsense or goes away gets nothing (and no traceback)
        except Exception:
            log.exception("metrics: scrape failed")
        finally:
            writer.close()

    host, port = listen_address
    try:
        server = await asyncio.start_server(scrape, host, port, limit=SCRAPE_HEAD_LIMIT, reuse_address=True)
    except OSError as e:
        log.warning("no metrics: setting %r: cannot listen on %s:%s (%s)", setting, host, port, e.strerror)
        return None
    where = server.sockets[0].getsockname()
    log.info("relay metrics at http://%s:%d/metrics", where[0], where[1])
    return server
