"""The least a Python hop can cost: a TCP forwarder on asyncio that parses nothing (bench floor).

    python -m bench.forwarder --listen 127.0.0.1:PORT --to 127.0.0.1:PORT

Each accepted connection gets its own connection to ``--to``; bytes go both ways through the
event loop (``data_received`` -> ``write``, as the relay and the client move a keep-alive
request's bytes), with the same flow control (a full peer pauses reading) and half-close.  No
head is parsed, nothing is routed, no state machine runs: two of these chained in the relay's
and the client's places (``python-2hop`` in bench.tunnel) measure what any relay and client
written in Python on this event loop cost per request before they do any work of their own,
which is the CPU budget a ratio to ``direct`` is checked against (issue 17, "Done when").
Asyncio's own loop by default (``--uvloop`` for the relay's: see its help).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys


class Hop(asyncio.Protocol):
    """One side of a forwarded connection; ``peer`` is the other side once it is connected.
    An accepted side (``target`` given) dials the other when it is made."""

    def __init__(self, peer: Hop | None = None, target: tuple[str, int] | None = None):
        self.peer = peer
        self.target = target
        self.transport: asyncio.Transport | None = None
        self.early: list[bytes] = []   # read before the other side was connected (uvloop may deliver some)

    def connection_made(self, transport):
        self.transport = transport
        if self.target is not None:
            transport.pause_reading()
            asyncio.get_running_loop().create_task(self._dial())

    async def _dial(self) -> None:
        try:
            _, outbound = await asyncio.get_running_loop().create_connection(lambda: Hop(self), *self.target)
        except OSError:
            if not self.transport.is_closing():
                self.transport.close()
            return
        if self.transport.is_closing():   # the visitor left while this was dialed
            outbound.transport.close()
            return
        self.peer = outbound
        for data in self.early:
            outbound.transport.write(data)
        self.early.clear()
        self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.early.append(data)
        else:
            self.peer.transport.write(data)

    def eof_received(self):
        if self._peer_open() and self.peer.transport.can_write_eof():
            self.peer.transport.write_eof()
        return True   # half-close: keep sending the other way

    def connection_lost(self, exc) -> None:
        if self._peer_open():
            self.peer.transport.close()

    def pause_writing(self) -> None:
        if self._peer_open():
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self._peer_open():
            self.peer.transport.resume_reading()

    def _peer_open(self) -> bool:
        return self.peer is not None and self.peer.transport is not None and not self.peer.transport.is_closing()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def serve(listen: tuple[str, int], target: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Hop(target=target), *listen, backlog=4096)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    print("listening", flush=True)
    async with server:
        await stop


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.forwarder", description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True, type=_address, metavar="HOST:PORT")
    ap.add_argument("--to", required=True, type=_address, metavar="HOST:PORT")
    ap.add_argument("--uvloop", action="store_true",
                    help="on uvloop, as the relay runs (keep-alive only: uvloop 0.x aborted with a double free "
                         "in this forwarder under a storm of closed connections, 2026-12-05)")
    args = ap.parse_args(argv)
    if args.uvloop:
        import uvloop
        uvloop.install()
    asyncio.run(serve(args.listen, args.to))
    return 0


if __name__ == "__main__":
    sys.exit(main())
