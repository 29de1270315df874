"""Which database: the ``database_url`` setting, checked, shown safely, and opened.

``sqlite:///<path>`` (the default, ``<data_dir>/intunnel.db``; an absolute path
gives four slashes) or ``postgresql://user[:password]@host[:port]/dbname``
(``postgres://`` too), with query parameters (``?sslmode=require``,
``connect_timeout=``...) handed to the driver as they are.  The password may
instead come from ``database_password_file``.  Opening goes through peewee's
``playhouse.db_url``; PostgreSQL through psycopg2, peewee's default driver.

Pure except ``make_database`` (reads the password file): no connection is made
here.  A bad value is a ``ConfigError`` naming the setting, never a traceback.
peewee is imported by ``make_database`` (and ``import_peewee``), not here: reading the
settings loads no database library.
"""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

from .errors import ConfigError

SQLITE, POSTGRESQL = "sqlite", "postgresql"
SCHEMES = {"sqlite": SQLITE, "postgresql": POSTGRESQL, "postgres": POSTGRESQL}
# Without it libpq waits for an unreachable server as long as TCP does.
DEFAULT_CONNECT_TIMEOUT = 10
PASSWORD_MASK = "***"


def backend_of(url: str) -> str:
    """``sqlite`` or ``postgresql``; ConfigError for anything else."""
    scheme = url.partition(":")[0].lower()
    if scheme not in SCHEMES or "://" not in url:
        raise ConfigError(f"setting 'database_url': expected sqlite:///PATH or "
                          f"postgresql://USER@HOST:PORT/DBNAME, got {redact_url(url)!r}")
    return SCHEMES[scheme]


def _split(url: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError as e:
        raise ConfigError(f"setting 'database_url': {e} in {redact_url(url)!r}") from None
    return parts


def check_url(url: str) -> str:
    """The backend of a well-formed ``database_url``; ConfigError naming what is wrong."""
    backend = backend_of(url)
    parts = _split(url)
    if backend == SQLITE:
        if parts.netloc or not parts.path[1:]:
            raise ConfigError(f"setting 'database_url': a SQLite URL is sqlite:///PATH "
                              f"(sqlite:////abs/path for an absolute one), got {redact_url(url)!r}")
    elif not parts.path.strip("/") or "/" in parts.path.strip("/"):
        raise ConfigError(f"setting 'database_url': no database name in {redact_url(url)!r} "
                          "(postgresql://USER@HOST:PORT/DBNAME)")
    return backend


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///`` URL (as playhouse.db_url reads it)."""
    return Path(unquote(urlsplit(url).path[1:]))


def has_password(url: str) -> bool:
    return urlsplit(url).password is not None


def redact_url(url: str) -> str:
    """The URL with its password (if any) replaced by ``***``: safe for logs and messages."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    if password is None:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{PASSWORD_MASK}@{host}"))


def describe(url: str) -> str:
    """Where the data lives, for messages: a file path or a password-free URL."""
    return str(sqlite_path(url)) if backend_of(url) == SQLITE else redact_url(url)


def read_password_file(path: str) -> str:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"setting 'database_password_file': cannot read {path!r} "
                          f"({e.strerror or e})") from None
    password = text.rstrip("\r\n")
    if not password:
        raise ConfigError(f"setting 'database_password_file': {path!r} is empty")
    return password


# Drivers peewee imports at its own import when they are installed, each of no use to a
# process whose database is SQLite (psycopg2 maps libpq and its own OpenSSL: about 10 MiB).
OTHER_DRIVERS = ("psycopg2", "psycopg", "psycopg2cffi", "pymysql", "MySQLdb")
_sqlite_only = False    # peewee was imported here without them


def import_peewee(url: str):
    """peewee, imported for a process whose one database is ``url``: for SQLite without the
    other databases' drivers (``OTHER_DRIVERS``), which peewee otherwise imports whenever they
    are installed.  Only for a process that opens no other database (the relay: its
    ``database_url`` is fixed at start); peewee already imported is returned as it is."""
    if "peewee" in sys.modules or backend_of(url) != SQLITE:
        import peewee
        return peewee
    global _sqlite_only
    hidden = [name for name in OTHER_DRIVERS if name not in sys.modules]
    _sqlite_only = "psycopg2" in hidden
    for name in hidden:
        sys.modules[name] = None    # `import name` raises ImportError: peewee takes it as not installed
    try:
        import peewee
    finally:
        for name in hidden:
            sys.modules.pop(name, None)   # a later import of one of them works as usual
    return peewee


def make_database(url: str, password_file: str = "", sqlite_pragmas: dict | None = None) -> pw.Database:
    """An unconnected peewee database for ``url`` (not bound to the models)."""
    import peewee as pw
    backend = check_url(url)
    if backend == SQLITE:
        return pw.SqliteDatabase(str(sqlite_path(url)), pragmas=sqlite_pragmas or {},
                                 check_same_thread=False)
    params: dict = {}
    if password_file:
        if has_password(url):
            raise ConfigError("settings 'database_url' and 'database_password_file': "
                              "give the password in one of them, not both")
        params["password"] = read_password_file(password_file)
    if "connect_timeout" not in (urlsplit(url).query or ""):
        params["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT
    # The URL's scheme says PostgreSQL; db_url knows it as postgresql://.
    normalized = "postgresql" + url[url.index(":"):]
    if _sqlite_only:
        raise ConfigError("setting 'database_url': this process loaded its database library for SQLite "
                          "only (dburl.import_peewee) and cannot open PostgreSQL")
    from playhouse import db_url
    return db_url.connect(normalized, unquote_password=True, unquote_user=True, **params)


def scrub(text: str, db: pw.Database | None) -> str:
    """An error message with the database's password (if any) taken out."""
    password = getattr(db, "connect_params", {}).get("password") if db is not None else None
    if password:
        text = text.replace(str(password), PASSWORD_MASK)
    return text
