"""File-level database operations for backup and restore: a consistent online
copy, verification, atomic compressed writes, and the admin lock."""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Iterator

from .common import AdminError

BUSY_TIMEOUT = 30.0  # seconds to wait for a writer while starting the copy
GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1024 * 1024


def online_copy(source: Path, target: Path) -> None:
    """Copy a live SQLite database (WAL included) to ``target`` as one consistent snapshot.

    The backup API copying all pages in one step holds a single read
    transaction: in WAL mode writers carry on meanwhile, and the copy holds
    exactly what was committed when it started.  The copy is switched to a
    rollback journal so it is one self-contained file.
    """
    # Read-write open: a read-only connection cannot always use another
    # process's WAL index.  Nothing is written through it.
    src = sqlite3.connect(str(source), timeout=BUSY_TIMEOUT)
    try:
        dst = sqlite3.connect(str(target))
        try:
            src.backup(dst, pages=-1)
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        src.close()


def integrity_problems(path: Path) -> list[str]:
    """[] when ``PRAGMA integrity_check`` says ok; else what is wrong."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        return [f"not a readable SQLite database ({e})"]
    return [] if rows == ["ok"] else rows


def schema_version_of(path: Path) -> int | None:
    """The InTunnel schema version recorded in a database file, None if it has none."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='schema_version'").fetchone()
        if row is None:
            return None
        return conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
    finally:
        conn.close()


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def set_owner(path: Path, owner: tuple[int, int] | None) -> None:
    if owner is not None:
        os.chown(path, *owner)


@contextlib.contextmanager
def atomic_path(final: Path, mode: int = 0o600, owner: tuple[int, int] | None = None) -> Iterator[Path]:
    """A temp file (made empty with ``mode``) for a writer to fill -- a child process
    such as pg_dump -- that then appears at ``final`` complete or not at all
    (fsync + rename + fsync of the directory)."""
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode))
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, mode)
        set_owner(tmp, owner)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_output(final: Path, mode: int = 0o600, owner: tuple[int, int] | None = None) -> Iterator:
    """A binary file that appears at ``final`` complete or not at all (temp + fsync + rename)."""
    with atomic_path(final, mode, owner) as tmp, open(tmp, "wb") as f:
        yield f
        f.flush()


def gzip_to(source: Path, final: Path, owner: tuple[int, int] | None) -> None:
    with atomic_output(final, owner=owner) as out, open(source, "rb") as src:
        # mtime=0 and no file name: the same database compresses to the same bytes.
        with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz:
            shutil.copyfileobj(src, gz, CHUNK)


def unpack_to(source: Path, target: Path) -> None:
    """Copy a backup (gzip or a plain database file) to ``target``, uncompressed."""
    with open(source, "rb") as f:
        compressed = f.read(2) == GZIP_MAGIC
    opener = gzip.open if compressed else open
    try:
        with opener(source, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
            dst.flush()
            os.fsync(dst.fileno())
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise AdminError(f"{source}: cannot read the backup ({e})") from None


@contextlib.contextmanager
def admin_lock(db_path: Path, timeout: float, owner: tuple[int, int] | None) -> Iterator[None]:
    """Hold ``<db>.admin-lock`` (flock) so backups and restores never overlap
    (on PostgreSQL ``<data_dir>/intunnel-postgresql.admin-lock``: one host's runs).

    Waits up to ``timeout`` seconds, then fails with one line.  The lock goes
    away with the process, so a killed run never leaves a stale lock.
    """
    path = Path(f"{db_path}.admin-lock")
    try:
        # Read-only is enough for flock, so a file made by root still works for the service user.
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError as e:
        raise AdminError(f"cannot open lock file {path} ({e.strerror})") from None
    try:
        with contextlib.suppress(OSError):
            set_owner(path, owner)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise AdminError(f"another backup or restore is running (lock {path} held "
                                     f"for more than {timeout:g} s)") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock
