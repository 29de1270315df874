"""1 GiB each way through a real relay and a real client, checked by SHA-256, memory flat.

The relay and the client are subprocesses; their peak resident memory (VmHWM)
after the transfers may exceed the peak before them by only a small bound, far
below the body size: nothing on the path buffers a body.  The test streams
the body from a generator and hashes on the fly, never holding it either.
"""

from __future__ import annotations

import hashlib
import time

import pytest

from bench import load, procs

from .upstream import pattern_stream, pattern_sha256

pytestmark = pytest.mark.slow

SIZE = 1 << 30
# Peak memory may grow by at most this much during 1 GiB each way (buffers,
# allocator slack); buffering a body would cost hundreds of MiB.
PEAK_GROWTH_LIMIT_KIB = 64 * 1024
TRANSFER_DEADLINE = 180.0  # seconds per direction; a loopback tunnel does 1 GiB in a few


def _download(port: int, host: str) -> tuple[str, int]:
    """GET 1 GiB through the tunnel, hashing as it arrives."""
    h = hashlib.sha256()
    buf = bytearray(load.CHUNK)
    view = memoryview(buf)
    deadline = time.monotonic() + TRANSFER_DEADLINE
    with load.connect(port, tls=False) as sock:
        sock.sendall(f"GET /stream?size={SIZE} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        status, headers, got = load.read_head(sock)
        assert status == 200, (status, headers)
        assert int(headers["content-length"]) == SIZE
        h.update(got)
        total = len(got)
        while total < SIZE:
            assert time.monotonic() < deadline, f"download too slow: {total} bytes after {TRANSFER_DEADLINE}s"
            n = sock.recv_into(view)
            if not n:
                break
            h.update(view[:n])
            total += n
    return h.hexdigest(), total


def _upload(port: int, host: str) -> tuple[str, bytes]:
    """PUT 1 GiB through the tunnel from the generator; the app answers with its own hash."""
    h = hashlib.sha256()
    deadline = time.monotonic() + TRANSFER_DEADLINE
    with load.connect(port, tls=False) as sock:
        sock.sendall(f"PUT /sink HTTP/1.1\r\nHost: {host}\r\nContent-Length: {SIZE}\r\n"
                     f"Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n".encode())
        for piece in pattern_stream(SIZE):
            assert time.monotonic() < deadline, "upload too slow"
            h.update(piece)
            sock.sendall(piece)
        status, _, body = load.read_response(sock)
    assert status == 200, (status, body[:200])
    return h.hexdigest(), body


def _peaks(st, client) -> dict[str, int]:
    return {"relay": procs.status_kib(st.relay.pid, "VmHWM"), "client": procs.status_kib(client.pid, "VmHWM")}


def test_one_gib_each_way_byte_exact_with_flat_memory(make_stack, upstream):
    st = make_stack()
    token = st.add_tunnel("bulk", upstream.port)
    st.start_relay()
    client = st.start_client(upstream.port, token)
    host = st.public_host("bulk")
    st.wait_serving(st.relay_port, host, "/", watch=client)
    before = _peaks(st, client)

    digest, total = _download(st.relay_port, host)
    assert total == SIZE
    assert digest == pattern_sha256(SIZE), "downloaded bytes differ from what the app sent"

    sent_digest, answer = _upload(st.relay_port, host)
    assert answer.decode() == f"{sent_digest} {SIZE}", "the app received different bytes than were sent"

    after = _peaks(st, client)
    for name in ("relay", "client"):
        growth = after[name] - before[name]
        assert growth <= PEAK_GROWTH_LIMIT_KIB, (
            f"{name} peak memory grew by {growth} KiB during 1 GiB each way "
            f"({before[name]} -> {after[name]} KiB): a body is being buffered")
    assert st.relay.poll() is None and client.poll() is None
