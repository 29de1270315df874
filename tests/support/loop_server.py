"""A throwaway asyncio server on 127.0.0.1 port 0 in its own loop thread, for tests that play a
relay or a TLS port by hand (an older relay, a server that only answers 404)."""

from __future__ import annotations

import asyncio
import contextlib

from tests.support.tunnel import LoopThread


@contextlib.contextmanager
def loop_server(handler, name: str = "loop-server", ssl=None):
    """Serve ``handler(reader, writer)``; yields the port; stops the server and its loop after."""
    loop = LoopThread(name)

    async def start():
        return await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ssl)
    server = loop.call(start())
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        async def stop():
            server.close()
        loop.call(stop())
        loop.shutdown()
