"""`intunnel`: the user-facing command.  Parses arguments and hands over.

Each subcommand lives in its own module exposing ``HELP``, ``add_arguments(parser)``
and ``run(args) -> int``; this file only wires them together.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from . import __version__
from .errors import ConfigError

COMMANDS = {
    # name: module
    "http": "intunnel.client.cli",
    "tcp": "intunnel.client.tcp_cli",
    "config": "intunnel.client.config_cli",
    "tunnels": "intunnel.client.tunnels_cli",
    "start": "intunnel.client.start_cli",
    "login": "intunnel.client.login_cli:login",    # module:attribute when one module has two commands
    "logout": "intunnel.client.login_cli:logout",
    "serve": "intunnel.embedded",
    "web": "intunnel.web.serve",
    "relay": "intunnel.relay.serve",
}
# The appliance's commands: their libraries come with `pip install 'intunnel[server]'` (and they
# need Python 3.11); a client-only install lists them and says so instead of a traceback.
SERVER_COMMANDS = ("serve", "web", "relay")
SERVER_PYTHON = (3, 11)
SERVER_LIBRARIES = ("bottle", "cheroot", "waitress", "peewee", "passlib", "argon2", "jinja2", "prometheus_client")


def server_parts_missing() -> str | None:
    """What the appliance's commands need that this install lacks (a sentence's end), or None."""
    if sys.version_info < SERVER_PYTHON:
        return f"Python {'.'.join(map(str, SERVER_PYTHON))} or newer (this is " \
               f"{sys.version_info[0]}.{sys.version_info[1]}, which runs the client only)"
    # find_spec only looks: `intunnel --help` on a laptop must not load a web framework
    if any(importlib.util.find_spec(name) is None for name in SERVER_LIBRARIES):
        return "the server parts: pip install 'intunnel[server]'"
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or with ``only`` just that subcommand's module imported
    (the client on a laptop should not load the web app's and database's libraries)."""
    parser = argparse.ArgumentParser(prog="intunnel", description="Expose a local port on your own domain.")
    parser.add_argument("--version", action="version", version=f"intunnel {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        if only is not None and name != only:
            continue
        why = server_parts_missing() if name in SERVER_COMMANDS else None
        if why is not None:     # listed; main() says what it needs
            sub.add_parser(name, help=f"server only: needs {why}", add_help=False)
            continue
        module_name, _, attribute = module_name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            continue  # not built yet
        if attribute:
            module = getattr(module, attribute)
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
    why = server_parts_missing() if argv and argv[0] in SERVER_COMMANDS else None
    if why is not None:     # `intunnel serve --help` too: one line, not a traceback
        print(f"intunnel {argv[0]} needs {why}", file=sys.stderr)
        return 2
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


def admin_main() -> int:
    """`intunnel-admin`, or one line saying what it needs in a client-only install."""
    why = server_parts_missing()
    if why is not None:
        print(f"intunnel-admin needs {why}", file=sys.stderr)
        return 2
    from .admin.cli import main as admin
    return admin()


if __name__ == "__main__":
    sys.exit(main())
