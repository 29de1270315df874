"""Instructions the relay (or the client) executes per request, counted by valgrind (callgrind).

    .venv/bin/python -m bench.instructions                      # keep-alive, this tree
    .venv/bin/python -m bench.instructions --new-connections    # a connection per request
    .venv/bin/python -m bench.instructions --behind-proxy       # as deployed: nginx's headers, trusted
    .venv/bin/python -m bench.instructions --requests 2000
    .venv/bin/python -m bench.instructions --process client     # the `intunnel http` client instead
    .venv/bin/python -m bench.instructions --process client --client-arg=--no-inspect

The wall-clock figures of ``bench.tunnel`` move with whatever else the machine runs; an
instruction count doesn't, so two trees (``git worktree add``) can be compared to a few per
cent on a busy machine.  The relay runs under callgrind twice, serving ``--requests`` and
then no requests (each after the same warm-up) on one keep-alive connection from a plain
socket client (or a new connection per request, ``Connection: close``: accept, the first
head, the route to the tunnel and the close); the difference divided by the count is the
relay's user-space instructions per exchange (interpreter, event loop, parsing; not the kernel's share of the syscalls).
The revocation poll and the traffic view's write are set out of the way: they run on a
clock, and valgrind's runs differ in length (the traffic view's per-request record is
counted).  ``--setting NAME=VALUE`` sets any other relay setting for both runs.  Needs ``valgrind`` (Debian package).

``--process client`` counts the client process the same way (the relay then runs at full
speed): its inspector is on, as by default, unless ``--client-arg=--no-inspect`` (any option of
``intunnel http``, repeatable) says otherwise.  The inspector's listener and the client's
session run on no clock per request, so the two runs differ by the requests only.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

from . import procs, servers, stack

TOTALS = re.compile(r"^totals: (\d+)", re.M)  # one line per dumped process (callgrind also writes summary:)


def exchange(sock: socket.socket, request: bytes) -> None:
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))
    while len(body) < length:
        body += sock.recv(65536)


def closed_exchange(port: int, request: bytes) -> None:
    """One request on a connection of its own; the relay closes it after the response."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request)
        while sock.recv(65536):
            pass


# What the generated nginx config adds to every request it passes on (templates/nginx/_forwarded.conf.tpl).
PROXY_HEADERS = ("X-Real-IP: 203.0.113.7\r\nX-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n"
                 "X-Forwarded-Host: {host}\r\n")


def relay_instructions(work: Path, app: servers.App, requests: int, new_connections: bool = False,
                       behind_proxy: bool = False, warmup: int = 50, extra: dict | None = None,
                       process: str = "relay", client_args: list[str] = ()) -> int:
    """Instructions the relay process (``process="client"``: the client) executed over its
    life, having served ``requests``."""
    out = work / "callgrind.out"
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    settings = {"relay_revocation_poll": 3600, "relay_traffic_flush": 3600, "relay_trust_proxy": behind_proxy,
                **(extra or {})}
    with stack.Stack(work, procs.free_port(), settings=settings) as st:
        token = st.add_tunnel("bench", app.port)
        if process == "relay":
            argv = [*valgrind, *st.intunnel, "relay", "--config", str(st.config)]
            st.relay = procs.start(argv, st._log("relay"), env=st.env)
            procs.wait_until(st.relay_healthy, 180, "the relay under valgrind to listen")
            client = st.start_client(app.port, token, extra=list(client_args))
        else:
            st.start_relay()
            plain, st.intunnel = st.intunnel, [*valgrind, *st.intunnel]
            client = st.start_client(app.port, token, extra=list(client_args))
            st.intunnel = plain
        host = st.public_host("bench")
        st.wait_serving(st.relay_port, host, "/1k", watch=client, timeout=180)
        close = "Connection: close\r\n" if new_connections else ""
        proxy = PROXY_HEADERS.format(host=host) if behind_proxy else ""
        request = (f"GET /1k HTTP/1.1\r\nHost: {host}\r\n{proxy}User-Agent: bench\r\nAccept: */*\r\n"
                   f"{close}\r\n").encode()
        if new_connections:
            for _ in range(warmup + requests):
                closed_exchange(st.relay_port, request)
        else:
            with socket.create_connection(("127.0.0.1", st.relay_port)) as sock:
                for _ in range(warmup + requests):
                    exchange(sock, request)
        counted = st.relay if process == "relay" else client
        counted.send_signal(signal.SIGTERM)
        counted.wait(120)   # callgrind writes its counts on the way out: no SIGKILL
    return sum(int(n) for n in TOTALS.findall(out.read_text(errors="replace")))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000, help="requests counted (default 1000)")
    ap.add_argument("--new-connections", action="store_true", help="a new connection per request")
    ap.add_argument("--behind-proxy", action="store_true",
                    help="relay_trust_proxy on, each request with the headers the generated nginx config adds")
    ap.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                    help="a relay setting for both runs (repeatable), e.g. relay_traffic_ring=0")
    ap.add_argument("--process", choices=("relay", "client"), default="relay",
                    help="the process counted (default relay)")
    ap.add_argument("--client-arg", action="append", default=[], metavar="ARG",
                    help="an option for `intunnel http` in both runs (repeatable), e.g. --client-arg=--no-inspect")
    opts = ap.parse_args(argv)
    try:
        extra = dict(stack.parse_setting(s) for s in opts.setting)
    except ValueError as e:
        ap.error(str(e))
    if shutil.which("valgrind") is None:
        print("needs valgrind (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="intunnel-instr-") as tmp:
        work = Path(tmp)
        app = servers.start_app(work / "app")
        try:
            counted = dict(extra=extra, process=opts.process, client_args=opts.client_arg)
            served = relay_instructions(work / "served", app, opts.requests, opts.new_connections,
                                        opts.behind_proxy, **counted)
            idle = relay_instructions(work / "idle", app, 0, opts.new_connections, opts.behind_proxy, **counted)
        finally:
            procs.stop(app.proc)
    kind = ("new-connection" if opts.new_connections else "keep-alive") + (" proxied" if opts.behind_proxy else "")
    args = "".join(f" {a}" for a in opts.client_arg)
    print(f"{opts.process}{args}: {(served - idle) / opts.requests:,.0f} instructions per {kind} request "
          f"({opts.requests} requests, callgrind)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
