"""``netio.wait_for``: a timeout that never swallows the caller's cancellation.

Python 3.11's ``asyncio.wait_for`` returns the awaited result when the caller is cancelled in
the same loop turn as that result arrives: the cancellation is lost.  A loop around it
(revocations' timer) then outlived ``Relay.stop``'s cancel-and-gather, and ``intunnel relay``
hung after SIGTERM (CI, PostgreSQL: the LISTEN connection came up just as the relay stopped).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from intunnel.relay.revocations import Revocations
from intunnel.wire import netio


async def _settled(task: asyncio.Task) -> None:
    """Let ``task`` run until it is blocked (it awaits something not ready)."""
    for _ in range(10):
        await asyncio.sleep(0)


def test_cancelled_as_the_result_arrives_is_cancelled():
    async def main():
        event = asyncio.Event()
        task = asyncio.ensure_future(netio.wait_for(event.wait(), 30))
        await _settled(task)
        event.set()      # the result, and the cancel, in the same turn
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


@pytest.mark.parametrize("ready", [True, False])
def test_result_and_timeout(ready):
    async def main():
        event = asyncio.Event()
        if ready:
            event.set()
            assert await netio.wait_for(event.wait(), 5) is True
        else:
            with pytest.raises(asyncio.TimeoutError):
                await netio.wait_for(event.wait(), 0.01)

    asyncio.run(main())


def test_revocations_timer_ends_when_cancelled_as_listening_starts():
    settings = SimpleNamespace(relay_reconcile_interval=30.0, relay_revocation_poll=30.0)
    relay = SimpleNamespace(settings=settings, store=None, spawn=asyncio.ensure_future)

    async def main():
        revocations = Revocations(relay)
        timer = asyncio.ensure_future(revocations._timer())
        await _settled(timer)
        revocations._mode.set()   # the LISTEN connection is up...
        timer.cancel()            # ...in the turn Relay.stop cancels its tasks
        done, _ = await asyncio.wait({timer}, timeout=5)
        assert done, "the timer went on after it was cancelled"
        assert timer.cancelled()

    asyncio.run(main())
