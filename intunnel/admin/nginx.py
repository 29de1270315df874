"""`intunnel-admin nginx render [--out DIR]`: the nginx config for these settings."""

from __future__ import annotations

import importlib
from pathlib import Path

from .common import AdminError, Context
from .dbfiles import atomic_output


def load_renderer():
    try:
        return importlib.import_module("intunnel.nginxconf").render
    except ModuleNotFoundError as e:
        if e.name != "intunnel.nginxconf":
            raise
        raise AdminError("nginx templates are not part of this build (intunnel.nginxconf is missing)") from None


def cmd_render(ctx: Context, args) -> int:
    files = load_renderer()(ctx.settings)
    if not args.out:
        if ctx.json:
            ctx.emit_json({"files": files})
        else:
            ctx.out("\n".join(f"# ===== {name} =====\n{text.rstrip()}\n" for name, text in sorted(files.items())))
        return 0
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name, text in sorted(files.items()):
            with atomic_output(out / name, mode=0o644, owner=None) as f:
                f.write(text.encode("utf-8"))
            written.append(str(out / name))
    except OSError as e:
        raise AdminError(f"cannot write to {out}: {e.strerror or e}") from None
    ctx.done(f"wrote {len(written)} file(s) to {out}: " + ", ".join(sorted(files)) +
             "; check with 'nginx -t' and reload nginx", {"written": written})
    return 0


def register(groups, common) -> None:
    p = groups.add_parser("nginx", help="nginx configuration", description="nginx configuration.")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    r = sub.add_parser("render", parents=[common], help="print (or write) the nginx config for these settings")
    r.add_argument("--out", metavar="DIR", help="write the files into DIR (e.g. /etc/nginx/conf.d) instead of printing")
    r.set_defaults(func=cmd_render)
