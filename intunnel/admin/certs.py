"""`intunnel-admin certs reconcile`: custom domains' certificates and nginx vhosts (intunnel.certs).

Run by the intunnel-certs timer (its own hardened unit: it writes only cert_dir, the vhost
directory, the challenge web root and its rows' status, and reloads nginx after nginx -t); by
hand, it does the same at once.  `certs list` shows every custom domain and its status.
"""

from __future__ import annotations

from .. import migrations
from ..certs import plan
from ..certs.reconcile import Reconciler
from ..models import CustomDomain, Tunnel
from ..timeutil import iso
from .common import Context


OUTCOMES = ("issued", "renewed", "failed", "waiting", "removed")


def cmd_reconcile(ctx: Context, args) -> int:
    # Never migrates: the timer fires every minute, and one that fired between the playbook
    # writing a new database_url and its `db migrate` made the schema itself (CI's deploy test).
    db = ctx.open_db(migrate=False)
    version = migrations.current_version(db)
    if version < migrations.LATEST:
        ctx.done(f"custom domains: nothing done, the schema is at version {version} of {migrations.LATEST} "
                 "(intunnel-admin db migrate)", {**{k: [] for k in OUTCOMES}, "schema_version": version})
        return 0   # the next run, after the migration, does the work
    report = Reconciler(ctx.settings).run()
    parts = [f"{len(getattr(report, k))} {k}" for k in OUTCOMES]
    ctx.done("custom domains: " + ", ".join(parts), {k: getattr(report, k) for k in OUTCOMES})
    return 0   # a name that failed is a status the dashboard shows, not this run's failure


def cmd_list(ctx: Context, args) -> int:
    ctx.open_db()
    rows = list(CustomDomain.select(CustomDomain, Tunnel.subdomain).join(Tunnel).order_by(CustomDomain.hostname))
    items = [{"hostname": r.hostname, "tunnel": r.tunnel.subdomain, "status": plan.status_text(r.state, r.reason),
              "certificate_expires_at": iso(r.not_after), "next_attempt_at": iso(r.next_attempt_at)} for r in rows]
    text = "\n".join(f"{i['hostname']}  -> {i['tunnel']}  {i['status']}" for i in items) or "no custom domains"
    ctx.done(text, {"domains": items})
    return 0


def register(groups, common) -> None:
    p = groups.add_parser("certs", help="custom domains: certificates and nginx vhosts",
                          description="Custom domains: DNS checks, ACME certificates (certbot) and nginx vhosts.")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    r = sub.add_parser("reconcile", parents=[common], help="bring certificates and vhosts in line with the database")
    r.set_defaults(func=cmd_reconcile)
    ls = sub.add_parser("list", parents=[common], help="every custom domain and its status")
    ls.set_defaults(func=cmd_list)
