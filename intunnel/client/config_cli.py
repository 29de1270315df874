"""`intunnel config add-token TOKEN --server URL`: remember the server and token."""

from __future__ import annotations

import sys

from . import config
from .agent import parse_server

HELP = "Save the server URL and tunnel token so `intunnel http PORT` needs nothing else."


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION")
    add = sub.add_parser("add-token", help="save a tunnel token (and the server URL)")
    add.add_argument("token", help="the tunnel token shown in the dashboard")
    add.add_argument("--server", help="relay URL, e.g. https://example.com (kept if already saved)")


def run(args) -> int:
    if args.config_command != "add-token":
        print("usage: intunnel config add-token TOKEN --server URL", file=sys.stderr)
        return 2
    values = config.load()
    token = args.token.strip()
    if not token or any(c.isspace() for c in token):
        print("intunnel: the token must be a single word", file=sys.stderr)
        return 2
    server = args.server or values.get("server")
    if not server:
        print("intunnel: give --server URL (e.g. https://example.com)", file=sys.stderr)
        return 2
    try:
        parse_server(server)
    except ValueError as e:
        print(f"intunnel: {e}", file=sys.stderr)
        return 2
    path = config.save({"server": server, "token": token})
    print(f"saved server {server} and the token to {path}")
    return 0
