"""`intunnel-admin`: the operator's command.  Parses arguments and hands over.

Each command group lives in its own module with ``register(groups, common)``;
commands are ``func(ctx, args) -> exit code``.  Exit codes: 0 ok, 1 failure,
2 usage or configuration error.  Every error is one line on stderr, never a
traceback (set INTUNNEL_ADMIN_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import traceback

import peewee as pw

from .. import __version__, dburl
from ..errors import AppError, ConfigError
from . import backup, certs, client, db, doctor, nginx, relays, restore, tokens, tunnels, users
from .common import EXIT_FAILURE, EXIT_USAGE, AdminError, Context

GROUPS = (users, tunnels, relays, tokens, db, backup, restore, nginx, client, certs, doctor)
PROG = "intunnel-admin"
COMMON_DEFAULTS = {"config": None, "json": False, "verbose": False}


def common_options() -> argparse.ArgumentParser:
    """Options every command takes, before or after the command name.

    SUPPRESS keeps a leaf parser from overwriting a value given earlier.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="TOML config file (default: /etc/intunnel/intunnel.toml when present)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="say what was done (backup is silent on success otherwise)")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = common_options()
    parser = argparse.ArgumentParser(prog=PROG, parents=[common],
                                     description="Operate an InTunnel server: users, tunnels, tokens, "
                                                 "database, backups, health.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    # Not set_defaults(json=False...): that would change the shared option
    # objects' defaults, and a leaf would then overwrite an earlier --json.
    parser.set_defaults(func=None)
    groups = parser.add_subparsers(dest="group", metavar="COMMAND")
    for module in GROUPS:
        module.register(groups, common)
    return parser


def describe_db_error(e: Exception) -> str:
    text = " ".join(str(e).split())  # libpq's messages span lines
    if "locked" in text or "busy" in text:
        return "database is locked: another process held a write lock too long; try again"
    if "unable to open" in text or "readonly" in text:
        return f"database error: {text} (check the path and its permissions; run as the service user)"
    return f"database error: {text}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors: argparse prints them and exits 2
    for name, default in COMMON_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, default)
    if args.func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    ctx = Context(args)
    try:
        return args.func(ctx, args) or 0
    except AdminError as e:
        return fail(str(e), e.exit_code)
    except ConfigError as e:
        return fail(f"config error: {e}", EXIT_USAGE)
    except AppError as e:  # validation, duplicates, last admin... from the business rules
        return fail(e.message, EXIT_FAILURE)
    except (pw.DatabaseError, sqlite3.DatabaseError) as e:
        if os.environ.get("INTUNNEL_ADMIN_DEBUG"):
            traceback.print_exc()
        return fail(dburl.scrub(describe_db_error(e), ctx.db), EXIT_FAILURE)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except BrokenPipeError:
        return EXIT_FAILURE
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        return fail(f"{e.strerror or e}{where}", EXIT_FAILURE)
    except Exception as e:  # a bug: still one line, the traceback only on request
        if os.environ.get("INTUNNEL_ADMIN_DEBUG"):
            traceback.print_exc()
        return fail(f"unexpected {type(e).__name__}: {e}", EXIT_FAILURE)
    finally:
        ctx.close()


def fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
