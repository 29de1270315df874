"""`intunnel login` / `intunnel logout` as real processes against a real web app (and relay),
approval done through the page's business rule: expiry, Ctrl-C, a login replacing an older
one, logout with the server gone, and the one-line errors (exit 2) for what was typed wrong."""

from __future__ import annotations

import signal

import pytest
import requests

from intunnel import deviceflow
from intunnel.client import config
from intunnel.models import User, database
from support.tunnel import RelayThread, _Process, _python_env, free_port, wait_for
from support.web_server import running_web_app

from conftest import create_user

PROMPT = r"Open (http://\S+) and approve the code ([A-Z]{4}-[A-Z]{4})"


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


@pytest.fixture
def env(home):
    return _python_env({"XDG_CONFIG_HOME": str(home)})


@pytest.fixture
def webapp(settings):
    port = free_port()
    with running_web_app(settings, web_listen=f"127.0.0.1:{port}", device_poll_interval=1) as web:
        create_user("alice@example.com", "alice")
        yield web


def url_of(web) -> str:
    return web.app.intunnel.settings.web_url


def run(env, *argv) -> _Process:
    return _Process(list(argv), env)


def finished(proc: _Process, timeout: float = 20.0) -> tuple[int, str]:
    wait_for(lambda: proc.proc.poll() is not None, timeout, message="the client to exit")
    proc._reader.join(5)
    return proc.proc.returncode, "\n".join(proc.lines)


def approve(user_code: str, email: str = "alice@example.com") -> None:
    with database.connection_context():
        deviceflow.approve(deviceflow.find_pending(user_code), User.get(User.email == email))


def login(env, server: str, *extra: str) -> tuple[int, str]:
    with run(env, "login", "--server", server, *extra) as proc:
        approve(proc.wait_line(PROMPT).group(2))
        return finished(proc)


def test_expired_code(settings, env):
    port = free_port()
    with running_web_app(settings, web_listen=f"127.0.0.1:{port}", device_poll_interval=1,
                         device_code_lifetime=2) as web:
        with run(env, "login", "--server", url_of(web)) as proc:
            proc.wait_line(PROMPT)
            code, out = finished(proc)
    assert code == 1 and "the code expired before it was approved; run `intunnel login` again" in out
    assert "Traceback" not in out


def test_ctrl_c_stops_cleanly_and_saves_nothing(webapp, env, home):
    with run(env, "login", "--server", url_of(webapp)) as proc:
        proc.wait_line(PROMPT)
        proc.signal(signal.SIGINT)
        code, out = finished(proc)
    assert code == 130 and "stopped; nothing was saved" in out and "Traceback" not in out
    assert not (home / "intunnel" / "config.toml").exists()


def test_machine_name_defaults_to_the_hostname(webapp, env):
    import socket
    with run(env, "login", "--server", url_of(webapp)) as proc:
        user_code = proc.wait_line(PROMPT).group(2)
        with database.connection_context():
            assert deviceflow.find_pending(user_code).client_name == " ".join(socket.gethostname().split())[:64]
        proc.signal(signal.SIGINT)
        finished(proc)


def test_a_second_login_replaces_and_revokes_the_first(webapp, env, home):
    code, out = login(env, url_of(webapp))
    assert code == 0, out
    first = config.load(home / "intunnel" / "config.toml").find(webapp.app.intunnel.settings.relay_url).login
    code, out = login(env, url_of(webapp))
    assert code == 0, out
    second = config.load(home / "intunnel" / "config.toml").find(webapp.app.intunnel.settings.relay_url).login
    assert second.token != first.token
    profile = webapp.url + "/api/user/profile"
    assert requests.get(profile, headers={"Authorization": f"Bearer {first.token}"}).status_code == 401
    assert requests.get(profile, headers={"Authorization": f"Bearer {second.token}"}).status_code == 200
    assert first.token not in out and second.token not in out


def test_logout_with_the_server_gone_forgets_and_says_the_token_stays(settings, env, home):
    port = free_port()
    with running_web_app(settings, web_listen=f"127.0.0.1:{port}", device_poll_interval=1) as web:
        create_user("alice@example.com", "alice")
        code, out = login(env, url_of(web))
        assert code == 0, out
        relay_url = web.app.intunnel.settings.relay_url
    with run(env, "logout", "--server", url_of(web)) as proc:  # the web app's URL finds the login too
        code, out = finished(proc)
    assert code == 1 and "could not reach" in out and "stays valid until you revoke it on" in out, out
    assert config.load(home / "intunnel" / "config.toml").find(relay_url) is None
    with run(env, "logout") as proc:
        code, out = finished(proc)
    assert code == 1 and f"not logged in to {relay_url}" in out


@pytest.mark.parametrize("argv, message", [
    (["login"], "give --server URL"),
    (["login", "--server", "ftp://example.com"], "intunnel login:"),
    (["login", "--server", "http://127.0.0.1:9", "--machine-name", "  "], "--machine-name must not be empty"),
    (["logout"], "give --server URL"),
])
@pytest.mark.db_incidental
def test_bad_input_is_one_line_and_exit_2(env, argv, message):
    with run(env, *argv) as proc:
        code, out = finished(proc)
    assert code == 2 and message in out and "Traceback" not in out and len(out.splitlines()) == 1, out


@pytest.mark.db_incidental
def test_not_an_intunnel_web_app(env, settings):
    """A server that answers 404 on the API's path (another web site) is named, exit 2."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    import threading

    class NotFound(BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with run(env, "login", "--server", f"http://127.0.0.1:{server.server_address[1]}") as proc:
            code, out = finished(proc)
    finally:
        server.shutdown()
        server.server_close()
    assert code == 2 and "is not an InTunnel web app that offers `intunnel login`" in out, out


def test_the_relay_says_where_the_web_app_is(settings):
    with RelayThread(settings.replace(web_public_url="http://localhost:8000")) as relay:
        for path in ("/api/device/code", "/api/tokens", "/device"):
            r = requests.post(f"http://127.0.0.1:{relay.port}{path}", json={"client_name": "x"},
                              headers={"Host": f"localhost:{relay.port}"})
            assert r.status_code == 421
            assert r.json() == {"error": True, "code": "NOT_THE_WEB_APP", "web_url": "http://localhost:8000",
                                "message": "this is the InTunnel relay, not the web app; the web app is at "
                                           "http://localhost:8000"}
        # a tunnel's host is the tunnel's, not the relay's: its /api paths go to the app
        r = requests.get(f"http://127.0.0.1:{relay.port}/api/x", headers={"Host": f"nope.localhost:{relay.port}"})
        assert r.status_code == 404 and "NOT_THE_WEB_APP" not in r.text
