"""`intunnel start NAME... | --all`: several tunnels from the config file in one process.

Each ``[tunnels.NAME]`` section (client/tunnel_defs) becomes one Agent; all of them run in one
event loop, each printing its lines behind its name, and stop together on Ctrl-C or SIGTERM.
Every section is checked, and every token found, before the first connects: a bad one is one
line naming the section and the key, exit 2.
"""

from __future__ import annotations

import asyncio
import sys

from ..wire import netio
from . import config, resolve, tunnel_defs
from .address import complete_server, parse_server
from .agent import Agent
from .api import ApiError
from .cli import add_inspect_arguments, inspect_options, local_target, on_stop_signals, open_inspector, session_rules

HELP = "Run several tunnels from the config file's [tunnels.NAME] sections in one process."


def add_arguments(parser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME", help="the [tunnels.NAME] sections to run")
    parser.add_argument("--all", action="store_true", help="run every [tunnels.NAME] section")
    add_inspect_arguments(parser)   # one inspector for all of them


def _fail(message: str) -> int:
    print(f"intunnel: {message}", file=sys.stderr)
    return 2


def run(args) -> int:
    cfg = config.load()
    path = config.config_path()
    if not cfg.tunnels:
        return _fail(f"no [tunnels.NAME] sections in {path}; add one per tunnel, e.g.\n"
                     "  [tunnels.web]\n  port = 3000")
    known = ", ".join(sorted(cfg.tunnels))
    if args.all == bool(args.names):
        return _fail(f"name the sections to run, or --all (in {path}: {known})")
    names = sorted(cfg.tunnels) if args.all else list(dict.fromkeys(args.names))
    for name in names:
        if name not in cfg.tunnels:
            return _fail(f"no [tunnels.{name}] section in {path} (there are: {known})")
    try:
        where = inspect_options(args)
    except ValueError as e:
        return _fail(str(e))
    try:
        plans = [plan(name, cfg.tunnels[name]) for name in names]
        agents = [agent_for(name, defn, cfg, _prefixed(name, max(map(len, names))))
                  for name, defn in plans]
    except (ValueError, ApiError) as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return 130
    return netio.run(run_agents(agents, where))


def plan(name: str, table: dict):
    """(name, options) with every check the http command makes, named by section and key."""
    defn = tunnel_defs.define(name, table)
    try:
        local_target(defn)
        session_rules(defn, environ={})
    except ValueError as e:
        raise tunnel_defs.SectionError(name, tunnel_defs.option_key(str(e)), str(e)) from None
    if defn.server:
        try:
            parse_server(defn.server)
        except ValueError as e:
            raise tunnel_defs.SectionError(name, "server", str(e)) from None
    return name, defn


def agent_for(name: str, defn, cfg: config.ClientConfig, say) -> Agent:
    if not (defn.server or cfg.server):
        raise tunnel_defs.SectionError(name, "server", 'no server: set server = "https://example.com" in the '
                                                     "section, or at the top of the file for every section")
    try:
        target = resolve.resolve(defn, cfg)
    except (ValueError, ApiError) as e:
        raise tunnel_defs.SectionError(name, "", str(e)) from None
    if target.note:
        say(target.note)
    server, note = complete_server(target.server)
    if note:
        say(f"intunnel: {note}")
    host, port = local_target(defn)
    return Agent(server, target.token, port, upstream_host=host, host_header=defn.host_header,
                 insecure=defn.insecure, verbose=defn.verbose, say=say,
                 access=session_rules(defn, environ={}), upstream_given=bool(defn.upstream))


def _prefixed(name: str, width: int):
    def say(line: str) -> None:
        print(f"{name.ljust(width)} | {line}", flush=True)
    return say


async def run_agents(agents: list, where=None) -> int:
    """Until every agent gave up, or Ctrl-C/SIGTERM stops them all; the worst exit status.
    ``where``: their one inspector's address (cli.inspect_options), None for none."""
    loop = asyncio.get_running_loop()
    if not await open_inspector(where, agents):
        return 2
    tasks = [asyncio.ensure_future(agent.run()) for agent in agents]
    stopping = []

    def stop() -> None:
        stopping.append(True)
        for task in tasks:
            task.cancel()

    on_stop_signals(loop, stop)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    if agents and agents[0].inspector is not None:
        agents[0].inspector.close()
    if stopping:
        print("stopped", flush=True)
        return 0
    return max((r for r in results if isinstance(r, int)), default=1)
