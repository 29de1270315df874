"""`intunnel-admin backup` and `backup list`: consistent, verified, atomic, locked, cron-safe."""

import fcntl
import gzip
import os
import re
import sqlite3
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from .conftest import admin_command
from .writer import backups_while_writing

pytestmark = pytest.mark.sqlite_only("SQLite file backups; pg_dump backups: test_pg_backup.py")

NAME = re.compile(r"^intunnel-\d{8}T\d{6}Z\.db\.gz$")


def unpack(backup: Path, target: Path) -> Path:
    target.write_bytes(gzip.decompress(backup.read_bytes()))
    return target


def integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def backups_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if NAME.match(p.name))


def test_backup_is_silent_private_and_verified(installed, tmp_path):
    # cron: minimal environment, no terminal, absolute paths
    r = subprocess.run(admin_command() + ["--config", str(installed.config), "backup"],
                       env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    files = list(installed.backup_dir.iterdir())
    assert len(files) == 1 and NAME.match(files[0].name), files
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    copy = unpack(files[0], tmp_path / "copy.db")
    assert integrity(copy) == "ok"
    conn = sqlite3.connect(copy)
    assert conn.execute("SELECT username FROM user").fetchall() == [("root",)]
    # a self-contained file: rollback journal, no -wal needed
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


def test_backup_verbose_json_and_dest(installed, tmp_path):
    dest = tmp_path / "elsewhere" / "backups"
    out = installed.ok("backup", "--dest", str(dest), "-v").stdout
    assert out.startswith(f"backup written: {dest}/intunnel-") and "integrity ok" in out
    result = installed.json("backup", "--dest", str(dest), "--now", "2030-05-01T02:03:04Z")["backup"]
    assert result["path"] == str(dest / "intunnel-20300501T020304Z.db.gz")
    assert result["taken_at"] == "2030-05-01T02:03:04Z" and result["size"] > 0
    assert result["config_archive"] is None


def test_include_config(installed, tmp_path):
    installed.ok("backup", "--include-config", "--now", "2030-01-02T03:04:05Z")
    archive = installed.backup_dir / "intunnel-20300102T030405Z.config.tar.gz"
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["intunnel.toml", "secret_key"]
        assert tar.extractfile("intunnel.toml").read() == installed.config.read_bytes()
        assert tar.extractfile("secret_key").read() == (installed.data_dir / "secret_key").read_bytes()
        assert all(m.mode == 0o600 for m in tar.getmembers())


def test_backup_list(installed):
    installed.ok("backup", "--now", "2030-01-01T01:00:00Z")
    installed.ok("backup", "--now", "2030-01-02T01:00:00Z", "--include-config")
    (installed.backup_dir / "unrelated.txt").write_text("not a backup")
    items = installed.json("backup", "list")["backups"]
    assert [(b["file"], b["taken_at"], b["config"] is not None) for b in items] == [
        ("intunnel-20300102T010000Z.db.gz", "2030-01-02T01:00:00Z", True),
        ("intunnel-20300101T010000Z.db.gz", "2030-01-01T01:00:00Z", False)]
    lines = installed.ok("backup", "list").stdout.splitlines()
    assert lines[0].split() == ["FILE", "BYTES", "TAKEN", "CONFIG"] and len(lines) == 3
    assert installed.json("backup", "list", "--dest", "/nonexistent/dir")["backups"] == []


def test_backup_failures_are_one_line(admin, installed, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    installed.fails("backup", "--dest", str(blocker / "sub"), match="a-file")
    installed.fails("backup", "--now", "yesterday", code=2, match="--now")
    installed.fails("backup", "--keep-daily", "-1", code=2, match="--keep-daily")
    installed.db_path.rename(tmp_path / "moved.db")
    installed.fails("backup", match="does not exist")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_backup_belongs_to_the_data_dirs_owner(installed):
    os.chown(installed.data_dir, 65534, 65534)
    installed.ok("backup")
    (backup,) = backups_in(installed.backup_dir)
    assert (backup.stat().st_uid, backup.stat().st_gid) == (65534, 65534)
    assert installed.backup_dir.stat().st_uid == 65534


def test_backup_while_another_process_writes(installed, tmp_path):
    """Every row committed before a backup began is in it; the copy passes integrity_check."""
    reader = sqlite3.connect(installed.db_path, timeout=30)

    def committed() -> int:
        try:
            return reader.execute("SELECT COALESCE(MAX(n), 0) FROM writer_rows").fetchone()[0]
        except sqlite3.OperationalError:  # table not created yet
            return 0

    try:
        taken = backups_while_writing(installed, str(installed.db_path), committed, tmp_path / "stop-writer")
    finally:
        reader.close()
    for i, (backup, before) in enumerate(taken):
        target = installed.__class__(tmp_path / f"restore{i}")
        target.ok("restore", backup)
        conn = sqlite3.connect(target.db_path)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        count, top = conn.execute("SELECT COUNT(*), MAX(n) FROM writer_rows WHERE n <= ?", (before,)).fetchone()
        assert count == before and top == before, f"backup {i}: rows 1..{before} expected"
        conn.close()


def test_two_concurrent_backups_neither_corrupts(installed):
    # Enough data that the copies take a moment and really overlap.
    conn = sqlite3.connect(installed.db_path)
    conn.execute("CREATE TABLE padding (b BLOB)")
    conn.executemany("INSERT INTO padding VALUES (randomblob(4096))", [()] * 4000)
    conn.commit()
    conn.close()
    runs = [installed.popen("backup", "-v") for _ in range(2)]
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in runs]
    for p in runs:
        p.stdout.close()
        p.stderr.close()
    for rc, out, err in results:
        # default: the second waits for the first; a failure would have to be one clean line
        assert rc == 0 or (rc == 1 and err.count("\n") == 1 and "another backup" in err), (rc, out, err)
    assert any(rc == 0 for rc, _, _ in results)
    leftovers = [p.name for p in installed.backup_dir.iterdir() if not NAME.match(p.name)]
    assert leftovers == []
    assert installed.json("db", "check")["ok"] is True
    for backup in backups_in(installed.backup_dir):
        copy = unpack(backup, installed.root / "check.db")
        assert integrity(copy) == "ok"
        copy.unlink()


def test_lock_held_by_another_run(installed):
    lock_path = Path(f"{installed.db_path}.admin-lock")
    fd = os.open(lock_path, os.O_RDONLY | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        started = time.monotonic()
        installed.fails("backup", "--lock-timeout", "0.3", match="another backup or restore is running")
        assert time.monotonic() - started < 30
        assert backups_in(installed.backup_dir) == [] if installed.backup_dir.exists() else True
        waiting = installed.popen("backup", "--lock-timeout", "60")
        with pytest.raises(subprocess.TimeoutExpired):
            waiting.wait(timeout=1.0)  # it waits for the lock instead of colliding
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    assert waiting.wait(timeout=60) == 0
    waiting.stdout.close()
    waiting.stderr.close()
    assert len(backups_in(installed.backup_dir)) == 1
