import os
import re
import stat

import pytest

from intunnel.errors import ConfigError
from intunnel.settings import SETTINGS, load_settings, prepare_data_dir

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def test_readme_documents_every_setting():
    text = open(README).read()
    for s in SETTINGS:
        assert f"`{s.name}`" in text and f"`INTUNNEL_{s.name.upper()}`" in text, s.name


def _readme_default(cell: str) -> str:
    """A settings-table default cell as text: its first `code` span ("``", "empty" and a quoted
    empty string all mean empty; a parenthetical after it explains)."""
    cell = cell.strip()
    if cell.startswith("`"):
        cell = cell[1:cell.index("`", 1)]
    elif cell == "empty":
        cell = ""
    return cell.strip('"')


def test_readme_gives_every_setting_its_real_default():
    text = open(README).read()
    for s in SETTINGS:
        row = re.search(rf"^\| `{s.name}` \| `INTUNNEL_{s.name.upper()}` \| ([^|]*) \|", text, re.M)
        assert row, s.name
        default = s.default
        if isinstance(default, bool):
            expected = str(default).lower()
        elif isinstance(default, list):
            expected = ",".join(default)
        else:
            expected = str(default)
        shown = _readme_default(row.group(1))
        if s.name == "data_dir":
            shown = os.path.expanduser(shown)
        assert shown.lower() == expected.lower(), (s.name, shown, expected)


def test_defaults_and_embedded_urls():
    s = load_settings(env={})
    assert s.domain == "localhost" and s.web_listen == "127.0.0.1:8000" and s.relay_listen == "127.0.0.1:8080"
    assert s.tunnel_url("myapp") == "http://myapp.localhost:8080"


def test_production_url_has_no_port():
    s = load_settings(env={"INTUNNEL_DOMAIN": "example.com", "INTUNNEL_PUBLIC_SCHEME": "https"})
    assert s.tunnel_url("myapp") == "https://myapp.example.com"


def test_file_then_env_precedence(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('domain = "file.example"\nweb_threads = 3\nreserved_subdomains = ["x"]\n')
    s = load_settings(cfg, env={"INTUNNEL_WEB_THREADS": "5"})
    assert (s.domain, s.web_threads, s.reserved_subdomains) == ("file.example", 5, ["x"])


@pytest.mark.parametrize("content, key", [
    ('bogus = 1\n', "bogus"),
    ('web_threads = "many"\n', "web_threads"),
    ('public_scheme = "ftp"\n', "public_scheme"),
    ('relay_listen = "nohostport"\n', "relay_listen"),
    # forwarding between relays: all of its settings, and PostgreSQL
    ('relay_peer_listen = "10.0.0.2:7001"\ndatabase_url = "postgresql://u@db/intunnel"\n', "relay_peer_secret_file"),
    ('relay_peer_listen = "10.0.0.2:7001"\nrelay_peer_secret_file = "/s"\n', "relay_peer_listen"),
    ('relay_peer_secret_file = "/s"\n', "relay_peer_secret_file"),
    ('relay_peer_address = "10.0.0.2:7001"\n', "relay_peer_address"),
    ('relay_peer_listen = "nohostport"\nrelay_peer_secret_file = "/s"\n'
     'database_url = "postgresql://u@db/intunnel"\n', "relay_peer_listen"),
])
def test_bad_config_names_the_key(tmp_path, content, key):
    cfg = tmp_path / "c.toml"
    cfg.write_text(content)
    with pytest.raises(ConfigError) as e:
        load_settings(cfg, env={})
    assert key in str(e.value) and "\n" not in str(e.value)


def test_forwarding_settings_and_where_peers_dial():
    pg = {"database_url": "postgresql://u@db/intunnel", "relay_peer_secret_file": "/s"}
    s = load_settings(env={}, overrides={**pg, "relay_peer_listen": "0.0.0.0:7001",
                                         "relay_peer_address": "10.0.0.2:7001"})
    assert s.relay_peer_dial_address == ("10.0.0.2", 7001)
    assert load_settings(env={}, overrides={**pg, "relay_peer_listen": "10.0.0.3:7001"}
                         ).relay_peer_dial_address == ("10.0.0.3", 7001)
    assert load_settings(env={}).relay_peer_dial_address is None


def test_bad_env_names_the_variable():
    with pytest.raises(ConfigError, match="INTUNNEL_RELAY_MAX_AGENTS"):
        load_settings(env={"INTUNNEL_RELAY_MAX_AGENTS": "lots"})


def test_secret_key_generated_once_0600(tmp_path):
    s = load_settings(env={}, overrides={"data_dir": str(tmp_path / "d")})
    a = prepare_data_dir(s).secret_key
    b = prepare_data_dir(s).secret_key
    assert a and a == b
    assert stat.S_IMODE(os.stat(tmp_path / "d" / "secret_key").st_mode) == 0o600


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_data_dir_fails_naming_key(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(ConfigError, match="data_dir"):
        prepare_data_dir(load_settings(env={}, overrides={"data_dir": str(ro / "x")}))


def test_unwritable_data_dir_fails_naming_key_as_root(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="data_dir"):
        prepare_data_dir(load_settings(env={}, overrides={"data_dir": str(blocker / "x")}))
