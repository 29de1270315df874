"""`intunnel serve`: the whole appliance in one process, on loopback, for a laptop or a demo.

The web app (its ``web_server``, in a thread) on ``web_listen`` and the relay (asyncio,
main thread) on ``relay_listen``, with domain ``localhost`` by default, so
``http://<subdomain>.localhost:8080`` works in any browser with no DNS and no
nginx; Prometheus metrics of both on ``relay_metrics_listen``.  On first run
(no users yet) it creates an admin account from
``admin_email``/``admin_password`` or a generated password printed once.
"""

from __future__ import annotations

import logging
import os
import secrets

from . import clientzip
from .wire import netio
from .cli import add_config_argument
from .models import User, open_database
from .relay.serve import listening, serve as serve_relay, setup_logging
from .relay.server import Relay
from . import programs
from .settings import BY_NAME, load_settings, prepare_data_dir

HELP = "Run the web app and the relay together on loopback (embedded mode)."
DEFAULT_ADMIN_LOCAL_PART = "admin"


def add_arguments(parser) -> None:
    add_config_argument(parser)
    parser.add_argument("--web-listen", metavar="HOST:PORT", help="where the web app listens (web_listen; "
                        "default 127.0.0.1:8000)")
    parser.add_argument("--relay-listen", metavar="HOST:PORT", help="where the relay listens (relay_listen; "
                        "default 127.0.0.1:8080)")


def default_admin_email(settings) -> str:
    domain = settings.domain if "." in settings.domain else f"intunnel.{settings.domain}"
    return f"{DEFAULT_ADMIN_LOCAL_PART}@{domain}"


def ensure_first_admin(settings) -> tuple[str, str | None] | None:
    """Create the first admin when there is no user at all.

    Returns (email, password) where password is None when it came from the
    settings (the operator knows it), or None when users already exist.
    """
    from . import accounts
    if User.select().exists():
        return None
    email = settings.admin_email or default_admin_email(settings)
    given = settings.admin_password or None
    password = given or secrets.token_urlsafe(12)
    accounts.create_user(email, email.split("@", 1)[0], password, is_admin=True)
    return email, (None if given else password)


def _host_for_humans(host: str, settings) -> str:
    if host in ("127.0.0.1", "::1", "0.0.0.0", "") and settings.domain == "localhost":
        return "localhost"
    return host


def next_steps(settings, web_address, relay_address, admin) -> str:
    web = f"http://{_host_for_humans(web_address[0], settings)}:{web_address[1]}"
    relay = settings.relay_url
    lines = ["", "InTunnel is running.",
             f"  Dashboard and API: {web}",
             f"  Tunnels:           {settings.tunnel_url('<subdomain>')}"]
    if admin is not None:
        email, password = admin
        lines.append(f"  Admin account:     {email}")
        if password:
            lines.append(f"  Admin password:    {password}   (shown once: keep it; lost, set a new one with "
                         f"{programs.command('intunnel-admin')} user set-password {email})")
    client = settings.client_command
    lines += ["",
              "Next steps:",
              f"  1. Log in at {web}",
              "  2. Log this machine's client in once (approve the code it shows, on the dashboard):",
              f"       {client} login --server {relay}",
              "  3. Next to your app on port 3000, run:",
              f"       {client} http 3000 --name myapp --create",
              "     or, without logging in: create a tunnel on the dashboard, then",
              f"       {client} http 3000 --server {relay} --token <the tunnel's token>",
              f"  4. Open {settings.tunnel_url('myapp')}",
              ""]
    return "\n".join(lines)


def create_private_database(settings) -> None:
    """The SQLite file, made 0600 before SQLite makes it with the umask's 0644: it holds password
    hashes, and ``intunnel-admin doctor`` warns about any other mode.  (Its -wal and -shm files
    take the same mode from it.)  An existing file, or PostgreSQL, is left as it is."""
    if settings.db_backend != "sqlite":
        return
    try:
        os.close(os.open(settings.db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def run(args) -> int:
    flags = {k: v for k, v in (("web_listen", getattr(args, "web_listen", None)),
                               ("relay_listen", getattr(args, "relay_listen", None))) if v}
    settings = prepare_data_dir(load_settings(args.config, overrides=flags))  # a bad flag: one line, exit 2
    if settings.client_command == BY_NAME["client_command"].default:
        # The commands the banner and the dashboard print must work when pasted in this shell.
        settings = settings.replace(client_command=programs.command("intunnel"))
    setup_logging(settings.log_level)
    clientzip.ensure(settings.data_dir, rebuild=True)   # /download/intunnel.pyz: this checkout's client
    create_private_database(settings)
    db = open_database(settings)
    with db.connection_context():
        admin = ensure_first_admin(settings)

    from .metrics import new_registry
    from .web.app import create_app
    from .web.serve import make_server, start_in_thread, stop_server
    registry = new_registry()  # one /metrics listener (relay_metrics_listen) for the web app and the relay
    with listening("web_listen", settings.web_listen):
        web = make_server(settings, app=create_app(settings, registry=registry))
    web_thread = start_in_thread(web)
    web_address = (web.effective_host, int(web.effective_port))

    def announce(relay: Relay) -> None:
        print(next_steps(relay.settings, web_address, relay.address, admin), flush=True)

    try:
        netio.run(serve_relay(Relay(settings, registry=registry), extra_start=announce))
    finally:
        stop_server(web, web_thread)
        logging.getLogger("intunnel").info("stopped")
    return 0
