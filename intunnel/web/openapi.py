"""The OpenAPI 3 document of the REST API, served at ``/api/openapi.json``.

Written by hand next to the handlers; ``tests/web/test_openapi.py`` checks that
every route is documented and every documented route exists.
"""

from __future__ import annotations

from .. import __version__
from .auth import session_cookie_name


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict:
    return _json(_ref("Error"), description)


ERRORS = {
    "400": _error("VALIDATION_ERROR (the message names the field), SUBDOMAIN_TAKEN, or BAD_REQUEST "
                   "(malformed HTTP, e.g. a broken chunked body)"),
    "401": _error("UNAUTHORIZED: no valid session cookie or API token"),
    "403": _error("FORBIDDEN: e.g. a cross-site request"),
    "404": _error("NOT_FOUND: no such id, or it belongs to another user"),
    "409": _error("CONFLICT: e.g. a custom domain already in use"),
    "413": _error("PAYLOAD_TOO_LARGE"),
    "415": _error("UNSUPPORTED_MEDIA_TYPE: the body must be application/json"),
    "429": _error("RATE_LIMITED (see Retry-After)"),
}

ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}


def _op(summary: str, ok: dict, errors: tuple[str, ...] = ("401", "429"), body: dict | None = None,
        params: bool = False, public: bool = False) -> dict:
    op: dict = {"summary": summary, "responses": {"200": ok, **{c: ERRORS[c] for c in errors}}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params:
        op["parameters"] = [ID_PARAM]
    if public:
        op["security"] = []
    return op


def _obj(required: list[str], **props) -> dict:
    schema = {"type": "object", "additionalProperties": False, "properties": props}
    if required:  # OpenAPI 3.0: a present "required" lists at least one name
        schema["required"] = required
    return schema


STR = {"type": "string"}
INT = {"type": "integer"}
TIME = {"type": "string", "format": "date-time", "example": "2026-01-15T10:30:00Z"}
NULL_TIME = {**TIME, "nullable": True}
NAME = {"type": "string", "minLength": 1, "maxLength": 100}
PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
SUBDOMAIN = {"type": "string", "pattern": "^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"}
CIDR = {"type": "string", "description": "an IPv4 or IPv6 address or CIDR", "example": "203.0.113.0/24"}
BYPASS_PATH = {"type": "string", "pattern": "^/", "maxLength": 256, "example": "/webhooks/stripe",
               "description": "a path prefix: starts with /, no . or .. segments, //, ?, backslash, "
                              "percent-encoded . / backslash %, not / itself, not under /_intunnel/"}

_LOGIN = {"type": "object", "required": ["email", "password"], "additionalProperties": False, "properties": {
    "email": {"type": "string", "description": "email (or username)"}, "password": STR,
    "next": {"type": "string", "description": "local path a browser is redirected to"}}}

SCHEMAS = {
    "Error": {"type": "object", "required": ["error", "message", "code"], "properties": {
        "error": {"type": "boolean", "enum": [True]}, "message": STR,
        "code": {"type": "string", "enum": ["UNAUTHORIZED", "FORBIDDEN", "NOT_FOUND", "VALIDATION_ERROR",
                                            "SUBDOMAIN_TAKEN", "RATE_LIMITED", "METHOD_NOT_ALLOWED",
                                            "PAYLOAD_TOO_LARGE", "UNSUPPORTED_MEDIA_TYPE", "INTERNAL_ERROR",
                                            "AUTHORIZATION_PENDING", "SLOW_DOWN", "EXPIRED_TOKEN",
                                            "ACCESS_DENIED"]}}},
    "TunnelSummary": {"type": "object", "properties": {
        "id": INT, "name": STR, "subdomain": STR, "local_port": INT, "token": STR,
        "url": {"type": "string", "format": "uri", "description": "where visitors reach it"},
        "status": {"type": "string", "enum": ["active", "inactive"]},
        "created_at": TIME, "last_connected": NULL_TIME,
        "ephemeral": {"type": "boolean", "description": "made by `intunnel http` without a name: deleted when "
                      "its client stops (or relay_ephemeral_grace after its agent left)"},
        "protocol": {"type": "string", "enum": ["http", "tcp"], "description": "tcp: raw TCP at remote_port of "
                     "<domain> (url tcp://<domain>:<port>); its IP rules are its only access control"},
        "remote_port": {"type": "integer", "description": "a TCP tunnel's public port (relay_tcp_ports); "
                        "absent for HTTP tunnels"}}},
    "TunnelDetail": {"allOf": [_ref("TunnelSummary"), {"type": "object", "properties": {
        "domain": STR, "url": {"type": "string", "format": "uri"}, "access": _ref("Access"),
        "session_access": {"type": "object", "nullable": True, "description": "what the connected client added "
                           "for its session only (intunnel http --basic-auth, --allow-ip, --deny-ip): "
                           "user names and CIDRs, which narrow access (a visitor must pass both); "
                           "null when inactive or none", "properties": {
            "basic_auth": {"type": "array", "items": STR}, "ip_allow": {"type": "array", "items": CIDR},
            "ip_deny": {"type": "array", "items": CIDR}}},
        "traffic_view": {"type": "boolean", "description": "the relays keep its recent requests for the "
                         "dashboard (GET /api/tunnels/{id}/traffic); false: nothing is kept"},
        "command": {"type": "string", "description": "the client command that serves it (intunnel http|tcp "
                    "PORT --server URL --token TOKEN)"}}}]},
    "Access": {"type": "object", "description": "Who may visit the tunnel, enforced by the relay before "
               "a request reaches the client. Password hashes are never shown.", "properties": {
        "public": {"type": "boolean", "description": "true: no rule, anyone may visit (the default)"},
        "basic_auth": {"type": "array", "items": STR, "description": "user names of HTTP basic auth; "
                       "visitors without one of their passwords get 401"},
        "ip_allow": {"type": "array", "items": CIDR, "description": "visitor addresses admitted (empty: any); "
                     "others get 403"},
        "ip_deny": {"type": "array", "items": CIDR, "description": "visitor addresses refused with 403"},
        "members": {"allOf": [_ref("Members")], "nullable": True, "description": "members only: visitors "
                    "must log in to this InTunnel (null: off)"},
        "bypass_paths": {"type": "array", "items": BYPASS_PATH, "description": "path prefixes whose "
                         "requests skip the password and members checks (IP rules still apply)"}}},
    "Members": {"type": "object", "description": "Which logged-in accounts may open a members-only tunnel: "
                "the owner always; with neither users nor email_domains (and not owner_only) any enabled "
                "account.", "properties": {
        "owner_only": {"type": "boolean", "description": "only the tunnel's owner"},
        "users": {"type": "array", "items": STR, "description": "user names admitted (at most "
                  "access_max_members, a setting)"},
        "email_domains": {"type": "array", "items": STR, "description": "accounts whose email is at one of "
                          "these domains, exactly (at most access_max_members)"}}},
    "AccessUpdate": {"type": "object", "additionalProperties": False, "description":
                     "Each mode given replaces that mode; modes not given stay as they are. "
                     "{\"public\": true} (alone) clears every rule. Rules combine: IP rules first (403), "
                     "then members only (a login), then the password (401).", "properties": {
        "public": {"type": "boolean", "enum": [True]},
        "basic_auth": {"type": "array", "items": {"oneOf": [
            {"type": "string", "description": "user:password (the password is stored hashed)",
             "example": "alice:correct-horse"},
            {"type": "object", "additionalProperties": False, "required": ["username"], "properties": {
                "username": STR, "password": {"type": "string", "description": "omitted: keep the "
                                                                                "stored one"}}}]},
            "description": "the users, all of them: users not listed are removed (at most "
                           "access_max_users, a setting)"},
        "ip_allow": {"type": "array", "items": CIDR, "description": "at most access_max_cidrs (a setting)"},
        "ip_deny": {"type": "array", "items": CIDR, "description": "at most access_max_cidrs (a setting)"},
        "members": {"oneOf": [{"type": "boolean", "description": "true: any enabled account; false: off"},
                              {"allOf": [_ref("Members")], "additionalProperties": False}],
                    "nullable": True, "description": "members only (null or false: off)"},
        "bypass_paths": {"type": "array", "items": BYPASS_PATH, "description": "all of them ([]: none; at "
                         "most access_max_bypass_paths, a setting). A prefix matches on segment boundaries "
                         "(/webhooks/stripe covers /webhooks/stripe/x and /webhooks/stripe?x, not "
                         "/webhooks/stripe-admin); a request path with . or .. segments, //, a backslash "
                         "or %2e, %2f, %5c, %25 never bypasses"}}},
    "TunnelCreate": _obj(["name", "local_port"], name=NAME, subdomain=SUBDOMAIN, local_port=PORT,
                         ephemeral={"type": "boolean", "default": False, "description": "deleted when its "
                                    "client stops; at most ephemeral_max_per_user (a setting) at once"},
                         protocol={"type": "string", "enum": ["http", "tcp"], "default": "http",
                                   "description": "tcp: a TCP tunnel, given a port of relay_tcp_ports (403 when "
                                   "TCP is off or past tcp_max_per_user, 409 when the range is used up); "
                                   "subdomain is required for http only"},
                         remote_port={"type": "integer", "description": "tcp only: this port of relay_tcp_ports "
                                      "(400 outside it, 409 taken); default: the next free one"}),
    "TunnelUpdate": {**_obj([], name=NAME, local_port=PORT, access=_ref("AccessUpdate"), traffic_view={
        "type": "boolean", "description": "the dashboard's traffic view; false also deletes the requests kept"}),
        "minProperties": 1},
    "TrafficEntry": {"type": "object", "description": "One request through the tunnel, as the relay saw it: "
                     "never a header, a body or a query string", "properties": {
        "id": INT, "time": TIME, "method": STR, "path": {"type": "string", "description": "without the query string"},
        "status": INT, "duration_ms": INT, "request_bytes": INT, "response_bytes": INT,
        "visitor": {"type": "string", "description": "the visitor's address"}}},
    "CustomDomain": {"type": "object", "description": "A hostname of your own served by the tunnel over HTTPS",
                     "properties": {
        "hostname": STR,
        "status": {"type": "string", "description": "pending-dns, issuing, active or failed: <reason>"},
        "state": {"type": "string", "enum": ["pending-dns", "issuing", "active", "failed"]},
        "reason": {"type": "string", "description": "why it is not active yet, or why its last renewal failed"},
        "url": {"type": "string", "format": "uri"},
        "dns": {"type": "array", "description": "the records to create: the CNAME, or the A/AAAA records",
                "items": {"type": "object", "properties": {"type": STR, "name": STR, "value": STR}}},
        "certificate_expires_at": NULL_TIME, "next_attempt_at": NULL_TIME, "checked_at": NULL_TIME,
        "created_at": TIME}},
    "ApiToken": {"type": "object", "properties": {
        "id": INT, "name": STR, "prefix": STR, "created_at": TIME, "last_used_at": NULL_TIME}},
    "Profile": {"type": "object", "properties": {
        "id": INT, "username": STR, "email": STR, "tunnels_count": INT, "created_at": TIME}},
    "Success": {"type": "object", "properties": {"success": {"type": "boolean"}, "message": STR}},
    "DeviceCode": {"type": "object", "properties": {
        "device_code": {"type": "string", "description": "the client's secret for polling; never shown"},
        "user_code": {"type": "string", "pattern": "^[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}$",
                      "example": "BCDF-GHJK"},
        "verification_uri": {"type": "string", "format": "uri"},
        "verification_uri_complete": {"type": "string", "format": "uri", "description": "the page with the code filled in"},
        "expires_in": {"type": "integer", "description": "seconds (device_code_lifetime)"},
        "interval": {"type": "integer", "description": "seconds between polls (device_poll_interval)"}}},
    "DeviceToken": {"type": "object", "properties": {
        "token": {"type": "string", "description": "the personal API token (Authorization: Bearer), shown once"},
        "api_token": _ref("ApiToken"),
        "user": {"type": "object", "properties": {"id": INT, "username": STR, "email": STR}},
        "relay_url": {"type": "string", "format": "uri", "description": "what `intunnel http --server` connects to"},
        "web_url": {"type": "string", "format": "uri", "description": "the web app (this API)"}}},
}

_CSRF_TOKEN = {"type": "string", "description": "the session's form token, from the login answer"}


def _paths() -> dict:
    tunnel_ok = _json({"type": "object", "properties": {"success": {"type": "boolean"},
                                                          "tunnel": _ref("TunnelDetail")}}, "The tunnel")
    update = _op("Change a tunnel's name, local_port and/or access policy", tunnel_ok,
                 ("400", "401", "404", "413", "415", "429"), body=_ref("TunnelUpdate"), params=True)
    return {
        "/api/tunnels": {
            "get": _op("List your tunnels", _json({"type": "object", "properties": {
                "tunnels": {"type": "array", "items": _ref("TunnelSummary")}}}, "Your tunnels")),
            "post": _op("Create a tunnel", tunnel_ok, ("400", "401", "413", "415", "429"),
                        body=_ref("TunnelCreate")),
        },
        "/api/tunnels/{id}": {
            "get": _op("Get a tunnel's details", _json(_ref("TunnelDetail"), "The tunnel"),
                       ("401", "404", "429"), params=True),
            "patch": update,
            "put": {**update, "summary": "Same as PATCH"},
            "delete": _op("Delete a tunnel (its agent is disconnected)", _json(_ref("Success"), "Deleted"),
                          ("401", "404", "429"), params=True),
        },
        "/api/tunnels/{id}/traffic": {
            "get": {**_op("The tunnel's recent requests, newest first (at most traffic_rows_per_tunnel, a setting)",
                          _json({"type": "object", "properties": {
                              "traffic_view": {"type": "boolean"},
                              "entries": {"type": "array", "items": _ref("TrafficEntry")}}}, "Recent requests"),
                          ("400", "401", "404", "429")),
                    "parameters": [ID_PARAM, {"name": "after", "in": "query", "required": False,
                                              "description": "only entries with a greater id (incremental polling)",
                                              "schema": {"type": "integer", "minimum": 0}}]},
        },
        "/api/tunnels/{id}/domains": {
            "get": _op("The tunnel's custom domains and their status", _json({"type": "object", "properties": {
                "domains": {"type": "array", "items": _ref("CustomDomain")}}}, "Custom domains"),
                ("401", "404", "429"), params=True),
            "post": _op("Add a custom domain (HTTP tunnels): 409 CONFLICT when the hostname is in use, 403 past "
                        "custom_domains_per_tunnel; its certificate follows once its DNS points here",
                        _json({"type": "object", "properties": {"success": {"type": "boolean"},
                                                                "domain": _ref("CustomDomain")}}, "Added"),
                        ("400", "401", "403", "404", "409", "413", "415", "429"),
                        body=_obj(["hostname"], hostname={"type": "string", "example": "app.example.org"}),
                        params=True),
        },
        "/api/tunnels/{id}/domains/{hostname}": {
            "delete": {**_op("Remove a custom domain (its vhost and certificate go too)",
                             _json(_ref("Success"), "Removed"), ("401", "404", "429")),
                       "parameters": [ID_PARAM, {"name": "hostname", "in": "path", "required": True,
                                                 "schema": {"type": "string"}}]},
        },
        "/api/tunnels/{id}/regenerate-token": {
            "post": _op("Replace a tunnel's token (the old agent is disconnected)", _json(
                {"type": "object", "properties": {"success": {"type": "boolean"}, "token": STR}}, "New token"),
                ("401", "404", "429"), params=True),
        },
        "/api/user/profile": {"get": _op("Your account", _json(_ref("Profile"), "Your profile"))},
        "/api/tokens": {
            "get": _op("List your API tokens (never their secrets)", _json({"type": "object", "properties": {
                "tokens": {"type": "array", "items": _ref("ApiToken")}}}, "Your tokens")),
            "post": _op("Create an API token; the secret is in the response, once", _json(
                {"type": "object", "properties": {"success": {"type": "boolean"}, "token": STR,
                                                  "api_token": _ref("ApiToken")}}, "The new token"),
                ("400", "401", "413", "415", "429"), body=_obj(["name"], name=NAME)),
        },
        "/api/tokens/{id}": {
            "delete": _op("Revoke an API token", _json(_ref("Success"), "Revoked"),
                          ("401", "404", "429"), params=True),
        },
        "/api/device/code": {
            "post": _op("Start `intunnel login` (device authorization, RFC 8628): a device code for the client, "
                        "a user code for the person to approve on verification_uri (the dashboard's /device page); "
                        "429 past device_max_pending_per_address codes waiting from one address",
                        _json(_ref("DeviceCode"), "The codes"), ("400", "413", "415", "429"),
                        body=_obj(["client_name"], client_name={
                            "type": "string", "minLength": 1, "description": "the machine's name (its hostname), "
                            "at most device_max_client_name characters; the API token is named after it"}),
                        public=True),
        },
        "/api/device/token": {
            "post": _op("Poll for the approval every `interval` seconds: 400 AUTHORIZATION_PENDING until the "
                        "person approves, SLOW_DOWN when polled too soon (wait 5 s longer from then on), "
                        "EXPIRED_TOKEN once the code expired or was redeemed, 403 ACCESS_DENIED when denied; "
                        "once approved, the API token's secret, once",
                        _json(_ref("DeviceToken"), "Approved: the new API token"), ("400", "403", "413", "415",
                                                                                     "429"),
                        body=_obj(["device_code"], device_code=STR), public=True),
        },
        "/login": {
            "post": {**_op("Log in; sets the session cookie (a browser is redirected)", _json(
                {"type": "object", "properties": {"success": {"type": "boolean"}, "user": {"type": "object"},
                                                  "csrf_token": _CSRF_TOKEN}},
                "Logged in"), ("400", "401", "403", "415", "429"), public=True),
                "requestBody": {"required": True, "content": {
                    "application/x-www-form-urlencoded": {"schema": _LOGIN},
                    "application/json": {"schema": _LOGIN}}}},
        },
        "/logout": {
            "post": {**_op("End the session (403 without its csrf_token)", _json(_ref("Success"), "Logged out"),
                           ("403",), public=True),
                     "requestBody": {"content": {"application/x-www-form-urlencoded": {"schema": {
                         "type": "object", "properties": {"csrf_token": _CSRF_TOKEN}}}}}},
        },
        "/healthz": {
            "get": _op("Liveness", _json({"type": "object", "properties": {"status": {"type": "string"}}}, "ok"),
                       (), public=True),
        },
        "/api/openapi.json": {
            "get": _op("This document", _json({"type": "object"}, "OpenAPI 3 document"), ("429",), public=True),
        },
    }


def document(settings) -> dict:
    return {
        "openapi": "3.0.3",
        "info": {"title": "InTunnel API", "version": __version__,
                 "description": "Manage tunnels and API tokens. Authenticate with the session cookie "
                                "from POST /login or with `Authorization: Bearer <API token>`. "
                                "Rate limits are reported in X-RateLimit-Limit/-Remaining/-Reset."},
        "servers": [{"url": "/"}],  # the web app's own origin, whatever proxy is in front
        "security": [{"session": []}, {"bearer": []}],
        "components": {
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": session_cookie_name(settings)},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
            "schemas": SCHEMAS,
        },
        "paths": _paths(),
    }
