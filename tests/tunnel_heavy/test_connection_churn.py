"""Thousands of short visitor connections must not grow the relay's memory.

Each visitor opens a connection, sends one request with ``Connection: close``
and reads the answer: the pattern of browsers behind many NATs, health
checkers and `curl` loops.  After a warm-up (pools, allocator arenas), the
relay's resident memory must stay flat while 4,000 more connections come and
go; a relay that kept a few KiB per finished connection would grow by tens
of MiB here.
"""

from __future__ import annotations

import threading

import pytest

from bench import procs
from bench.stack import http_request

pytestmark = pytest.mark.slow

WARMUP = 1000
MEASURED = 4000
THREADS = 8
GROWTH_LIMIT_KIB = 8 * 1024  # a 6 KiB-per-connection leak would add ~23 MiB


def _visit_many(port: int, host: str, count: int) -> list:
    failures: list = []
    per_thread = count // THREADS

    def worker():
        for _ in range(per_thread):
            try:
                status = http_request(port, host, "/", timeout=10)[0]
            except OSError as e:
                status = repr(e)
            if status != 200:
                failures.append(status)

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return failures


def test_short_visitor_connections_leave_relay_memory_flat(make_stack, upstream):
    st = make_stack()
    token = st.add_tunnel("churn", upstream.port)
    st.start_relay()
    client = st.start_client(upstream.port, token)
    host = st.public_host("churn")
    st.wait_serving(st.relay_port, host, "/", watch=client)

    assert not _visit_many(st.relay_port, host, WARMUP)
    before = procs.status_kib(st.relay.pid, "VmRSS")
    failures = _visit_many(st.relay_port, host, MEASURED)
    assert not failures, f"{len(failures)} of {MEASURED} visits failed: {failures[:5]}"
    growth = procs.status_kib(st.relay.pid, "VmRSS") - before
    assert growth < GROWTH_LIMIT_KIB, (
        f"relay RSS grew by {growth} KiB over {MEASURED} finished connections "
        f"({growth * 1024 // MEASURED} bytes each)")
