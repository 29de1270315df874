"""`intunnel serve` (web + relay on loopback) and `intunnel config add-token`, as real processes."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import urllib.error
import urllib.request

from tests.support.backends import database_env
from tests.support.tunnel import HttpUpstream, _Process, _python_env, free_port, visit, wait_for


class ServeProcess(_Process):
    def __init__(self, settings, web_port, relay_port, env=None):
        super().__init__(["serve"], _python_env({
            "INTUNNEL_DATA_DIR": str(settings.data_dir), **database_env(settings),
            "INTUNNEL_WEB_LISTEN": f"127.0.0.1:{web_port}",
            "INTUNNEL_RELAY_LISTEN": f"127.0.0.1:{relay_port}", **(env or {})}))


def api(web_port, method, path, body=None, cookie=None):
    req = urllib.request.Request(f"http://127.0.0.1:{web_port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json", "Accept": "application/json",
                                          **({"Cookie": cookie} if cookie else {})})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read()), resp.headers


def test_serve_creates_the_first_admin_once_and_tunnels_work(settings, tmp_path):
    web_port, relay_port = free_port(), free_port()
    serve = ServeProcess(settings, web_port, relay_port)
    try:
        serve.wait_line(r"Next steps:")
        out = "\n".join(serve.lines)
        email = re.search(r"Admin account:\s+(\S+)", out).group(1)
        password = re.search(r"Admin password:\s+(\S+)", out).group(1)
        assert f"--server http://localhost:{relay_port} --token" in out
        assert f" login --server http://localhost:{relay_port}\n" in out  # log in once, then by name
        assert " http 3000 --name myapp --create\n" in out
        assert f"http://myapp.localhost:{relay_port}" in out
        assert f"intunnel-admin user set-password {email}" in out   # how to recover a lost password
        # the database holds password hashes: private from its first byte (doctor warns otherwise)
        assert settings.db_backend != "sqlite" or stat.S_IMODE(os.stat(settings.db_path).st_mode) == 0o600
        # serve built this checkout's client zipapp at start, and the web app serves that file
        from intunnel import clientzip
        assert clientzip.path_in(settings.data_dir).is_file()
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}{clientzip.URL_PATH}", timeout=10) as resp:
            assert resp.read() == clientzip.path_in(settings.data_dir).read_bytes()
        # Log in, create a tunnel through the API, run the exact client command.
        login, headers = api(web_port, "POST", "/login", {"email": email, "password": password})
        cookie = headers["Set-Cookie"].split(";", 1)[0]
        created, _ = api(web_port, "POST", "/api/tunnels",
                         {"name": "My App", "subdomain": "myapp", "local_port": 3000}, cookie)
        token = created["tunnel"]["token"]
        with HttpUpstream() as up:
            client = _Process(["http", str(up.port), "--server", f"http://localhost:{relay_port}",
                               "--token", token], _python_env({}))
            try:
                client.wait_line(rf"^connected: http://myapp\.localhost:{relay_port}")
                status, _, body = visit(relay_port, f"myapp.localhost:{relay_port}", "/hi")
                assert status == 200 and json.loads(body)["path"] == "/hi"
                # The relay stores "active" after its Welcome (which the client's line follows): wait.
                wait_for(lambda: api(web_port, "GET", "/api/tunnels", cookie=cookie)[0]["tunnels"][0]["status"]
                         == "active", message="the tunnel listed as active")
            finally:
                client.close()
        assert serve.stop() == 0
    finally:
        serve.close()
    # Second run: users exist, no new admin and no password printed.
    serve = ServeProcess(settings, web_port, relay_port)
    try:
        serve.wait_line(r"Next steps:")
        assert "Admin password" not in "\n".join(serve.lines)
        assert serve.stop() == 0
    finally:
        serve.close()


def test_serve_takes_the_admin_from_the_environment(settings):
    web_port, relay_port = free_port(), free_port()
    serve = ServeProcess(settings, web_port, relay_port, env={
        "INTUNNEL_ADMIN_EMAIL": "boss@example.com", "INTUNNEL_ADMIN_PASSWORD": "a long secret pw"})
    try:
        serve.wait_line(r"Next steps:")
        out = "\n".join(serve.lines)
        assert "boss@example.com" in out and "a long secret pw" not in out
        login, _ = api(web_port, "POST", "/login", {"email": "boss@example.com", "password": "a long secret pw"})
        assert login["success"] is True
    finally:
        serve.close()


def test_config_add_token_then_http_port_alone(settings, db, tmp_path):
    from tests.support.tunnel import RelayThread, make_tunnel
    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    with HttpUpstream() as up, RelayThread(settings) as relay:
        tunnel = make_tunnel(settings, "myapp", up.port)
        done = subprocess.run([sys.executable, "-m", "intunnel.cli", "config", "add-token", tunnel.token,
                               "--server", relay.url], env=_python_env(env), capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 0, done.stderr
        path = tmp_path / "cfg" / "intunnel" / "config.toml"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert tunnel.token not in done.stdout  # secrets are not echoed
        client = _Process(["http", str(up.port)], _python_env(env))
        try:
            client.wait_line(r"^connected: http://myapp\.localhost")
            assert visit(relay.port, "myapp.localhost", "/")[0] == 200
        finally:
            client.close()
    bad = subprocess.run([sys.executable, "-m", "intunnel.cli", "http", "3000"],
                         env=_python_env({"XDG_CONFIG_HOME": str(tmp_path / "empty")}),
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "add-token" in bad.stderr


def test_serve_exposes_web_and_relay_metrics_on_one_loopback_listener(settings):
    from tests.support.metrics import scrape
    web_port, relay_port, metrics_port = free_port(), free_port(), free_port()
    serve = ServeProcess(settings, web_port, relay_port,
                         env={"INTUNNEL_RELAY_METRICS_LISTEN": f"127.0.0.1:{metrics_port}"})
    try:
        serve.wait_line(r"Next steps:")
        serve.wait_line(rf"relay metrics at http://127\.0\.0\.1:{metrics_port}/metrics")
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/healthz", timeout=10) as resp:
            assert resp.status == 200
        assert visit(relay_port, f"nosuch.localhost:{relay_port}", "/")[0] == 404
        samples = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        assert samples.value("intunnel_web_requests_total", route="/healthz", method="GET", status="200") == 1
        assert samples.value("intunnel_relay_refusals_total", reason="unknown_tunnel") == 1
        assert samples.value("intunnel_relay_agents_connected") == 0
        assert samples.has("intunnel_db_query_seconds_count", statement="select")
        # neither public port serves them
        assert visit(relay_port, f"localhost:{relay_port}", "/metrics")[0] == 404
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{web_port}/metrics", timeout=10)
            raise AssertionError("the web port served /metrics")
        except urllib.error.HTTPError as e:
            assert e.code == 404
        assert serve.stop() == 0
    finally:
        serve.close()
    assert not any("Traceback" in line for line in serve.lines)


def test_serve_on_a_busy_port_says_which_setting_and_the_flags_choose_others(settings):
    web_port, relay_port = free_port(), free_port()
    first = ServeProcess(settings, web_port, relay_port)
    try:
        first.wait_line(r"Next steps:")
        env = _python_env({"INTUNNEL_DATA_DIR": str(settings.data_dir), **database_env(settings),
                           "INTUNNEL_RELAY_METRICS_LISTEN": ""})
        busy_web = _Process(["serve", "--web-listen", f"127.0.0.1:{web_port}",
                             "--relay-listen", f"127.0.0.1:{free_port()}"], env)
        busy_relay = _Process(["serve", "--web-listen", f"127.0.0.1:{free_port()}",
                               "--relay-listen", f"127.0.0.1:{relay_port}"], env)
        for proc, setting, port in ((busy_web, "web_listen", web_port), (busy_relay, "relay_listen", relay_port)):
            try:
                proc.wait_line(rf"setting '{setting}': cannot listen on 127\.0\.0\.1:{port} ", timeout=30)
                assert proc.proc.wait(30) == 2
                out = "\n".join(proc.lines)
                assert f"--{setting.replace('_', '-')}" in out and "Traceback" not in out
            finally:
                proc.close()
        other_web, other_relay = free_port(), free_port()
        moved = _Process(["serve", "--web-listen", f"127.0.0.1:{other_web}", "--relay-listen",
                          f"127.0.0.1:{other_relay}"], env)
        try:
            moved.wait_line(r"Next steps:")
            assert f"http://localhost:{other_web}" in "\n".join(moved.lines)
            assert api(other_web, "GET", "/healthz")[0]
        finally:
            moved.close()
        bad = _Process(["serve", "--web-listen", "nonsense"], env)
        try:
            bad.wait_line(r"setting 'web_listen': expected HOST:PORT", timeout=30)
            assert bad.proc.wait(30) == 2
        finally:
            bad.close()
    finally:
        first.close()


def _banner_command(lines) -> str:
    line = next(l for l in lines if " http 3000 --server " in l)
    return line.split(" http 3000 --server ")[0].strip()


def test_the_commands_serve_prints_work_when_pasted_in_the_same_shell(settings, tmp_path):
    """After the Quick start the programs are in .venv/bin, which is not on the PATH: the banner
    and the dashboard then write the absolute path (issue 14, item 5); on the PATH, the name."""
    import sysconfig
    scripts = sysconfig.get_path("scripts")
    ours = os.path.join(scripts, "intunnel")
    assert os.path.isfile(ours), "the test needs the installed console script"
    without_venv = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                                   if p and os.path.realpath(p) != os.path.realpath(scripts))
    web_port, relay_port = free_port(), free_port()
    serve = ServeProcess(settings, web_port, relay_port, env={"PATH": without_venv})
    try:
        serve.wait_line(r"Next steps:")
        command = _banner_command(serve.lines)
        assert command == ours
        assert f"{os.path.join(scripts, 'intunnel-admin')} user set-password" in "\n".join(serve.lines)
        pasted = subprocess.run([command, "--version"], env={**os.environ, "PATH": without_venv},
                                capture_output=True, text=True, timeout=30)
        assert pasted.returncode == 0 and pasted.stdout.startswith("intunnel ")
        # The dashboard's commands too.
        email = re.search(r"Admin account:\s+(\S+)", "\n".join(serve.lines)).group(1)
        password = re.search(r"Admin password:\s+(\S+)", "\n".join(serve.lines)).group(1)
        _, headers = api(web_port, "POST", "/login", {"email": email, "password": password})
        cookie = headers["Set-Cookie"].split(";", 1)[0]
        created, _ = api(web_port, "POST", "/api/tunnels",
                         {"name": "My App", "subdomain": "myapp", "local_port": 3000}, cookie)
        page = urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{web_port}/tunnels/{created['tunnel']['id']}",
            headers={"Cookie": cookie}), timeout=10).read().decode()
        assert f"{ours} http 3000" in page and f"{ours} config add-token" in page
        assert serve.stop() == 0
    finally:
        serve.close()
    serve = ServeProcess(settings, web_port, relay_port, env={"PATH": scripts + os.pathsep + without_venv})
    try:
        serve.wait_line(r"Next steps:")
        assert _banner_command(serve.lines) == "intunnel"
        assert serve.stop() == 0
    finally:
        serve.close()
