"""Issue 10, breach 4: the agent control channel respects backpressure.

An authenticated agent that floods pings and never reads the pongs used to grow the
relay's memory without bound (every Pong queued in the transport) and stall every
other tunnel.  Rules: the relay stops reading a control channel while its write buffer
is above the high-water mark and resumes when it drains; an agent whose unsent output
passes ``relay_control_write_limit`` is disconnected (and one that stays that far
behind for the dead-peer timeout too); a burst of frames is worked off a bounded
number of frames per loop turn, so one agent cannot monopolise the loop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

from intunnel.relay.agents import AgentSession
from intunnel.relay.store import TunnelInfo
from intunnel.settings import load_settings
from intunnel.wire import protocol as p
from intunnel.wire.netio import Conn
from tests.support.tunnel import (ClientThread, HttpUpstream, RelayProcess, RelayThread, make_tunnel,
                                  visit, wait_for)

MiB = 1024 * 1024


# --- a hand-made agent: a raw socket doing the client's handshake ---------------------------

def handmade_agent(port: int, token: str) -> socket.socket:
    """Upgrade, Hello, wait for the Welcome; returns the control socket."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"GET {p.AGENT_PATH} HTTP/1.1\r\nHost: localhost\r\nUpgrade: intunnel\r\n"
              f"Connection: Upgrade\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    s.sendall(p.encode(p.Hello(client="handmade/1")))
    decoder = p.FrameDecoder()
    messages = decoder.feed(rest)
    while not messages:
        messages += decoder.feed(s.recv(65536))
    assert isinstance(messages[0], p.Welcome), messages
    return s


def pings(first: int, count: int) -> bytes:
    return b"".join(p.encode(p.Ping(seq)) for seq in range(first, first + count))


def rss(pid: int) -> int:
    """Resident memory of a process, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# --- end to end: a real relay process, a flooding agent, a real tunnel beside it -------------

def test_a_ping_flood_that_never_reads_is_dropped_with_bounded_memory_and_other_tunnels_keep_serving(
        settings, db):
    flood_size = 24 * MiB
    with HttpUpstream() as up:
        flooder = make_tunnel(settings, "flooder", 3000)
        honest = make_tunnel(settings, "honest", up.port)
        env = {"INTUNNEL_RELAY_HEARTBEAT_INTERVAL": "0.5", "INTUNNEL_RELAY_DEAD_PEER_TIMEOUT": "3"}
        with RelayProcess(settings, env=env) as relay, \
                ClientThread(relay.url, honest.token, up.port) as client:
            client.wait_connected()
            assert visit(relay.port, "honest.localhost", "/")[0] == 200
            agent = handmade_agent(relay.port, flooder.token)
            wait_for(lambda: relay.lines and any("tunnel flooder: agent connected" in l for l in relay.lines),
                     5, message="flooding agent connected")
            before = rss(relay.pid)

            peak = [before]
            flood_done = threading.Event()
            sent = [0]

            def sample():
                while not flood_done.is_set():
                    try:
                        peak[0] = max(peak[0], rss(relay.pid))
                    except OSError:
                        return
                    time.sleep(0.01)

            def flood():
                chunk = pings(1, MiB // 32)  # about 1 MiB of frames
                agent.settimeout(30)
                try:
                    while sent[0] < flood_size:
                        agent.sendall(chunk)
                        sent[0] += len(chunk)
                except OSError:
                    pass  # the relay cut us: that is the point
                finally:
                    flood_done.set()

            sampler = threading.Thread(target=sample, daemon=True)
            flooding = threading.Thread(target=flood, daemon=True)
            sampler.start()
            flooding.start()
            try:
                # Meanwhile the other tunnel answers its visitors (a generous bound per request).
                answered = 0
                while not flood_done.is_set() or answered < 10:
                    status, _, _ = visit(relay.port, "honest.localhost", "/", timeout=10)
                    assert status == 200
                    answered += 1
                    if answered > 2000:
                        break
                # The flooder is disconnected: the relay says so, and its tunnel is freed.
                relay.wait_line(r"agent flooder: (not reading its control channel|\d+ bytes of control)",
                                timeout=30)
                wait_for(lambda: visit(relay.port, "flooder.localhost", "/")[0] == 503, 10,
                         message="the flooder's tunnel offline")
                flooding.join(30)
                peak[0] = max(peak[0], rss(relay.pid))
            finally:
                flood_done.set()
                agent.close()
                sampler.join(5)
            growth = peak[0] - before
            print(f"relay RSS {before / MiB:.1f} MiB before, peak {peak[0] / MiB:.1f} MiB "
                  f"(+{growth / MiB:.1f} MiB) with {sent[0] / MiB:.0f} MiB of pings sent")
            assert growth < 16 * MiB, f"relay memory grew by {growth / MiB:.1f} MiB"
            # The honest tunnel is still connected and serving.
            assert visit(relay.port, "honest.localhost", "/")[0] == 200
            assert not any(flooder.token in line for line in relay.lines)


def test_an_agent_that_reads_its_pongs_is_not_disconnected_by_ping_traffic(settings, db):
    """Much more ping traffic than ``relay_control_write_limit``, read as it comes: every
    ping answered in order, and the session stays."""
    small = settings.replace(relay_control_write_limit=256 * 1024)
    total = 100_000  # about 3 MiB of pings, 12x the limit
    with RelayThread(small) as relay:
        tunnel = make_tunnel(settings, "reader", 3000)
        agent = handmade_agent(relay.port, tunnel.token)
        session = relay.relay.sessions["reader"]
        seqs: list[int] = []

        def read():
            decoder = p.FrameDecoder()
            agent.settimeout(30)
            while len(seqs) < total:
                data = agent.recv(1 << 16)
                if not data:
                    return
                seqs.extend(m.seq for m in decoder.feed(data) if isinstance(m, p.Pong))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        for first in range(1, total + 1, 10_000):
            agent.sendall(pings(first, 10_000))
        reader.join(60)
        assert seqs == list(range(1, total + 1))
        assert relay.relay.sessions.get("reader") is session and not session.closed
        agent.close()


# --- the AgentSession itself, on a socket pair -------------------------------------------------

class FakeRelay:
    def __init__(self, **overrides):
        self.settings = load_settings(env={"INTUNNEL_CONFIG": ""}, overrides=overrides)
        self.stopping = False
        self.ended: list[AgentSession] = []

    def session_ended(self, session):
        self.ended.append(session)


TOKEN = "tok-secret-0123456789abcdefghijklmnop"


async def session_on_socketpair(**overrides):
    """An AgentSession whose control channel is a real transport; returns it and the peer."""
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(Conn, sock=ours)
    relay = FakeRelay(**overrides)
    control = p.ControlSession(p.RELAY, time.monotonic())
    control.receive_messages([p.Hello()])
    session = AgentSession(relay, conn, TunnelInfo(1, "burst", 3000, TOKEN), p.Hello(), control)
    conn.on_close = session.on_closed
    conn.forward_to(session.on_control_bytes)
    return session, conn, peer, relay


async def read_pongs(peer: socket.socket, decoder: p.FrameDecoder, count: int) -> list[int]:
    loop = asyncio.get_running_loop()
    seqs: list[int] = []
    async with asyncio.timeout(20):
        while len(seqs) < count:
            data = await loop.sock_recv(peer, 1 << 16)
            assert data, "control channel closed"
            seqs.extend(m.seq for m in decoder.feed(data) if isinstance(m, p.Pong))
    return seqs


def test_a_burst_of_pings_in_one_read_is_worked_off_over_several_loop_turns():
    async def main():
        session, conn, peer, _ = await session_on_socketpair()
        turns = 0

        async def tick():
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)
        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0)
        started = turns
        session.on_control_bytes(pings(1, 5000))  # one data_received with 5000 frames
        assert not conn.transport.is_reading()    # the rest waits: nothing more is read meanwhile
        seqs = await read_pongs(peer, p.FrameDecoder(), 5000)
        assert seqs == list(range(1, 5001))       # every ping answered, in order
        assert turns - started >= 10              # other callbacks ran in between
        assert conn.transport.is_reading()
        ticker.cancel()
        conn.close()
        peer.close()
    asyncio.run(main())


def test_control_writes_pause_reading_until_the_agent_drains_them():
    async def main():
        session, conn, peer, relay = await session_on_socketpair(relay_control_write_limit=64 * MiB)
        sent = 0
        while conn.transport.get_write_buffer_size() <= 256 * 1024:  # the agent does not read: pongs pile up
            session.on_control_bytes(pings(sent + 1, 1000))
            sent += 1000
            for _ in range(20):
                await asyncio.sleep(0)
            assert sent < 2_000_000, "the transport never reported backpressure"
        assert not conn.transport.is_reading()    # so the relay stops reading this agent
        seqs = await read_pongs(peer, p.FrameDecoder(), sent)  # the agent reads: all of them arrive
        assert seqs == list(range(1, sent + 1))
        await asyncio.sleep(0)
        assert conn.transport.is_reading() and not conn.transport.get_write_buffer_size() and not session.closed
        assert not relay.ended
        conn.close()
        peer.close()
    asyncio.run(main())


def test_unsent_output_past_the_limit_disconnects_the_agent(caplog):
    caplog.set_level(logging.INFO, logger="intunnel.relay")

    async def main():
        session, conn, peer, relay = await session_on_socketpair(relay_control_write_limit=32 * 1024)
        async with asyncio.timeout(20):
            while not relay.ended:               # the agent never reads
                if not session.closed:
                    session.on_control_bytes(pings(1, 1000))
                await asyncio.sleep(0)
        assert session.closed and relay.ended == [session]
        assert conn.closed
        peer.close()
    asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if r.name == "intunnel.relay"]
    assert any("agent burst:" in line and "limit 32768" in line for line in lines), lines
    assert not any(TOKEN in line for line in lines)
