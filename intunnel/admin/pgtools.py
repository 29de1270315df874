"""PostgreSQL's own client tools for backup and restore: pg_dump, pg_restore, psql.

    tools = find_tools(settings, bindir)       # a pg_dump/pg_restore/psql set that can talk to the server
    tools.dump(settings, path)                 # pg_dump --format=custom into path (one snapshot)
    tools.listing(path)                        # pg_restore --list: the archive's table of contents
    tools.restore(settings, path, schemas)     # into the configured database, in ONE transaction

How the tools are told where and who, with no secret on a command line or in a log:

* ``--dbname`` is the ``database_url`` with its password taken out (libpq reads
  the URL itself, so ``?sslmode=``, ``sslrootcert=``, ``connect_timeout=``...
  apply exactly as for the services);
* the password (from ``database_password_file`` or the URL) goes into a 0600
  ``PGPASSFILE`` in a private temp dir that only the child's environment names,
  removed when the tool exits; inherited ``PG*`` variables are dropped so the
  operator's shell cannot point a tool at another server;
* a tool's error output is reduced to its first error line, with the password
  scrubbed, for the one-line failure.

Versions: pg_dump refuses a server of a newer major version, and pg_restore an
archive from a newer pg_dump.  Among the client tools installed (Debian keeps
each major version in ``/usr/lib/postgresql/N/bin``; else ``PATH``) the one of
the server's major version is used, else the newest newer one; none: a clear
line saying which package to install.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlsplit, urlunsplit

from .. import dburl
from .common import AdminError

TOOLS = ("pg_dump", "pg_restore", "psql")
VERSION_RE = re.compile(r"\(PostgreSQL\) (\d+)(?:\.(\d+))?")
TOOL_TIMEOUT = 6 * 3600  # a bound for a stuck server, not an expected duration
ARCHIVE_MAGIC = b"PGDMP"
# A TOC line of `pg_restore --list`: "215; 1259 16386 TABLE public user intunnel"
TOC_RE = re.compile(r"^\d+; \d+ \d+ (?P<kind>[A-Z][A-Z ]*?) (?P<schema>\S+) (?P<name>\S+)(?: (?P<owner>\S+))?$")


def is_archive(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(ARCHIVE_MAGIC)) == ARCHIVE_MAGIC


def major_of(version_output: str) -> int | None:
    """16 from ``pg_dump (PostgreSQL) 16.4 (Debian 16.4-1)``; 9 for 9.6 (old numbering)."""
    m = VERSION_RE.search(version_output)
    return int(m.group(1)) if m else None


def server_major(number: int) -> int:
    """Major version from libpq's server_version number (150010 -> 15; 90624 -> 9)."""
    return number // 10000


def choose(available: dict[int, Path], server: int) -> Path | None:
    """The bindir to use: the server's major version, else the newest newer one."""
    if server in available:
        return available[server]
    newer = [major for major in available if major > server]
    return available[max(newer)] if newer else None


def candidate_bindirs() -> list[Path]:
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/pg_dump")]
    on_path = shutil.which("pg_dump")
    if on_path:
        found.append(Path(on_path).resolve().parent)
    return found


def tool_major(bindir: Path) -> int | None:
    """pg_dump's major version in ``bindir``, None when it is missing or says nothing."""
    exe = bindir / "pg_dump"
    if not exe.is_file():
        return None
    try:
        r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL)
    except OSError:
        return None
    return major_of(r.stdout) if r.returncode == 0 else None


def connect_url(url: str) -> str:
    """The ``database_url`` as libpq takes it: postgresql:// and no password."""
    parts = urlsplit("postgresql" + url[url.index(":"):])
    userinfo, at, host = parts.netloc.rpartition("@")
    if at:
        userinfo = userinfo.partition(":")[0]
        netloc = f"{userinfo}@{host}"
    else:
        netloc = host
    return urlunsplit(parts._replace(netloc=netloc))


def password_of(settings) -> str | None:
    if settings.database_password_file:
        return dburl.read_password_file(settings.database_password_file)
    password = urlsplit(settings.db_url).password
    return unquote(password) if password is not None else None


def _passfile_field(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:")


@contextlib.contextmanager
def tool_env(password: str | None) -> Iterator[dict]:
    """The environment for a tool: no inherited PG*, the password in a private PGPASSFILE."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = str(dburl.DEFAULT_CONNECT_TIMEOUT)  # the URL's connect_timeout wins
    env["PGOPTIONS"] = "-c client_min_messages=warning"
    env["PGAPPNAME"] = "intunnel-admin"
    with tempfile.TemporaryDirectory(prefix="intunnel-pg-") as private:  # mode 0700
        if password is not None:
            passfile = Path(private) / "pgpass"
            fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"*:*:*:*:{_passfile_field(password)}\n")
            env["PGPASSFILE"] = str(passfile)
        else:
            env["PGPASSFILE"] = os.devnull  # not ~/.pgpass of whoever runs this
        yield env


def first_error(stderr: str, secret: str | None) -> str:
    """The line that says what went wrong, without the password."""
    lines = [" ".join(line.split()) for line in stderr.splitlines() if line.strip()]
    chosen = next((line for line in lines if "error:" in line.lower() or "fatal:" in line.lower()),
                  lines[0] if lines else "no error output")
    if secret:
        chosen = chosen.replace(secret, dburl.PASSWORD_MASK)
    return chosen


@dataclass(frozen=True)
class Tools:
    bindir: Path
    major: int

    def exe(self, name: str) -> str:
        path = self.bindir / name
        if not path.is_file():
            raise AdminError(f"{path} is missing (install the PostgreSQL {self.major} client tools)")
        return str(path)

    def _run(self, name: str, args: list[str], password: str | None, what: str, **kw) -> subprocess.CompletedProcess:
        with tool_env(password) as env:
            try:
                r = subprocess.run([self.exe(name), *args], env=env, capture_output=True,
                                   timeout=TOOL_TIMEOUT, **({"stdin": subprocess.DEVNULL} | kw))
            except subprocess.TimeoutExpired:
                raise AdminError(f"{what}: {name} did not finish within {TOOL_TIMEOUT} s") from None
        if r.returncode != 0:
            stderr = r.stderr.decode(errors="replace") if isinstance(r.stderr, bytes) else r.stderr
            raise AdminError(f"{what}: {name} failed ({first_error(stderr, password)})")
        return r

    def dump(self, settings, target: Path, what: str = "backup") -> None:
        """pg_dump --format=custom of the configured database into ``target`` (overwritten).

        pg_dump reads everything in one repeatable-read transaction: the dump holds
        exactly what was committed when it began, while the services keep writing.
        """
        self._run("pg_dump", ["--format=custom", "--no-password", f"--file={target}",
                              f"--dbname={connect_url(settings.db_url)}"], password_of(settings), what)

    def listing(self, archive: Path, what: str = "backup") -> list[dict]:
        """The archive's table of contents (pg_restore --list), one dict per entry."""
        r = self._run("pg_restore", ["--list", str(archive)], None, what, text=True)
        entries = []
        for line in r.stdout.splitlines():
            m = TOC_RE.match(line.strip())
            if m:
                entries.append(m.groupdict())
        return entries

    def table_data(self, archive: Path, table: str, what: str = "backup") -> list[list[str]]:
        """The rows of one table in the archive, as COPY text fields."""
        r = self._run("pg_restore", ["--data-only", f"--table={table}", "--file=-", str(archive)], None, what,
                      text=True)
        rows, inside = [], False
        for line in r.stdout.splitlines():
            if line.startswith("COPY "):
                inside = True
            elif inside and line == "\\.":
                inside = False
            elif inside:
                rows.append(line.split("\t"))
        return rows

    def restore(self, settings, archive: Path, schemas: list[str], what: str = "restore") -> None:
        """Replace the tables of ``schemas`` with the archive's, all or nothing.

        psql runs one transaction: drop the tables (their sequences and indexes go
        with them) of the schemas the archive has tables in, then pg_restore's
        script (objects owned by the connecting role).  Any error stops psql and
        PostgreSQL rolls the whole transaction back: the database is as it was.
        """
        password = password_of(settings)
        drop = "\n".join(
            "DO $intunnel$ DECLARE r record; BEGIN\n"
            "  FOR r IN SELECT schemaname, tablename FROM pg_catalog.pg_tables "
            f"WHERE schemaname = {quote_literal(schema)} LOOP\n"
            "    EXECUTE format('DROP TABLE IF EXISTS %I.%I CASCADE', r.schemaname, r.tablename);\n"
            "  END LOOP;\n"
            "END $intunnel$;" for schema in schemas)
        preamble = f"BEGIN;\n{drop}\n".encode()
        with tool_env(password) as env:
            script = subprocess.Popen([self.exe("pg_restore"), "--no-owner", "--no-privileges", "--file=-",
                                       str(archive)], env=env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            psql = subprocess.Popen([self.exe("psql"), "--no-psqlrc", "--quiet", "--no-password",
                                     "--set=ON_ERROR_STOP=1", "--file=-",
                                     f"--dbname={connect_url(settings.db_url)}"],
                                    env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
            try:
                try:
                    psql.stdin.write(preamble)
                    shutil.copyfileobj(script.stdout, psql.stdin, 1024 * 1024)
                    psql.stdin.write(b"COMMIT;\n")
                except BrokenPipeError:
                    pass  # psql stopped at an error: reported below
                finally:
                    with contextlib.suppress(BrokenPipeError):
                        psql.stdin.close()
                script_err = script.stderr.read().decode(errors="replace")
                psql_err = psql.stderr.read().decode(errors="replace")
                script_rc, psql_rc = script.wait(TOOL_TIMEOUT), psql.wait(TOOL_TIMEOUT)
            finally:
                for proc in (script, psql):
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
                    for stream in (proc.stdout, proc.stderr):
                        if stream is not None:
                            stream.close()
        if script_rc != 0:
            raise AdminError(f"{what}: pg_restore failed ({first_error(script_err, password)}); "
                             "the database was not changed")
        if psql_rc != 0:
            raise AdminError(f"{what}: psql failed ({first_error(psql_err, password)}); "
                             "the transaction was rolled back, the database was not changed")


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def find_tools(settings, bindir: str | None = None) -> Tools:
    """Client tools able to dump and restore this server; AdminError saying what to install."""
    from ..models import connect_settings
    db = connect_settings(settings)
    try:
        db.connect()
        server = server_major(db.server_version or 0)
    finally:
        db.close()
    if bindir:
        major = tool_major(Path(bindir))
        if major is None:
            raise AdminError(f"--pg-bindir {bindir}: no working pg_dump there")
        available = {major: Path(bindir)}
    else:
        available = {}
        for candidate in candidate_bindirs():
            major = tool_major(candidate)
            if major is not None:
                available.setdefault(major, candidate)
    chosen = choose(available, server)
    if chosen is None:
        if not available:
            raise AdminError(f"pg_dump is not installed: install the PostgreSQL {server} client tools "
                             f"(Debian: apt-get install postgresql-client-{server})")
        newest = max(available)
        raise AdminError(f"pg_dump {newest} cannot dump a PostgreSQL {server} server (it refuses newer "
                         f"servers): install postgresql-client-{server} or newer, or give --pg-bindir")
    return Tools(chosen, [m for m, d in available.items() if d == chosen][0])
