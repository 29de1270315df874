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
