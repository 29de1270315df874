"""`intunnel http PORT`: expose a local port through the relay."""

from __future__ import annotations

import asyncio
import signal
import sys

from ..wire import netio
from . import config
from .agent import Agent, parse_server

HELP = "Expose a local HTTP port at your tunnel's public URL."


def add_arguments(parser) -> None:
    parser.add_argument("port", type=int, help="local port to expose (e.g. 3000)")
    parser.add_argument("--server", help="relay URL, e.g. https://example.com (default: saved config)")
    parser.add_argument("--token", help="tunnel token (default: saved config; see `intunnel config add-token`)")
    parser.add_argument("--upstream", metavar="HOST:PORT",
                        help="send traffic to HOST:PORT instead of 127.0.0.1:PORT")
    parser.add_argument("--host-header", default="preserve", metavar="rewrite|preserve|VALUE",
                        help="Host header the local app sees: the visitor's (preserve, default), "
                             "HOST:PORT of the upstream (rewrite), or a given value")
    parser.add_argument("--insecure", action="store_true",
                        help="accept a self-signed TLS certificate (testing only)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print one line per request")


def _say(line: str) -> None:
    print(line, flush=True)


def run(args) -> int:
    saved = config.load()
    server = args.server or saved.get("server")
    token = args.token or saved.get("token")
    if not server or not token:
        print("intunnel: give --server URL and --token TOKEN, or save them once with "
              "`intunnel config add-token TOKEN --server URL`", file=sys.stderr)
        return 2
    if not 1 <= args.port <= 65535:
        print("intunnel: PORT must be between 1 and 65535", file=sys.stderr)
        return 2
    host, port = "127.0.0.1", args.port
    if args.upstream:
        h, sep, pt = args.upstream.rpartition(":")
        if not sep or not pt.isdigit() or not 1 <= int(pt) <= 65535:
            print("intunnel: --upstream must be HOST:PORT", file=sys.stderr)
            return 2
        host, port = h.strip("[]") or "127.0.0.1", int(pt)
    try:
        parse_server(server)
    except ValueError as e:
        print(f"intunnel: {e}", file=sys.stderr)
        return 2
    agent = Agent(server, token, port, upstream_host=host, host_header=args.host_header,
                  insecure=args.insecure, verbose=args.verbose, say=_say)
    return netio.run(_main(agent))


async def _main(agent: Agent) -> int:
    """Run until the agent gives up or Ctrl-C/SIGTERM: then exit at once."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(agent.run())
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        _say("stopped")
        return 0
