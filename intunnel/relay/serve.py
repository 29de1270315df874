"""`intunnel relay`: run the relay until SIGTERM/SIGINT, then stop gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from .. import dburl
from ..wire import netio
from ..cli import add_config_argument
from ..errors import ConfigError
from ..settings import load_settings, prepare_data_dir
from .activation import inherited_socket

HELP = "Run the relay: public tunnel traffic and agent connections (asyncio)."


def add_arguments(parser) -> None:
    add_config_argument(parser)


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@contextlib.contextmanager
def listening(setting: str, address: str):
    """A listener that can't bind (the port taken, an address not of this host) is one line
    naming the setting, not a traceback: ConfigError, exit 2."""
    try:
        yield
    except OSError as e:
        flag = "--" + setting.replace("_", "-")
        raise ConfigError(f"setting '{setting}': cannot listen on {address} ({e.strerror}); another program "
                          f"(or another intunnel) has it? Choose another with INTUNNEL_{setting.upper()}"
                          + (f" (intunnel serve: {flag})" if setting in ("relay_listen", "web_listen") else "")) from None


async def serve(relay, extra_start=None, sock=None) -> None:
    """Start ``relay`` (a relay.server.Relay; and its metrics listener, ``relay_metrics_listen``)
    on ``sock`` (a listening socket systemd passed: relay/activation) or on ``relay_listen``,
    wait for SIGTERM/SIGINT, stop it within its grace period."""
    from .metrics import start_listener
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    where = relay.settings.relay_metrics_address
    with listening("relay_metrics_listen", relay.settings.relay_metrics_listen):
        metrics = await start_listener(where, relay.registry) if where else None
    with listening("relay_listen", relay.settings.relay_listen):
        await relay.start(sock)
    if extra_start is not None:
        extra_start(relay)
    await stop.wait()
    logging.getLogger("intunnel.relay").info("stopping: telling agents to reconnect later")
    if metrics is not None:
        metrics.close()
    await relay.stop()


def run(args) -> int:
    settings = prepare_data_dir(load_settings(args.config))
    setup_logging(settings.log_level)
    # The relay's modules after its settings: on SQLite, peewee without the PostgreSQL driver.
    dburl.import_peewee(settings.db_url)
    from .server import Relay
    sock = inherited_socket()
    if sock is not None:
        bound = sock.getsockname()[:2]
        log = logging.getLogger("intunnel.relay")
        log.info("listening on the socket systemd passed (intunnel-relay.socket): %s port %d", *bound)
        if settings.relay_address != (bound[0], bound[1]):
            log.warning("setting 'relay_listen' is %s but intunnel-relay.socket listens on %s port %d: the "
                        "socket is used; make its ListenStream= the same address (doctor probes relay_listen)",
                        settings.relay_listen, *bound)
    netio.run(serve(Relay(settings), sock=sock))
    return 0
