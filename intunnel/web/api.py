"""The REST API of the seed (``/api/tunnels``, ``/api/user/profile``) plus
``PATCH``/``PUT /api/tunnels/<id>``, ``/api/tokens`` and ``/api/openapi.json``.

Handlers only read the request, call the business rules (``tunnels``,
``apitokens``) and shape the seed's envelopes; authentication, rate limits and
error rendering happen around them (see ``app``).  Successful creates answer 200
with the seed's bodies.
"""

from __future__ import annotations

import bottle
import peewee as pw

from .. import apitokens, domains, traffic, tunnels
from ..errors import ValidationError
from ..models import Tunnel, database
from ..timeutil import iso
from . import device_api, jsonbody, openapi
from ..sqlcache import cached_sql
from .auth import require_user
from .state import current as current_state

TUNNEL_FIELDS = ("name", "subdomain", "local_port")
TUNNEL_CHANGEABLE = ("name", "local_port", "access", "traffic_view")


def _body(required=(), optional=()) -> dict:
    data = jsonbody.read_object(current_state().settings.api_max_body)
    jsonbody.check_fields(data, required, optional)
    return data


# GET /api/tunnels is what the dashboard polls: read the columns as plain rows
# (no model instances, no datetime round trip) -- the same dicts as
# tunnels.summary(), which a test checks.
_SUMMARY_COLUMNS = (Tunnel.id, Tunnel.name, Tunnel.subdomain, Tunnel.local_port, Tunnel.token,
                    Tunnel.status, Tunnel.created_at, Tunnel.last_connected, Tunnel.ephemeral, Tunnel.protocol,
                    Tunnel.remote_port)
_SUMMARY_KEYS = ("id", "name", "subdomain", "local_port", "token", "status", "created_at", "last_connected",
                 "ephemeral", "protocol", "remote_port")


def _iso_column(value):
    """A stored DateTimeField value as ISO 8601 with Z (SQLite gives text, others datetimes)."""
    if value is None or not isinstance(value, str):
        return iso(value)
    return value[:19].replace(" ", "T") + "Z"


def tunnel_summaries(user) -> list[dict]:
    sql = cached_sql("tunnel summaries", lambda: Tunnel.select(*_SUMMARY_COLUMNS)
                     .where(Tunnel.owner == user.id).order_by(Tunnel.id), [user.id])
    rows = []
    for row in database.execute_sql(sql, (user.id,)):
        item = dict(zip(_SUMMARY_KEYS, row))
        item["created_at"] = _iso_column(item["created_at"])
        item["last_connected"] = _iso_column(item["last_connected"])
        item["ephemeral"] = bool(item["ephemeral"])  # SQLite gives 0/1
        item.update(tunnels.protocol_fields(item.pop("protocol"), item.pop("remote_port")))
        rows.append(item)
    return rows


def list_tunnels():
    user = require_user()
    settings = current_state().settings
    # "url" is an addition to the seed's list item: `intunnel tunnels` shows it without a call per tunnel
    return {"tunnels": [{**t, "url": tunnels.public_url(settings, t["subdomain"], t["protocol"], t.get("remote_port"))}
                        for t in tunnel_summaries(user)]}


def create_tunnel():
    user = require_user()
    # A TCP tunnel ("protocol": "tcp") may leave out its subdomain and ask for a "remote_port".
    data = _body(optional=TUNNEL_FIELDS + ("ephemeral", "protocol", "remote_port"))
    tcp = data.get("protocol") == "tcp"
    jsonbody.check_fields(data, [f for f in TUNNEL_FIELDS if f != "subdomain" or not tcp], data)
    tunnel = tunnels.create(current_state().settings, user, data["name"], data.get("subdomain"), data["local_port"],
                            data.get("ephemeral", False), data.get("protocol", "http"), data.get("remote_port"))
    return {"success": True, "tunnel": tunnels.detail(current_state().settings, tunnel)}


def get_tunnel(id):
    user = require_user()
    return tunnels.detail(current_state().settings, tunnels.get_owned(user, id))


def update_tunnel(id):
    user = require_user()
    tunnels.get_owned(user, id)  # 404 before looking at the body
    data = _body(optional=TUNNEL_CHANGEABLE + ("subdomain",))
    tunnel = tunnels.update(user, id, data, current_state().settings)
    return {"success": True, "tunnel": tunnels.detail(current_state().settings, tunnel)}


def tunnel_traffic(id):
    user = require_user()
    tunnel = tunnels.get_owned(user, id)
    after = bottle.request.query.get("after", "0")
    if not after.isdigit() or len(after) > 18:
        raise ValidationError("after must be an entry id (a whole number)", field="after")
    limit = current_state().settings.traffic_rows_per_tunnel
    return {"traffic_view": bool(tunnel.traffic_view), "entries": traffic.recent(tunnel.id, int(after), limit)}


def list_domains(id):
    user = require_user()
    tunnel = tunnels.get_owned(user, id)
    settings = current_state().settings
    return {"domains": [domains.view(settings, tunnel, row) for row in domains.list_for(tunnel)]}


def add_domain(id):
    user = require_user()
    tunnel = tunnels.get_owned(user, id)  # 404 before looking at the body
    data = _body(required=("hostname",))
    settings = current_state().settings
    row = domains.add(settings, tunnel, data["hostname"])
    return {"success": True, "domain": domains.view(settings, tunnel, row)}


def remove_domain(id, hostname):
    user = require_user()
    domains.remove(tunnels.get_owned(user, id), hostname)
    return {"success": True, "message": "Custom domain removed"}


def delete_tunnel(id):
    user = require_user()
    tunnels.delete(user, id)
    return {"success": True, "message": "Tunnel deleted"}


def regenerate_token(id):
    user = require_user()
    tunnel = tunnels.regenerate_token(user, id)
    return {"success": True, "token": tunnel.token}


def tunnels_count(user) -> int:
    sql = cached_sql("tunnels count", lambda: Tunnel.select(pw.fn.COUNT(Tunnel.id))
                     .where(Tunnel.owner == user.id), [user.id])
    return database.execute_sql(sql, (user.id,)).fetchone()[0]


def profile():
    user = require_user()
    return {
        "id": user.id,
        "username": user.username,
        "email": user.email,
        "tunnels_count": tunnels_count(user),
        "created_at": iso(user.created_at),
    }


def list_tokens():
    user = require_user()
    return {"tokens": [apitokens.summary(t) for t in apitokens.list_for(user)]}


def create_token():
    user = require_user()
    data = _body(required=("name",))
    row, secret = apitokens.create(user, data["name"])
    return {"success": True, "token": secret, "api_token": apitokens.summary(row)}


def revoke_token(id):
    user = require_user()
    apitokens.revoke(user, id)
    return {"success": True, "message": "Token revoked"}


def openapi_document():
    return openapi.document(current_state().settings)


# (method, rule, handler): the single list the OpenAPI test compares with the document.
ROUTES = (
    ("GET", "/api/tunnels", list_tunnels),
    ("POST", "/api/tunnels", create_tunnel),
    ("GET", "/api/tunnels/<id>", get_tunnel),
    ("PATCH", "/api/tunnels/<id>", update_tunnel),
    ("PUT", "/api/tunnels/<id>", update_tunnel),
    ("DELETE", "/api/tunnels/<id>", delete_tunnel),
    ("POST", "/api/tunnels/<id>/regenerate-token", regenerate_token),
    ("GET", "/api/tunnels/<id>/traffic", tunnel_traffic),
    ("GET", "/api/tunnels/<id>/domains", list_domains),
    ("POST", "/api/tunnels/<id>/domains", add_domain),
    ("DELETE", "/api/tunnels/<id>/domains/<hostname>", remove_domain),
    ("GET", "/api/user/profile", profile),
    ("GET", "/api/tokens", list_tokens),
    ("POST", "/api/tokens", create_token),
    ("DELETE", "/api/tokens/<id>", revoke_token),
    ("POST", "/api/device/code", device_api.request_code),
    ("POST", "/api/device/token", device_api.redeem_code),
    ("GET", "/api/openapi.json", openapi_document),
)


def install(app: bottle.Bottle, settings) -> None:
    for method, rule, handler in ROUTES:
        app.route(rule, method, handler)
