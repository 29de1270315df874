"""`intunnel-admin user ...` against a real database, as a subprocess."""

import os
import sqlite3
import stat

import pytest

from intunnel.models import Session, Tunnel, User
from intunnel.timeutil import utcnow


def test_create_list_show_json(installed):
    r = installed.create_user("Alice@Example.test", "alice")
    assert r.stdout.strip() == "created user 'alice' <alice@example.test> (id 2)"
    users = installed.json("user", "list")["users"]
    assert [(u["username"], u["email"], u["is_admin"], u["disabled"], u["tunnels"]) for u in users] == [
        ("root", "root@example.test", True, False, 0), ("alice", "alice@example.test", False, False, 0)]
    assert users[0]["created_at"].endswith("Z")
    shown = installed.json("user", "show", "alice@example.test")["user"]
    assert shown["username"] == "alice" and shown["api_tokens"] == 0
    assert installed.json("user", "show", "2")["user"]["email"] == "alice@example.test"
    assert [u["username"] for u in installed.json("user", "list", "--admins")["users"]] == ["root"]


def test_list_is_an_aligned_table(installed):
    installed.create_user("alice@example.test", "alice")
    lines = installed.ok("user", "list").stdout.splitlines()
    assert lines[0].split() == ["ID", "USERNAME", "EMAIL", "ADMIN", "DISABLED", "TUNNELS", "CREATED"]
    # every column starts at the same offset on every line
    start = lines[0].index("EMAIL")
    assert all(line[start:].startswith(("EMAIL", "root@", "alice@")) for line in lines)
    assert len(lines) == 3


def test_password_is_hashed_and_works(installed):
    installed.create_user("alice@example.test", "alice", "first password")
    installed.open_models()
    from intunnel.accounts import authenticate
    assert authenticate("alice", "first password") is not None
    out = installed.json("user", "set-password", "alice", "--password-stdin", input="second password\n")
    assert out == {"ok": True, "message": "password of 'alice' changed"}
    assert authenticate("alice", "first password") is None
    assert authenticate("alice@example.test", "second password") is not None
    assert "second password" not in User.get(User.username == "alice").password_hash


def test_create_errors_are_one_line(installed):
    installed.fails("user", "create", "--email", "x@example.test", "--username", "xx", "--password-stdin",
                    input="short\n", match="password must be at least 8 characters")
    installed.fails("user", "create", "--email", "root@example.test", "--username", "other",
                    "--password-stdin", input="long enough\n", match="email 'root@example.test' already exists")
    installed.fails("user", "create", "--email", "new@example.test", "--username", "root",
                    "--password-stdin", input="long enough\n", match="user named 'root' already exists")
    installed.fails("user", "create", "--email", "not-an-email", "--username", "xx", "--password-stdin",
                    input="long enough\n", match="email must be a valid email address")
    installed.fails("user", "create", "--email", "x@example.test", "--username", "xx", "--password-stdin",
                    input="", code=2, match="no password on standard input")
    # No terminal and no --password-stdin: a usage error, not a hang.
    installed.fails("user", "create", "--email", "x@example.test", "--username", "xx", code=2,
                    match="--password-stdin")
    assert [u["username"] for u in installed.json("user", "list")["users"]] == ["root"]


def test_unknown_user_everywhere(installed):
    for action in ("show", "disable", "enable", "promote", "demote", "delete"):
        installed.fails("user", action, "ghost", match="unknown user 'ghost'")
    installed.fails("user", "set-password", "ghost", "--password-stdin", input="long enough\n",
                    match="unknown user 'ghost'")


def test_usage_errors_exit_2(installed):
    assert installed.run("user").returncode == 2
    assert installed.run("user", "frobnicate").returncode == 2
    assert installed.run("user", "create", "--email", "a@b.cd").returncode == 2
    assert installed.run().returncode == 2


@pytest.mark.sqlite_only("a missing SQLite file")
def test_missing_database_is_not_created_by_listing(admin):
    admin.fails("user", "list", match="does not exist")
    assert not admin.db_path.exists()


def test_config_errors_exit_2_naming_the_key(admin):
    admin.config.write_text(admin.config.read_text() + "bogus_key = 1\n")
    admin.fails("user", "list", code=2, match="bogus_key")


def test_config_after_command_and_environment(admin, tmp_path):
    admin.ok("db", "migrate")
    admin.create_user("a@example.test", "alice")
    # --config after the command name works too
    r = admin.run("user", "list", "--json", "--config", str(admin.config), config=False)
    assert r.returncode == 0 and "alice" in r.stdout
    # INTUNNEL_CONFIG and INTUNNEL_* environment are honoured like the services do
    r = admin.run("user", "list", config=False, env={"INTUNNEL_CONFIG": str(admin.config)})
    assert r.returncode == 0 and "alice" in r.stdout
    if admin.database_url:
        return  # the rest moves the SQLite file with the data dir
    other = tmp_path / "elsewhere"
    r = admin.run("user", "list", env={"INTUNNEL_DATA_DIR": str(other)})
    assert r.returncode == 1 and str(other) in r.stderr


def test_disable_enable_promote_demote(installed):
    installed.create_user("alice@example.test", "alice")
    installed.open_models()
    alice = User.get(User.username == "alice")
    Session.create(id_hash="a" * 64, user=alice, csrf_token="c", expires_at=utcnow())
    Tunnel.create(owner=alice, name="t", subdomain="alice1", local_port=3000, token="tok1", status="active")

    out = installed.json("user", "disable", "alice")
    assert out["user"]["disabled"] is True
    assert not Session.select().where(Session.user == alice).exists()
    assert Tunnel.get(Tunnel.subdomain == "alice1").disconnect_requested_at is not None
    assert [u["username"] for u in installed.json("user", "list", "--disabled")["users"]] == ["alice"]
    assert installed.json("user", "enable", "alice")["user"]["disabled"] is False

    assert installed.ok("user", "promote", "alice").stdout.strip() == "'alice' is now an admin"
    assert User.get(User.username == "alice").is_admin
    installed.ok("user", "demote", "root")
    # alice is now the only admin: she can't be demoted, disabled or deleted
    installed.fails("user", "demote", "alice", match="last enabled admin")
    installed.fails("user", "disable", "alice", match="last enabled admin")
    installed.fails("user", "delete", "alice", "--yes", match="last enabled admin")
    assert User.get(User.username == "alice").is_admin


def test_delete_confirms_and_counts_tunnels(installed):
    installed.create_user("alice@example.test", "alice")
    installed.open_models()
    alice = User.get(User.username == "alice")
    for i in range(3):
        Tunnel.create(owner=alice, name=f"t{i}", subdomain=f"sub{i}", local_port=3000, token=f"tok{i}")
    installed.fails("user", "delete", "alice", code=2, match="and their 3 tunnel(s)? Refusing without --yes")
    assert User.get_or_none(User.username == "alice") is not None
    out = installed.json("user", "delete", "alice", "--yes")
    assert out["deleted"] == {"user": "alice", "tunnels": 3}
    assert User.get_or_none(User.username == "alice") is None
    assert Tunnel.select().count() == 0


@pytest.mark.sqlite_only("holds SQLite's write lock")
def test_database_locked_is_one_line(installed):
    # Another process holds the write lock longer than the busy timeout (5 s).
    holder = sqlite3.connect(installed.db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        installed.fails("user", "create", "--email", "x@example.test", "--username", "xx", "--password-stdin",
                        input="long enough\n", match="database is locked")
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@pytest.mark.sqlite_only("file mode of the SQLite database")
def test_new_database_is_private(admin):
    admin.ok("db", "migrate")
    assert stat.S_IMODE(os.stat(admin.db_path).st_mode) == 0o600


def test_missing_config_file_and_version(admin, tmp_path):
    r = admin.run("--config", str(tmp_path / "nope.toml"), "user", "list", config=False)
    assert r.returncode == 2 and r.stderr.strip().endswith("nope.toml' not found") and "Traceback" not in r.stderr
    r = admin.run("--version", config=False)
    assert r.returncode == 0 and r.stdout.startswith("intunnel-admin ")


def test_python_dash_m_works_too(installed):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "intunnel.admin", "--config", str(installed.config), "user", "list",
                        "--json"], capture_output=True, text=True, env=installed.env, timeout=60)
    assert r.returncode == 0 and '"root"' in r.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
@pytest.mark.sqlite_only("owners of the SQLite files")
def test_files_made_as_root_belong_to_the_service_user(admin):
    admin.data_dir.mkdir(mode=0o700)
    os.chown(admin.data_dir, 65534, 65534)
    admin.ok("db", "migrate")
    admin.create_user("a@example.test", "alice")
    for name in ("intunnel.db", "secret_key"):
        st = os.stat(admin.data_dir / name)
        assert (st.st_uid, st.st_gid) == (65534, 65534), name
