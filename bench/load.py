"""Load generators: wrk for small requests, a raw-socket client for bulk bodies.

wrk (C, epoll) drives the 1 KiB GETs, keep-alive and ``Connection: close``;
bulk transfers use plain blocking sockets with 1 MiB buffers, so the client
costs a few syscalls per MiB and is never what limits a target.
"""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


@dataclass(frozen=True)
class WrkResult:
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    requests: int
    errors: int  # socket errors (connect/read/write/timeout) plus non-2xx/3xx answers


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse_wrk(text: str) -> WrkResult:
    """Parse wrk's report (``--latency`` adds the percentiles)."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not rps:
        raise ValueError("no Requests/sec in wrk output:\n" + text)
    pct = {m.group(1): _ms(m.group(2), m.group(3))
           for m in re.finditer(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M)}
    requests = re.search(r"(\d+) requests in", text)
    errors = 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sock:
        # With Connection: close a "read" error is the server's normal close
        # racing wrk's read; connect/write/timeout errors are real failures.
        errors += int(sock.group(1)) + int(sock.group(3)) + int(sock.group(4))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non2xx:
        errors += int(non2xx.group(1))
    return WrkResult(float(rps.group(1)), pct.get("50"), pct.get("99"),
                     int(requests.group(1)) if requests else 0, errors)


def wrk(url: str, host: str | None, connections: int, seconds: float, close: bool = False,
        threads: int = 2) -> WrkResult:
    """Run wrk against ``url`` (optionally with a Host header and Connection: close)."""
    argv = [shutil.which("wrk") or "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            "--latency", "--timeout", "5s"]
    if host:
        argv += ["-H", f"Host: {host}"]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(url)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip()}")
    return parse_wrk(out.stdout)


# --- bulk transfers -------------------------------------------------------

CHUNK = 1 << 20


def connect(port: int, tls: bool, timeout: float = 30) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the bench's own self-signed certificate
        sock = ctx.wrap_socket(sock)
    return sock


def read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read a response head; return (status, lower-cased headers, bytes already read past it)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed before the response head")
        buf += data
        if len(buf) > 1 << 20:
            raise ValueError("response head too large")
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest


def read_response(sock: socket.socket, head_only_body: bool = False, limit: int = 16 << 20
                  ) -> tuple[int, dict[str, str], bytes]:
    """Read a whole (small) response: by Content-Length when given, else until EOF."""
    status, headers, body = read_head(sock)
    body = bytearray(body)
    want = int(headers["content-length"]) if "content-length" in headers else None
    if head_only_body or status in (204, 304):
        want = 0
    while want is None or len(body) < want:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
        if len(body) > limit:
            raise ValueError("response body too large")
    return status, headers, bytes(body)


def download_once(port: int, path: str, host: str, tls: bool = False) -> tuple[float, int]:
    """GET ``path``; return (seconds, body bytes) for the whole response."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with connect(port, tls) as sock:
        start = time.perf_counter()
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        status, headers, got = read_head(sock)
        if status != 200:
            raise RuntimeError(f"download got HTTP {status}")
        want = int(headers["content-length"])
        received = len(got)
        while received < want:
            n = sock.recv_into(view)
            if not n:
                raise ConnectionError(f"download cut after {received} of {want} bytes")
            received += n
        return time.perf_counter() - start, received


def upload_once(port: int, path: str, host: str, size: int, tls: bool = False) -> tuple[float, int]:
    """PUT ``size`` bytes to ``path``; the timer stops when the app has answered (after the whole body)."""
    block = memoryview(bytes(range(256)) * (CHUNK // 256))
    with connect(port, tls) as sock:
        start = time.perf_counter()
        sock.sendall(f"PUT {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {size}\r\n"
                     f"Connection: close\r\n\r\n".encode())
        sent = 0
        while sent < size:
            piece = block[:min(CHUNK, size - sent)]
            sock.sendall(piece)
            sent += len(piece)
        status, _, _ = read_head(sock)
        if status not in (200, 201, 204):
            raise RuntimeError(f"upload got HTTP {status}")
        return time.perf_counter() - start, sent


def best_rate(run, seconds: float, min_runs: int = 3, max_runs: int = 20) -> float:
    """Repeat ``run() -> (seconds, bytes)`` for about ``seconds``; best MB/s (after one warm-up).

    Best rather than median: on a shared machine interference only slows runs down.
    """
    run()
    rates = []
    deadline = time.monotonic() + seconds
    while len(rates) < max_runs and (len(rates) < min_runs or time.monotonic() < deadline):
        elapsed, nbytes = run()
        rates.append(nbytes / elapsed / 1e6)
    return max(rates)
