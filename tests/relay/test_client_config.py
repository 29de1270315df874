"""The client's config file (issue 14, item 3): several tunnel tokens per machine, keyed by
server and tunnel; `config show` masks them, `config remove` forgets them; the first
format still loads; `intunnel http` picks the token by --name."""

from __future__ import annotations

import argparse
import stat

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from intunnel import cli
from intunnel.client import config
from intunnel.client import resolve

TOKEN_A = "tokA" + "a" * 40
TOKEN_B = "tokB" + "b" * 40


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    return tmp_path / "intunnel" / "config.toml"


def run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_add_token_keeps_one_token_per_server_and_tunnel(home, capsys):
    assert run(capsys, "config", "add-token", TOKEN_A, "--server", "https://Example.com/", "--name", "web")[0] == 0
    code, out, _ = run(capsys, "config", "add-token", TOKEN_B, "--name", "api")  # the default server
    assert code == 0 and "2 tunnels saved" in out
    assert run(capsys, "config", "add-token", TOKEN_B, "--server", "http://localhost:8080")[0] == 0
    cfg = config.load(home)
    assert cfg.server == "https://example.com"
    assert cfg.find("https://example.com").tokens == {"web": TOKEN_A, "api": TOKEN_B}
    assert cfg.find("http://localhost:8080").tokens == {config.DEFAULT_NAME: TOKEN_B}
    assert stat.S_IMODE(home.stat().st_mode) == 0o600
    assert TOKEN_A not in out


def test_replacing_a_token_says_so(home, capsys):
    run(capsys, "config", "add-token", TOKEN_A, "--server", "https://example.com", "--name", "web")
    code, out, _ = run(capsys, "config", "add-token", TOKEN_B, "--name", "web")
    assert code == 0 and out.startswith("replaced the saved token of tunnel 'web'")


def test_show_lists_everything_with_tokens_masked(home, capsys):
    run(capsys, "config", "add-token", TOKEN_A, "--server", "https://example.com", "--name", "web")
    cfg = config.load(home)
    cfg.entry("https://example.com").login = config.Login("api" + "z" * 40, 7, "alice@example.com")
    config.save(cfg, home)
    code, out, _ = run(capsys, "config", "show")
    assert code == 0
    assert "https://example.com  (default server)" in out
    assert "logged in as alice@example.com (API token apiz…)" in out
    assert "tunnel web: token tokA…" in out
    assert TOKEN_A not in out and "z" * 20 not in out


def test_show_on_a_new_machine_says_how_to_start(home, capsys):
    code, out, _ = run(capsys, "config", "show")
    assert code == 0 and "nothing saved yet" in out


def test_remove_one_tunnel_then_the_whole_server(home, capsys):
    run(capsys, "config", "add-token", TOKEN_A, "--server", "https://example.com", "--name", "web")
    run(capsys, "config", "add-token", TOKEN_B, "--name", "api")
    run(capsys, "config", "add-token", TOKEN_B, "--server", "http://localhost:8080")
    assert run(capsys, "config", "remove", "--name", "web")[0] == 0
    assert config.load(home).find("https://example.com").tokens == {"api": TOKEN_B}
    code, _, err = run(capsys, "config", "remove", "--name", "web")
    assert code == 2 and "nothing saved for tunnel 'web'" in err
    assert run(capsys, "config", "remove", "--server", "https://example.com")[0] == 0
    cfg = config.load(home)
    assert list(cfg.servers) == ["http://localhost:8080"]
    assert cfg.server == "http://localhost:8080"  # the default moves to a server still saved


def test_the_first_format_still_loads(home):
    home.parent.mkdir(parents=True)
    home.write_text(f'server = "https://example.com"\ntoken = "{TOKEN_A}"\n')
    cfg = config.load(home)
    assert cfg.find("https://example.com").tokens == {config.DEFAULT_NAME: TOKEN_A}
    config.save(cfg, home)  # and is rewritten in the new one
    assert config.load(home).find("https://example.com").tokens == {config.DEFAULT_NAME: TOKEN_A}
    assert "\ntoken =" not in home.read_text()


@pytest.mark.parametrize("text, says", [
    ("server = [", "client config"),
    ("servers = 3", "servers must be a table"),
    ('[servers."https://e.com".tokens]\nweb = 5', "must be a string"),
    ('[servers."https://e.com".login]\ntoken = "x"\ntoken_id = "7"', "token_id must be a number"),
])
def test_a_broken_config_file_is_one_clear_error(home, capsys, text, says):
    home.parent.mkdir(parents=True)
    home.write_text(text)
    code, _, err = run(capsys, "config", "show")
    assert code == 2 and says in err and "Traceback" not in err


def resolve_token(args, cfg):
    target = resolve.resolve(args, cfg)  # no login in these configs: nothing asks the API
    return target.server, target.token


def _args(**kw):
    return argparse.Namespace(**{"server": None, "token": None, "name": None, **kw})


def test_http_picks_the_token_by_name():
    cfg = config.ClientConfig(server="https://example.com")
    with pytest.raises(ValueError, match="no tunnel token saved for https://example.com"):
        resolve_token(_args(), cfg)
    cfg.entry("https://example.com").tokens["web"] = TOKEN_A
    assert resolve_token(_args(), cfg) == ("https://example.com", TOKEN_A)  # the only one
    cfg.entry("https://example.com").tokens["api"] = TOKEN_B
    with pytest.raises(ValueError, match=r"2 tunnels are saved for https://example.com \(api, web\)"):
        resolve_token(_args(), cfg)
    assert resolve_token(_args(name="api"), cfg)[1] == TOKEN_B
    with pytest.raises(ValueError, match="no token saved for tunnel 'db'"):
        resolve_token(_args(name="db"), cfg)
    assert resolve_token(_args(token="given"), cfg)[1] == "given"
    with pytest.raises(ValueError, match="give --server URL"):
        resolve_token(_args(), config.ClientConfig())


names = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF, blacklist_characters="\x7f"),
                min_size=1, max_size=12)
secrets = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF), min_size=1, max_size=40)


@hsettings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["https://a.example", "http://localhost:8080"]),
                       st.dictionaries(names, secrets, max_size=4), max_size=2),
       st.dictionaries(names, st.dictionaries(names, st.one_of(st.integers(-2**40, 2**40), secrets,
                                                                st.booleans()), max_size=3), max_size=3))
def test_what_is_saved_loads_back_the_same(tokens, tunnels):
    cfg = config.ClientConfig(server="https://a.example", tunnels=tunnels)
    for url, saved in tokens.items():
        cfg.entry(url).tokens.update(saved)
        cfg.entry(url).login = config.Login("x" + url, 3, "u@example.com", "http://localhost:8000")
    back = config.from_dict(config.tomllib.loads(config.to_toml(cfg)))
    assert back == cfg
