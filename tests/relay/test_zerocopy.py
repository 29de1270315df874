"""Kernel forwarding (splice(2)): bytes exact, half-closes mirrored, limits handed back,
errors close both sides, no descriptor left behind; and the relay and client really use it."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import socket
import struct

import pytest

from intunnel.wire import netio, zerocopy
from tests.support.tunnel import pattern, pattern_sha256, read_response, tunnel_setup, wait_for

pytestmark = pytest.mark.skipif(not zerocopy.AVAILABLE, reason="splice(2) is Linux only")


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    """Run a coroutine on asyncio's own loop and on uvloop (what the services use)."""
    if request.param == "asyncio":
        return asyncio.run
    uvloop = pytest.importorskip("uvloop")
    return uvloop.run


def open_fds() -> int:
    """Open sockets and pipes of this process (event loops open other files lazily), less its
    connections to a PostgreSQL server: peewee opens one per thread that queries, so an
    executor thread of the relay's may open one at any time (no leak)."""
    database = _database_sockets()
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the listing's own descriptor, gone already
        count += target.startswith(("socket:", "pipe:")) and target not in database
    return count


def _database_sockets() -> set[str]:
    """``socket:[inode]`` of this machine's TCP connections to a PostgreSQL server's port."""
    from intunnel.models import database
    port = getattr(database.obj, "connect_params", {}).get("port") if database.obj is not None else None
    found: set[str] = set()
    if not port:
        return found
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == int(port):
                found.add(f"socket:[{fields[9]}]")
    return found


async def conn_pair() -> tuple[netio.Conn, socket.socket]:
    """A ``Conn`` on an accepted loopback socket and the (non-blocking) peer socket."""
    loop = asyncio.get_running_loop()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        peer = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
    peer.setblocking(False)
    _, conn = await loop.connect_accepted_socket(netio.Conn, accepted)
    return conn, peer


async def read_until_eof(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    out = bytearray()
    while chunk := await loop.sock_recv(sock, 1 << 20):
        out += chunk
    return bytes(out)


async def wait_until(predicate, timeout: float = 10.0):
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def test_splice_moves_bytes_exactly_mirrors_half_closes_and_releases_everything(run):
    async def main():
        loop = asyncio.get_running_loop()
        fds = open_fds()
        a, peer_a = await conn_pair()
        b, peer_b = await conn_pair()
        netio.splice(a, b)
        assert a.pump is not None and b.pump is not None  # both directions in the kernel
        payload = os.urandom(5 * 1024 * 1024 + 3)
        reader = asyncio.ensure_future(read_until_eof(peer_b))
        await loop.sock_sendall(peer_a, payload)
        peer_a.shutdown(socket.SHUT_WR)
        assert hashlib.sha256(await reader).digest() == hashlib.sha256(payload).digest()
        assert not a.closed and not b.closed  # half-closed: the answer can still come back
        await loop.sock_sendall(peer_b, b"the answer")
        peer_b.shutdown(socket.SHUT_WR)
        assert await read_until_eof(peer_a) == b"the answer"
        await wait_until(lambda: a.closed and b.closed)
        peer_a.close()
        peer_b.close()
        assert all(p.stopped for p in (a.pump, b.pump))
        await wait_until(lambda: open_fds() == fds)  # no duplicate descriptor nor pipe left
    run(main())


def test_a_limited_pump_hands_the_socket_back_after_exactly_its_bytes(run):
    async def main():
        loop = asyncio.get_running_loop()
        a, peer_a = await conn_pair()
        b, peer_b = await conn_pair()
        handed_back = loop.create_future()
        moved = []
        assert netio.pump_through_kernel(a, b, a.eof_received, a.abort, limit=300_000,
                                         on_moved=lambda: moved.append(1),
                                         on_limit=lambda: handed_back.set_result(True))
        seen_by_loop = bytearray()
        a.forward_to(seen_by_loop.extend)  # bytes past the limit come back through the event loop
        data = os.urandom(300_000 + 11)
        await loop.sock_sendall(peer_a, data)
        await asyncio.wait_for(handed_back, 10)
        got = bytearray()
        while len(got) < 300_000:
            got += await asyncio.wait_for(loop.sock_recv(peer_b, 1 << 20), 10)
        assert bytes(got) == data[:300_000] and moved
        await wait_until(lambda: len(seen_by_loop) == 11)
        assert bytes(seen_by_loop) == data[300_000:] and a.pump is None and not a.pumps
        for c in (a, b):
            c.close()
        peer_a.close()
        peer_b.close()
    run(main())


def test_a_reset_on_one_side_closes_both(run):
    async def main():
        loop = asyncio.get_running_loop()
        a, peer_a = await conn_pair()
        b, peer_b = await conn_pair()
        netio.splice(a, b)
        # peer_b goes away with a reset while bytes are flowing towards it
        peer_b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer_b.close()
        with pytest.raises(OSError):
            for _ in range(64):  # bounded: a closes within a few MiB at most
                await asyncio.wait_for(loop.sock_sendall(peer_a, b"x" * (1 << 20)), 10)
        await wait_until(lambda: a.closed and b.closed)
        peer_a.close()
    run(main())


def test_watched_bytes_stay_in_the_event_loop(run):
    """(TLS sockets stay there too: the nginx+TLS tunnel tests would see ciphertext otherwise.)"""
    async def main():
        a, peer_a = await conn_pair()
        b, peer_b = await conn_pair()
        seen = []
        a.taps = seen.append  # `intunnel http -v` watches what the visitor sends
        netio.splice(a, b)
        assert a.pump is None and b.pump is not None
        await asyncio.get_running_loop().sock_sendall(peer_a, b"GET / HTTP/1.1\r\n\r\n")
        await wait_until(lambda: seen)
        for c in (a, b):
            c.close()
        peer_a.close()
        peer_b.close()
    run(main())


def spy_pumps(monkeypatch) -> list:
    """Record every Pump made (the real thing still runs)."""
    made = []
    real_init = zerocopy.Pump.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        made.append(self)
    monkeypatch.setattr(zerocopy.Pump, "__init__", init)
    return made


def test_tunnel_bulk_goes_through_the_kernel_and_keep_alive_still_routes_by_host(settings, db, monkeypatch):
    pumps = spy_pumps(monkeypatch)
    with tunnel_setup(settings) as t:
        session = t.relay.relay.sessions["myapp"]

        def fds_beyond_the_pool():
            # Each warm pool connection is two descriptors here (relay and client ends, one process);
            # the agent may grow its pool under a loaded machine, which is no leak.
            return open_fds() - 2 * len(session.idle)
        fds = fds_beyond_the_pool()
        size = 16 * 1024 * 1024 + 5
        sock = socket.create_connection(("127.0.0.1", t.relay.port), timeout=30)
        f = sock.makefile("rb")
        for path in (f"/download?size={size}", "/small", f"/download?size={size}"):
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {t.host}\r\n\r\n".encode())
            status, _, body = read_response(f)
            assert status == 200
            if path != "/small":
                assert hashlib.sha256(body).hexdigest() == pattern_sha256(size)
        # The relay's response bodies (by their length: every response is followed) and the
        # client's two sides (unlimited) were handed to the kernel.
        assert len(pumps) >= 3 and any(p.left is None for p in pumps)
        # Another Host on the same connection still reaches only its own tunnel.
        sock.sendall(b"GET /elsewhere HTTP/1.1\r\nHost: nope.localhost\r\n\r\n")
        assert read_response(f)[0] == 404
        f.close()
        sock.close()
        wait_for(lambda: all(p.stopped for p in pumps) and fds_beyond_the_pool() <= fds, message="pumps released")


def test_connection_close_download_is_pumped_by_its_length_and_the_data_connection_parked(
        settings, db, monkeypatch):
    settings = settings.replace(relay_upstream_keepalive=5.0)
    pumps = spy_pumps(monkeypatch)
    with tunnel_setup(settings) as t:
        size = 8 * 1024 * 1024
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", t.relay.port), timeout=30) as sock:
                sock.sendall(f"GET /download?size={size} HTTP/1.1\r\nHost: {t.host}\r\n"
                             f"Connection: close\r\n\r\n".encode())
                with sock.makefile("rb") as f:
                    status, _, body = read_response(f)
                    assert status == 200 and f.read() == b""  # the relay closed after the body
                assert hashlib.sha256(body).hexdigest() == pattern_sha256(size)
        limited = [p for p in pumps if p.left is not None]
        # The relay moved each body by the kernel, to the byte, and followed the response again.
        assert len(limited) == 2 and all(p.left == 0 for p in limited)
        # One data connection spliced once at the client (two directions): the second visitor
        # got it from the parking, still joined to the same local connection.
        assert len([p for p in pumps if p.left is None]) == 2
        session = t.relay.relay.sessions["myapp"]
        wait_for(lambda: len(session.parked) == 1, message="the data connection parked again")



def test_when_the_kernel_refuses_splice_the_event_loop_moves_the_bytes(settings, db, monkeypatch):
    """A system call filter (or a kernel) without splice(2): the tunnel still serves, byte exact,
    and later connections don't try again."""
    monkeypatch.setattr(zerocopy, "AVAILABLE", True)  # put back after the test

    def refused(*args, **kwargs):
        raise PermissionError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(zerocopy.os, "splice", refused)
    pumps = spy_pumps(monkeypatch)
    with tunnel_setup(settings) as t:
        size = 4 * 1024 * 1024 + 1
        for _ in range(2):
            status, _, body = t.get(f"/download?size={size}", timeout=30)
            assert status == 200 and hashlib.sha256(body).hexdigest() == pattern_sha256(size)
        status, _, data = t.get("/upload", method="POST", body=body, timeout=30)
        assert status == 200 and pattern_sha256(size) in data.decode()
    assert pumps and all(p.stopped and not p.moved_any for p in pumps)
    assert zerocopy.AVAILABLE is False


def test_a_big_request_body_goes_through_the_kernel_and_the_next_request_follows(settings, db, monkeypatch):
    pumps = spy_pumps(monkeypatch)
    with tunnel_setup(settings) as t, socket.create_connection(("127.0.0.1", t.relay.port), timeout=30) as sock, \
            sock.makefile("rb") as f:
        size = 8 * 1024 * 1024 + 3
        body = b"".join(pattern(size))
        # The body and, right behind it in the same writes, the next request (pipelined).
        sock.sendall(f"POST /upload HTTP/1.1\r\nHost: {t.host}\r\nContent-Length: {size}\r\n\r\n".encode()
                     + body + f"GET /after HTTP/1.1\r\nHost: {t.host}\r\n\r\n".encode())
        status, _, answer = read_response(f)
        assert status == 200 and json.loads(answer)["body_sha256"] == pattern_sha256(size)
        status, _, answer = read_response(f)
        assert status == 200 and json.loads(answer)["path"] == "/after"
    limited = [p for p in pumps if p.left is not None]
    assert len(limited) == 1 and limited[0].left == 0  # the relay moved the body, to the byte
