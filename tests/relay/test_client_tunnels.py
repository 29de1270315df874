"""Tunnels by name, or none at all, and several in one process (issue 14).

Real relay and web app in this process, real local HTTP apps, the client as a real
``python -m intunnel.cli`` process with its own config file (XDG_CONFIG_HOME) holding a
login: a real API token of the user.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
from datetime import timedelta

import pytest

from intunnel import accounts, apitokens, cli, ephemeral, tunnels
from intunnel.client import config, resolve, tunnel_defs, tunnels_cli
from intunnel.client.api import ApiError
from intunnel.models import Route, Tunnel
from intunnel.timeutil import utcnow
from tests.support.tunnel import HttpUpstream, RelayThread, _Process, _python_env, visit, wait_for
from tests.support.web_server import running_web_app

GRACE = 1.0  # relay_ephemeral_grace in these tests (45 s by default)


class Setup:
    def __init__(self, settings, tmp_path):
        self.settings = settings
        self.user = accounts.create_user("ann@example.com", "ann", "correct horse battery")
        _, self.api_token = apitokens.create(self.user, "laptop")
        self.home = tmp_path / "home"
        self.env = {"XDG_CONFIG_HOME": str(self.home)}

    def write_config(self, tunnels_toml: str = "", tokens: dict | None = None, login: bool = True):
        cfg = config.ClientConfig(server=self.relay.url)
        entry = cfg.entry(self.relay.url)
        entry.tokens.update(tokens or {})
        if login:
            entry.login = config.Login(self.api_token, 1, "ann@example.com", self.web.url)
        path = config.save(cfg, self.home / "intunnel" / "config.toml")
        if tunnels_toml:
            path.write_text(path.read_text() + "\n" + tunnels_toml)

    def client(self, *argv) -> _Process:
        return _Process(list(argv), _python_env(self.env))

    def run(self, *argv, timeout=30) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "intunnel.cli", *argv], env=_python_env(self.env),
                              capture_output=True, text=True, timeout=timeout)

    def tunnel(self, subdomain: str):
        return Tunnel.get_or_none(Tunnel.subdomain == subdomain)


@pytest.fixture
def setup(settings, db, tmp_path):
    s = Setup(settings, tmp_path)
    with RelayThread(settings.replace(relay_ephemeral_grace=GRACE)) as relay, running_web_app(settings) as web:
        s.relay, s.web = relay, web
        s.write_config()
        yield s


def _serves(relay, subdomain: str, up) -> bool:
    """A visitor of ``subdomain`` reaches the local app ``up`` (and not another one)."""
    status, _, _ = visit(relay.port, f"{subdomain}.localhost", f"/hello-{subdomain}")
    return status == 200 and any(path == f"/hello-{subdomain}" for _, path, _ in up.seen)


# --- --name, with and without --create --------------------------------------------------------

def test_name_finds_the_users_tunnel_through_the_api(setup):
    with HttpUpstream() as up:
        tunnels.create(setup.settings, setup.user, "My shop", "myapp", up.port)
        with setup.client("http", str(up.port), "--name", "myapp") as client:
            client.wait_line(r"^connected: http://myapp\.localhost")
            assert _serves(setup.relay, "myapp", up)
        # by its name too, when one tunnel has it
        with setup.client("http", str(up.port), "--name", "My shop") as client:
            client.wait_line(r"^connected: http://myapp\.localhost")


def test_a_missing_name_without_create_lists_the_tunnels_and_says_create(setup):
    tunnels.create(setup.settings, setup.user, "Web", "web", 3000)
    done = setup.run("http", "3000", "--name", "newapp")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no tunnel 'newapp'" in done.stderr and "(yours: web)" in done.stderr and "--create" in done.stderr
    assert "Traceback" not in done.stderr and setup.tunnel("newapp") is None


def test_create_makes_the_tunnel_then_connects(setup):
    with HttpUpstream() as up:
        with setup.client("http", str(up.port), "--name", "newapp", "--create") as client:
            client.wait_line(r"^connected: http://newapp\.localhost")
            assert any("created tunnel newapp" in line for line in client.lines)
            assert _serves(setup.relay, "newapp", up)
        made = setup.tunnel("newapp")
        assert (made.name, made.local_port, made.ephemeral) == ("newapp", up.port, False)
        # the second time it is found, not created again
        with setup.client("http", str(up.port), "--name", "newapp", "--create") as client:
            client.wait_line(r"^connected: http://newapp\.localhost")
            assert not any("created" in line for line in client.lines)


def test_a_saved_token_wins_and_works_without_a_login(setup):
    with HttpUpstream() as up:
        saved = tunnels.create(setup.settings, setup.user, "Saved", "saved", up.port)
        setup.write_config(tokens={"myapp": saved.token}, login=False)
        with setup.client("http", str(up.port), "--name", "myapp") as client:
            client.wait_line(r"^connected: http://saved\.localhost")


# --- ephemeral tunnels ------------------------------------------------------------------------

@pytest.mark.parametrize("sig, portable", [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["ctrl-c", "sigterm", "ctrl-c-portable"])
def test_an_ephemeral_tunnel_is_deleted_when_the_client_stops(setup, sig, portable):
    if portable:  # the plain signal handlers macOS and Windows get (intunnel/portable.py)
        setup.env["INTUNNEL_PORTABLE"] = "1"
    with HttpUpstream() as up:
        client = setup.client("http", str(up.port))
        with client:
            m = client.wait_line(r"^ephemeral tunnel ([a-z]+): deleted when this client stops")
            word = m.group(1)
            client.wait_line(rf"^connected: http://{word}\.localhost")
            row = setup.tunnel(word)
            assert row.ephemeral and row.local_port == up.port
            assert _serves(setup.relay, word, up)
            client.signal(sig)
            assert client.proc.wait(15) == 0
            client.wait_line(rf"^deleted ephemeral tunnel {word}$")
            assert setup.tunnel(word) is None  # before the process exited


def test_a_killed_clients_ephemeral_tunnel_is_reaped_after_the_grace(setup):
    with HttpUpstream() as up:
        with setup.client("http", str(up.port)) as client:
            word = client.wait_line(r"^ephemeral tunnel ([a-z]+):").group(1)
            client.wait_line(r"^connected: ")
            client.kill()
        wait_for(lambda: setup.tunnel(word) is None, 20, message="the ephemeral tunnel reaped")


@pytest.mark.slow
def test_an_ephemeral_tunnel_deleted_while_the_client_was_away_is_replaced(settings, db, tmp_path):
    """A laptop asleep longer than the grace finds its ephemeral tunnel reaped: the relay no
    longer knows the token, and the client opens a new ephemeral tunnel instead of giving up."""
    from tests.support.tunnel import RelayProcess, free_port
    s = Setup(settings, tmp_path)
    port = free_port()
    relay = RelayProcess(settings, port)
    with running_web_app(settings) as web, HttpUpstream() as up:
        s.relay, s.web = relay, web
        s.write_config()
        client = s.client("http", str(up.port))
        try:
            first = client.wait_line(r"^ephemeral tunnel ([a-z]+):").group(1)
            client.wait_line(rf"^connected: http://{first}\.localhost")
            relay.kill()  # the laptop goes to sleep (the relay sees its agent gone)
            client.wait_line(r"^disconnected: ")
            Tunnel.delete().where(Tunnel.subdomain == first).execute()  # as the reaper does after the grace
            relay = RelayProcess(settings, port)
            second = client.wait_line(rf"^ephemeral tunnel {first} was deleted while this client was away "
                                      r".*: serving a new one, ([a-z]+)$", timeout=30).group(1)
            assert second != first and s.tunnel(second).ephemeral
            wait_for(lambda: _serves(relay, second, up), 20, message="the new ephemeral tunnel serves")
            client.signal(signal.SIGINT)
            assert client.proc.wait(15) == 0
            client.wait_line(rf"^deleted ephemeral tunnel {second}$")
            assert s.tunnel(second) is None
            assert "Traceback" not in "\n".join(client.lines)
        finally:
            client.close()
            relay.close()


def test_a_token_refused_at_once_is_never_renewed(settings, db):
    """The renewal is asked only for a token that had worked: a bad one stops the client."""
    from tests.support.tunnel import ClientThread
    asked = []
    with RelayThread(settings) as relay, ClientThread(relay.url, "not-a-token", 3000,
                                                      renew_token=lambda code: asked.append(code) or "x") as c:
        assert c.wait_exit(10) == 1
    assert asked == []


def test_the_dashboard_and_the_api_mark_ephemeral_tunnels(setup):
    import requests
    made = tunnels.create(setup.settings, setup.user, "tazomi", "tazomi", 3000, ephemeral=True)
    Tunnel.update(status="active").where(Tunnel.id == made.id).execute()  # the relay's reaper leaves it
    listed = requests.get(setup.web.url + "/api/tunnels", timeout=10,
                          headers={"Authorization": f"Bearer {setup.api_token}"}).json()["tunnels"]
    assert [(t["subdomain"], t["ephemeral"]) for t in listed] == [("tazomi", True)]
    assert listed[0]["url"] == setup.settings.tunnel_url("tazomi")
    browser = requests.Session()
    assert browser.post(setup.web.url + "/login", data={"email": "ann@example.com",
                                                        "password": "correct horse battery"}).status_code == 200
    for page in ("/", f"/tunnels/{made.id}"):
        assert "ephemeral, deleted when the client stops" in browser.get(setup.web.url + page, timeout=10).text


def test_ephemeral_tunnels_per_user_are_limited(settings, db):
    user = accounts.create_user("bo@example.com", "bo", "correct horse battery")
    small = settings.replace(ephemeral_max_per_user=2)
    for word in ("aaa", "bbb"):
        tunnels.create(small, user, word, word, 3000, ephemeral=True)
    tunnels.create(small, user, "kept", "kept", 3000)  # named tunnels don't count
    from intunnel.errors import Forbidden
    with pytest.raises(Forbidden, match="2 ephemeral tunnels already"):
        tunnels.create(small, user, "ccc", "ccc", 3000, ephemeral=True)


# --- the reaper: one conditional DELETE, safe in several processes at once -----------------------

def _ephemeral_row(user, subdomain, status="inactive", gone_for=None, is_ephemeral=True):
    now = utcnow()
    return Tunnel.create(owner=user, name=subdomain, subdomain=subdomain, local_port=1, token=subdomain * 8,
                         status=status, created_at=now - timedelta(hours=1), ephemeral=is_ephemeral,
                         disconnected_at=None if gone_for is None else now - timedelta(seconds=gone_for))


def test_the_reaper_deletes_only_abandoned_ephemeral_tunnels_once(settings, db):
    user = accounts.create_user("cy@example.com", "cy", "correct horse battery")
    _ephemeral_row(user, "gone", gone_for=120)
    _ephemeral_row(user, "nevercame")                       # created an hour ago, never connected
    _ephemeral_row(user, "justleft", gone_for=5)            # within the grace: may reconnect
    _ephemeral_row(user, "connected", status="active", gone_for=120)
    _ephemeral_row(user, "named", gone_for=120, is_ephemeral=False)
    routes = db.__class__.__name__.startswith("Postgres")
    if routes:  # another relay holds its agent: a valid lease
        held = _ephemeral_row(user, "heldelsewhere", gone_for=120)
        Route.create(tunnel=held, relay_id="other", session_id="s", claimed_at=utcnow(),
                     lease_expires_at=utcnow() + timedelta(minutes=5))
    counts, barrier = [], threading.Barrier(4)

    def reaper():  # each thread has its own database connection, as separate relays do
        barrier.wait(10)
        counts.append(ephemeral.reap(30.0, routes))

    threads = [threading.Thread(target=reaper) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(counts) == 2, counts  # each row deleted once, by one of them
    left = {t.subdomain for t in Tunnel.select()}
    assert left == {"justleft", "connected", "named"} | ({"heldelsewhere"} if routes else set())


def test_two_relay_processes_reap_each_abandoned_tunnel_once(settings, db, db_backend):
    """Several relays sharing PostgreSQL: each runs the reaper; their logs' counts add up to
    the rows, and none of them failed."""
    if db_backend != "postgresql":
        pytest.skip("several relays share a PostgreSQL database")
    import re
    from tests.support.tunnel import RelayProcess
    user = accounts.create_user("di@example.com", "di", "correct horse battery")
    env = {"INTUNNEL_RELAY_EPHEMERAL_GRACE": "0.4"}   # a check every 0.2 s in each relay
    with RelayProcess(settings, env={**env, "INTUNNEL_RELAY_ID": "relay-a"}) as a, \
            RelayProcess(settings, env={**env, "INTUNNEL_RELAY_ID": "relay-b"}) as b:
        made = 0
        for batch in range(5):  # rows that both relays find eligible at their next checks
            with db.atomic():
                for i in range(20):
                    _ephemeral_row(user, f"gone{batch}x{i}", gone_for=120)
            made += 20
            wait_for(lambda: not Tunnel.select().exists(), 15, message="reaped")

        def deleted(relay) -> int:
            return sum(int(m.group(1)) for m in map(re.compile(r"deleted (\d+) ephemeral").search, relay.lines) if m)
        wait_for(lambda: deleted(a) + deleted(b) == made, 10, message="the relays' logs")
        assert not any("could not delete" in line for line in a.lines + b.lines)
        print(f"reaped by relay-a: {deleted(a)}, by relay-b: {deleted(b)}")


# --- intunnel tunnels -------------------------------------------------------------------------

def test_tunnels_lists_the_users_tunnels_as_a_table_and_json(setup):
    with HttpUpstream() as up:
        tunnels.create(setup.settings, setup.user, "Web", "web", up.port)
        tunnels.create(setup.settings, setup.user, "Backend", "backend", 8000)
        with setup.client("http", str(up.port), "--name", "web") as client:
            client.wait_line(r"^connected: ")
            wait_for(lambda: setup.tunnel("web").status == "active", 10)
            done = setup.run("tunnels")
            assert done.returncode == 0, done.stderr
            lines = done.stdout.splitlines()
            assert lines[0].split() == ["NAME", "URL", "PORT", "STATUS", "LAST", "CONNECTED"]
            rows = {line.split()[0]: line.split() for line in lines[1:]}
            assert rows["web"][1:4] == [setup.settings.tunnel_url("web"), str(up.port), "active"]
            assert rows["backend"][1:4] == [setup.settings.tunnel_url("backend"), "8000", "inactive"]
            assert "never" in rows["backend"]
            by_web = setup.run("tunnels", "--server", setup.web.url)  # the dashboard's URL: its relay's login
            assert by_web.returncode == 0 and by_web.stdout == done.stdout, by_web.stderr
            answer = json.loads(setup.run("tunnels", "--json").stdout)
            by = {t["subdomain"]: t for t in answer["tunnels"]}
            assert by["web"]["status"] == "active" and by["web"]["last_connected"]
            assert by["backend"]["local_port"] == 8000 and "token" not in by["backend"]


def test_tunnels_without_a_login_says_log_in(setup):
    setup.write_config(login=False)
    done = setup.run("tunnels")
    assert done.returncode == 2 and "intunnel login --server" in done.stderr and "Traceback" not in done.stderr


def test_a_revoked_login_says_log_in_again(setup):
    row = apitokens.list_for(setup.user)[0]
    apitokens.revoke(setup.user, row.id)
    for argv in (["http", "3000"], ["http", "3000", "--name", "web"], ["tunnels"]):
        done = setup.run(*argv)
        assert done.returncode == 2, argv
        assert "is no longer valid" in done.stderr and "`intunnel login --server" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_tunnels_table_is_padded():
    text = tunnels_cli.table([{"subdomain": "a", "url": "http://a.x", "local_port": 1, "status": "active",
                               "last_connected": "2026-01-01T10:00:00Z", "ephemeral": True}])
    assert text.splitlines()[1].split("  ")[-1].strip() == "2026-01-01 10:00:00 UTC"
    assert "active (ephemeral)" in text


# --- several tunnels in one process -----------------------------------------------------------

def test_start_runs_several_tunnels_in_one_process_and_ctrl_c_stops_them_all(setup):
    with HttpUpstream() as web_app, HttpUpstream() as api_app:
        api = tunnels.create(setup.settings, setup.user, "Shop", "shop", api_app.port)
        setup.write_config(f"""
[tunnels.web]
port = {web_app.port}
create = true

[tunnels.shop]
# no port: the tunnel's local port set in the dashboard
token = "{api.token}"
host_header = "rewrite"
""")
        with setup.client("start", "--all") as client:
            client.wait_line(r"^web +\| connected: http://web\.localhost")
            client.wait_line(r"^shop +\| connected: http://shop\.localhost")
            assert _serves(setup.relay, "web", web_app) and _serves(setup.relay, "shop", api_app)
            assert web_app.port != api_app.port
            client.signal(signal.SIGINT)
            assert client.proc.wait(15) == 0
            client.wait_line(r"^stopped$")
        wait_for(lambda: {t.status for t in Tunnel.select()} == {"inactive"}, 10)
        with setup.client("start", "shop") as client:   # one of them, by name
            client.wait_line(r"^shop +\| connected: ")
            assert not any(line.startswith("web") for line in client.lines)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    path = tmp_path / "intunnel" / "config.toml"
    path.parent.mkdir(parents=True)
    return path


@pytest.mark.parametrize("section, says", [
    ('port = "3000"', "[tunnels.web] port: must be an integer"),
    ("port = 70000", "[tunnels.web] port: must be an integer from 1 to 65535"),
    ("port = 3000\nprot = 1", "[tunnels.web] prot: unknown key"),
    ('upstream = "nohost"', "[tunnels.web] upstream: --upstream must be HOST:PORT"),
    ('port = 1\nallow_ip = ["10.0.0.0/33"]', "[tunnels.web] allow_ip:"),
    ('port = 1\nbasic_auth = ["nopassword"]', "[tunnels.web] basic_auth:"),
    ("port = 1\nbasic_auth = \"ann:pw\"", "[tunnels.web] basic_auth: must be a list"),
    ('port = 1\nserver = "ftp://x"', "[tunnels.web] server:"),
    ("port = 1\ncreate = 1", "[tunnels.web] create: must be true or false"),
])
def test_a_bad_section_is_one_line_naming_section_and_key(home, capsys, section, says):
    home.write_text(f'server = "http://localhost:1"\n\n[tunnels.web]\n{section}\n')
    code = cli.main(["start", "web"])
    err = capsys.readouterr().err
    assert code == 2 and says in err and "Traceback" not in err, err


@pytest.mark.parametrize("argv, says", [
    (["start"], "name the sections to run, or --all (in "),
    (["start", "nope"], "no [tunnels.nope] section"),
    (["start", "web", "--all"], "name the sections to run, or --all"),
])
def test_start_names_sections_that_exist(home, capsys, argv, says):
    home.write_text('[tunnels.web]\nport = 1\n')
    assert cli.main(argv) == 2 and says in capsys.readouterr().err


def test_a_section_without_a_server_says_where_to_set_it(home, capsys):
    home.write_text('[tunnels.web]\nport = 1\n')
    assert cli.main(["start", "web"]) == 2 and "[tunnels.web] server: no server" in capsys.readouterr().err


def test_config_show_lists_the_sections_without_secrets(home, capsys):
    home.write_text('[tunnels.web]\nport = 3000\ntoken = "abcdefghijklmnopq"\nbasic_auth = ["ann:secret-pass"]\n')
    assert cli.main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert "[tunnels.web] port = 3000, token = abcd…, basic_auth = (set)" in out
    assert "secret-pass" not in out and "abcdefghijklmnopq" not in out


def test_start_without_sections_says_how_to_write_one(home, capsys):
    assert cli.main(["start", "--all"]) == 2 and "[tunnels.web]" in capsys.readouterr().err


# --- which tunnel: the order, without a server -------------------------------------------------

class FakeApi:
    def __init__(self, tunnels=(), taken=0):
        self.tunnels, self.taken, self.posts = list(tunnels), taken, []

    def __call__(self, base_url, token, insecure=False):
        self.base_url, self.token = base_url, token
        return self

    def get(self, path):
        return {"tunnels": self.tunnels}

    def post(self, path, body):
        self.posts.append(body)
        if self.taken:
            self.taken -= 1
            raise ApiError("taken", 400, "SUBDOMAIN_TAKEN")
        return {"tunnel": {"id": 7, "token": "new", **body}}


def _args(**kw):
    return argparse.Namespace(**{"server": "https://e.com", "token": None, "name": None, "create": False,
                                 "port": 3000, "insecure": False, **kw})


def _cfg(tokens=None, login=True):
    cfg = config.ClientConfig()
    entry = cfg.entry("https://e.com")
    entry.tokens.update(tokens or {})
    entry.login = config.Login("api-token", 1, "ann", "https://web.e.com") if login else None
    return cfg


def test_the_order_token_then_saved_then_login():
    api = FakeApi([{"subdomain": "web", "name": "Web", "token": "looked-up", "local_port": 1}])
    assert resolve.resolve(_args(token="given", name="web"), _cfg(), api).token == "given"
    assert resolve.resolve(_args(name="web"), _cfg({"web": "saved"}), api).token == "saved"
    found = resolve.resolve(_args(name="web"), _cfg(), api)
    assert (found.token, api.base_url, api.token, found.ephemeral_id) == ("looked-up", "https://web.e.com",
                                                                         "api-token", None)
    assert resolve.resolve(_args(), _cfg({"only": "saved"}), api).token == "saved"  # not ephemeral
    made = resolve.resolve(_args(), _cfg(), FakeApi(taken=2))
    assert made.ephemeral_id == 7 and made.name.isalpha() and len(made.name) == 6


def test_ephemeral_retries_a_taken_subdomain_then_gives_up():
    api = FakeApi(taken=resolve.EPHEMERAL_TRIES)
    with pytest.raises(ValueError, match="random subdomains in a row were taken"):
        resolve.resolve(_args(), _cfg(), api)
    assert len({p["subdomain"] for p in api.posts}) > 1 and all(p["ephemeral"] for p in api.posts)


def test_a_name_shared_by_two_tunnels_asks_for_the_subdomain():
    api = FakeApi([{"subdomain": "a", "name": "Same", "token": "1"}, {"subdomain": "b", "name": "Same", "token": "2"}])
    with pytest.raises(ValueError, match="2 of your tunnels are named 'Same'"):
        resolve.resolve(_args(name="Same"), _cfg(), api)


def test_the_web_apps_url_as_server_finds_its_relays_login():
    api = FakeApi([{"subdomain": "web", "name": "Web", "token": "looked-up"}])
    found = resolve.resolve(_args(server="https://WEB.e.com/", name="web"), _cfg(), api)
    assert (found.server, found.token, api.base_url) == ("https://e.com", "looked-up", "https://web.e.com")


def test_without_login_or_token_it_says_log_in():
    with pytest.raises(ValueError, match="no login: `intunnel login --server https://e.com`"):
        resolve.resolve(_args(), _cfg(login=False))


def test_section_defaults():
    defn = tunnel_defs.define("web", {"port": 3000})
    assert (defn.name, defn.port, defn.host_header, defn.create, defn.basic_auth) == ("web", 3000, "preserve",
                                                                                    False, [])
