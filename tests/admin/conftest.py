"""Fixtures for the admin CLI: an isolated config, and `intunnel-admin` run as a real subprocess."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from intunnel.models import open_database
from intunnel.settings import load_settings

CONSOLE_SCRIPT = Path(sys.executable).with_name("intunnel-admin")


def admin_command() -> list[str]:
    """The venv's console script, or `python -m` when the package isn't installed as one."""
    if CONSOLE_SCRIPT.exists():
        return [str(CONSOLE_SCRIPT)]
    return [sys.executable, "-m", "intunnel.admin.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Admin:
    """One InTunnel installation in a temp dir, driven through `intunnel-admin`."""

    def __init__(self, root: Path, domain: str = "example.test", database_url: str = "",
                 password: str | None = None):
        """``database_url`` empty: the data dir's SQLite file.  ``password``: written to a
        ``database_password_file`` (the URL then has none), as an operator would."""
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.data_dir = root / "data"
        self.web_port, self.relay_port = free_port(), free_port()
        self.config = root / "intunnel.toml"
        self.database_url = database_url
        database = f'database_url = "{database_url}"\n' if database_url else ""
        if password is not None:
            secret = root / "db-password"
            secret.write_text(password + "\n")
            secret.chmod(0o600)
            database += f'database_password_file = "{secret}"\n'
        self.config.write_text(
            f'data_dir = "{self.data_dir}"\n'
            f'domain = "{domain}"\n'
            f'web_listen = "127.0.0.1:{self.web_port}"\n'
            f'relay_listen = "127.0.0.1:{self.relay_port}"\n' + database)
        # The machine's INTUNNEL_* must not leak in; a cron-like minimal environment.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("INTUNNEL_")}

    @property
    def settings(self):
        return load_settings(self.config, env={})

    @property
    def db_path(self) -> Path:
        return self.settings.db_path

    @property
    def backup_dir(self) -> Path:
        return self.settings.backup_path

    def run(self, *args: str, input: str | None = None, env: dict | None = None,
            config: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = admin_command() + (["--config", str(self.config)] if config else []) + list(args)
        return subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                              env={**self.env, **(env or {})},
                              stdin=subprocess.DEVNULL if input is None else None)

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(admin_command() + ["--config", str(self.config), *args], env=self.env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    def ok(self, *args: str, **kw) -> subprocess.CompletedProcess:
        r = self.run(*args, **kw)
        assert r.returncode == 0, f"{args}: rc={r.returncode} stderr={r.stderr!r}"
        assert "Traceback" not in r.stderr
        return r

    def json(self, *args: str, **kw):
        return json.loads(self.ok(*args, "--json", **kw).stdout)

    def fails(self, *args: str, code: int = 1, match: str = "", **kw) -> str:
        """Run, expect exit ``code`` and exactly one clear line on stderr containing ``match``."""
        r = self.run(*args, **kw)
        assert r.returncode == code, f"{args}: rc={r.returncode} stdout={r.stdout!r} stderr={r.stderr!r}"
        lines = r.stderr.strip().splitlines()
        assert "Traceback" not in r.stderr
        assert len(lines) == 1, r.stderr
        assert lines[0].startswith("intunnel-admin: error: "), lines[0]
        assert match.lower() in lines[0].lower(), (match, lines[0])
        return lines[0]

    def create_user(self, email: str, username: str, password: str = "correct horse", *extra: str):
        return self.ok("user", "create", "--email", email, "--username", username, "--password-stdin",
                       *extra, input=password + "\n")

    def open_models(self):
        """Bind the models in this (test) process to the installation's database."""
        db = open_database(self.settings)
        db.connect(reuse_if_open=True)
        return db


def pg_query(url: str, sql: str, params=None) -> list:
    """Run one statement on a PostgreSQL database (URL with its password) and commit; its rows."""
    import psycopg2
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            rows = cur.fetchall() if cur.description else []
        conn.commit()
        return rows
    finally:
        conn.close()


@pytest.fixture
def admin(tmp_path, db_backend, request):
    """An installation on the backend under test; on PostgreSQL an empty database
    (``db migrate`` makes the schema) and the password in a database_password_file."""
    if db_backend == "postgresql":
        from support.postgres import PASSWORD
        cluster = request.getfixturevalue("postgres_cluster")
        url = cluster.new_database(migrated=False, password=False)
        request.addfinalizer(lambda: cluster.drop_database(url))
        a = Admin(tmp_path, database_url=url, password=PASSWORD)
    else:
        a = Admin(tmp_path)
    yield a
    from intunnel.models import database
    if database.obj is not None and not database.is_closed():
        database.close()


@pytest.fixture
def in_process(monkeypatch):
    """For calling ``main()`` in this process: the machine's INTUNNEL_* must not leak in."""
    for key in list(os.environ):
        if key.startswith("INTUNNEL_"):
            monkeypatch.delenv(key)


@pytest.fixture
def installed(admin):
    """An installation with a migrated database and an admin account."""
    admin.ok("db", "migrate")
    admin.create_user("root@example.test", "root", "correct horse", "--admin")
    return admin


class HealthHandler(http.server.BaseHTTPRequestHandler):
    domain = "example.test"

    def do_GET(self):
        host = (self.headers.get("Host") or "").split(":")[0]
        if self.path == "/healthz" or (self.path == "/_intunnel/healthz" and host == self.domain):
            body = json.dumps({"status": "ok", "agents": 0}).encode()
            self.send_response(200)
        else:
            body = b'{"error": true}'
            self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_services():
    """Start stand-ins answering the web's and relay's health endpoints on given ports."""
    servers = []

    def start(*ports: int):
        for port in ports:
            server = http.server.ThreadingHTTPServer(("127.0.0.1", port), HealthHandler)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            servers.append(server)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
