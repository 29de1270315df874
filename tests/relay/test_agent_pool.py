"""``relay_agent_pool``: the warm data connections the relay's Welcome asks each agent to keep,
with a real relay and a real client.  Exactly that many wait at the relay; a visitor is served
whatever the size, 0 included (every data connection then dialed on demand, by ``OpenData``)."""

from __future__ import annotations

import contextlib

import pytest

from intunnel.errors import ConfigError
from intunnel.settings import load_settings
from tests.relay.test_access import get, seen_paths
from tests.relay.test_session_access import served
from tests.support.tunnel import ClientThread, wait_for


@pytest.mark.parametrize("pool", [0, 2, 8])
def test_an_agent_keeps_the_pool_the_relay_asks_for(settings, db, pool):
    settings = settings.replace(relay_agent_pool=pool)
    with contextlib.ExitStack() as stack:
        relay, tunnel, app = served(stack, settings)
        client = stack.enter_context(ClientThread(relay.url, tunnel.token, app.port))
        client.wait_connected()
        session = relay.relay.sessions["myapp"]
        wait_for(lambda: len(session.idle) == pool, message=f"{pool} idle data connections at the relay")
        host = f"myapp.{settings.domain}"
        assert [get(relay.port, host, f"/{i}")[0] for i in range(3)] == [200, 200, 200]
        assert seen_paths(app) == ["/0", "/1", "/2"]
        if pool:   # the one a visitor took is replaced (with 0 there is nothing to top up)
            wait_for(lambda: len(session.idle) == pool, message="the pool topped up again")


@pytest.mark.parametrize("value", ["-1", "65"])
def test_a_pool_outside_what_an_agent_may_keep_is_refused_at_start(value):
    with pytest.raises(ConfigError, match=r"relay_agent_pool': must be between 0 and 64"):
        load_settings(None, env={"INTUNNEL_RELAY_AGENT_POOL": value})
