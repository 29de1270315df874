"""Every setting, declared once: name, type, default and help text.

Sources, later ones winning: the defaults below, the TOML config file
(``--config FILE``, or ``/etc/intunnel/intunnel.toml`` when it exists), then
environment variables ``INTUNNEL_<NAME>``.  A bad value fails at start with one
line naming the key (``ConfigError``), never a traceback.

The README's configuration reference is checked against ``SETTINGS`` by a test,
so a new setting must be documented there too.
"""

from __future__ import annotations

import os
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from . import dburl, tcpports
from .errors import ConfigError
from .wire.protocol import DEFAULT_POOL_SIZE, MAX_POOL_SIZE

DEFAULT_CONFIG_FILE = Path("/etc/intunnel/intunnel.toml")
ENV_PREFIX = "INTUNNEL_"
SECRET_KEY_FILE = "secret_key"


@dataclass(frozen=True)
class Setting:
    name: str
    type: type  # str, int, float, bool or list (of str)
    default: Any
    help: str
    choices: tuple = ()
    secret: bool = False  # never printed by `doctor` or logs


def _default_data_dir() -> str:
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(xdg, "intunnel")


SETTINGS: tuple[Setting, ...] = (
    # --- core ---
    Setting("data_dir", str, _default_data_dir(), "Directory for the database, secret key and backups."),
    Setting("database", str, "", "Path of the SQLite database file (default: <data_dir>/intunnel.db); kept for older configs, database_url says more."),
    Setting("database_url", str, "", "Which database: sqlite:///PATH (default: sqlite:///<data_dir>/intunnel.db) or "
            "postgresql://USER@HOST:PORT/DBNAME, query parameters such as ?sslmode=require passed to the driver."),
    Setting("database_password_file", str, "", "File holding the PostgreSQL password (one line), so it stays out of "
            "the config and the process list; empty: the password in database_url, if any."),
    Setting("domain", str, "localhost", "The owner's domain: web app on <domain>, tunnels on <subdomain>.<domain>."),
    Setting("public_scheme", str, "http", "Scheme visitors use for public URLs and the web app.", choices=("http", "https")),
    Setting("public_port", int, 0, "Port shown in public URLs; 0 = automatic (relay port for http, none for https)."),
    Setting("secret_key", str, "", "Key for signing; generated and kept in <data_dir>/secret_key (0600) when empty.", secret=True),
    Setting("log_level", str, "info", "Log level of the services.", choices=("debug", "info", "warning", "error")),
    # --- web app ---
    Setting("web_listen", str, "127.0.0.1:8000", "HOST:PORT the web app listens on."),
    Setting("web_server", str, "cheroot", "WSGI server of the web app: cheroot or waitress (measured side by side: "
            "bench/RESULTS.md, API); both set up alike (threads, body and header limits, proxy headers).", choices=("cheroot", "waitress")),
    Setting("web_threads", int, 4, "Worker threads of the web app (requests in progress at once; kept-alive "
            "connections wait in the server's poller, not in a thread). More threads than this take turns on one "
            "interpreter lock: measured on 2 cores, 8 threads gave GET /api/tunnels a p99 of 26-37 ms, 4 gave 11-19 ms "
            "(bench/NOTES.md, web_threads 4; bench/RESULTS.md, API)."),
    Setting("web_trust_proxy", bool, False, "Trust X-Forwarded-For/-Proto from a proxy on loopback (nginx) for client addresses."),
    Setting("reserved_subdomains", list, ["www", "api", "admin", "app", "mail", "static"],
            "Subdomains users may not claim (the web host's own label is always reserved)."),
    Setting("session_lifetime", int, 14 * 24 * 3600, "Seconds a login session lasts."),
    Setting("api_max_body", int, 64 * 1024, "Largest accepted API request body, in bytes."),
    Setting("rate_limit_get", int, 100, "GET requests per minute per user (per address before login)."),
    Setting("rate_limit_write", int, 20, "POST/PUT/PATCH/DELETE requests per minute per user."),
    Setting("rate_limit_regenerate", int, 5, "Token regenerations per hour per user."),
    Setting("login_max_failures", int, 5, "Failed logins per account from one address before that pair is throttled (an address may fail 4 times as often across accounts; 15 min window)."),
    Setting("admin_email", str, "", "Email of the first admin created by `intunnel serve` when no user exists."),
    Setting("admin_password", str, "", "Password of that first admin (generated and printed once when empty).", secret=True),
    Setting("client_command", str, "intunnel", "How the dashboard writes the client's command; intunnel serve sets the "
            "absolute path of its own when the PATH would not find it (a virtualenv's bin/)."),
    Setting("device_code_lifetime", int, 900, "Seconds the code `intunnel login` shows stays valid for approval on the "
            "dashboard's /device page."),
    Setting("device_poll_interval", int, 5, "Seconds `intunnel login` waits between polls for the approval (a client "
            "polling sooner is told slow_down and must wait 5 s longer from then on)."),
    Setting("device_max_pending_per_address", int, 5, "Login codes (`intunnel login`) one client address may have "
            "waiting for approval at once; one more is refused with 429."),
    Setting("device_max_client_name", int, 64, "Longest machine name `intunnel login` may send (the name of the "
            "API token it gets), in characters."),
    Setting("dashboard_poll_interval", float, 3.0, "Seconds between the dashboard's live status checks (browser polling /api/tunnels)."),
    Setting("traffic_poll_interval", float, 1.0, "Seconds between the tunnel page's checks for new requests (browser polling "
            "/api/tunnels/<id>/traffic)."),
    Setting("web_metrics_listen", str, "127.0.0.1:9810", "HOST:PORT of the web app's Prometheus /metrics listener, a socket of its "
            "own (never the public port: nginx does not route /metrics); empty: no metrics listener."),
    # --- relay ---
    Setting("relay_listen", str, "127.0.0.1:8080", "HOST:PORT the relay listens on (public and agent endpoint)."),
    Setting("relay_trust_proxy", bool, False, "Behind nginx: trust its X-Forwarded-For/-Proto (from loopback) for visitor addresses."),
    Setting("relay_max_header_size", int, 64 * 1024, "Largest request head (request line + headers) in bytes."),
    Setting("relay_handshake_timeout", float, 10.0, "Seconds a visitor or agent has to send a complete head."),
    Setting("relay_heartbeat_interval", float, 10.0, "Seconds between application pings on the agent channel."),
    Setting("relay_dead_peer_timeout", float, 30.0, "Seconds of silence after which an agent is dropped."),
    Setting("relay_ephemeral_grace", float, 45.0, "Seconds an ephemeral tunnel (`intunnel http` without a name) is kept "
            "after its agent left without deleting it (a killed client; a little over relay_dead_peer_timeout, so a client "
            "that reconnects keeps it); then a relay deletes it."),
    Setting("ephemeral_max_per_user", int, 10, "Ephemeral tunnels one user may have at once (`intunnel http` without "
            "a name); creating one more is refused with a message saying so."),
    Setting("relay_upstream_timeout", float, 60.0, "Seconds to wait for the local app's response head before a 504."),
    Setting("relay_max_visitors_per_tunnel", int, 256, "Concurrent visitor connections per tunnel."),
    Setting("relay_traffic_ring", int, 256, "Dashboard traffic view: requests per tunnel the relay holds in memory "
            "until its next write to the database (the oldest dropped past this)."),
    Setting("relay_traffic_flush", float, 1.0, "Dashboard traffic view: seconds between the relay's writes of its recent "
            "requests to the database (one INSERT per write, only when there is something)."),
    Setting("traffic_path_max", int, 1024, "Dashboard traffic view: characters of a request's path kept (the rest cut off)."),
    Setting("traffic_rows_per_tunnel", int, 200, "Dashboard traffic view: recent requests kept in the database per tunnel "
            "(the relays delete older ones as they write)."),
    Setting("relay_max_agents", int, 10000, "Concurrently connected agents."),
    Setting("relay_agent_pool", int, DEFAULT_POOL_SIZE, "Warm data connections each agent keeps open, ready for new visitors (the "
            "relay's Welcome tells the agent; during a burst it grows past this, up to 64, and shrinks back after 10 calm "
            "seconds). Each is a socket on the relay and on the agent; 0: every new visitor waits for one to be dialed."),
    Setting("relay_revocation_poll", float, 0.25, "Seconds between checks for revoked or deleted tunnels (SQLite; on PostgreSQL only while the relay's LISTEN connection is down)."),
    Setting("relay_reconcile_interval", float, 30.0, "PostgreSQL: changes reach the relay by LISTEN/NOTIFY; seconds between full re-checks of every live session all the same (a safety net)."),
    Setting("relay_upstream_keepalive", float, 1.0, "Seconds a finished visitor's connection to the local app is kept for the next visitor (0: never reuse)."),
    Setting("relay_keepalive_timeout", float, 75.0, "Seconds an idle keep-alive visitor connection (between requests) is kept open; a full tunnel closes its idlest one first."),
    Setting("relay_body_timeout", float, 30.0, "Request bodies: the window, in seconds, over which a visitor must send at least relay_body_min_rate bytes per second (nginx's client_body_timeout, with a rate)."),
    Setting("relay_body_min_rate", int, 64, "Slowest accepted request body upload, in bytes per second over each relay_body_timeout window; 0: only a window with no byte at all times out."),
    Setting("relay_control_write_limit", int, 1024 * 1024, "Bytes the relay may hold unsent for one agent's control channel (an agent that stops reading is dropped past this)."),
    Setting("relay_id", str, "", "This relay's name among several sharing one PostgreSQL database (routes, /metrics, "
            "`intunnel-admin relay list`); empty: <hostname>:<port of relay_listen>.  Letters, digits and . _ : - only, at most 64."),
    Setting("relay_route_lease", float, 15.0, "PostgreSQL: seconds a relay's claim on a tunnel (its route) lasts unless renewed; "
            "renewed every heartbeat tick (1 s), so a relay that died frees its tunnels within this."),
    Setting("relay_peer_listen", str, "", "HOST:PORT this relay listens on for visitors forwarded by the other relays sharing its "
            "PostgreSQL database (their private network; PostgreSQL only); empty: no forwarding (one relay)."),
    Setting("relay_peer_address", str, "", "HOST:PORT the other relays dial to reach relay_peer_listen (set it when that listens "
            "on a wildcard address); empty: relay_peer_listen as it is."),
    Setting("relay_peer_secret_file", str, "", "File holding the secret (at least 32 bytes) every relay shares to authenticate "
            "forwarded connections; required with relay_peer_listen."),
    Setting("relay_peer_timeout", float, 3.0, "Seconds a relay gives a peer relay to accept and authenticate a forwarded "
            "connection before the visitor gets a 502."),
    # --- TCP tunnels (intunnel.tcpports; relay/tcp_listeners) ---
    Setting("relay_tcp_ports", str, "20000-20999", "Public ports TCP tunnels are given, as ports and ranges LOW-HIGH "
            "(comma-separated, all within 1024-65535: ports below 1024 are never given); each TCP tunnel keeps its port "
            "until deleted, and every relay listens on every reserved one; empty: TCP tunnels are off."),
    Setting("relay_tcp_listen_host", str, "127.0.0.1", "Address the relay listens on for TCP tunnels' visitors (their ports "
            "come from relay_tcp_ports, straight from the internet, not through nginx): loopback by default like every "
            "listener (a laptop's `intunnel serve`); a server facing the internet sets * (every address, IPv4 and IPv6: the "
            "playbook does when intunnel_nginx_ipv6 is on) or 0.0.0.0 (IPv4 only)."),
    Setting("tcp_max_per_user", int, 5, "TCP tunnels one user may have (each holds a public port); creating one more is "
            "refused with a message saying so."),
    Setting("relay_tcp_refresh", float, 2.0, "Seconds between the relay's reloads of the reserved TCP ports (a TCP tunnel "
            "created or deleted elsewhere is listened on, or stops, within that; its own agent connecting is at once)."),
    Setting("relay_metrics_listen", str, "127.0.0.1:9811", "HOST:PORT of the relay's Prometheus /metrics listener, a socket of its "
            "own (not the public one); `intunnel serve` serves the web app's metrics there too; empty: none."),
    # --- tunnel access policies (intunnel.access; enforced by the relay) ---
    Setting("access_max_users", int, 20, "Basic-auth users one tunnel's access policy may list."),
    Setting("access_max_cidrs", int, 100, "CIDRs each list of a tunnel's access policy (ip_allow, ip_deny) may hold."),
    Setting("access_max_username", int, 64, "Longest basic-auth user name of an access policy, in characters."),
    Setting("access_min_password", int, 8, "Shortest basic-auth password of an access policy, in characters."),
    Setting("access_max_password", int, 256, "Longest basic-auth password of an access policy, in characters."),
    Setting("access_max_bypass_paths", int, 20, "Path prefixes (bypass_paths) one tunnel's access policy may list: "
            "requests under them skip the password and members checks, never the IP rules."),
    Setting("access_max_members", int, 100, "Named users, and email domains, the members-only mode of one tunnel's "
            "access policy may list (each)."),
    Setting("access_ticket_ttl", int, 60, "Seconds the one-time ticket from the web app's login to a members-only "
            "tunnel's host is good for."),
    Setting("access_grant_max_age", int, 43200, "Seconds a members-only tunnel's access cookie lives at most (never "
            "longer than the login session it came from)."),
    Setting("relay_access_grant_cache_size", int, 10000, "Members-only access cookies each relay remembers (who they "
            "are for), so a visitor's requests skip the database; checked again on every revocation poll or notification."),
    Setting("web_public_url", str, "", "The web app's address as visitors' browsers reach it, for the members-only "
            "login redirect; empty: <public_scheme>://<domain> under https, http://<domain>:<web_listen port> over http."),
    Setting("relay_access_cache_size", int, 4096, "Verified basic-auth credentials each relay remembers (least recently "
            "used go first; keyed by a keyed hash that changes with the policy), so keep-alive visitors skip the password hash."),
    Setting("relay_access_max_failures", int, 10, "Wrong basic-auth passwords one visitor address may try on one tunnel "
            "per minute (per relay); then 429 with Retry-After until the minute is over."),
    Setting("relay_access_max_failures_per_tunnel", int, 100, "Wrong basic-auth passwords one tunnel takes per minute "
            "from all addresses together (per relay); then new password checks get 429 (visitors already signed in are unaffected)."),
    Setting("relay_access_max_pending", int, 32, "Basic-auth password hashes a relay computes at once (off the event loop); "
            "a visitor beyond that gets 429 with Retry-After."),
    # --- backups ---
    Setting("backup_dir", str, "", "Where backups go (default: <data_dir>/backups)."),
    Setting("backup_keep_daily", int, 7, "Daily backups to keep."),
    Setting("backup_keep_weekly", int, 4, "Weekly backups to keep."),
    # --- deploy ---
    Setting("tls_cert", str, "", "TLS certificate for the generated nginx config (empty: plain HTTP)."),
    Setting("tls_key", str, "", "TLS private key for the generated nginx config.", secret=True),
    Setting("nginx_http_port", int, 80, "Port nginx listens on for HTTP."),
    Setting("nginx_https_port", int, 443, "Port nginx listens on for HTTPS."),
    Setting("nginx_ipv6", bool, True, "Also listen on IPv6 in the generated nginx config."),
    Setting("nginx_acme_root", str, "/var/www/intunnel-acme", "Web root nginx serves ACME HTTP-01 challenges from."),
    Setting("tunnel_max_body", str, "0", "nginx client_max_body_size for tunnel traffic (0 = unlimited)."),
    Setting("nginx_relays", list, [], "HOST:PORT of every relay listener the generated nginx config balances over; "
            "two or more: each tunnel's agent and visitors go to one of them by consistent hashing of the tunnel's "
            "name, and a dead one is skipped; empty: the one relay at relay_listen."),
    # --- custom domains (intunnel.certs; the reconciler: intunnel-admin certs reconcile) ---
    Setting("custom_domains_per_tunnel", int, 5, "Custom hostnames an HTTP tunnel may have; 0 turns custom domains off."),
    Setting("custom_domain_addresses", list, [], "The server's public IPv4/IPv6 addresses a custom hostname must resolve "
            "to (the A/AAAA records the dashboard asks for); empty: whatever <domain> resolves to."),
    Setting("custom_domain_resolver", str, "", "HOST:PORT of the DNS server the reconciler asks whether a custom hostname "
            "points here; empty: the system's resolver."),
    Setting("acme_directory", str, "https://acme-v02.api.letsencrypt.org/directory", "ACME directory URL custom-domain "
            "certificates come from (any ACME CA)."),
    Setting("acme_staging", bool, False, "Use Let's Encrypt's staging CA (untrusted certificates, generous rate limits) "
            "while acme_directory is Let's Encrypt's."),
    Setting("acme_email", str, "", "Contact email given to the ACME CA (expiry notices); empty: none."),
    Setting("acme_ca_bundle", str, "", "CA bundle trusted for the ACME server's own HTTPS (a private CA); empty: the system's."),
    Setting("certbot_command", str, "certbot", "The certbot the reconciler runs (webroot plugin, on nginx_acme_root)."),
    Setting("cert_dir", str, "/var/lib/intunnel-certs", "The reconciler's certificate directory (certbot's config, work "
            "and log directories; the only place it writes besides its vhosts and the challenge web root)."),
    Setting("nginx_domain_dir", str, "/etc/nginx/intunnel-domains", "Directory of the custom hostnames' nginx vhost "
            "files (one per name), included by the generated intunnel-tunnels.conf."),
    Setting("nginx_command", list, ["nginx"], "The nginx command the reconciler runs with -t before every reload and "
            "with -s reload after it (extra words such as -c FILE kept in front of those)."),
    Setting("certbot_timeout", int, 300, "Seconds one certbot run (an issuance, a renewal) may take."),
    Setting("custom_domain_dns_timeout", float, 5.0, "Seconds the reconciler's DNS check of one name may take "
            "(with custom_domain_resolver)."),
    Setting("nginx_reload_wait", float, 10.0, "Seconds the reconciler waits, after reloading nginx, for a new "
            "name's challenge vhost to answer before asking the CA."),
    Setting("cert_renew_before", int, 30 * 24 * 3600, "Seconds before a certificate's expiry it is renewed."),
    Setting("cert_retry_min", int, 60, "Seconds before the first retry of a failed DNS check or issuance (doubling with "
            "each further failure)."),
    Setting("cert_retry_max", int, 6 * 3600, "Longest wait between retries of a custom hostname."),
    Setting("relay_custom_domain_refresh", float, 2.0, "Seconds between the relay's reloads of the active custom "
            "hostnames it routes (a hostname added or removed routes, or stops, within that)."),
)

BY_NAME = {s.name: s for s in SETTINGS}


class Settings:
    """Resolved settings; attribute access (``settings.domain``)."""

    def __init__(self, values: Mapping[str, Any]):
        self._values = dict(values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def replace(self, **changes: Any) -> "Settings":
        for key in changes:
            if key not in BY_NAME:
                raise ConfigError(f"unknown setting {key!r}")
        return Settings({**self._values, **changes})

    def as_dict(self, redact: bool = True) -> dict[str, Any]:
        values = {k: ("***" if redact and BY_NAME[k].secret and v else v) for k, v in self._values.items()}
        if redact and values.get("database_url"):
            values["database_url"] = dburl.redact_url(values["database_url"])
        return values

    # --- derived values ---
    @property
    def db_url(self) -> str:
        """The database in use: ``database_url``, else the SQLite file (``database`` or the default)."""
        return self.database_url or "sqlite:///" + str(self.db_path)

    @property
    def db_backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return dburl.backend_of(self.db_url)

    @property
    def db_path(self) -> Path:
        """The SQLite file (meaningless on PostgreSQL: check ``db_backend`` first)."""
        if self.database_url and dburl.backend_of(self.database_url) == dburl.SQLITE:
            return dburl.sqlite_path(self.database_url)
        return Path(self.database) if self.database else Path(self.data_dir) / "intunnel.db"

    @property
    def backup_path(self) -> Path:
        return Path(self.backup_dir) if self.backup_dir else Path(self.data_dir) / "backups"

    @property
    def web_address(self) -> tuple[str, int]:
        return parse_listen(self.web_listen, "web_listen")

    @property
    def relay_address(self) -> tuple[str, int]:
        return parse_listen(self.relay_listen, "relay_listen")

    @property
    def web_metrics_address(self) -> tuple[str, int] | None:
        return parse_listen(self.web_metrics_listen, "web_metrics_listen") if self.web_metrics_listen else None

    @property
    def relay_metrics_address(self) -> tuple[str, int] | None:
        return parse_listen(self.relay_metrics_listen, "relay_metrics_listen") if self.relay_metrics_listen else None

    @property
    def relay_peer_dial_address(self) -> tuple[str, int] | None:
        """Where the other relays reach this one's peer listener (None: no forwarding)."""
        if not self.relay_peer_listen:
            return None
        listen = parse_listen(self.relay_peer_listen, "relay_peer_listen")
        return parse_listen(self.relay_peer_address, "relay_peer_address") if self.relay_peer_address else listen

    @property
    def url_port_suffix(self) -> str:
        port = self.public_port
        if port == 0:
            port = self.relay_address[1] if self.public_scheme == "http" else 443
        default = 80 if self.public_scheme == "http" else 443
        return "" if port == default else f":{port}"

    def tunnel_url(self, subdomain: str) -> str:
        """The public address that really reaches a tunnel."""
        # What surrounds the subdomain, worked out once (settings never change; replace() makes new
        # ones): GET /api/tunnels builds one URL per tunnel, a fifth of its time before.
        parts = self.__dict__.get("_tunnel_url_parts")
        if parts is None:
            parts = self.__dict__["_tunnel_url_parts"] = (f"{self.public_scheme}://",
                                                          f".{self.domain}{self.url_port_suffix}")
        return parts[0] + subdomain + parts[1]

    def tcp_url(self, port: int) -> str:
        """The public address of a TCP tunnel's port (relay_tcp_ports)."""
        return f"tcp://{self.domain}:{port}"

    @property
    def relay_url(self) -> str:
        """The URL a client passes as ``--server``."""
        return f"{self.public_scheme}://{self.domain}{self.url_port_suffix}"

    @property
    def web_url(self) -> str:
        """Where visitors' browsers reach the web app (the login page of members-only tunnels)."""
        if self.web_public_url:
            return self.web_public_url.rstrip("/")
        if self.public_scheme == "https":
            return f"https://{self.domain}" + ("" if self.public_port in (0, 443) else f":{self.public_port}")
        return f"http://{self.domain}:{self.web_address[1]}"

    @property
    def cookie_secure(self) -> bool:
        return self.public_scheme == "https"


def parse_listen(value: str, key: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"setting {key!r}: expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _coerce(setting: Setting, value: Any, source: str) -> Any:
    """Convert a TOML or environment value to the setting's type, or fail naming the key."""
    where = f"setting {setting.name!r} ({source})"
    t = setting.type
    try:
        if t is bool:
            if isinstance(value, bool):
                result = value
            elif isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                result = True
            elif isinstance(value, str) and value.lower() in ("0", "false", "no", "off", ""):
                result = False
            else:
                raise ValueError
        elif t is int:
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise ValueError
            result = int(value)
        elif t is float:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError
            result = float(value)
        elif t is list:
            if isinstance(value, str):
                result = [v.strip() for v in value.split(",") if v.strip()]
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                result = list(value)
            else:
                raise ValueError
        else:
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                raise ValueError
            result = str(value)
    except ValueError:
        raise ConfigError(f"{where}: expected {t.__name__}, got {value!r}") from None
    if setting.choices and result not in setting.choices:
        raise ConfigError(f"{where}: must be one of {', '.join(setting.choices)}, got {result!r}")
    return result


def load_settings(config_file: str | os.PathLike | None = None,
                  env: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> Settings:
    """Defaults < config file < environment < explicit overrides (tests)."""
    env = os.environ if env is None else env
    values = {s.name: s.default for s in SETTINGS}

    explicit = config_file or env.get(ENV_PREFIX + "CONFIG")
    path = Path(explicit) if explicit else DEFAULT_CONFIG_FILE
    if explicit or path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} not found") from None
        except PermissionError:
            raise ConfigError(f"config file {str(path)!r} is not readable") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {str(path)!r}: {e}") from None
        for key, value in data.items():
            if key not in BY_NAME:
                raise ConfigError(f"config file {str(path)!r}: unknown setting {key!r}")
            values[key] = _coerce(BY_NAME[key], value, str(path))

    for setting in SETTINGS:
        raw = env.get(ENV_PREFIX + setting.name.upper())
        if raw is not None:
            values[setting.name] = _coerce(setting, raw, ENV_PREFIX + setting.name.upper())

    for key, value in (overrides or {}).items():
        if key not in BY_NAME:
            raise ConfigError(f"unknown setting {key!r}")
        values[key] = _coerce(BY_NAME[key], value, "override")

    settings = Settings(values)
    settings.web_address, settings.relay_address  # validate now, not at first use
    settings.web_metrics_address, settings.relay_metrics_address
    settings.relay_peer_dial_address
    check_database_settings(settings)
    check_peer_settings(settings)
    tcpports.parse_ranges(settings.relay_tcp_ports)   # a bad range fails at start, naming the setting
    if settings.relay_tcp_refresh <= 0:
        raise ConfigError("setting 'relay_tcp_refresh': must be above 0")
    if settings.relay_id:
        check_relay_id(settings.relay_id)
    for name in ("relay_traffic_ring", "traffic_rows_per_tunnel", "relay_traffic_flush", "traffic_path_max"):
        if getattr(settings, name) <= 0:
            raise ConfigError(f"setting '{name}': must be above 0")
    if not 0 <= settings.relay_agent_pool <= MAX_POOL_SIZE:   # what an agent's pool may grow to
        raise ConfigError(f"setting 'relay_agent_pool': must be between 0 and {MAX_POOL_SIZE}")
    if settings.relay_route_lease < 3:
        raise ConfigError("setting 'relay_route_lease': at least 3 seconds (it is renewed every second)")
    return settings


RELAY_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-")
RELAY_ID_MAX = 64


def check_relay_id(value: str, where: str = "relay_id") -> str:
    if not value or len(value) > RELAY_ID_MAX or not set(value) <= RELAY_ID_CHARS:
        raise ConfigError(f"setting {where!r}: {value!r} is not a relay id (letters, digits and . _ : - "
                          f"only, 1 to {RELAY_ID_MAX} characters)")
    return value


def relay_identity(settings: Settings, port: int | None = None) -> str:
    """The relay's id: ``relay_id``, else ``<hostname>:<port>`` (the port it listens on: two
    relays on one host differ by it).  Stable across restarts on the same address."""
    if settings.relay_id:
        return settings.relay_id
    import socket
    port = settings.relay_address[1] if port is None else port
    suffix = f":{port}"
    host = "".join(c if c in RELAY_ID_CHARS else "-" for c in socket.gethostname()) or "relay"
    return host[: RELAY_ID_MAX - len(suffix)] + suffix


def check_database_settings(settings: Settings) -> None:
    """database / database_url / database_password_file agree; ConfigError naming them."""
    if not settings.database_url:
        if settings.database_password_file:
            raise ConfigError("setting 'database_password_file' is for a PostgreSQL database_url")
        return
    if settings.database:
        raise ConfigError("settings 'database' and 'database_url' are both set: keep one "
                          f"(database_url = \"sqlite:///{settings.database}\" says the same as database)")
    backend = dburl.check_url(settings.database_url)
    if settings.database_password_file:
        if backend != dburl.POSTGRESQL:
            raise ConfigError("setting 'database_password_file' is for a PostgreSQL database_url")
        if dburl.has_password(settings.database_url):
            raise ConfigError("settings 'database_url' and 'database_password_file': "
                              "give the password in one of them, not both")


def check_peer_settings(settings: Settings) -> None:
    """Forwarding between relays needs the shared database (routes) and the shared secret."""
    if not settings.relay_peer_listen:
        for name in ("relay_peer_address", "relay_peer_secret_file"):
            if getattr(settings, name):
                raise ConfigError(f"setting {name!r} is for forwarding between relays: set relay_peer_listen too")
        return
    if not settings.relay_peer_secret_file:
        raise ConfigError("setting 'relay_peer_listen' needs relay_peer_secret_file (the relays' shared secret)")
    if not settings.database_url or dburl.check_url(settings.database_url) != dburl.POSTGRESQL:
        raise ConfigError("setting 'relay_peer_listen': forwarding between relays needs a PostgreSQL "
                          "database_url (the relays find each other's tunnels there)")


def prepare_data_dir(settings: Settings) -> Settings:
    """Create the data dir (0700) and resolve the secret key; fail naming the key.

    Called by every service at start.  Returns settings with ``secret_key`` set.
    """
    data_dir = Path(settings.data_dir)
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        probe = data_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"setting 'data_dir': {str(data_dir)!r} is not writable ({e.strerror})") from None
    if settings.secret_key:
        return settings
    key_file = data_dir / SECRET_KEY_FILE
    try:
        # O_EXCL: two services starting at once must not write two different keys.
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    except FileExistsError:
        pass
    except OSError as e:
        raise ConfigError(f"setting 'secret_key': cannot create {str(key_file)!r} ({e.strerror})") from None
    key = key_file.read_text().strip()
    if not key:
        raise ConfigError(f"setting 'secret_key': {str(key_file)!r} is empty")
    return settings.replace(secret_key=key)
