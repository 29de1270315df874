"""Business rules for custom domains, shared by the REST API and the dashboard.

The web app only records the wish: adding a hostname makes a ``custom_domain`` row in state
``pending-dns``; the reconciler (``intunnel.certs``) does DNS checks, ACME and nginx.  Removing
one deletes the row at once (the relay stops routing it within relay_custom_domain_refresh; the
reconciler removes its vhost and certificate on its next run).  Ownership as in ``tunnels``:
another user's tunnel is NotFound.  A hostname is unique across all users; which user holds
one is never said.
"""

from __future__ import annotations

from typing import Any

import peewee as pw

from .certs import names, plan
from .errors import Conflict, Forbidden, NotFound, ValidationError
from .models import CustomDomain, Tunnel, database, write_transaction
from .timeutil import iso


def list_for(tunnel: Tunnel) -> list[CustomDomain]:
    return list(CustomDomain.select().where(CustomDomain.tunnel == tunnel).order_by(CustomDomain.id))


def add(settings, tunnel: Tunnel, hostname: Any) -> CustomDomain:
    limit = settings.custom_domains_per_tunnel
    if limit <= 0:
        raise Forbidden("custom domains are turned off on this server (custom_domains_per_tunnel = 0)")
    if getattr(tunnel, "protocol", "http") != "http":
        raise ValidationError("custom domains are for HTTP tunnels", field="hostname")
    name = names.normalize(hostname, settings.domain)
    with write_transaction():
        if CustomDomain.select().where(CustomDomain.tunnel == tunnel).count() >= limit:
            raise Forbidden(f"this tunnel has {limit} custom domains already (custom_domains_per_tunnel)")
        try:
            with database.atomic():
                return CustomDomain.create(tunnel=tunnel, hostname=name)
        except pw.IntegrityError:
            raise Conflict(f"{name} is already in use") from None


def remove(tunnel: Tunnel, hostname: Any) -> None:
    name = hostname.strip().rstrip(".").lower() if isinstance(hostname, str) else ""
    gone = CustomDomain.delete().where((CustomDomain.tunnel == tunnel) & (CustomDomain.hostname == name)).execute()
    if not gone:
        raise NotFound("Custom domain not found")


def dns_records(settings, tunnel: Tunnel, hostname: str) -> list[dict[str, str]]:
    """The records the owner may create: a CNAME to the tunnel's own name (any name but a zone
    apex), or A/AAAA records to the server's addresses (custom_domain_addresses)."""
    records = [{"type": "CNAME", "name": hostname, "value": f"{tunnel.subdomain}.{settings.domain}"}]
    for address in settings.custom_domain_addresses:
        records.append({"type": "AAAA" if ":" in address else "A", "name": hostname, "value": address})
    return records


def view(settings, tunnel: Tunnel, row: CustomDomain) -> dict[str, Any]:
    return {
        "hostname": row.hostname,
        "status": plan.status_text(row.state, row.reason),
        "state": row.state,
        "reason": row.reason,
        "url": f"https://{row.hostname}{_port_suffix(settings)}",
        "dns": dns_records(settings, tunnel, row.hostname),
        "certificate_expires_at": iso(row.not_after),
        "next_attempt_at": iso(row.next_attempt_at),
        "checked_at": iso(row.checked_at),
        "created_at": iso(row.created_at),
    }


def _port_suffix(settings) -> str:
    return "" if settings.nginx_https_port == 443 else f":{settings.nginx_https_port}"


def active_routes() -> dict[str, str]:
    """{hostname: subdomain} of every ``active`` custom hostname: what the relay routes."""
    query = (CustomDomain.select(CustomDomain.hostname, Tunnel.subdomain).join(Tunnel)
             .where(CustomDomain.state == plan.ACTIVE).tuples())
    return dict(query)
