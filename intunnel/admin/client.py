"""`intunnel-admin client build [--out FILE]`: the client zipapp the web app serves at
/download/intunnel.pyz (clientzip.py), built into the data directory at install time."""

from __future__ import annotations

from .. import __version__, clientzip
from .common import AdminError, Context


def cmd_build(ctx: Context, args) -> int:
    try:
        if args.out:
            path, changed = args.out, clientzip.build(args.out)
        else:
            path, changed = clientzip.ensure(ctx.settings.data_dir, rebuild=True)
    except OSError as e:
        raise AdminError(f"cannot write the client zipapp: {e.strerror or e}") from None
    done = "wrote" if changed else "unchanged:"
    ctx.done(f"{done} the intunnel {__version__} client at {path} (served at {clientzip.URL_PATH})",
             {"path": str(path), "version": __version__, "changed": changed})
    return 0


def register(groups, common) -> None:
    p = groups.add_parser("client", help="the client zipapp this server serves",
                          description="The client zipapp this server serves at " + clientzip.URL_PATH + ".")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    b = sub.add_parser("build", parents=[common], help="build it into the data directory (or --out FILE)")
    b.add_argument("--out", metavar="FILE", help="write it to FILE instead")
    b.set_defaults(func=cmd_build)
