"""Business rules for tunnels, shared by the REST API, the dashboard and the admin CLI.

Every function takes the acting user and enforces ownership: another user's
tunnel is NotFound, exactly like a missing one (no existence leak).
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timezone
from typing import Any

import peewee as pw

from . import access, changes, tcpports, traffic, validation
from .changes import tunnel_changed
from .errors import Conflict, Forbidden, NotFound, SubdomainTaken, ValidationError
from .models import Tunnel, User, database
from .security import hash_password, new_tunnel_token
from .timeutil import iso, utcnow


def parse_id(value: Any) -> int:
    """A path id: a positive decimal integer, or NotFound (never a 500)."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        n = int(value)
    else:
        raise NotFound("Tunnel not found")
    if n <= 0:
        raise NotFound("Tunnel not found")
    return n


def list_for(user: User) -> list[Tunnel]:
    return list(Tunnel.select().where(Tunnel.owner == user).order_by(Tunnel.id))


def get_owned(user: User, tunnel_id: Any) -> Tunnel:
    tunnel = Tunnel.get_or_none((Tunnel.id == parse_id(tunnel_id)) & (Tunnel.owner == user))
    if tunnel is None:
        raise NotFound("Tunnel not found")
    return tunnel


PROTOCOLS = ("http", "tcp")
PORT_TRIES = 5   # a lost race for the lowest free TCP port (the UNIQUE index said so): the next one


def create(settings, user: User, name: Any, subdomain: Any, local_port: Any, ephemeral: Any = False,
           protocol: Any = "http", remote_port: Any = None) -> Tunnel:
    """``ephemeral``: `intunnel http` without a name; its client deletes it when it stops, the
    relays' reaper (intunnel.ephemeral) when the client died.  At most ephemeral_max_per_user.
    ``protocol`` "tcp": a TCP tunnel, given a public port of relay_tcp_ports (``remote_port``
    if asked for and free; intunnel.tcpports) and a subdomain of its own if none is given (the
    relay's name for its session; HTTP visitors are never sent to it)."""
    if protocol not in PROTOCOLS:
        raise ValidationError("protocol must be \"http\" or \"tcp\"", field="protocol")
    if protocol == "tcp":
        return _create_tcp(settings, user, name, subdomain, local_port, remote_port)
    if remote_port is not None:
        raise ValidationError("remote_port is for TCP tunnels (\"protocol\": \"tcp\")", field="remote_port")
    if subdomain is None:
        raise ValidationError("subdomain is required", field="subdomain")
    name = validation.name(name)
    subdomain = validation.subdomain(subdomain, validation.reserved_subdomains(settings))
    local_port = validation.local_port(local_port)
    if not isinstance(ephemeral, bool):
        raise ValidationError("ephemeral must be true or false", field="ephemeral")
    if ephemeral:
        limit = settings.ephemeral_max_per_user
        # A soft limit (two creates at once may both pass): it bounds leftovers, it is no quota.
        if Tunnel.select().where((Tunnel.owner == user) & Tunnel.ephemeral).count() >= limit:
            raise Forbidden(f"you have {limit} ephemeral tunnels already (ephemeral_max_per_user): "
                            "stop one of their clients, or delete one, and try again")
    try:
        # The UNIQUE index decides: two concurrent creates can't both win.
        with database.atomic():
            return Tunnel.create(owner=user, name=name, subdomain=subdomain, local_port=local_port,
                                 token=new_tunnel_token(), created_at=utcnow(), ephemeral=ephemeral)
    except pw.IntegrityError:
        raise SubdomainTaken(f"Subdomain '{subdomain}' is already in use") from None


def _create_tcp(settings, user: User, name: Any, subdomain: Any, local_port: Any, remote_port: Any) -> Tunnel:
    name = validation.name(name)
    local_port = validation.local_port(local_port)
    ranges = tcpports.parse_ranges(settings.relay_tcp_ports)
    if not ranges:
        raise Forbidden("TCP tunnels are disabled on this server (the operator's relay_tcp_ports setting is empty)")
    limit = settings.tcp_max_per_user
    if Tunnel.select().where((Tunnel.owner == user) & (Tunnel.protocol == "tcp")).count() >= limit:
        raise Forbidden(f"you have {limit} TCP tunnels already (tcp_max_per_user): delete one and try again")
    chosen = None if subdomain is None else validation.subdomain(subdomain, validation.reserved_subdomains(settings))
    for _ in range(PORT_TRIES):
        taken = {port for (port,) in Tunnel.select(Tunnel.remote_port).where(Tunnel.remote_port.is_null(False))
                 .tuples()}
        try:
            port = tcpports.allocate(ranges, taken, remote_port)
        except tcpports.PortError as e:
            if e.kind in ("invalid", "outside"):
                raise ValidationError(e.message, field="remote_port") from None
            raise Conflict(e.message) from None
        label = chosen or f"tcp-{secrets.token_hex(4)}"
        try:
            # The UNIQUE indexes decide (subdomain, remote_port): two creates can't both win.
            with database.atomic():
                return Tunnel.create(owner=user, name=name, subdomain=label, local_port=local_port,
                                     token=new_tunnel_token(), created_at=utcnow(), protocol="tcp",
                                     remote_port=port)
        except pw.IntegrityError:
            if Tunnel.select().where(Tunnel.subdomain == label).exists():
                if chosen:
                    raise SubdomainTaken(f"Subdomain '{label}' is already in use") from None
                continue
            if remote_port is not None:
                raise Conflict(f"remote_port {port} is already used by another tunnel") from None
    raise Conflict("could not reserve a TCP port (other tunnels took each one tried); try again")


def client_command(settings, tunnel: Tunnel) -> str:
    """The exact command that serves ``tunnel`` from the owner's machine."""
    kind = "tcp" if tunnel.protocol == "tcp" else "http"
    return (f"{settings.client_command} {kind} {tunnel.local_port} --server {settings.relay_url} "
            f"--token {tunnel.token}")


def update(user: User, tunnel_id: Any, changes: dict[str, Any], settings=None) -> Tunnel:
    """Rename, change the port and/or the access policy (``access``: needs ``settings``, its limits)."""
    tunnel = get_owned(user, tunnel_id)
    allowed = {"name", "local_port", "traffic_view"} | ({"access"} if settings is not None else set())
    unknown = sorted(set(changes) - allowed)
    if unknown:
        raise ValidationError(f"{unknown[0]} cannot be changed", field=unknown[0])
    if not changes:
        raise ValidationError("nothing to change: give name, local_port, access or traffic_view", field="name")
    if "name" in changes:
        tunnel.name = validation.name(changes["name"])
    if "local_port" in changes:
        tunnel.local_port = validation.local_port(changes["local_port"])
    if "traffic_view" in changes:
        on = changes["traffic_view"]
        if not isinstance(on, bool):
            raise ValidationError("traffic_view must be true or false", field="traffic_view")
        with database.atomic():
            tunnel.traffic_view = on
            tunnel.save()
            if not on:
                traffic.clear(tunnel.id)   # what was kept goes too (the relays write no more: intunnel.traffic)
            tunnel_changed(tunnel.id)   # the relays holding it stop recording at once
    if "access" in changes:
        set_access(settings, tunnel, changes["access"])  # saves (with the rest) and tells the relay
    else:
        tunnel.save()
    return tunnel


def policy_of(tunnel: Tunnel) -> access.Policy:
    """The tunnel's stored policy (one this version can't read shows as the error it is)."""
    return access.load(tunnel.access)


def set_access(settings, tunnel: Tunnel, data: Any) -> access.Policy:
    """Apply the API's ``access`` object to ``tunnel`` (no ownership check: callers do it) and
    tell the relays, which apply it to the next request of every visitor."""
    try:
        current = policy_of(tunnel)
    except access.PolicyError:
        current = access.PUBLIC  # unreadable: only a full replacement (or public) is accepted
    policy = access.apply_update(current, data, access.limits_of(settings), hash_password,
                                 user_exists=lambda name: User.select().where(User.username == name).exists())
    if tunnel.protocol == "tcp" and (policy.users or policy.members is not None):
        raise ValidationError("a TCP tunnel can have IP rules only (ip_allow, ip_deny): passwords and "
                              "members-only need HTTP, which a TCP tunnel does not speak", field="access")
    with database.atomic():
        tunnel.access = access.dump(policy)
        tunnel.save()
        changes.tunnel_changed(tunnel.id)
    return policy


def regenerate_token(user: User, tunnel_id: Any) -> Tunnel:
    """New token; the relay notices the change and cuts the old agent session."""
    tunnel = get_owned(user, tunnel_id)
    with database.atomic():
        tunnel.token = new_tunnel_token()
        tunnel.save()
        changes.tunnel_changed(tunnel.id)
    return tunnel


def delete(user: User, tunnel_id: Any) -> None:
    delete_row(get_owned(user, tunnel_id))


def delete_row(tunnel: Tunnel) -> None:
    """Delete ``tunnel`` (no ownership check: the admin CLI's); the relay cuts its agent."""
    with database.atomic():
        tunnel.delete_instance()
        changes.tunnel_changed(tunnel.id)


def summary(tunnel: Tunnel) -> dict[str, Any]:
    """The seed's list item."""
    return {
        "id": tunnel.id,
        "name": tunnel.name,
        "subdomain": tunnel.subdomain,
        "local_port": tunnel.local_port,
        "token": tunnel.token,
        "status": tunnel.status,
        "created_at": iso(tunnel.created_at),
        "last_connected": iso(tunnel.last_connected),
        "ephemeral": bool(tunnel.ephemeral),  # an addition to the seed's shape
        **protocol_fields(tunnel.protocol, tunnel.remote_port),
    }


def protocol_fields(protocol: str | None, remote_port: int | None) -> dict[str, Any]:
    """Additions to the seed's shapes: ``protocol``, and a TCP tunnel's ``remote_port``."""
    if protocol == "tcp":
        return {"protocol": "tcp", "remote_port": remote_port}
    return {"protocol": "http"}


def detail(settings, tunnel: Tunnel) -> dict[str, Any]:
    """The seed's details object: summary plus domain and the URL that reaches it."""
    return {
        **summary(tunnel),
        "domain": settings.domain,
        "url": public_url(settings, tunnel.subdomain, tunnel.protocol, tunnel.remote_port),
        "command": client_command(settings, tunnel),   # an addition: what the owner runs
        "access": access_view(tunnel),
        "session_access": session_view(tunnel),
        "traffic_view": bool(tunnel.traffic_view),
    }


def public_url(settings, subdomain: str, protocol: str | None, remote_port: int | None) -> str:
    """What reaches the tunnel: https://<sub>.<domain>, or tcp://<domain>:<port> for a TCP tunnel."""
    if protocol == "tcp":
        return settings.tcp_url(remote_port)
    return settings.tunnel_url(subdomain)


def session_view(tunnel: Tunnel) -> dict[str, Any] | None:
    """What the live agent session added to the policy for itself (``intunnel http --basic-auth``,
    ``--allow-ip``, ``--deny-ip``; intunnel.session_access), as its relay wrote it: user names and
    CIDRs, never a password.  None when the tunnel is inactive or its session added nothing."""
    if tunnel.status != "active" or not tunnel.session_access:
        return None
    try:
        shown = json.loads(tunnel.session_access)
    except ValueError:
        return None
    return shown if isinstance(shown, dict) else None


def access_view(tunnel: Tunnel) -> dict[str, Any]:
    """The policy without secrets: user names, never password hashes."""
    try:
        return access.public_view(policy_of(tunnel))
    except access.PolicyError as e:
        return {**access.public_view(access.PUBLIC), "public": False, "error": str(e)}


def request_disconnect(tunnel: Tunnel) -> datetime:
    """Ask the relay to cut the tunnel's live agent session (notified, or it polls for this).

    Stored with microseconds so a request is later than a session that started
    earlier in the same second.
    """
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    with database.atomic():
        Tunnel.update(disconnect_requested_at=now).where(Tunnel.id == tunnel.id).execute()
        changes.tunnel_changed(tunnel.id)
    tunnel.disconnect_requested_at = now
    return now


def request_disconnect_all(user: User) -> int:
    """The same for every tunnel of ``user``; returns how many."""
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    with database.atomic():
        count = Tunnel.update(disconnect_requested_at=now).where(Tunnel.owner == user).execute()
        changes.user_changed(user.id)
    return count
