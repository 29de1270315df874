"""The app around the routes: access log without secrets, per-thread connections
that follow a replaced database file, the fast tunnel list, `intunnel web`."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import requests

from intunnel import tunnels
from intunnel.models import Tunnel, User, database
from intunnel.timeutil import utcnow
from intunnel.web.api import tunnel_summaries

from conftest import PASSWORD, create_user
from support.backends import database_env


def test_access_log_one_line_per_request_without_secrets(web, alice, caplog):
    caplog.set_level(logging.INFO, logger="intunnel.web.access")
    s = requests.Session()
    s.post(web.url + "/login?next=/x", data={"email": "alice@example.com", "password": PASSWORD})
    cookie = s.cookies["intunnel_session"]
    token = s.post(web.url + "/api/tokens", json={"name": "t"}).json()["token"]
    requests.get(web.url + "/api/tunnels", headers={"Authorization": f"Bearer {token}"})
    lines = [r.getMessage() for r in caplog.records if r.name == "intunnel.web.access"]
    assert len(lines) == 3
    assert lines[0].startswith("127.0.0.1 POST /login 200 ")
    assert lines[2].startswith("127.0.0.1 GET /api/tunnels 200 ") and f"user={alice.id}" in lines[2]
    text = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (PASSWORD, cookie, token, "next=/x"):
        assert secret not in text


def test_debug_logging_writes_no_secrets(web, alice, caplog):
    """At log_level=debug every logger (peewee's query log included) is on: still no secret in any line."""
    import re
    from intunnel.models import ApiToken, Session
    from intunnel.security import sha256_hex
    caplog.set_level(logging.DEBUG)
    s = requests.Session()
    s.post(web.url + "/login", data={"email": "alice@example.com", "password": PASSWORD})
    cookie = s.cookies["intunnel_session"]
    created = s.post(web.url + "/api/tunnels", json={"name": "T", "subdomain": "logs", "local_port": 3000}).json()
    regenerated = s.post(web.url + f"/api/tunnels/{created['tunnel']['id']}/regenerate-token").json()["token"]
    api_token = s.post(web.url + "/api/tokens", json={"name": "t"}).json()["token"]
    assert requests.get(web.url + "/api/tunnels", headers={"Authorization": f"Bearer {api_token}"}).ok
    page = s.get(web.url + "/tokens", headers={"Accept": "text/html"}).text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert s.post(web.url + "/tokens", data={"csrf_token": csrf, "name": "form"},
                  headers={"Accept": "text/html"}).ok
    with database.connection_context():
        password_hash = User.get_by_id(alice.id).password_hash
        token_hashes = [t.token_hash for t in ApiToken.select()]
        assert Session.get(Session.id_hash == sha256_hex(cookie)).csrf_token == csrf
    assert any(r.name == "peewee" for r in caplog.records)  # the query log really was on
    text = caplog.text + "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records)
    for secret in (PASSWORD, password_hash, cookie, sha256_hex(cookie), csrf, created["tunnel"]["token"],
                   regenerated, api_token, *token_hashes):
        assert secret not in text, secret


def test_tunnel_list_fast_path_equals_summary(web, alice):
    with database.connection_context():
        for i in range(3):
            tunnels.create(web.settings, alice, f"T{i}", f"fast{i}", 3000 + i)
        Tunnel.update(status="active", last_connected=utcnow()).where(Tunnel.subdomain == "fast1").execute()
        assert tunnel_summaries(alice) == [tunnels.summary(t) for t in tunnels.list_for(alice)]


@pytest.mark.sqlite_only("replaces the SQLite file (intunnel-admin restore)")
def test_replaced_database_file_is_picked_up(web, alice_session, tmp_path):
    """`intunnel-admin restore` swaps the file: kept connections must follow it."""
    assert alice_session.post(web.url + "/api/tunnels",
                              json={"name": "old", "subdomain": "before", "local_port": 1}).status_code == 200
    snapshot = tmp_path / "snapshot.db"
    with database.connection_context():
        database.execute_sql("VACUUM INTO ?", (str(snapshot),))
    alice_session.post(web.url + "/api/tunnels", json={"name": "new", "subdomain": "after", "local_port": 1})
    assert len(alice_session.get(web.url + "/api/tunnels").json()["tunnels"]) == 2
    for suffix in ("-wal", "-shm"):
        if os.path.exists(str(web.settings.db_path) + suffix):
            os.unlink(str(web.settings.db_path) + suffix)
    restored = tmp_path / "restored.db"
    shutil.copy(snapshot, restored)
    os.replace(restored, web.settings.db_path)
    subs = [t["subdomain"] for t in alice_session.get(web.url + "/api/tunnels").json()["tunnels"]]
    assert subs == ["before"]


def test_disabled_mid_session(web, alice, alice_session):
    assert alice_session.get(web.url + "/api/user/profile").status_code == 200
    with database.connection_context():
        User.update(disabled=True).where(User.id == alice.id).execute()
    assert alice_session.get(web.url + "/api/user/profile").status_code == 401


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_intunnel_web_command(settings, stop_signal):
    """`intunnel web` serves, and stops on SIGTERM (systemd) or SIGINT (Ctrl-C) with status 0 and
    no traceback, a visitor's keep-alive connection still open."""
    env = {**os.environ, "INTUNNEL_DATA_DIR": str(settings.data_dir), "INTUNNEL_WEB_LISTEN": "127.0.0.1:0",
           "INTUNNEL_CONFIG": "", **database_env(settings)}
    proc = subprocess.Popen([sys.executable, "-m", "intunnel.cli", "web"], env=env, stderr=subprocess.PIPE,
                            text=True)
    try:
        line = ""
        deadline = time.monotonic() + 20
        while "web app listening on" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "intunnel web exited"
        assert "web app listening on http://127.0.0.1:" in line
        url = line.rsplit(" ", 1)[1].strip()
        with requests.Session() as keep_alive:
            assert keep_alive.get(url + "/healthz", timeout=5).json() == {"status": "ok"}
            access = ""
            while "GET /healthz 200" not in access and time.monotonic() < deadline:
                access = proc.stderr.readline()
            assert "GET /healthz 200" in access
            proc.send_signal(stop_signal)
            assert proc.wait(10) == 0
        rest = proc.stderr.read()
        assert f"stopping on {stop_signal.name}" in rest and "Traceback" not in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_intunnel_web_bad_config_is_one_line(tmp_path):
    env = {**os.environ, "INTUNNEL_DATA_DIR": str(tmp_path / "data"), "INTUNNEL_WEB_LISTEN": "nonsense"}
    r = subprocess.run([sys.executable, "-m", "intunnel.cli", "web"], env=env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2 and "web_listen" in r.stderr and "Traceback" not in r.stderr


def test_transaction_left_open_by_a_handler_is_dropped(settings):
    """A buggy handler that leaves a transaction open must not poison its thread's connection."""
    from support.web_server import running_web_app
    with running_web_app(settings, threads=1) as web:  # one worker: the next request reuses its connection
        def leaky():
            database.atomic().__enter__()
            Tunnel.select().count()
            return {"ok": True}
        web.app.route("/test-leak", "GET", leaky)
        assert requests.get(web.url + "/test-leak").json() == {"ok": True}
        create_user("after@example.com", "after")  # another connection can write: no lock held
        r = requests.post(web.url + "/login", json={"email": "after@example.com", "password": PASSWORD})
        assert r.status_code == 200


def test_kept_connection_sees_other_writers(settings):
    """No read snapshot survives a request: the relay's and the CLI's writes are seen at once."""
    from support.web_server import running_web_app
    with running_web_app(settings, threads=1) as web:
        user = create_user("seer@example.com", "seer")
        s = requests.Session()
        s.post(web.url + "/login", json={"email": "seer@example.com", "password": PASSWORD})
        r = s.post(web.url + "/api/tunnels", json={"name": "t", "subdomain": "seen", "local_port": 1})
        tid = r.json()["tunnel"]["id"]
        for status in ("active", "inactive", "active"):
            with database.connection_context():  # another connection, as the relay's
                Tunnel.update(status=status).where(Tunnel.id == tid).execute()
            assert s.get(web.url + "/api/tunnels").json()["tunnels"][0]["status"] == status
            assert s.get(web.url + f"/api/tunnels/{tid}").json()["status"] == status
        with database.connection_context():
            User.update(disabled=True).where(User.id == user.id).execute()
        assert s.get(web.url + "/api/user/profile").status_code == 401
