"""The playbook's static checks: ansible-lint (production profile), syntax, the TLS-mode and database wiring."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_tool
from intunnel import nginxconf
from intunnel.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
WIRING = Path(__file__).resolve().parent / "playbooks" / "config_wiring.yml"


def ansible_tool(name: str) -> str:
    """The tool from this venv (the test extra installs it), else from PATH."""
    candidate = Path(sys.prefix) / "bin" / name
    return str(candidate) if candidate.exists() else require_tool(name)


def ansible_env(tmp_path) -> dict:
    return {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
            "ANSIBLE_HOME": str(tmp_path / "ansible-home"), "NO_COLOR": "1"}


def test_ansible_lint_production_profile(tmp_path):
    result = subprocess.run([ansible_tool("ansible-lint"), "--profile", "production", "--offline", "--nocolor",
                             "deploy/"], cwd=REPO, capture_output=True, text=True, env=ansible_env(tmp_path),
                            timeout=300)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    assert "Profile 'production' was required, and it passed" in result.stdout + result.stderr


def test_playbook_syntax(tmp_path):
    result = subprocess.run([ansible_tool("ansible-playbook"), "--syntax-check", "-i", "deploy/inventory.example.ini",
                             "deploy/site.yml"], cwd=REPO, capture_output=True, text=True, env=ansible_env(tmp_path),
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_variable_is_prefixed_and_commented():
    """geerlingguy's rule: every variable in defaults/main.yml, prefixed, under a comment
    (a comment may introduce a group of consecutive variables)."""
    for defaults in sorted(DEPLOY.glob("roles/*/defaults/main.yml")):
        previous = None
        for line in defaults.read_text().splitlines():
            if not line or line.startswith((" ", "-")):  # values, list items, the document marker
                continue
            if line.startswith("#"):
                previous = "comment"
                continue
            name = line.split(":", 1)[0]
            assert name.startswith("intunnel_"), f"{defaults}: {name}"
            assert previous in ("comment", "variable"), f"{defaults}: {name} has no comment above it"
            previous = "variable"


def run_wiring(tmp_path, **extra) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path / "out"
    out.mkdir()
    args = [ansible_tool("ansible-playbook"), "-i", "localhost,", str(WIRING), "-e", f"out_dir={out}",
            "-e", "intunnel_domain=example.org", "-e", f"ansible_python_interpreter={sys.executable}"]
    for key, value in extra.items():
        args += ["-e", f"{key}={value}"]
    result = subprocess.run(args, capture_output=True, text=True, env=ansible_env(tmp_path), timeout=120)
    return out, result


def render_wiring(tmp_path, **extra) -> Path:
    out, result = run_wiring(tmp_path, **extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.mark.parametrize("mode, cert, key, scheme", [
    ("certbot-dns", "/etc/letsencrypt/live/example.org/fullchain.pem", "/etc/letsencrypt/live/example.org/privkey.pem",
     "https"),
    ("provided", "/etc/intunnel/tls/fullchain.pem", "/etc/intunnel/tls/privkey.pem", "https"),
    ("selfsigned", "/etc/intunnel/tls/fullchain.pem", "/etc/intunnel/tls/privkey.pem", "https"),
    ("off", "", "", "http"),
])
def test_config_file_per_tls_mode_feeds_the_nginx_renderer(tmp_path, mode, cert, key, scheme):
    out = render_wiring(tmp_path, intunnel_tls_mode=mode)
    settings = load_settings(out / "intunnel.toml", env={})
    assert (settings.tls_cert, settings.tls_key, settings.public_scheme) == (cert, key, scheme)
    assert settings.domain == "example.org" and settings.relay_trust_proxy and settings.web_trust_proxy and settings.secret_key == "test-secret-key"
    web = nginxconf.render(settings)["intunnel-web.conf"]
    assert (f"ssl_certificate {cert};" in web) == bool(cert)
    assert ("return 301 https://" in web) == bool(cert)


@pytest.mark.parametrize("plugin, package, lines", [
    ("cloudflare", "python3-certbot-dns-cloudflare", ["dns_cloudflare_api_token = cf-token"]),
    ("rfc2136", "python3-certbot-dns-rfc2136", ["dns_rfc2136_server = 192.0.2.53", "dns_rfc2136_port = 53",
                                                "dns_rfc2136_name = intunnel-key", "dns_rfc2136_secret = c2VjcmV0",
                                                "dns_rfc2136_algorithm = HMAC-SHA512"]),
])
def test_certbot_dns_plugins_are_wired(tmp_path, plugin, package, lines):
    out = render_wiring(tmp_path, intunnel_tls_mode="certbot-dns", intunnel_tls_certbot_plugin=plugin,
                        intunnel_tls_certbot_cloudflare_api_token="cf-token",
                        intunnel_tls_certbot_rfc2136_server="192.0.2.53",
                        intunnel_tls_certbot_rfc2136_name="intunnel-key",
                        intunnel_tls_certbot_rfc2136_secret="c2VjcmV0")
    credentials = (out / "certbot.ini").read_text().splitlines()
    assert [l for l in credentials if not l.startswith("#")] == lines
    derived = json.loads((out / "derived.json").read_text())
    assert (derived["package"], derived["credentials"]) == (package, f"/etc/intunnel/certbot-{plugin}.ini")


def test_sqlite_by_default_leaves_the_database_settings_out(tmp_path):
    """An installation that never chose a database keeps the config it had (so an upgrade changes nothing)."""
    out = render_wiring(tmp_path, intunnel_tls_mode="off")
    text = (out / "intunnel.toml").read_text()
    assert "database" not in text
    settings = load_settings(out / "intunnel.toml", env={})
    assert settings.db_url == "sqlite:////var/lib/intunnel/intunnel.db"
    assert json.loads((out / "derived.json").read_text())["database_backend"] == "sqlite"


def test_local_postgresql_is_reached_over_loopback_with_the_password_file(tmp_path):
    out = render_wiring(tmp_path, intunnel_tls_mode="off", intunnel_database="postgresql",
                        intunnel_postgresql_port="6543")
    settings = load_settings(out / "intunnel.toml", env={})
    assert settings.db_url == "postgresql://intunnel@127.0.0.1:6543/intunnel"
    assert settings.database_password_file == "/etc/intunnel/database-password"
    derived = json.loads((out / "derived.json").read_text())
    assert derived["database_local"] is True and derived["database_backend"] == "postgresql"


@pytest.mark.parametrize("password, password_file", [("s3cret", "/etc/intunnel/database-password"), ("", "")])
def test_existing_postgresql_gets_the_url_and_the_vaulted_password_by_file(tmp_path, password, password_file):
    url = "postgresql://intunnel@db.example.org:5433/appliance?sslmode=verify-full"
    out = render_wiring(tmp_path, intunnel_tls_mode="off", intunnel_database_url=url,
                        intunnel_database_password=password)
    text = (out / "intunnel.toml").read_text()
    settings = load_settings(out / "intunnel.toml", env={})
    assert settings.db_url == url and settings.database_password_file == password_file
    assert "s3cret" not in text
    derived = json.loads((out / "derived.json").read_text())
    assert derived["database_local"] is False and derived["database_backend"] == "postgresql"


@pytest.mark.parametrize("extra, message", [
    ({"intunnel_database_url": "postgresql://intunnel:hunter2@db.example.org/intunnel"}, "holds a password"),
    ({"intunnel_database_url": "mysql://intunnel@db.example.org/intunnel"}, "is postgresql://"),
    ({"intunnel_database_url": "postgresql://intunnel@db.example.org/"}, "is postgresql://"),
    ({"intunnel_database": "postgres"}, "is sqlite or postgresql"),
    ({"intunnel_database": "postgresql", "intunnel_postgresql_user": "In-Tunnel"}, "lower-case SQL names"),
])
def test_bad_database_settings_stop_the_play_naming_the_variable_not_the_value(tmp_path, extra, message):
    out, result = run_wiring(tmp_path, intunnel_tls_mode="off", **extra)
    assert result.returncode != 0 and message in result.stdout, result.stdout + result.stderr
    assert "hunter2" not in result.stdout + result.stderr
    assert not (out / "intunnel.toml").exists()
