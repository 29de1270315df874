"""`intunnel-admin doctor`: one line per check (ok / warn / fail) with a hint.

Exit 1 when any check fails; warnings alone exit 0.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import peewee as pw

from .. import dburl, migrations
from ..errors import ConfigError
from ..settings import SECRET_KEY_FILE, load_settings
from .backup import list_backups
from .common import Context, config_file_in_use
from .probe import probe_services
from .table import format_table

BACKUP_MAX_AGE_HOURS = 26  # a nightly cron job plus slack
NGINX_TIMEOUT = 15


@dataclass(frozen=True)
class Check:
    name: str
    level: str  # ok | warn | fail
    message: str
    hint: str = ""


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def check_config(explicit: str | None):
    """(Check, settings or None)."""
    path = config_file_in_use(explicit)
    try:
        settings = load_settings(explicit)
    except ConfigError as e:
        return Check("config", "fail", str(e), "fix the setting named above"), None
    where = f"loaded {path}" if path else "defaults and INTUNNEL_* environment (no config file)"
    if path and path.exists() and _mode(path) & 0o007 and "secret_key" in path.read_text(errors="replace"):
        return Check("config", "warn", f"{where}; it holds secret_key and is readable by everyone",
                     f"chmod 640 {path}"), settings
    return Check("config", "ok", where), settings


def check_data_dir(settings) -> Check:
    d = Path(settings.data_dir)
    if not d.is_dir():
        return Check("data dir", "fail", f"{d} does not exist",
                     "create it for the service user: install -d -m 700 -o intunnel -g intunnel " + str(d))
    mode = _mode(d)
    if mode & 0o077:
        return Check("data dir", "warn", f"{d} is mode {mode:04o}, open to other users", f"chmod 700 {d}")
    return Check("data dir", "ok", f"{d} (mode {mode:04o})")


def _schema_check(version: int, where: str) -> Check | None:
    """A warn/fail for a schema version this code does not run as it is; None when current."""
    if version > migrations.LATEST:
        return Check("database", "fail", f"{where}: schema version {version} is newer than this code "
                     f"({migrations.LATEST})", "upgrade InTunnel")
    if version < migrations.LATEST:
        return Check("database", "warn", f"{where}: schema version {version}, code expects {migrations.LATEST}",
                     "run 'intunnel-admin db migrate' (services also migrate at start)")
    return None


def check_postgresql(settings) -> Check:
    """Connect, read the server version and the schema version; say what is wrong, never the password."""
    from ..models import connect_settings
    from .db import server_version
    where = dburl.redact_url(settings.db_url)
    db = None
    try:
        db = connect_settings(settings)
        version_text = server_version(db)
        version = migrations.current_version(db)
    except ConfigError as e:
        return Check("database", "fail", str(e), "fix the setting named above")
    except pw.DatabaseError as e:
        detail = " ".join(dburl.scrub(str(e), db).split()) or type(e).__name__
        return Check("database", "fail", f"{where}: cannot connect or read: {detail}",
                     "is PostgreSQL running and reachable? check the host, port, database name, "
                     "user and password (database_password_file), and pg_hba.conf")
    finally:
        if db is not None and not db.is_closed():
            db.close()
    found = _schema_check(version, where)
    if found:
        return found
    return Check("database", "ok", f"{where} (PostgreSQL {version_text}, schema version {version})")


def check_database(settings) -> Check:
    if settings.db_backend != dburl.SQLITE:
        return check_postgresql(settings)
    path = settings.db_path
    if not path.exists():
        return Check("database", "fail", f"{path} does not exist",
                     "start the services once or run 'intunnel-admin db migrate'")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            quick = conn.execute("PRAGMA quick_check").fetchone()[0]
            has_versions = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_version'").fetchone()
            version = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] if has_versions else 0
        finally:
            conn.close()
    except sqlite3.Error as e:
        return Check("database", "fail", f"{path}: {e}", "run 'intunnel-admin db check'; restore a backup if damaged")
    version = version or 0
    if quick != "ok":
        return Check("database", "fail", f"{path}: quick_check says {quick}", "run 'intunnel-admin db check'")
    found = _schema_check(version, str(path))
    if found:
        return found
    mode = _mode(path)
    if mode & 0o077:
        return Check("database", "warn", f"{path} is mode {mode:04o}; it holds password hashes",
                     f"chmod 600 {path}")
    return Check("database", "ok", f"{path} (schema version {version}, mode {mode:04o})")


def check_secret_key(settings) -> Check:
    if settings.secret_key:
        return Check("secret key", "ok", "set in the config or INTUNNEL_SECRET_KEY")
    key = Path(settings.data_dir) / SECRET_KEY_FILE
    if not key.exists():
        return Check("secret key", "warn", f"{key} does not exist yet", "the services create it at first start")
    mode = _mode(key)
    if mode & 0o077:
        return Check("secret key", "fail", f"{key} is mode {mode:04o}, readable by other users", f"chmod 600 {key}")
    if not key.read_text().strip():
        return Check("secret key", "fail", f"{key} is empty", "delete it; the services make a new one (see README)")
    return Check("secret key", "ok", f"{key} (mode {mode:04o})")


def check_backups(settings, now: datetime) -> Check:
    directory = settings.backup_path
    backups = list_backups(directory)
    if not backups:
        return Check("backups", "warn", f"no backups in {directory}",
                     "schedule 'intunnel-admin backup' in cron (see README, Operating InTunnel)")
    newest, path = backups[0]
    hours = (now - newest).total_seconds() / 3600
    if hours > BACKUP_MAX_AGE_HOURS:
        return Check("backups", "warn", f"newest backup {path.name} is {hours:.0f} h old",
                     "check the cron job and its mail/log")
    return Check("backups", "ok", f"{len(backups)} in {directory}, newest {hours:.1f} h old")


def check_relays(settings) -> Check:
    """This host's relay id; on PostgreSQL the relays sharing the database and any stale ones."""
    from ..models import RelayNode, Route, connect_settings
    from ..settings import relay_identity
    from .relays import relays
    own = relay_identity(settings)
    if settings.db_backend == dburl.SQLITE:
        return Check("relay id", "ok", f"{own} (single host on SQLite: routes are not recorded)")
    db = None
    try:
        db = connect_settings(settings)
        with db.bind_ctx([RelayNode, Route]):
            found = relays(db, settings.relay_route_lease)
    except pw.DatabaseError as e:
        detail = " ".join(dburl.scrub(str(e), db).split()) or type(e).__name__
        return Check("relay id", "warn", f"{own}; cannot read the relay table: {detail}",
                     "run 'intunnel-admin db migrate' (services also migrate at start)")
    finally:
        if db is not None and not db.is_closed():
            db.close()
    mine = next((r for r in found if r["relay_id"] == own), None)
    stale = [r["relay_id"] for r in found if r["state"] == "stale"]
    others = f"{len(found)} relay(s) share the database"
    if mine is None:
        return Check("relay id", "warn", f"{own}: not registered in the database; {others}",
                     "is intunnel-relay running here with this relay_id? 'intunnel-admin relay list'")
    message = (f"{own}: {mine['state']}, heartbeat {mine['seconds_since_heartbeat']:g} s ago, "
               f"{mine['agents']} agent(s); {others}")
    if stale:
        return Check("relay id", "warn", f"{message}; stale: {', '.join(stale)}",
                     "a stale relay stopped renewing (died or lost the database); its tunnels are freed "
                     "when their leases lapse: 'intunnel-admin relay list'")
    return Check("relay id", "ok", message)


def check_services(settings) -> list[Check]:
    unit = {"web": "intunnel-web", "relay": "intunnel-relay"}
    checks = []
    for p in probe_services(settings):
        if p.healthy:
            checks.append(Check(p.name, "ok", f"{p.url} healthy"))
        else:
            checks.append(Check(p.name, "fail", f"{p.url}: {p.detail}",
                                f"is it running? systemctl status {unit[p.name]}; journalctl -u {unit[p.name]}"))
    return checks


def check_nginx() -> Check:
    nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if not nginx:
        return Check("nginx", "ok", "not installed on this host; skipped")
    try:
        r = subprocess.run([nginx, "-t"], capture_output=True, text=True, timeout=NGINX_TIMEOUT,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Check("nginx", "fail", f"nginx -t did not run ({e})", "run 'nginx -t' by hand")
    output = [line for line in (r.stderr + r.stdout).splitlines() if line.strip()]
    if r.returncode == 0:
        return Check("nginx", "ok", "nginx -t: configuration ok")
    detail = next((line for line in output if "emerg" in line or "alert" in line), output[-1] if output else "")
    hint = "run as root" if os.geteuid() != 0 and "ermission" in detail else "fix it, then 'nginx -t'"
    return Check("nginx", "fail", f"nginx -t: {detail}", hint)


def run_checks(explicit_config: str | None) -> list[Check]:
    config, settings = check_config(explicit_config)
    if settings is None:
        return [config]
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    return [config, check_data_dir(settings), check_database(settings), check_secret_key(settings),
            check_backups(settings, now), *check_services(settings), check_relays(settings), check_nginx()]


def cmd_doctor(ctx: Context, args) -> int:
    checks = run_checks(getattr(args, "config", None))
    failed = any(c.level == "fail" for c in checks)
    if ctx.json:
        ctx.emit_json({"ok": not failed, "checks": [asdict(c) for c in checks]})
    else:
        rows = [[c.level, c.name, c.message + (f"  (hint: {c.hint})" if c.hint else "")] for c in checks]
        ctx.out(format_table(("STATUS", "CHECK", "DETAIL"), rows))
    return 1 if failed else 0


def register(groups, common) -> None:
    d = groups.add_parser("doctor", parents=[common], help="check config, permissions, database, services, nginx",
                          description="One line per check: ok / warn / fail, with a hint.  Exit 1 if any fails.")
    d.set_defaults(func=cmd_doctor)
