"""`intunnel tcp PORT`: expose a local TCP port (SSH, a database, a game server) at a TCP tunnel's port.

The same agent as `intunnel http` (one control channel, a pool of data connections, each
visitor one of them spliced raw to the local port), minus everything that reads HTTP: no
inspector, no request log, no Host rewriting.  The tunnel is a TCP tunnel of the dashboard
(its public address ``tcp://<domain>:<port>``); the token says which.
"""

from __future__ import annotations

import sys

from ..wire import netio
from . import config, resolve
from .agent import Agent, complete_server, parse_server
from .api import ApiError
from .cli import _main, _say, local_target

HELP = "Expose a local TCP port (e.g. 22) at your TCP tunnel's public port."


def add_arguments(parser) -> None:
    parser.add_argument("port", type=int, nargs="?", help="local TCP port to expose, e.g. 22 "
                        "(default: the tunnel's local port, set in the dashboard)")
    parser.add_argument("--server", help="relay URL, e.g. https://example.com (default: saved config)")
    parser.add_argument("--token", help="the TCP tunnel's token (the dashboard shows the whole command)")
    parser.add_argument("--name", help="the TCP tunnel to serve, by name (its subdomain): its saved token, "
                                       "or with a login, looked up")
    parser.add_argument("--upstream", metavar="HOST:PORT",
                        help="forward to this address instead of 127.0.0.1:PORT")
    parser.add_argument("--insecure", action="store_true", help="don't verify the relay's TLS certificate")


def run(args) -> int:
    args.create = False   # TCP tunnels are made on the dashboard (they hold a public port)
    try:
        cfg = config.load()
        if not args.token and not args.name:
            server, entry = resolve.find_entry(cfg, args.server or cfg.server or "")
            if entry is None or len(entry.tokens) != 1:
                raise ValueError("give --token TOKEN of a TCP tunnel (create one on the dashboard, which shows "
                                 "the whole command), or --name NAME")
        target = resolve.resolve(args, cfg)
        server, note = complete_server(target.server)
        if note:
            print(f"intunnel: {note}", file=sys.stderr, flush=True)
        host, port = local_target(args)
        parse_server(server)
    except (ValueError, ApiError) as e:
        print(f"intunnel: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    agent = Agent(server, target.token, port, upstream_host=host, insecure=args.insecure, say=_say,
                  upstream_given=bool(args.upstream), protocol="tcp")
    return netio.run(_main(agent, None))
