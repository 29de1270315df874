"""`intunnel config add-token|show|remove`: the tunnel tokens and logins this machine keeps."""

from __future__ import annotations

import sys

from . import config
from .agent import complete_server, parse_server

HELP = "Save, list and remove tunnel tokens, so `intunnel http PORT` needs nothing else."


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION")
    add = sub.add_parser("add-token", help="save a tunnel token (several: one per server and tunnel)")
    add.add_argument("token", help="the tunnel token shown in the dashboard")
    add.add_argument("--server", help="relay URL, e.g. https://example.com (default: the saved default server)")
    add.add_argument("--name", help="the tunnel's name (its subdomain), to keep several tokens "
                                    f"(default: {config.DEFAULT_NAME!r})")
    sub.add_parser("show", help="list the saved servers, tunnels and logins (tokens masked)")
    rm = sub.add_parser("remove", help="forget a saved tunnel token, or everything saved for a server")
    rm.add_argument("--server", help="relay URL (default: the saved default server)")
    rm.add_argument("--name", help="the tunnel to forget; without it, every token and the login of the server")


def run(args) -> int:
    action = {"add-token": _add, "show": _show, "remove": _remove}.get(args.config_command)
    if action is None:
        print("usage: intunnel config add-token TOKEN [--server URL] [--name NAME] | show | remove",
              file=sys.stderr)
        return 2
    try:
        return action(args, config.load())
    except ValueError as e:
        print(f"intunnel: {e}", file=sys.stderr)
        return 2


def _server(args, cfg: config.ClientConfig) -> str:
    server = args.server or cfg.server
    if not server:
        raise ValueError("give --server URL (e.g. https://example.com)")
    server, note = complete_server(server)
    parse_server(server)
    if note and args.server:
        print(f"intunnel: {note}", file=sys.stderr)
    return config.server_key(server)


def _add(args, cfg: config.ClientConfig) -> int:
    token = args.token.strip()
    if not token or any(c.isspace() for c in token):
        raise ValueError("the token must be a single word")
    name = _name(args.name) or config.DEFAULT_NAME
    server = _server(args, cfg)
    tokens = cfg.entry(server).tokens
    replaced = name in tokens and tokens[name] != token
    tokens[name] = token
    if not cfg.server:
        cfg.server = server
    path = config.save(cfg)
    what = "replaced the saved token" if replaced else "saved the token"
    print(f"{what} of tunnel {name!r} on {server} in {path}")
    if len(tokens) > 1:
        print(f"{len(tokens)} tunnels saved for {server}: choose one with `intunnel http PORT --name NAME`")
    return 0


def _name(value):
    if value is None:
        return None
    name = value.strip()
    if not name or any(c.isspace() for c in name):
        raise ValueError("--name must be a single word (the tunnel's subdomain)")
    return name


def _show(args, cfg: config.ClientConfig) -> int:
    print(f"config file: {config.config_path()}")
    if not cfg.servers and not cfg.tunnels:
        print("nothing saved yet: `intunnel login --server URL`, or "
              "`intunnel config add-token TOKEN --server URL --name NAME`")
        return 0
    for url in sorted(cfg.servers):
        entry = cfg.servers[url]
        print(f"{url}{'  (default server)' if url == config.server_key(cfg.server or '') else ''}")
        if entry.login:
            print(f"  logged in{' as ' + entry.login.user if entry.login.user else ''} "
                  f"(API token {mask(entry.login.token)})")
        for name in sorted(entry.tokens):
            print(f"  tunnel {name}: token {mask(entry.tokens[name])}")
    if cfg.tunnels:
        print("tunnels for `intunnel start`:")
    for name in sorted(cfg.tunnels):
        shown = {k: (mask(v) if k == "token" and isinstance(v, str) else
                     "(set)" if k == "basic_auth" else v) for k, v in cfg.tunnels[name].items()}
        print(f"  [tunnels.{name}] " + ", ".join(f"{k} = {v}" for k, v in shown.items()))
    return 0


def mask(secret: str) -> str:
    """Enough to tell two tokens apart, never enough to use one."""
    return secret[:4] + "…" if len(secret) > 12 else "…"


def _remove(args, cfg: config.ClientConfig) -> int:
    server = _server(args, cfg)
    entry = cfg.find(server)
    name = _name(args.name)
    if entry is None or (name is not None and name not in entry.tokens):
        what = f"tunnel {name!r} on {server}" if name else server
        raise ValueError(f"nothing saved for {what} (see `intunnel config show`)")
    if name is None:
        del cfg.servers[server]
        if cfg.server and config.server_key(cfg.server) == server:
            cfg.server = next(iter(sorted(cfg.servers)), None)
        said = f"forgot every token saved for {server}"
        if entry.login:
            said += " and its login (the API token stays valid until `intunnel logout` or the dashboard revokes it)"
    else:
        del entry.tokens[name]
        said = f"forgot the token of tunnel {name!r} on {server}"
    print(f"{said}; wrote {config.save(cfg)}")
    return 0
