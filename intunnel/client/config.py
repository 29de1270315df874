"""The per-user client config file: ``$XDG_CONFIG_HOME/intunnel/config.toml`` (mode 0600).

It remembers, per server, the tunnel tokens saved with ``intunnel config add-token`` (several,
keyed by tunnel name) and the personal API token of ``intunnel login``, plus the default
server, so that ``intunnel http 3000`` alone works::

    server = "https://example.com"                 # the default server

    [servers."https://example.com".tokens]         # tunnel name -> tunnel token
    myapp = "..."

    [servers."https://example.com".login]          # from `intunnel login`
    token = "..."
    token_id = 12
    user = "alice@example.com"
    web = "https://example.com"                    # the web app (its API), if elsewhere

A ``[tunnels.NAME]`` table per tunnel definition (``intunnel start``) is kept as written.
The first format (top-level ``server`` and ``token``) still loads: its token becomes the
server's ``default`` tunnel.  This module is pure data plus one atomic file write.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

try:  # Python 3.11+; the client also runs on 3.9 and 3.10, where the tomli backport is the same
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - exercised by the Python 3.9 install test
    import tomli as tomllib

from ..errors import ConfigError

DEFAULT_NAME = "default"  # the tunnel a token saved without --name is kept under


@dataclass
class Login:
    """A personal API token that ``intunnel login`` received for this machine."""
    token: str
    token_id: Optional[int] = None
    user: str = ""
    web: str = ""  # the web app's URL, where the API is (the relay may be on another port or host)


@dataclass
class ServerEntry:
    tokens: Dict[str, str] = field(default_factory=dict)
    login: Optional[Login] = None


@dataclass
class ClientConfig:
    server: Optional[str] = None
    servers: Dict[str, ServerEntry] = field(default_factory=dict)
    tunnels: Dict[str, dict] = field(default_factory=dict)  # `intunnel start` definitions, as written

    def entry(self, server: str) -> ServerEntry:
        return self.servers.setdefault(server_key(server), ServerEntry())

    def find(self, server: str) -> Optional[ServerEntry]:
        return self.servers.get(server_key(server))


def server_key(url: str) -> str:
    """One spelling per server: lower-case scheme and host, no trailing slash."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep:
        return url.strip().rstrip("/")
    host, slash, path = rest.partition("/")
    return f"{scheme.lower()}://{host.lower()}" + (slash + path).rstrip("/")


def config_path(env=None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "intunnel" / "config.toml"


def load(path: Optional[Path] = None) -> ClientConfig:
    path = path or config_path()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return ClientConfig()
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"client config {str(path)!r}: {e}") from None
    try:
        return from_dict(data)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"client config {str(path)!r}: {e}") from None


def from_dict(data: dict) -> ClientConfig:
    cfg = ClientConfig(server=_text(data.get("server"), "server"))
    legacy = _text(data.get("token"), "token")
    if legacy and cfg.server:
        cfg.entry(cfg.server).tokens[DEFAULT_NAME] = legacy
    for url, table in _table(data.get("servers"), "servers").items():
        entry = cfg.entry(url)
        for name, token in _table(table.get("tokens"), f"servers.{url}.tokens").items():
            entry.tokens[name] = _text(token, f"token of tunnel {name!r}")
        login = table.get("login")
        if login is not None:
            login = _table(login, f"servers.{url}.login")
            token_id = login.get("token_id")
            if token_id is not None and (not isinstance(token_id, int) or isinstance(token_id, bool)):
                raise ValueError(f"servers.{url}.login.token_id must be a number")
            if _text(login.get("token"), "login token"):
                entry.login = Login(login["token"], token_id, _text(login.get("user"), "user") or "",
                                    _text(login.get("web"), "web") or "")
    cfg.tunnels = {name: dict(_table(t, f"tunnels.{name}"))
                   for name, t in _table(data.get("tunnels"), "tunnels").items()}
    return cfg


def _text(value, what: str) -> Optional[str]:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{what} must be a string")
    return value


def _table(value, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a table")
    return value


def to_toml(cfg: ClientConfig) -> str:
    """Only strings, integers, booleans and lists of strings are written; json.dumps of a str
    is a valid TOML basic string, so keys and values are quoted with it."""
    lines = ["# intunnel client settings: tunnel tokens and logins (keep it private: mode 0600)"]
    if cfg.server:
        lines.append(f"server = {json.dumps(cfg.server)}")
    for url in sorted(cfg.servers):
        entry = cfg.servers[url]
        if entry.tokens:
            lines += ["", f"[servers.{json.dumps(url)}.tokens]"]
            lines += [f"{json.dumps(n)} = {json.dumps(t)}" for n, t in sorted(entry.tokens.items())]
        if entry.login:
            lines += ["", f"[servers.{json.dumps(url)}.login]", f"token = {json.dumps(entry.login.token)}"]
            if entry.login.token_id is not None:
                lines.append(f"token_id = {int(entry.login.token_id)}")
            for key in ("user", "web"):
                if getattr(entry.login, key):
                    lines.append(f"{key} = {json.dumps(getattr(entry.login, key))}")
    for name in sorted(cfg.tunnels):
        lines += ["", f"[tunnels.{json.dumps(name)}]"]
        lines += [f"{json.dumps(k)} = {_value(v)}" for k, v in cfg.tunnels[name].items()]
    return "\n".join(lines) + "\n"


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, str)):
        return json.dumps(v)
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return "[" + ", ".join(json.dumps(x) for x in v) + "]"
    raise ValueError(f"cannot write {v!r} to the client config")


def save(cfg: ClientConfig, path: Optional[Path] = None) -> Path:
    """Write atomically with mode 0600 (it holds secrets)."""
    path = path or config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = to_toml(cfg)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path
