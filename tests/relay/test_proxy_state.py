"""The relay's proxy state machine, without sockets: every row of its table, and its invariants
over random interleavings of events (hypothesis)."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from intunnel.relay import proxy
from intunnel.relay.proxy import TABLE, Req, Resp


def limits(**kw) -> proxy.Limits:
    base = dict(max_head=8192, handshake_timeout=10.0, keepalive_timeout=75.0, body_timeout=30.0,
                body_min_rate=64, upstream_timeout=60.0, trust_proxy=False, public_scheme="http",
                cookie_domain="localhost")
    base.update(kw)
    return proxy.Limits(**base)


class Driver:
    """Carries out the machine's actions the way relay/link.py does, into byte strings."""

    def __init__(self, **kw):
        self.now = 0.0
        self.m = proxy.ProxyState(limits(**kw), "198.51.100.7", self.now)
        self.upstream = b""          # what the current attachment received
        self.visitor = b""           # what the visitor received
        self.routes: list[str] = []
        self.detached: list[bool] = []
        self.closed = None
        self.spliced = False
        self.has_upstream = False
        self.taken: set = set()
        for side in ("req", "resp"):
            self._record(side)

    def _record(self, side):
        go = getattr(self.m, f"_{side}_go")

        def recording(event, to):
            self.taken.add((side, getattr(self.m, side), event, to))
            go(event, to)
        setattr(self.m, f"_{side}_go", recording)

    def apply(self, actions):
        for a in actions:
            if isinstance(a, proxy.ToUpstream):
                assert self.has_upstream, "bytes for an upstream while none is attached"
                self.upstream += a.data
            elif isinstance(a, proxy.ToVisitor):
                self.visitor += a.data
            elif isinstance(a, proxy.Route):
                self.routes.append(a.head.host)
            elif isinstance(a, proxy.Detach):
                assert self.has_upstream, "detached twice"
                self.has_upstream = False
                self.detached.append(a.park)
            elif isinstance(a, proxy.Splice):
                self.spliced = True
            elif isinstance(a, proxy.Close):
                self.closed = a.abort
            elif isinstance(a, (proxy.KernelUp, proxy.KernelDown)):
                raise AssertionError("no bulk bodies in these tests")
        return self

    def send(self, data: bytes):
        return self.apply(self.m.visitor_data(data, self.now))

    def attach(self, reused=False):
        self.upstream = b""
        self.has_upstream = True
        return self.apply(self.m.attached_upstream(None, reused, self.now))

    def app(self, data: bytes):
        return self.apply(self.m.upstream_data(data, self.now))

    def app_gone(self):
        return self.apply(self.m.upstream_ended(self.now))

    def eof(self):
        return self.apply(self.m.visitor_eof(self.now))

    def tick(self, seconds: float):
        self.now += seconds
        return self.apply(self.m.timer(self.now))


def get(host="a.localhost", path="/", extra=""):
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
UPGRADE = "Upgrade: websocket\r\nConnection: Upgrade\r\n"
SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


def keep_alive_twice(d):
    d.send(get()).attach().app(OK).send(get(path="/2")).app(OK)
    assert d.visitor == OK + OK and d.routes == ["a.localhost"]


def host_switch(d):
    d.send(get()).attach().app(OK).send(get("b.localhost"))
    assert d.detached == [True] and d.routes == ["a.localhost", "b.localhost"]   # parked: idle


def upgrade_accepted(d):
    d.send(get(extra=UPGRADE) + b"early").attach()
    assert b"early" not in d.upstream            # held until the app decides (R2, R4)
    d.app(SWITCH + b"raw")
    assert d.spliced and d.upstream.endswith(b"early") and d.visitor == SWITCH + b"raw"


def upgrade_refused(d):
    d.send(get(extra=UPGRADE) + get("b.localhost")).attach().app(OK)
    assert not d.spliced and d.routes[-1] == "b.localhost"   # parsed and routed again (R2)


def reused_upstream_drops_request(d):
    d.send(get()).attach(reused=True).app_gone()
    assert d.routes == ["a.localhost", "a.localhost"]        # R10: once more, on a fresh one
    d.attach().app(OK)
    assert d.visitor == OK


def kept_upstream_drops_the_next_request(d):
    """The upstream kept from the connection's last exchange closed (the app's keep-alive timeout)
    just as the next request went out: as for a parked one, R10 sends it once more."""
    d.send(get(path="/1")).attach().app(OK).send(get(path="/2")).app_gone()
    assert d.routes == ["a.localhost", "a.localhost"] and b" 502 " not in d.visitor
    d.attach().app(OK)
    assert d.visitor == OK + OK


def visitor_leaves_between(d):
    d.send(get()).attach().app(OK).eof()
    assert d.closed is False and d.detached == [True]


def visitor_leaves_while_routing(d):
    d.send(b"POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 5\r\n\r\nab").eof()
    assert d.closed is True


def visitor_leaves_mid_body(d):
    d.send(b"POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 5\r\n\r\nab").attach().eof()
    assert d.closed is True and d.detached == [False]


def app_too_slow(d):
    d.send(get()).attach().tick(61)
    assert b" 504 " in d.visitor and d.closed is False


def upgrade_unanswered(d):
    d.send(get(extra=UPGRADE)).attach().tick(61)
    assert b" 504 " in d.visitor


def response_cut_short(d):
    d.send(get()).attach().app(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab").app_gone()
    assert d.closed is True


def answered_before_body(d):
    d.send(b"POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 5\r\n\r\nab").attach().app(OK).eof()
    assert d.visitor == OK and d.closed is True


SCENARIOS = [keep_alive_twice, host_switch, upgrade_accepted, upgrade_refused, reused_upstream_drops_request,
             kept_upstream_drops_the_next_request,
             visitor_leaves_between, visitor_leaves_while_routing, visitor_leaves_mid_body, app_too_slow,
             upgrade_unanswered, response_cut_short, answered_before_body]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__)
def test_scenario(scenario):
    scenario(Driver())


def test_the_scenarios_walk_every_row_of_the_table():
    taken: set = set()
    for scenario in SCENARIOS:
        d = Driver()
        scenario(d)
        taken |= d.taken
    assert taken <= TABLE
    assert TABLE - taken == set(), sorted(map(str, TABLE - taken))


# --- each rule of the module's docstring, one example each -----------------------------------
def test_r3_a_response_that_cannot_be_delimited_gets_a_502_and_never_reaches_the_visitor():
    for bad in (b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello",
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"):
        d = Driver().send(get()).attach().app(bad)
        assert d.visitor.startswith(b"HTTP/1.1 502 ") and b"hello" not in d.visitor and d.detached == [False]


def test_r3_a_bad_chunk_after_the_head_closes_the_connection_at_once():
    d = Driver().send(get()).attach()
    d.app(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 x\r\nhello\r\n0\r\n\r\n"
          b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged")
    # All in one read: nothing went out yet, so the visitor gets a 502 (and the connection closes).
    assert d.visitor.startswith(b"HTTP/1.1 502 ") and d.closed is not None
    assert b"forged" not in d.visitor and b"hello" not in d.visitor
    d = Driver().send(get()).attach().app(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    d.app(b"5 x\r\nhello\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged")
    assert d.closed is True and b"forged" not in d.visitor and b"hello" not in d.visitor   # cut at once


def test_r5_a_request_after_connection_close_is_never_forwarded():
    d = Driver().send(get(extra="Connection: close\r\n") + get(path="/secret")).attach()
    assert b"/secret" not in d.upstream and b"Connection" not in d.upstream
    d.app(OK)
    assert d.closed is False and b"Connection: close\r\n" in d.visitor     # R9
    assert d.visitor.count(b"HTTP/1.1") == 1 and d.detached == [True]


def test_r5_pipelined_requests_to_two_tunnels_are_answered_in_order_each_from_its_own():
    d = Driver().send(get("a.localhost", "/1") + get("b.localhost", "/2")).attach()
    assert b"/2" not in d.upstream
    d.app(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA")
    assert d.routes == ["a.localhost", "b.localhost"] and d.detached == [True]
    d.attach()
    assert d.upstream.startswith(b"GET /2 ")
    d.app(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nB")
    assert d.visitor.endswith(b"A") is False and d.visitor.count(b"200 OK") == 2 and d.visitor.endswith(b"B")


def test_r6_bytes_after_a_complete_response_are_not_forwarded_and_the_upstream_is_dropped():
    d = Driver().send(get()).attach().app(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged")
    assert b"forged" not in d.visitor and d.detached == [False]
    d.send(get(path="/next"))
    assert d.routes == ["a.localhost", "a.localhost"]   # routed anew


def test_r4_reads_pause_while_routing_and_while_bytes_are_held():
    d = Driver().send(get())
    assert d.m.req is Req.ROUTING and not d.m.wants_visitor_input
    d.attach()
    assert d.m.wants_visitor_input
    d.send(get(path="/2"))             # pipelined behind an unanswered request: held
    assert not d.m.wants_visitor_input and b"/2" not in d.upstream


def test_r8_timers():
    d = Driver().send(b"GET / HT")
    assert d.m.deadline() == 10.0
    d.tick(10)
    assert b" 408 " in d.visitor and d.closed is False
    d = Driver().send(get()).attach().app(OK)
    assert d.m.deadline() == 75.0
    d.tick(75)
    assert d.closed is False and d.detached == [True]
    d = Driver(body_timeout=10, body_min_rate=10).send(
        b"POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 1000\r\n\r\n").attach()
    d.send(b"x" * 150).tick(10)        # 150 >= 10 B/s x 10 s: a new window
    assert d.closed is None
    d.send(b"x").tick(10)              # 1 byte in the next window: too slow
    assert b" 408 " in d.visitor and d.closed is False


def test_r11_early_hints_are_dropped_and_continue_passes():
    d = Driver().send(get()).attach().app(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK)
    assert d.visitor == OK
    d = Driver().send(b"POST / HTTP/1.1\r\nHost: a.localhost\r\nExpect: 100-continue\r\n"
                      b"Content-Length: 2\r\n\r\n").attach().app(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert d.visitor == b"HTTP/1.1 100 Continue\r\n\r\n"
    d = Driver(trust_proxy=True).send(get()).attach().app(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)
    assert d.visitor == OK


def test_a_malformed_head_after_a_complete_exchange_gets_its_own_400():
    d = Driver().send(get() + b"GET / HTTP/1.1\r\nno colon here\r\n\r\n").attach().app(OK)
    assert d.visitor.startswith(OK) and d.visitor[len(OK):].startswith(b"HTTP/1.1 400 ") and d.closed is False


def test_an_upgrade_requests_body_is_its_body_not_another_request():
    smuggled = b"GET /admin HTTP/1.1\r\nHost: b.localhost\r\n\r\n"
    d = Driver().send(b"POST /up HTTP/1.1\r\nHost: a.localhost\r\n" + UPGRADE.encode() +
                      b"Content-Length: %d\r\n\r\n" % len(smuggled) + smuggled).attach().app(OK)
    assert d.routes == ["a.localhost"] and d.upstream.endswith(smuggled)


def test_101_to_a_request_that_did_not_ask_is_a_502():
    d = Driver().send(get()).attach().app(SWITCH + b"raw")
    assert d.visitor.startswith(b"HTTP/1.1 502 ") and not d.spliced


# --- invariants over random event orders ----------------------------------------------------
TAG = re.compile(rb"tag=([ab])-(\d+);")


class Exchanges(RuleBasedStateMachine):
    """A visitor talking to tunnels a and b through the machine; each app answers every request
    it received with a body naming its tunnel and the request's nonce."""

    def __init__(self):
        super().__init__()
        self.d = Driver()
        self.sent: list[tuple[str, int, str]] = []     # (tunnel, nonce, kind) in visitor order
        self.nonce = 0
        self.app_queue: list[tuple[str, int, str]] = []  # requests the current upstream received
        self.seen_upstream = 0

    def _parse_upstream(self):
        """New request heads at the upstream: each must name the attached tunnel (R1)."""
        heads = re.findall(rb"GET /(\w)-(\d+)-(\w+) HTTP/1.1\r\nHost: (\w)\.localhost", self.d.upstream)
        for sub, nonce, kind, host in heads[self.seen_upstream:]:
            assert sub == host, "a request reached another tunnel's upstream"
            assert host.decode() == self.d.m.host.split(".")[0]
            self.app_queue.append((sub.decode(), int(nonce), kind.decode()))
        self.seen_upstream = len(heads)

    @precondition(lambda self: not self.d.m.closed and not self.d.spliced and len(self.sent) < 12)
    @rule(tunnel=st.sampled_from("ab"), kind=st.sampled_from(["plain", "head", "close", "upgrade"]),
          split=st.integers(0, 40))
    def visitor_sends(self, tunnel, kind, split):
        self.nonce += 1
        extra = {"plain": "", "head": "", "close": "Connection: close\r\n", "upgrade": UPGRADE}[kind]
        method = "HEAD" if kind == "head" else "GET"
        data = f"{method} /{tunnel}-{self.nonce}-{kind} HTTP/1.1\r\nHost: {tunnel}.localhost\r\n{extra}\r\n".encode()
        self.sent.append((tunnel, self.nonce, kind))
        self.d.send(data[:split])
        if not self.d.m.closed:
            self.d.send(data[split:])

    @precondition(lambda self: self.d.m.req is Req.ROUTING)
    @rule(reused=st.booleans())
    def route_completes(self, reused):
        self.app_queue, self.seen_upstream = [], 0
        self.d.attach(reused)
        self._parse_upstream()

    @precondition(lambda self: self.d.m.req is Req.ROUTING)
    @rule()
    def route_fails(self):
        self.d.apply(self.d.m.route_failed(b"HTTP/1.1 503 X\r\nContent-Length: 0\r\n\r\n", self.d.now))

    @precondition(lambda self: self.d.m.attached and not self.d.spliced and not self.d.m.closed)
    @rule(switch=st.booleans(), extra=st.booleans())
    def app_answers(self, switch, extra):
        self._parse_upstream()
        if not self.app_queue:
            return
        sub, nonce, kind = self.app_queue.pop(0)
        body = f"tag={sub}-{nonce};".encode()
        if kind == "upgrade" and switch:
            self.d.app(SWITCH + b"raw " + body)
            return
        data = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + (b"" if kind == "head" else body)
        if extra:
            data += b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\ntag=x-0;bad"  # out of turn
        self.d.app(data)
        self._parse_upstream()

    @precondition(lambda self: self.d.m.attached and not self.d.spliced and not self.d.m.closed)
    @rule()
    def app_closes(self):
        self.d.app_gone()
        self.app_queue, self.seen_upstream = [], 0

    @precondition(lambda self: not self.d.m.closed and not self.d.spliced)
    @rule()
    def visitor_eof(self):
        self.d.eof()

    @precondition(lambda self: not self.d.m.closed and not self.d.spliced)
    @rule(seconds=st.sampled_from([1.0, 11.0, 61.0, 76.0]))
    def time_passes(self, seconds):
        self.d.tick(seconds)

    @rule()
    def nothing_more(self):
        """The connection may be over (closed or spliced): the run goes on checking invariants."""

    @invariant()
    def responses_match_their_requests_in_order(self):
        """No byte of one exchange reaches another: the tags reaching the visitor are those of
        the requests it sent, each at most once, in the order sent, never from another tunnel."""
        tags = [(t.decode(), int(n)) for t, n in TAG.findall(self.d.visitor)]
        order = [(t, n) for t, n, _ in self.sent]
        positions = [order.index(tag) if tag in order else -1 for tag in tags]
        assert -1 not in positions, f"a response no request asked for: {tags}"
        assert positions == sorted(set(positions)), f"out of order or repeated: {tags}"

    @invariant()
    def raw_only_after_101(self):
        if b"raw " in self.d.visitor:
            assert self.d.spliced and SWITCH in self.d.visitor

    @invariant()
    def reads_paused_when_nothing_is_attached_and_a_head_waits(self):
        m = self.d.m
        if m.req is Req.ROUTING or m.closed:
            assert not m.wants_visitor_input
        if not m.attached and m.req is not Req.IDLE:
            assert not m.wants_visitor_input or m.closed

    @invariant()
    def every_exchange_ends_in_one_way(self):
        m = self.d.m
        assert set(m.outcomes) == {"complete", "closed", "error", "tunnel"}
        if m.closed:
            assert m.resp is Resp.CLOSED
            assert sum(m.outcomes.values()) == m.begun, (m.outcomes, m.begun)   # each exactly once
        else:
            assert sum(m.outcomes.values()) in (m.begun - 1, m.begun), (m.outcomes, m.begun)


Exchanges.TestCase.settings = settings(max_examples=300, stateful_step_count=30, deadline=None,
                                       suppress_health_check=[HealthCheck.too_slow])
test_random_event_orders = Exchanges.TestCase
