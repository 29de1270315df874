"""`intunnel-admin doctor` and `nginx render`."""

import os
import sys

import pytest

from intunnel.admin.cli import main


def lines_by_check(stdout: str) -> dict[str, str]:
    """{check name: status} from doctor's table."""
    rows = stdout.splitlines()
    assert rows[0].split() == ["STATUS", "CHECK", "DETAIL"]
    detail_at = rows[0].index("DETAIL")
    check_at = rows[0].index("CHECK")
    return {row[check_at:detail_at].strip(): row[:check_at].strip() for row in rows[1:]}


@pytest.fixture
def fake_nginx(tmp_path):
    """An `nginx` first on PATH whose `-t` passes or fails as the test says."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()

    def make(ok: bool) -> dict:
        script = bin_dir / "nginx"
        if ok:
            script.write_text("#!/bin/sh\necho 'nginx: configuration file /etc/nginx/nginx.conf test is successful' >&2\n")
        else:
            script.write_text("#!/bin/sh\necho 'nginx: [emerg] unknown directive \"bogus\" in /etc/nginx/conf.d/x.conf:1' >&2\n"
                              "echo 'nginx: configuration file /etc/nginx/nginx.conf test failed' >&2\nexit 1\n")
        script.chmod(0o755)
        return {"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}

    return make


@pytest.mark.sqlite_only("takes a file backup (doctor on PostgreSQL: tests/admin/test_postgresql.py)")
def test_all_healthy(installed, fake_services, fake_nginx):
    fake_services(installed.web_port, installed.relay_port)
    installed.ok("backup")
    r = installed.run("doctor", env=fake_nginx(True))
    assert r.returncode == 0, r.stdout + r.stderr
    assert lines_by_check(r.stdout) == {"config": "ok", "data dir": "ok", "database": "ok", "secret key": "ok",
                                        "backups": "ok", "web": "ok", "relay": "ok", "relay id": "ok", "nginx": "ok"}
    assert str(installed.config) in r.stdout


def test_services_down_and_nginx_broken_fail_with_hints(installed, fake_nginx):
    r = installed.run("doctor", env=fake_nginx(False))
    assert r.returncode == 1 and r.stderr == "" and "Traceback" not in r.stdout
    status = lines_by_check(r.stdout)
    assert (status["web"], status["relay"], status["nginx"], status["backups"]) == ("fail", "fail", "fail", "warn")
    assert "connection refused" in r.stdout and "systemctl status intunnel-relay" in r.stdout
    assert 'unknown directive "bogus"' in r.stdout


def test_json_output(installed, fake_nginx):
    out = installed.run("doctor", "--json", env=fake_nginx(True))
    import json
    data = json.loads(out.stdout)
    assert out.returncode == 1 and data["ok"] is False
    checks = {c["name"]: c for c in data["checks"]}
    assert checks["web"]["level"] == "fail" and "systemctl status intunnel-web" in checks["web"]["hint"]
    assert checks["nginx"]["level"] == "ok"


def test_relay_check_sends_the_domain_as_host(installed, fake_services, fake_nginx, tmp_path):
    # The stand-in answers /_intunnel/healthz only for Host: example.test.
    fake_services(installed.web_port, installed.relay_port)
    installed.config.write_text(installed.config.read_text().replace('"example.test"', '"other.test"'))
    r = installed.run("doctor", env=fake_nginx(True))
    status = lines_by_check(r.stdout)
    assert status["web"] == "ok" and status["relay"] == "fail" and "answered 404" in r.stdout


@pytest.mark.sqlite_only("file modes of the SQLite database")
def test_permissions(installed, fake_nginx):
    (installed.data_dir / "secret_key").chmod(0o644)
    installed.db_path.chmod(0o644)
    installed.data_dir.chmod(0o755)
    r = installed.run("doctor", env=fake_nginx(True))
    status = lines_by_check(r.stdout)
    assert (status["secret key"], status["database"], status["data dir"]) == ("fail", "warn", "warn")
    assert f"chmod 600 {installed.data_dir / 'secret_key'}" in r.stdout


def test_bad_config_is_a_failed_check_not_a_traceback(admin):
    admin.config.write_text(admin.config.read_text() + "web_threads = \"many\"\n")
    r = admin.run("doctor")
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr
    status = lines_by_check(r.stdout)
    assert status == {"config": "fail"} and "web_threads" in r.stdout


@pytest.mark.sqlite_only("a missing SQLite file")
def test_missing_database(admin, fake_nginx):
    r = admin.run("doctor", env=fake_nginx(True))
    status = lines_by_check(r.stdout)
    assert status["data dir"] == "fail" and status["database"] == "fail"
    assert "intunnel-admin db migrate" in r.stdout


def test_nginx_render_prints_and_writes(installed, tmp_path):
    from intunnel.nginxconf import render
    expected = render(installed.settings)
    printed = installed.ok("nginx", "render").stdout
    for name, text in expected.items():
        assert f"# ===== {name} =====" in printed and text.strip() in printed
    assert installed.json("nginx", "render")["files"] == expected
    out = tmp_path / "conf.d"
    r = installed.ok("nginx", "render", "--out", str(out))
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    assert all((out / n).read_text() == t for n, t in expected.items())
    assert "nginx -t" in r.stdout
    blocker = tmp_path / "file"
    blocker.write_text("")
    installed.fails("nginx", "render", "--out", str(blocker / "x"), match="cannot write")


def test_nginx_render_without_templates(installed, monkeypatch, in_process, capsys):
    monkeypatch.setitem(sys.modules, "intunnel.nginxconf", None)  # as if the module were not built
    assert main(["--config", str(installed.config), "nginx", "render"]) == 1
    err = capsys.readouterr().err
    assert err == "intunnel-admin: error: nginx templates are not part of this build (intunnel.nginxconf is missing)\n"
