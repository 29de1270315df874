"""`intunnel tunnels [--server URL] [--json]`: the logged-in user's tunnels and their status."""

from __future__ import annotations

import json
import sys

from . import config
from .api import ApiError
from .resolve import find_entry, list_tunnels, login_api

HELP = "List your tunnels (name, public URL, local port, status, last connected); needs `intunnel login`."

COLUMNS = (("NAME", "subdomain"), ("URL", "url"), ("PORT", "local_port"), ("STATUS", "status"),
           ("LAST CONNECTED", "last_connected"))
FIELDS = ("id", "name", "subdomain", "url", "local_port", "status", "last_connected", "ephemeral")


def add_arguments(parser) -> None:
    parser.add_argument("--server", help="the server you logged in to (default: the saved default server)")
    parser.add_argument("--json", action="store_true", help="one JSON object for scripts (no tokens)")
    parser.add_argument("--insecure", action="store_true",
                        help="accept a self-signed TLS certificate (testing only)")


def run(args) -> int:
    cfg = config.load()
    server = args.server or cfg.server
    if not server:
        print("intunnel: give --server URL (the one you logged in to with `intunnel login --server URL`)",
              file=sys.stderr)
        return 2
    server, entry = find_entry(cfg, server)
    if entry is None or entry.login is None:
        print(f"intunnel: not logged in to {server}: `intunnel login --server {server}` first", file=sys.stderr)
        return 2
    try:
        found = list_tunnels(server, login_api(server, entry.login, args.insecure))
    except (ValueError, ApiError) as e:
        print(f"intunnel: {e}", file=sys.stderr)
        return 2
    rows = [{k: t.get(k) for k in FIELDS} for t in found]
    if args.json:
        print(json.dumps({"tunnels": rows}, indent=2))
        return 0
    if not rows:
        print(f"no tunnels yet on {server}: `intunnel http PORT --name NAME --create` makes one")
        return 0
    print(table(rows))
    return 0


def cell(row: dict, key: str) -> str:
    value = row.get(key)
    if key == "status" and row.get("ephemeral"):
        return f"{value} (ephemeral)"
    if key == "last_connected":
        return (value or "never").replace("T", " ").replace("Z", " UTC")
    return "" if value is None else str(value)


def table(rows: list) -> str:
    """Columns padded to their widest cell (pure: the command's text, tested as such)."""
    cells = [[title for title, _ in COLUMNS]] + [[cell(r, key) for _, key in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells)
