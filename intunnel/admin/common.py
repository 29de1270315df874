"""What every admin command shares: settings, the database, output, prompts, lookups."""

from __future__ import annotations

import functools
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import peewee as pw

from .. import dburl
from ..models import ApiToken, Tunnel, User, open_database
from ..settings import SECRET_KEY_FILE, load_settings, prepare_data_dir
from .table import format_pairs, format_table

EXIT_FAILURE, EXIT_USAGE = 1, 2


class AdminError(Exception):
    """A failure reported as one line on stderr; ``exit_code`` 1 (failure) or 2 (usage)."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE):
        super().__init__(message)
        self.exit_code = exit_code


class Context:
    """Per-invocation state: parsed arguments, settings (loaded on first use), output."""

    def __init__(self, args, stdout=None, stdin=None):
        self.args = args
        self.json = bool(getattr(args, "json", False))
        self.verbose = bool(getattr(args, "verbose", False))
        self.stdout = stdout or sys.stdout
        self.stdin = stdin or sys.stdin
        self.db: pw.Database | None = None

    @functools.cached_property
    def settings(self):
        return load_settings(getattr(self.args, "config", None))

    # --- database ---
    def open_db(self, create: bool = False, migrate: bool = True) -> pw.Database:
        """Open the configured database; a missing SQLite file is an error unless ``create``.

        Refusing to create by default catches a wrong ``--config`` before it
        silently makes an empty database somewhere else.  A PostgreSQL database
        is made by its administrator (or the playbook); this only migrates it.
        """
        settings = self.settings
        if create:
            prepare_data_dir(settings)  # as the services do: data dir and secret key
            data_dir = Path(settings.data_dir)
            give_to_owner_of(data_dir, [data_dir / SECRET_KEY_FILE])
        if settings.db_backend != "sqlite":
            self.db = open_database(settings, migrate=migrate)
            self.db.connect(reuse_if_open=True)
            return self.db
        path = settings.db_path
        if create:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not path.exists():
                # It holds password hashes: private from the first byte.
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        elif not path.exists():
            raise AdminError(f"database {path} does not exist (wrong --config? "
                             "'intunnel-admin db migrate' creates it)")
        self.db = open_database(settings, migrate=migrate)
        self.db.connect(reuse_if_open=True)
        give_to_owner_of(path.parent, sqlite_files(path))
        return self.db

    @property
    def db_description(self) -> str:
        """The database for messages: its file, or its URL without the password."""
        return dburl.describe(self.settings.db_url)

    def close(self) -> None:
        if self.db is not None and not self.db.is_closed():
            self.db.close()

    # --- output ---
    def out(self, text: str = "") -> None:
        print(text, file=self.stdout)

    def note(self, text: str) -> None:
        """Only with -v: cron runs stay silent on success."""
        if self.verbose:
            print(text, file=self.stdout)

    def emit_json(self, data: Any) -> None:
        print(json.dumps(data, indent=2, default=str), file=self.stdout)

    def emit_list(self, key: str, items: list[dict], headers: Sequence[str], rows: list[Sequence[Any]]) -> None:
        if self.json:
            self.emit_json({key: items})
        else:
            self.out(format_table(headers, rows))

    def emit_object(self, key: str, item: dict, pairs: Sequence[tuple[str, Any]]) -> None:
        if self.json:
            self.emit_json({key: item})
        else:
            self.out(format_pairs(pairs))

    def done(self, message: str, data: dict | None = None) -> None:
        """Result of an action: a sentence for people, an object for --json."""
        if self.json:
            self.emit_json({"ok": True, "message": message, **(data or {})})
        else:
            self.out(message)

    # --- prompts ---
    def read_new_password(self, from_stdin: bool) -> str:
        if from_stdin:
            line = self.stdin.readline()
            password = line.rstrip("\r\n")
            if not password:
                raise AdminError("--password-stdin: no password on standard input", EXIT_USAGE)
            return password
        if not self.stdin.isatty():
            raise AdminError("no terminal to ask for the password: pipe it in with --password-stdin", EXIT_USAGE)
        first = getpass.getpass("New password: ")
        second = getpass.getpass("New password (again): ")
        if first != second:
            raise AdminError("the two passwords differ; nothing changed")
        return first

    def confirm(self, question: str, assume_yes: bool) -> None:
        if assume_yes:
            return
        if not self.stdin.isatty():
            raise AdminError(f"{question} Refusing without --yes (no terminal to ask)", EXIT_USAGE)
        print(f"{question} [y/N] ", end="", file=self.stdout, flush=True)
        answer = self.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            raise AdminError("aborted; nothing changed")


# --- lookups: one clear line when the thing does not exist ---

def find_user(ident: str) -> User:
    """A user by email, username or numeric id."""
    from ..accounts import find_by_login
    user = find_by_login(ident)
    if user is None and ident.isascii() and ident.isdigit():
        user = User.get_or_none(User.id == int(ident))
    if user is None:
        raise AdminError(f"unknown user '{ident}'")
    return user


def find_tunnel(ident: str) -> Tunnel:
    """A tunnel by numeric id or subdomain."""
    tunnel = None
    if ident.isascii() and ident.isdigit():
        tunnel = Tunnel.get_or_none(Tunnel.id == int(ident))
    if tunnel is None:
        tunnel = Tunnel.get_or_none(Tunnel.subdomain == ident.strip().lower())
    if tunnel is None:
        raise AdminError(f"unknown tunnel '{ident}' (give its id or subdomain)")
    return tunnel


def find_token(ident: str) -> ApiToken:
    """An API token by numeric id or its (unique) prefix."""
    if ident.isascii() and ident.isdigit():
        token = ApiToken.get_or_none(ApiToken.id == int(ident))
        if token:
            return token
    matches = list(ApiToken.select().where(ApiToken.prefix == ident).limit(2))
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise AdminError(f"prefix '{ident}' matches several tokens; give the id")
    raise AdminError(f"unknown API token '{ident}' (give its id or prefix)")


# --- file ownership: files made by root belong to the service user ---

def sqlite_files(db_path: Path) -> list[Path]:
    return [db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")]


def owner_of(directory: Path) -> tuple[int, int] | None:
    """(uid, gid) to give new files when running as root; None otherwise."""
    if os.geteuid() != 0:
        return None
    try:
        st = os.stat(directory)
    except OSError:
        return None
    return st.st_uid, st.st_gid


def give_to_owner_of(directory: Path, paths: Sequence[Path]) -> None:
    """As root, hand files to the owner of ``directory`` (the service user).

    Otherwise a root-owned database, -wal or -shm file locks the services out.
    """
    owner = owner_of(directory)
    if owner is None:
        return
    for p in paths:
        try:
            st = os.stat(p)
            if (st.st_uid, st.st_gid) != owner:
                os.chown(p, *owner)
        except FileNotFoundError:
            pass


def config_file_in_use(explicit: str | None) -> Path | None:
    """The config file load_settings reads (same rule), or None for defaults + environment."""
    from ..settings import DEFAULT_CONFIG_FILE, ENV_PREFIX
    chosen = explicit or os.environ.get(ENV_PREFIX + "CONFIG")
    if chosen:
        return Path(chosen)
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.exists() else None
