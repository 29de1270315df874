"""Every relay test also checks that no callback of the in-process relay or client raised.

asyncio only logs an exception raised in a protocol callback ("Exception in
callback ...") and carries on, so such a bug would otherwise pass unseen.
"""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True)
def no_unhandled_loop_errors(caplog):
    caplog.set_level(logging.ERROR, logger="asyncio")
    yield
    unhandled = [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
    assert not unhandled, "unhandled errors in an event loop:\n" + caplog.text


@pytest.fixture
def client_drops_bound_connections(monkeypatch):
    """The in-process client closes the next ``drops[0]`` data connections the relay binds,
    unanswered: what its pool's calm-down does to an idle connection the relay picked for a
    visitor at that same moment (pool.py rule 5: the close and the Bind cross on the wire)."""
    from intunnel.client import data
    drops = [0]
    real = data.serve_visitor

    async def serve_or_drop(conn, *args, **kwargs):
        if drops[0] > 0:
            drops[0] -= 1
            conn.close()
            return
        await real(conn, *args, **kwargs)
    monkeypatch.setattr(data, "serve_visitor", serve_or_drop)
    return drops
