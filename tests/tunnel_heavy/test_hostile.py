"""Hostile agents and slowloris visitors on both relay endpoints while a healthy tunnel serves.

Every hostile connection must be closed by the relay within the handshake
timeout (plus scheduling slack), the relay's memory must stay bounded, and
the healthy tunnel must answer every request meanwhile.  The relay and the
healthy client are real subprocesses with a small handshake timeout.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from bench import procs
from bench.stack import http_request
from intunnel.wire import protocol as p

pytestmark = pytest.mark.slow

HANDSHAKE_TIMEOUT = 1.0
MAX_HEADER = 16 * 1024
CLOSE_SLACK = 2.0           # scheduling slack on a busy 2-core machine
COPIES = 12                 # of each hostile kind, all at once
RELAY_GROWTH_LIMIT_KIB = 32 * 1024


class Hostile:
    """One hostile connection: what it did, whether and when the relay closed it."""

    def __init__(self, kind: str, port: int):
        self.kind = kind
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.start = time.monotonic()
        self.received = b""
        self.closed_after: float | None = None

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:  # the relay already closed (reset): that is a close
            self._closed()
            return False

    def _closed(self):
        if self.closed_after is None:
            self.closed_after = time.monotonic() - self.start

    def wait_closed(self, limit: float, drip: bytes = b"", every: float = 0.1) -> "Hostile":
        """Read until EOF/reset or ``limit`` seconds; with ``drip``, send it every ``every`` seconds."""
        deadline = self.start + limit
        while self.closed_after is None and time.monotonic() < deadline:
            readable, _, _ = select.select([self.sock], [], [], every)
            if readable:
                try:
                    chunk = self.sock.recv(65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    self._closed()
                    break
                if len(self.received) < 4096:  # enough to see a status line
                    self.received += chunk
            elif drip and not self.send(drip):
                break
        self.sock.close()
        return self

    @property
    def status(self) -> int | None:
        if self.received.startswith(b"HTTP/1.1 "):
            return int(self.received.split(b" ", 2)[1])
        return None


def agent_upgrade(host: str, token: str, path: str = p.AGENT_PATH, extra: str = "") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: {p.UPGRADE_TOKEN}\r\nConnection: Upgrade\r\n"
            f"Authorization: Bearer {token}\r\n{extra}\r\n").encode()


def upgraded(port: int, host: str, token: str, kind: str) -> Hostile:
    """An agent control channel past the 101 (a valid token of the *hostile* tunnel)."""
    h = Hostile(kind, port)
    h.send(agent_upgrade(host, token))
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = h.sock.recv(4096)
        assert chunk, "relay closed before answering the upgrade"
        buf += chunk
    assert buf.startswith(b"HTTP/1.1 101"), buf[:200]
    return h


def scenarios(port: int, relay_host: str, public_host: str, evil_token: str) -> dict:
    """kind -> (callable returning a closed Hostile, status codes accepted before the close)."""
    limit = HANDSHAKE_TIMEOUT + CLOSE_SLACK
    big_head = lambda host: (f"GET / HTTP/1.1\r\nHost: {host}\r\nX-Pad: ".encode()  # noqa: E731
                             + b"a" * (MAX_HEADER * 2) + b"\r\n\r\n")

    def run(kind, first: bytes = b"", drip: bytes = b""):
        h = Hostile(kind, port)
        if first:
            h.send(first)
        return h.wait_closed(limit, drip)

    def after_upgrade(kind, data: bytes = b""):
        h = upgraded(port, relay_host, evil_token, kind)
        if data:
            h.send(data)
        return h.wait_closed(limit)

    return {
        # agent endpoint (Host = the relay's own domain)
        "agent: binary garbage": (lambda: run("agent garbage", os.urandom(4096)), {400, None}),
        "agent: oversized head": (lambda: run("agent big", big_head(relay_host)), {431, 400, None}),
        "agent: bad token": (lambda: run("agent bad token", agent_upgrade(relay_host, "not-a-token")), {401}),
        "agent: no hello after 101": (lambda: after_upgrade("no hello"), {None}),
        "agent: oversized frame": (lambda: after_upgrade("big frame", p.FRAME_HEADER.pack(1 << 30) + b"x" * 100),
                                   {None}),
        "agent: bad json frame": (lambda: after_upgrade("bad json", p.FRAME_HEADER.pack(9) + b"{not json"), {None}),
        "agent: hello then garbage": (lambda: after_upgrade("hello+garbage", p.encode(p.Hello(client="evil"))
                                                            + p.FRAME_HEADER.pack(5) + b"\xff\xfe\xfd\xfc\xfb"),
                                      {None}),
        "agent: data with a forged session": (
            lambda: run("forged data", agent_upgrade(relay_host, "x", p.DATA_PATH, f"{p.SESSION_HEADER}: forged\r\n")),
            {401}),
        "agent: half-open head": (lambda: run("agent half-open", f"GET {p.AGENT_PATH} HTTP/1.1\r\nHo".encode()),
                                  {None, 408}),
        "agent: silent": (lambda: run("agent silent"), {None, 408}),
        "agent: slowloris": (lambda: run("agent slowloris", f"GET {p.AGENT_PATH} HTTP/1.1\r\n".encode(), b"X"),
                             {None, 408}),
        # public endpoint (Host = a tunnel)
        "public: garbage": (lambda: run("public garbage", b"\x16\x03\x01" + os.urandom(2048)), {400, None}),
        "public: oversized head": (lambda: run("public big", big_head(public_host)), {431, 400, None}),
        "public: half-open head": (lambda: run("public half-open", b"GET / HTTP/1.1\r\nHost: " + public_host.encode()),
                                   {None, 408}),
        "public: silent": (lambda: run("public silent"), {None, 408}),
        "public: slowloris": (lambda: run("public slowloris", f"GET / HTTP/1.1\r\nHost: {public_host}\r\n".encode(),
                                          b"X"), {None, 408}),
        "public: slowloris after a request": (
            lambda: run("public keep-alive slowloris",
                        f"GET / HTTP/1.1\r\nHost: {public_host}\r\n\r\nGET / HTTP/1.1\r\n".encode(), b"X"),
            {200, None, 408}),
    }


def test_hostile_agents_and_slowloris_visitors_are_cut_while_a_healthy_tunnel_serves(make_stack, upstream):
    st = make_stack(relay_handshake_timeout=HANDSHAKE_TIMEOUT, relay_max_header_size=MAX_HEADER,
                    relay_max_visitors_per_tunnel=1024)
    good = st.add_tunnel("good", upstream.port)
    evil = st.add_tunnel("evil", upstream.port)
    st.start_relay()
    client = st.start_client(upstream.port, good)
    good_host = st.public_host("good")
    st.wait_serving(st.relay_port, good_host, "/", watch=client)
    relay_host = f"{st.domain}:{st.relay_port}"
    before_hwm = procs.status_kib(st.relay.pid, "VmHWM")

    kinds = scenarios(st.relay_port, relay_host, good_host, evil)
    healthy: list[tuple[int, float]] = []
    stop = threading.Event()

    def keep_visiting():
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                status = http_request(st.relay_port, good_host, "/", timeout=5)[0]
            except OSError as e:
                status = repr(e)
            healthy.append((status, time.monotonic() - t0))

    visitor = threading.Thread(target=keep_visiting, daemon=True)
    visitor.start()
    try:
        with ThreadPoolExecutor(max_workers=len(kinds) * COPIES) as pool:
            futures = {pool.submit(fn): (name, accepted)
                       for name, (fn, accepted) in kinds.items() for _ in range(COPIES)}
            outcomes = [(name, accepted, f.result(timeout=60)) for f, (name, accepted) in futures.items()]
    finally:
        stop.set()
        visitor.join(10)

    problems = []
    for name, accepted, h in outcomes:
        if h.closed_after is None:
            problems.append(f"{name}: still open after {HANDSHAKE_TIMEOUT + CLOSE_SLACK}s")
        elif h.status not in accepted:
            problems.append(f"{name}: answered {h.received[:80]!r}")
    assert not problems, "\n".join(sorted(set(problems)))

    assert healthy, "the healthy visitor never got through"
    bad = [s for s, _ in healthy if s != 200]
    assert not bad, f"healthy tunnel failed {len(bad)} of {len(healthy)} requests: {bad[:5]}"
    slowest = max(d for _, d in healthy)
    assert slowest < 2.0, f"healthy tunnel stalled for {slowest:.2f}s during the attack"

    growth = procs.status_kib(st.relay.pid, "VmHWM") - before_hwm
    assert growth < RELAY_GROWTH_LIMIT_KIB, f"relay peak memory grew by {growth} KiB under attack"
    assert st.relay.poll() is None and client.poll() is None
    # The hostile agent sessions are gone; only the healthy agent is connected and still serving.
    procs.wait_until(lambda: st.agents() == 1, 10, "only the healthy agent to remain")
    assert http_request(st.relay_port, good_host, "/")[0] == 200
