"""An InTunnel relay and clients as real subprocesses, for the bench and the heavy tests.

Subprocesses (``intunnel relay``, ``intunnel http``) rather than in-process
servers so that memory (VmRSS, VmHWM from /proc) is each service's own, and a
restart is a real process restart.  Settings go through a TOML config file,
exactly like production; the database is a real SQLite file prepared here with
the project's own business rules.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from . import load, procs

PYTHON = sys.executable
REPO = Path(__file__).resolve().parent.parent


def clean_env(home: Path) -> dict[str, str]:
    """The environment for our subprocesses: no INTUNNEL_* leaking in, private config home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTUNNEL_")}
    env["XDG_CONFIG_HOME"] = str(home / "xdg-config")
    env["PYTHONUNBUFFERED"] = "1"
    # `python -m bench.agents` / `bench.with_uvloop` from any working directory
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def parse_setting(text: str) -> tuple:
    """``NAME=VALUE`` as the settings table types it (the config file is TOML)."""
    from intunnel.settings import BY_NAME
    name, sep, value = text.partition("=")
    if not sep or name not in BY_NAME:
        raise ValueError(f"--setting takes NAME=VALUE with a setting's name, got {text!r}")
    kind = BY_NAME[name].type
    if kind is bool:
        return name, value.lower() in ("1", "true", "yes", "on")
    return name, kind(value) if kind in (int, float) else value


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def http_request(port: int, host: str, path: str = "/", method: str = "GET", tls: bool = False,
                 headers: dict[str, str] | None = None, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One small HTTP/1.1 request with ``Connection: close``; returns (status, headers, body)."""
    with load.connect(port, tls, timeout) as sock:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode())
        return load.read_response(sock, head_only_body=method == "HEAD")



def metric_families(metrics_port: int) -> list:
    """What a relay's /metrics listener serves now, parsed (prometheus_client's metric families)."""
    import http.client
    from prometheus_client.parser import text_string_to_metric_families
    conn = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return list(text_string_to_metric_families(text))

class Stack:
    """A data dir with a database, one relay subprocess and any number of clients."""

    def __init__(self, home: Path, relay_port: int | None = None, settings: dict | None = None,
                 domain: str = "localhost", uvloop: bool = False):
        from intunnel.settings import load_settings, prepare_data_dir

        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.relay_port = relay_port or procs.free_port()
        self.relay_socket: socket.socket | None = None   # hold_relay_port()
        self.domain = domain
        values = {"data_dir": str(self.home / "data"), "domain": domain,
                  "relay_listen": f"127.0.0.1:{self.relay_port}", "web_listen": "127.0.0.1:0",
                  "log_level": "warning", **(settings or {})}
        self.config = self.home / "intunnel.toml"
        self.config.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in values.items()))
        self.settings = prepare_data_dir(load_settings(self.config, env={}))
        self.env = clean_env(self.home)
        self.relay: subprocess.Popen | None = None
        self.clients: list[subprocess.Popen] = []
        self._user = None
        self._db = None
        self._logs = 0
        # The command that runs `intunnel ...`; bench.with_uvloop swaps the event loop (experiment).
        self.intunnel = [PYTHON, "-m", "bench.with_uvloop" if uvloop else "intunnel.cli"]

    # --- database ---
    def _open_db(self):
        from intunnel.models import database, open_database
        if self._db is None or database.obj is not self._db:
            self._db = open_database(self.settings)
        database.connect(reuse_if_open=True)

    def add_tunnel(self, subdomain: str, local_port: int) -> str:
        """Create a tunnel (and the owner on first use); return its token."""
        from intunnel import accounts, tunnels
        self._open_db()
        if self._user is None:
            self._user = accounts.create_user("bench@example.com", "bench", "bench-password-123")
        return tunnels.create(self.settings, self._user, subdomain, subdomain, local_port).token

    def add_tcp_tunnel(self, name: str, local_port: int) -> tuple[str, int]:
        """Create a TCP tunnel (a port of relay_tcp_ports); return its token and public port."""
        from intunnel import accounts, tunnels
        self._open_db()
        if self._user is None:
            self._user = accounts.create_user("bench@example.com", "bench", "bench-password-123")
        tunnel = tunnels.create(self.settings, self._user, name, None, local_port, protocol="tcp")
        return tunnel.token, tunnel.remote_port

    def add_many_tunnels(self, prefix: str, count: int, local_port: int) -> list[str]:
        """``count`` tunnels in one transaction (for the idle-agent figure)."""
        from intunnel.models import Tunnel, database
        from intunnel.security import new_tunnel_token
        from intunnel.timeutil import utcnow
        self.add_tunnel(f"{prefix}-owner", local_port)
        tokens = [new_tunnel_token() for _ in range(count)]
        now = utcnow()
        with database.atomic():
            for i in range(0, count, 200):
                Tunnel.insert_many([{"owner": self._user, "name": f"{prefix}{j}", "subdomain": f"{prefix}{j}",
                                     "local_port": local_port, "token": tokens[j], "created_at": now}
                                    for j in range(i, min(count, i + 200))]).execute()
        return tokens

    def close_db(self):
        if self._db is not None and not self._db.is_closed():
            self._db.close()

    # --- processes ---
    def _log(self, name: str) -> Path:
        self._logs += 1
        return self.home / f"{self._logs:02d}-{name}.log"

    @property
    def relay_url(self) -> str:
        return f"http://{self.domain}:{self.relay_port}"

    def public_host(self, subdomain: str) -> str:
        return f"{subdomain}.{self.domain}:{self.relay_port}"

    def hold_relay_port(self) -> None:
        """Keep the relay's listening socket in this process, as intunnel-relay.socket does on a
        deployed host: every relay started after this takes it by socket activation."""
        from intunnel.relay.server import ACCEPT_BACKLOG
        self.relay_socket = socket.create_server(("127.0.0.1", self.relay_port), backlog=ACCEPT_BACKLOG)

    def launch_relay(self) -> subprocess.Popen:
        """Start a relay process (on the held socket when there is one); don't wait for it."""
        argv, fds = [*self.intunnel, "relay", "--config", str(self.config)], ()
        if self.relay_socket is not None:
            argv, fds = procs.socket_activated(argv, self.relay_socket), (self.relay_socket.fileno(),)
        self.relay = procs.start(argv, self._log("relay"), env=self.env, pass_fds=fds)
        return self.relay

    def start_relay(self) -> subprocess.Popen:
        self.launch_relay()
        procs.wait_until(lambda: self.relay.poll() is not None or self.relay_healthy(), 20, "the relay to listen")
        if self.relay.poll() is not None:
            raise RuntimeError(f"relay exited with {self.relay.returncode}: {self.logs()}")
        return self.relay

    def relay_healthy(self) -> bool:
        try:
            return http_request(self.relay_port, f"{self.domain}:{self.relay_port}", "/_intunnel/healthz",
                                timeout=1)[0] == 200
        except (OSError, ValueError):
            return False

    def agents(self) -> int:
        import json
        status, _, body = http_request(self.relay_port, f"{self.domain}:{self.relay_port}", "/_intunnel/healthz")
        return int(json.loads(body)["agents"]) if status == 200 else -1

    def stop_relay(self, sig: int = signal.SIGTERM) -> None:
        procs.stop(self.relay, timeout=10, sig=sig)

    def start_client(self, local_port: int, token: str, server: str | None = None,
                     extra: list[str] = (), env: dict[str, str] | None = None, kind: str = "http") -> subprocess.Popen:
        argv = [*self.intunnel, kind, str(local_port), "--server", server or self.relay_url,
                "--token", token, *extra]
        proc = procs.start(argv, self._log("client"), env={**self.env, **(env or {})})
        self.clients.append(proc)
        return proc

    def wait_serving(self, port: int, host: str, path: str = "/", tls: bool = False, timeout: float = 20,
                     watch: subprocess.Popen | None = None) -> float:
        """Poll until a request through the tunnel gets a non-5xx answer; return the seconds it took."""
        import time
        start = time.monotonic()

        def ok():
            if watch is not None and watch.poll() is not None:
                raise RuntimeError(f"process exited with {watch.returncode}: {self.logs()}")
            try:
                return http_request(port, host, path, tls=tls, timeout=2)[0] < 500
            except (OSError, ValueError):
                return False
        try:
            procs.wait_until(ok, timeout, f"the tunnel {host} to serve", interval=0.01)
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n{self.logs()}") from None
        return time.monotonic() - start

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.home.glob("*.log")))

    def close(self) -> None:
        for proc in self.clients:
            procs.stop(proc)
        self.stop_relay()
        if self.relay_socket is not None:
            self.relay_socket.close()
        self.close_db()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
