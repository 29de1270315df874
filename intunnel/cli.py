"""`intunnel`: the user-facing command.  Parses arguments and hands over.

Each subcommand lives in its own module exposing ``HELP``, ``add_arguments(parser)``
and ``run(args) -> int``; this file only wires them together.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import ConfigError

COMMANDS = {
    # name: module
    "http": "intunnel.client.cli",
    "config": "intunnel.client.config_cli",
    "serve": "intunnel.embedded",
    "web": "intunnel.web.serve",
    "relay": "intunnel.relay.serve",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or with ``only`` just that subcommand's module imported
    (the client on a laptop should not load the web app's and database's libraries)."""
    parser = argparse.ArgumentParser(prog="intunnel", description="Expose a local port on your own domain.")
    parser.add_argument("--version", action="version", version=f"intunnel {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        if only is not None and name != only:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            continue  # not built yet
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--config FILE`` option every service command takes."""
    parser.add_argument("--config", metavar="FILE",
                        help="TOML config file (default: /etc/intunnel/intunnel.toml when present)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(only=argv[0] if argv and argv[0] in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return args.run(args) or 0
    except ConfigError as e:
        print(f"intunnel: config error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
