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
MULTI_WIRING = Path(__file__).resolve().parent / "playbooks" / "multi_wiring.yml"
MULTI_INVENTORY = DEPLOY / "inventory.multi.example.ini"
PEER_SECRET = "peer-secret-0123456789abcdef-0123456789"


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


@pytest.mark.parametrize("inventory", ["inventory.example.ini", "inventory.multi.example.ini"])
def test_playbook_syntax(tmp_path, inventory):
    result = subprocess.run([ansible_tool("ansible-playbook"), "--syntax-check", "-i", f"deploy/{inventory}",
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


def run_multi_wiring(tmp_path, inventory=MULTI_INVENTORY, **extra) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path / "out"
    out.mkdir()
    values = {"intunnel_database_password": "db-s3cret", "intunnel_relay_peer_secret": PEER_SECRET, **extra}
    args = [ansible_tool("ansible-playbook"), "-i", str(inventory), str(MULTI_WIRING), "-e", f"out_dir={out}",
            "-e", f"ansible_python_interpreter={sys.executable}"]
    for key, value in values.items():
        args += ["-e", f"{key}={value}"]
    result = subprocess.run(args, capture_output=True, text=True, env=ansible_env(tmp_path), timeout=120)
    return out, result


def test_multi_host_inventory_gives_each_host_its_part(tmp_path):
    """The example multi-host inventory: PostgreSQL on the db host (reached by the others' private addresses
    only), the web app and the front nginx balancing over both relays on the web host, each relay with its
    id, its private listeners and the shared secret by file; no secret in any config file."""
    out, result = run_multi_wiring(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    derived = {h.name: json.loads((h / "derived.json").read_text()) for h in out.iterdir()}
    db, front = derived["db.example.com"], derived["front.example.com"]
    assert db["services"] == [] and db["database_local"] and not (out / "db.example.com" / "intunnel.toml").exists()
    assert sorted(db["postgresql_clients"]) == ["10.0.0.11", "10.0.0.12", "10.0.0.3"]
    assert sorted(db["firewall"]) == [["10.0.0.11", 5432], ["10.0.0.12", 5432], ["10.0.0.3", 5432]]
    assert front["services"] == ["intunnel-web.service"] and front["firewall"] == []
    assert front["sockets"] == [] == db["sockets"]
    # TCP tunnels' ports: opened on the relays only (they listen on them), as ufw ranges
    assert front["tcp_ports"] == [] and db["tcp_ports"] == []

    web = load_settings(out / "front.example.com" / "intunnel.toml", env={})
    assert web.db_url == "postgresql://intunnel@10.0.0.2:5432/intunnel"
    assert web.database_password_file == "/etc/intunnel/database-password"
    assert web.nginx_relays == ["10.0.0.11:8080", "10.0.0.12:8080"] and not web.relay_peer_listen
    rendered = "".join(nginxconf.render(web).values())
    assert "10.0.0.11:8080" in rendered and "10.0.0.12:8080" in rendered

    for host, number, other in (("relay1.example.com", 11, 12), ("relay2.example.com", 12, 11)):
        assert derived[host]["services"] == ["intunnel-relay.service"]
        assert derived[host]["sockets"] == ["intunnel-relay.socket"]
        # its socket unit listens where its relay_listen says (the relay takes the port from it)
        listen = (out / host / "relay-socket-listen.conf").read_text().splitlines()
        assert listen[-2:] == ["ListenStream=", f"ListenStream=10.0.0.{number}:8080"]
        assert sorted(derived[host]["firewall"]) == sorted([["10.0.0.3", 8080], [f"10.0.0.{other}", 8081]])
        relay = load_settings(out / host / "intunnel.toml", env={})
        assert relay.relay_id == host.split(".")[0]
        assert relay.relay_listen == f"10.0.0.{number}:8080" and relay.relay_peer_listen == f"10.0.0.{number}:8081"
        assert relay.relay_peer_secret_file == "/etc/intunnel/relay-peer-secret"
        assert relay.db_url == web.db_url and relay.relay_trust_proxy and not relay.nginx_relays
        assert relay.relay_tcp_ports == "20000-20999" and derived[host]["tcp_ports"] == ["20000:20999"]
    for config in out.glob("*/intunnel.toml"):
        assert PEER_SECRET not in config.read_text() and "db-s3cret" not in config.read_text()


def test_the_single_host_inventory_is_not_multi_host(tmp_path):
    """The single-host example (the group `intunnel` alone) keeps everything on its one host."""
    out, result = run_multi_wiring(tmp_path, inventory=DEPLOY / "inventory.example.ini",
                                   intunnel_database_password="", intunnel_relay_peer_secret="")
    assert result.returncode == 0, result.stdout + result.stderr
    derived = json.loads((out / "vps.example.com" / "derived.json").read_text())
    assert derived["services"] == ["intunnel-web.service", "intunnel-relay.service"] and derived["firewall"] == []
    assert derived["sockets"] == ["intunnel-relay.socket"]
    assert (out / "vps.example.com" / "relay-socket-listen.conf").read_text().splitlines()[-1] \
        == "ListenStream=127.0.0.1:8080"
    text = (out / "vps.example.com" / "intunnel.toml").read_text()
    assert "nginx_relays" not in text and "relay_peer" not in text and "relay_id" not in text


@pytest.mark.parametrize("extra, message", [
    ({"intunnel_relay_peer_secret": "short"}, "intunnel_relay_peer_secret"),
    ({"intunnel_database_password": ""}, "intunnel_database_password"),
    ({"intunnel_private_address": "db.internal"}, "intunnel_private_address"),
])
def test_bad_multi_host_settings_stop_the_play_naming_the_variable(tmp_path, extra, message):
    out, result = run_multi_wiring(tmp_path, **extra)
    assert result.returncode != 0 and message in result.stdout, result.stdout + result.stderr
    assert PEER_SECRET not in result.stdout + result.stderr
    assert not list(out.glob("*/intunnel.toml"))


@pytest.mark.parametrize("ports", ["20000-20999", "21000-21009,22000", ""])
def test_tcp_tunnel_ports_reach_the_config(tmp_path, ports):
    """intunnel_tcp_ports is the relays' relay_tcp_ports (empty: TCP tunnels off)."""
    out = render_wiring(tmp_path, intunnel_tcp_ports=f"'{ports}'" if not ports else ports)
    settings = load_settings(out / "intunnel.toml", env={})
    assert settings.relay_tcp_ports == ports and settings.relay_tcp_listen_host == "*"


@pytest.mark.parametrize("ipv6, host", [("true", "*"), ("false", "0.0.0.0")])
def test_tcp_tunnels_listen_on_ipv6_as_nginx_does(tmp_path, ipv6, host):
    """Every address of both families, unless the host has no IPv6 (intunnel_nginx_ipv6 off)."""
    out = render_wiring(tmp_path, intunnel_nginx_ipv6=ipv6)
    assert load_settings(out / "intunnel.toml", env={}).relay_tcp_listen_host == host
