"""Which tunnel a client serves, and with which token: from the options, the saved config and,
with a login (``intunnel login``), the web app's API.

The order (the README's "Which tunnel" says the same):

1. ``--token TOKEN``: that tunnel, nothing looked up.
2. A token saved for the server (``intunnel config add-token``): the one for ``--name NAME``,
   or without ``--name`` the only one saved (several: choose with ``--name``).  No login needed.
3. With a login for the server: ``--name NAME`` is the user's tunnel of that subdomain (or of
   that name, when one tunnel has it), its token fetched through the API; one that doesn't exist
   is created by ``--create`` (name = subdomain = NAME, local port = PORT), otherwise an error
   lists the user's tunnels.  Without ``--name``: a new *ephemeral* tunnel with a random free
   subdomain, which the caller deletes when it stops (``Target.ephemeral_id``).

``ValueError`` says what to type when none of these applies; ``ApiError`` is the API's own
answer (its message is one line for the user).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Callable, Optional

from . import config
from .address import complete_server
from .api import Api, ApiError

EPHEMERAL_TRIES = 8  # random subdomains tried before giving up (each taken one is a new draw)
_CONSONANTS = "bdfghjklmnprstvz"
_VOWELS = "aeiou"


@dataclass
class Target:
    server: str
    token: str
    name: str = ""                       # the tunnel's subdomain, when known
    local_port: Optional[int] = None     # its stored local port, when looked up
    ephemeral_id: Optional[int] = None   # an ephemeral tunnel: delete it through ``api`` at the end
    api: Optional[Api] = None
    note: str = ""                       # a line to show before connecting


def random_word(choice: Callable[[str], str] = secrets.choice) -> str:
    """Three consonant-vowel syllables ("tazomi"): short, sayable, 512,000 of them."""
    return "".join(choice(_CONSONANTS) + choice(_VOWELS) for _ in range(3))


def find_tunnel(tunnels: list, name: str) -> Optional[dict]:
    """The tunnel whose subdomain is ``name``, else the one tunnel named ``name``; ValueError
    when several share that name."""
    wanted = name.strip().lower()
    for t in tunnels:
        if str(t.get("subdomain", "")).lower() == wanted:
            return t
    named = [t for t in tunnels if t.get("name") == name]
    if len(named) > 1:
        raise ValueError(f"{len(named)} of your tunnels are named {name!r} "
                         f"(subdomains {', '.join(sorted(t['subdomain'] for t in named))}): "
                         "give --name SUBDOMAIN")
    return named[0] if named else None


def resolve(args, cfg: config.ClientConfig, make_api=Api) -> Target:
    """``args``: ``server``, ``token``, ``name``, ``create``, ``port``, ``insecure`` (the http
    command's options, or a ``[tunnels.NAME]`` section's)."""
    server = args.server or cfg.server
    if not server:
        raise ValueError("give --server URL: log in once with `intunnel login --server URL`, or give "
                         "--token TOKEN, or save a token with "
                         "`intunnel config add-token TOKEN --server URL --name NAME`")
    if args.token:
        return Target(server, args.token, args.name or "")
    server, entry = find_entry(cfg, server)
    tokens = entry.tokens if entry else {}
    login = entry.login if entry else None
    name = args.name
    if name and name in tokens:
        return Target(server, tokens[name], name)
    if not name and len(tokens) == 1:
        return Target(server, next(iter(tokens.values())), next(iter(tokens)))
    if not name and len(tokens) > 1:
        raise ValueError(f"{len(tokens)} tunnels are saved for {server} ({', '.join(sorted(tokens))}): "
                         "choose one with --name NAME")
    if login is None:
        if name:
            raise ValueError(f"no token saved for tunnel {name!r} on {server}, and no login: "
                             f"`intunnel login --server {server}` (then --name finds it), or "
                             f"`intunnel config add-token TOKEN --server {server} --name {name}`")
        raise ValueError(f"no tunnel token saved for {server}, and no login: `intunnel login --server "
                         f"{server}` (then `intunnel http PORT` opens a tunnel), or give --token TOKEN")
    api = login_api(server, login, getattr(args, "insecure", False), make_api)
    try:
        if name:
            return _by_name(server, api, name, getattr(args, "create", False), getattr(args, "port", None))
        return _ephemeral(server, api, getattr(args, "port", None))
    except ApiError as e:
        raise _relogin(server, e) from None


def _relogin(server: str, e: ApiError) -> Exception:
    """A login the server no longer accepts (revoked, user disabled) says to log in again."""
    if e.status != 401:
        return e
    return ValueError(f"the login for {server} is no longer valid ({e}): `intunnel login --server {server}` again")


def find_entry(cfg: config.ClientConfig, server: str):
    """(server, its saved entry or None).  A URL that is not a saved relay but the web app of a
    login (the dashboard's address, typed as --server) is that login's relay."""
    key = config.server_key(complete_server(server)[0])
    entry = cfg.find(key)
    if entry is None:
        for relay, other in sorted(cfg.servers.items()):
            if other.login and config.server_key(other.login.web or "") == key:
                return relay, other
    return server, entry


def login_api(server: str, login: config.Login, insecure: bool = False, make_api=Api) -> Api:
    """The web app's API as the logged-in user (at the login's web URL: the relay may be elsewhere)."""
    return make_api(login.web or complete_server(server)[0], login.token, insecure=insecure)


def list_tunnels(server: str, api: Api) -> list:
    """The user's tunnels; a login the server no longer accepts (revoked, user disabled) is a
    ValueError saying to log in again."""
    try:
        return api.get("/api/tunnels").get("tunnels") or []
    except ApiError as e:
        raise _relogin(server, e) from None


def _by_name(server: str, api: Api, name: str, create: bool, port: Optional[int]) -> Target:
    tunnels = list_tunnels(server, api)
    found = find_tunnel(tunnels, name)
    if found is not None:
        return Target(server, found["token"], found["subdomain"], found.get("local_port"), api=api)
    if not create:
        mine = ", ".join(sorted(t["subdomain"] for t in tunnels)) or "none yet"
        raise ValueError(f"you have no tunnel {name!r} on {server} (yours: {mine}); add --create to create "
                         f"it (subdomain {name.lower()}, local port {port or 'PORT'})")
    if port is None:
        raise ValueError(f"--create needs the local PORT the new tunnel {name!r} leads to")
    made = api.post("/api/tunnels", {"name": name, "subdomain": name.lower(), "local_port": port})["tunnel"]
    return Target(server, made["token"], made["subdomain"], port, api=api,
                  note=f"created tunnel {made['subdomain']}")


def _ephemeral(server: str, api: Api, port: Optional[int]) -> Target:
    if port is None:
        raise ValueError("give the local PORT to expose (or --name NAME for one of your tunnels)")
    for _ in range(EPHEMERAL_TRIES):
        word = random_word()
        try:
            made = api.post("/api/tunnels", {"name": word, "subdomain": word, "local_port": port,
                                             "ephemeral": True})["tunnel"]
        except ApiError as e:
            if e.code == "SUBDOMAIN_TAKEN":
                continue
            raise
        return Target(server, made["token"], made["subdomain"], port, ephemeral_id=made["id"], api=api,
                      note=f"ephemeral tunnel {made['subdomain']}: deleted when this client stops "
                           "(--name NAME serves one of your tunnels instead)")
    raise ValueError(f"{EPHEMERAL_TRIES} random subdomains in a row were taken; try again, or give --name NAME")


def delete_ephemeral(target: Target) -> str:
    """Delete ``target``'s ephemeral tunnel; the line to show (the relay reaps it if this fails)."""
    try:
        target.api.delete(f"/api/tunnels/{target.ephemeral_id}")
    except ApiError as e:
        if e.status == 404:
            return f"ephemeral tunnel {target.name} is already gone"
        return (f"could not delete ephemeral tunnel {target.name} ({e}); "
                "the server deletes it shortly (relay_ephemeral_grace)")
    return f"deleted ephemeral tunnel {target.name}"
