"""The admin CLI against the real relay, client and web app (in-process, port 0)."""

from intunnel.models import Tunnel
from support.backends import database_toml
from support.tunnel import tunnel_setup, wait_for
from support.web_server import running_web_app

from .conftest import Admin


def admin_for(settings, tmp_path, relay_port: int, web_port: int | None = None) -> Admin:
    """An Admin whose config points at the running services' data dir and ports."""
    a = Admin(tmp_path / "admin")
    a.config.write_text(
        f'data_dir = "{settings.data_dir}"\n'
        f'domain = "{settings.domain}"\n'
        f'relay_listen = "127.0.0.1:{relay_port}"\n'
        f'web_listen = "127.0.0.1:{web_port or a.web_port}"\n' + database_toml(settings))
    a.web_port = web_port or a.web_port
    a.relay_port = relay_port
    return a


def test_disconnect_cuts_the_live_agent(settings, db, tmp_path):
    with tunnel_setup(settings) as t:
        # the relay records the session on its DB thread, just after the client says "connected"
        wait_for(lambda: Tunnel.get_by_id(t.tunnel.id).status == "active", 10, message="tunnel active")
        admin = admin_for(settings, tmp_path, t.relay.port)
        out = admin.json("tunnel", "disconnect", "myapp", "--wait", "10")
        assert out == {"ok": True, "message": "tunnel 'myapp' disconnected", "result": "inactive"}
        assert Tunnel.get_by_id(t.tunnel.id).status == "inactive"
        # the relay really cut the session, and told the client why
        t.client.wait_exit(timeout=20)
        assert any("disconnected by an administrator" in line for line in t.client.lines), t.client.lines


def test_doctor_sees_the_real_relay_and_restore_refuses(settings, db, tmp_path):
    with tunnel_setup(settings) as t:
        admin = admin_for(settings, tmp_path, t.relay.port)
        r = admin.run("doctor", "--json")
        import json
        checks = {c["name"]: c["level"] for c in json.loads(r.stdout)["checks"]}
        assert checks["relay"] == "ok" and checks["web"] == "fail"
        if settings.db_backend != "sqlite":
            return  # file backups and restores: SQLite only so far
        admin.ok("backup")
        (backup,) = admin.backup_dir.iterdir()
        line = admin.fails("restore", str(backup), match="refusing to restore while InTunnel is running")
        assert f"relay (http://127.0.0.1:{t.relay.port}/_intunnel/healthz)" in line


def test_doctor_sees_the_real_web_app(settings, db, tmp_path):
    with running_web_app(settings) as web:
        admin = admin_for(settings, tmp_path, relay_port=Admin(tmp_path / "x").relay_port, web_port=web.port)
        r = admin.run("doctor", "--json")
        import json
        checks = {c["name"]: c["level"] for c in json.loads(r.stdout)["checks"]}
        assert checks["web"] == "ok" and checks["relay"] == "fail"
