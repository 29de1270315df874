"""The client's data-connection pool policy (intunnel/client/pool.py): its rules as tables, a
hypothesis model of a session's pool over random events, and the session's live counts."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from intunnel.client import pool as pool_mod
from intunnel.client.pool import PoolPolicy
from intunnel.client.session import Opened, Session
from intunnel.wire import protocol as p

MAX, BATCH, CALM = p.MAX_POOL_SIZE, p.MAX_OPEN_DATA_BATCH, p.POOL_SHRINK_AFTER


@pytest.mark.parametrize("welcome_size, base", [(8, 8), (0, 0), (-3, 0), (MAX, MAX), (MAX + 1, MAX), (10**6, MAX)])
def test_rule_1_the_welcomes_pool_size_clamped_is_base_and_size(welcome_size, base):
    policy = PoolPolicy.welcomed(welcome_size)
    assert (policy.base, policy.size) == (base, base)
    assert policy.top_up(0, 0) == base


@pytest.mark.parametrize("size, idle, dialing, dial", [
    (8, 0, 0, 8), (8, 7, 0, 1), (8, 3, 4, 1), (8, 8, 0, 0), (8, 0, 8, 0),
    (8, 10, 3, 0),          # above the size after a burst: nothing, never negative
    (0, 0, 0, 0),
])
def test_rule_2_top_up_dials_the_difference(size, idle, dialing, dial):
    assert PoolPolicy(base=size, size=size).top_up(idle, dialing) == dial


@pytest.mark.parametrize("size, count, dial, new_size", [
    (8, 1, 1, 9), (8, 0, 0, 8), (8, -2, 0, 8), (8, BATCH, BATCH, 8 + BATCH), (8, BATCH + 5, BATCH, 8 + BATCH),
    (MAX - 1, 3, 3, MAX),   # the size stops at the maximum...
    (MAX, 2, 2, MAX),       # ...but the visitors waiting now still get their connections
])
def test_rule_4_open_data_dials_its_count_and_grows_the_size(size, count, dial, new_size):
    policy = PoolPolicy(base=8, size=size)
    assert policy.open_data(count, now=100.0) == dial
    assert policy.size == new_size and policy.last_burst == 100.0


@pytest.mark.parametrize("size, since_burst, idle, close, size_after", [
    (8, CALM + 1, 8, 0, 8),      # at the base: nothing to shrink
    (20, CALM - 1, 20, 0, 20),   # not calm yet
    (20, CALM, 20, 0, 20),       # exactly calm: not yet (strictly more)
    (20, CALM + 1, 20, 12, 8),   # calm: back to the base, the idle ones beyond it closed
    (20, CALM + 1, 5, 0, 8),     # fewer idle than the base: the size shrinks, nothing closed
])
def test_rule_5_calm_shrinks_back_to_base(size, since_burst, idle, close, size_after):
    policy = PoolPolicy(base=8, size=size, last_burst=1000.0)
    assert policy.calm(1000.0 + since_burst, idle) == close
    assert policy.size == size_after


# --- a model of one session's pool over random events -----------------------------------------

EVENTS = st.one_of(
    st.tuples(st.just("dial_ok"), st.integers(0, 200)),      # the n-th dial on the way connects
    st.tuples(st.just("dial_fail"), st.integers(0, 200)),    # ...or fails
    st.tuples(st.just("cancel"), st.integers(0, 200)),       # ...or is cancelled (the old drift)
    st.tuples(st.just("relay_closes"), st.integers(0, 200)), # the relay closes an idle one
    st.tuples(st.just("bind"), st.integers(0, 200)),         # a visitor takes an idle one
    st.tuples(st.just("open_data"), st.integers(-2, BATCH + 4)),
    st.tuples(st.just("tick"), st.floats(0, 2 * CALM)),
)


class ModelSession:
    """What session.py does, with lists for sockets: counts are always the lists' lengths."""

    def __init__(self, pool_size: int):
        self.policy = PoolPolicy.welcomed(pool_size)
        self.dialing: list[int] = []
        self.idle: list[int] = []
        self.now = 0.0
        self.next_id = 0
        self.top_up()

    def dial(self, n: int) -> None:
        for _ in range(n):
            self.dialing.append(self.next_id)
            self.next_id += 1

    def top_up(self) -> None:
        n = self.policy.top_up(len(self.idle), len(self.dialing))
        self.dial(n)
        if n:   # a top-up fills the pool exactly, never beyond its size
            assert len(self.idle) + len(self.dialing) == self.policy.size

    def apply(self, event: str, arg) -> bool:
        """Whether the event could happen (a Bind needs an idle connection, and so on)."""
        if event in ("dial_ok", "dial_fail", "cancel") and self.dialing:
            conn = self.dialing.pop(arg % len(self.dialing))
            if event == "dial_ok":
                self.idle.append(conn)
        elif event == "relay_closes" and self.idle:
            self.idle.pop(arg % len(self.idle))
        elif event == "bind" and self.idle:
            self.idle.pop(arg % len(self.idle))
            self.top_up()
        elif event == "open_data":
            self.dial(self.policy.open_data(arg, self.now))
        elif event == "tick":
            self.now += arg
            close = self.policy.calm(self.now, len(self.idle))
            assert 0 <= close <= len(self.idle)
            del self.idle[:close]
        else:
            return False
        return True


@hsettings(max_examples=300, deadline=None)
@given(st.integers(-2, MAX + 2), st.lists(EVENTS, max_size=80))
def test_the_pool_policy_over_random_events(pool_size, events):
    model = ModelSession(pool_size)
    base = model.policy.base
    assert 0 <= base <= MAX
    assert len(model.dialing) == base                     # a session starts by filling its pool
    for event, arg in events:
        before = model.policy.size
        happened = model.apply(event, arg)
        policy = model.policy
        assert base == policy.base and base <= policy.size <= MAX
        if event == "bind" and happened:                   # after a Bind the pool is full again
            assert len(model.idle) + len(model.dialing) >= policy.size
        if event == "open_data":
            assert policy.size == min(MAX, before + max(0, min(arg, BATCH)))
        if event == "tick" and model.now - policy.last_burst > CALM:
            assert policy.size == base                     # rule 5: calm, back to the base...
            if before > base:
                assert len(model.idle) <= base             # ...without the idle ones beyond it
        if event in ("dial_fail", "cancel", "relay_closes"):
            assert policy.size == before                   # rule 3: nothing replaced at once


def test_the_module_is_pure():
    """No sockets, no event loop, no clock: only the protocol's limits."""
    source = open(pool_mod.__file__).read()
    for word in ("import asyncio", "import socket", "import time", "Conn"):
        assert word not in source


# --- the session's live counts -----------------------------------------------------------------

class StuckDialer:
    """A dialer whose data connections never connect (the relay is slow to answer)."""
    timeout = 1.0

    def __init__(self):
        self.started = 0

    async def upgrade(self, address, path, headers):
        self.started += 1
        await asyncio.Event().wait()


def welcome(pool_size: int) -> p.Welcome:
    return p.Welcome(url="http://a.localhost", subdomain="a", session="s", heartbeat_interval=10.0,
                     dead_peer_timeout=30.0, pool_size=pool_size)


def test_cancelled_dials_are_not_counted_and_a_top_up_replaces_them():
    """The old agent kept ``_dialing`` by hand and never took a cancelled dial off it, so its
    pool stopped topping up: the counts now come from the live data connections."""
    async def scenario():
        dialer = StuckDialer()
        opened = Opened(conn=None, control=p.ControlSession(p.AGENT), welcome=welcome(4), address="127.0.0.1",
                        placed={})
        session = Session(opened, dialer, upstream=None, say=lambda line: None, verbose=False, open_next=None)
        session._top_up()
        await asyncio.sleep(0)
        assert session.counts() == (0, 4) and dialer.started == 4
        tasks = list(session._links)
        for task in tasks[:3]:
            task.cancel()
        await asyncio.gather(*tasks[:3], return_exceptions=True)
        assert session.counts() == (0, 1)
        session._top_up()
        await asyncio.sleep(0)
        assert session.counts() == (0, 4) and dialer.started == 7
        session.closed = True
        for task in list(session._links):
            task.cancel()
        await asyncio.gather(*list(session._links), return_exceptions=True)
        assert session.counts() == (0, 0)
        session._top_up()                                  # a closed session dials nothing
        assert session.counts() == (0, 0)
    asyncio.run(scenario())
