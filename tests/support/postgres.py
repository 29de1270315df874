"""A throwaway PostgreSQL cluster for one test session, and a fresh database per test.

    cluster = PostgresCluster.start()        # initdb + postgres on a free loopback port
    url = cluster.new_database()             # CREATE DATABASE ... TEMPLATE (migrated): ~20 ms
    url = cluster.new_database(migrated=False)   # empty, for migration tests
    cluster.drop_database(url)
    cluster.stop()                           # server stopped, every file removed

Nothing depends on a system service: Debian's binaries (``/usr/lib/postgresql/N/bin``
or ``pg_config --bindir``) run on a data dir and a Unix socket dir inside one temp
dir, as the ``postgres`` user through ``runuser`` when the tests run as root
(PostgreSQL refuses to run as root).  fsync is off: the data is thrown away.

Two roles: ``postgres`` (superuser, trust over the Unix socket: the fixture's own
administration) and ``intunnel`` (the application's, password over TCP on
127.0.0.1 as in production, owner of every test database).  URLs handed to tests
carry the password unless asked not to (``password=False`` with ``PASSWORD`` in a
``database_password_file``).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

APP_USER = "intunnel"
PASSWORD = "pg-test-secret-9f3a"  # the app role's password; a test checks it never shows
TEMPLATE = "intunnel_template"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
SERVER_OPTIONS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
    "log_min_error_statement": "panic",  # a test's expected IntegrityError is not news
}


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries on this machine (scripts/test.sh installs them)."""


def find_bindir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    if candidates:
        return Path(candidates[-1]).parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip()
        if out and (Path(out) / "initdb").exists():
            return Path(out)
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise PostgresUnavailable("PostgreSQL is not installed (apt-get install postgresql)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresCluster:
    def __init__(self, root: Path, bindir: Path):
        self.root = root
        self.bindir = bindir
        self.data = root / "data"
        self.sockets = root / "sock"
        self.log = root / "server.log"
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._names = itertools.count(1)
        self._as_postgres = os.geteuid() == 0

    # --- lifecycle ---
    @classmethod
    def start(cls) -> "PostgresCluster":
        bindir = find_bindir()
        root = Path(tempfile.mkdtemp(prefix="intunnel-pg-"))
        cluster = cls(root, bindir)
        atexit.register(cluster.stop)  # also on an interrupted session
        try:
            cluster._initdb()
            cluster._start_server()
            cluster._setup_roles()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _cmd(self, *argv: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if self._as_postgres else list(argv)

    def _initdb(self) -> None:
        if self._as_postgres:
            import pwd
            pg = pwd.getpwnam("postgres")
            os.chmod(self.root, 0o755)
            os.chown(self.root, pg.pw_uid, pg.pw_gid)
        self.sockets.mkdir(mode=0o755)
        if self._as_postgres:
            os.chown(self.sockets, pg.pw_uid, pg.pw_gid)
        r = subprocess.run(self._cmd(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                                     "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                                     "--locale=C", "--no-sync", "--no-instructions"),
                           capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed ({r.returncode}): {r.stderr or r.stdout}")

    def _start_server(self) -> None:
        options = [arg for k, v in SERVER_OPTIONS.items() for arg in ("-c", f"{k}={v}")]
        for attempt in range(5):  # a port taken between choosing and binding: choose again
            self.port = _free_port()
            log = open(self.log, "ab")
            self.proc = subprocess.Popen(
                self._cmd(str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                          "-k", str(self.sockets), *options),
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
            log.close()
            if self._wait_ready():
                return
            self._stop_server()
        raise RuntimeError(f"PostgreSQL did not start; its log:\n{self.log.read_text(errors='replace')[-3000:]}")

    def _wait_ready(self) -> bool:
        import psycopg2
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                psycopg2.connect(**self._admin_params()).close()
                return True
            except psycopg2.OperationalError:
                time.sleep(0.05)  # polling a condition (the server accepting connections), with a deadline
        return False

    def _stop_server(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)  # fast shutdown: sessions are rolled back
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def stop(self) -> None:
        """Stop the server and remove every file of the cluster (idempotent)."""
        self._stop_server()
        if self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)

    # --- administration (superuser over the Unix socket) ---
    def _admin_params(self, dbname: str = "postgres") -> dict:
        return {"host": str(self.sockets), "port": self.port, "user": "postgres", "dbname": dbname}

    def execute(self, sql: str, params=None, dbname: str = "postgres") -> list:
        import psycopg2
        conn = psycopg2.connect(**self._admin_params(dbname))
        try:
            conn.autocommit = True  # CREATE/DROP DATABASE refuse a transaction
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def _setup_roles(self) -> None:
        from psycopg2 import sql
        import psycopg2
        conn = psycopg2.connect(**self._admin_params())
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(APP_USER), sql.Literal(PASSWORD)))
        finally:
            conn.close()
        self._create(TEMPLATE, "template0")
        from intunnel import dburl, migrations
        db = dburl.make_database(self.url(TEMPLATE))
        with db.connection_context():
            migrations.migrate(db)
        db.close()

    def _create(self, name: str, template: str) -> None:
        # FILE_COPY (PostgreSQL 15+): ~0.1 s for a small template here, WAL_LOG ~0.2 s.
        strategy = " STRATEGY FILE_COPY" if self.version >= 150000 else ""
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" OWNER "{APP_USER}"{strategy}')

    @property
    def version(self) -> int:
        if not hasattr(self, "_version"):
            self._version = int(self.execute("SHOW server_version_num")[0][0])
        return self._version

    # --- for tests ---
    def url(self, dbname: str, password: bool = True, **query: str) -> str:
        auth = f"{APP_USER}:{PASSWORD}" if password else APP_USER
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}" + (f"?{qs}" if qs else "")

    def new_database(self, migrated: bool = True, password: bool = True) -> str:
        """A fresh database owned by the app role; its URL (migrated: from the template)."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self._create(name, TEMPLATE if migrated else "template0")
        return self.url(name, password=password)

    def drop_database(self, url_or_name: str) -> None:
        name = url_or_name.rsplit("/", 1)[-1].split("?", 1)[0]
        # FORCE: a server process a test left running must not keep the database alive.
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def databases(self) -> list[str]:
        rows = self.execute("SELECT datname FROM pg_database WHERE NOT datistemplate AND datname <> 'postgres' "
                            "AND datname <> %s", (TEMPLATE,))
        return sorted(r[0] for r in rows)
