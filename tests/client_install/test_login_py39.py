"""`intunnel login` and `intunnel logout` from the client-only install on Python 3.9 (the oldest
the client supports), against a real web app: the flow's client side needs nothing the wheel
without extras lacks, and nothing newer than 3.9."""

from __future__ import annotations

import pytest
import requests

from intunnel import accounts, deviceflow
from intunnel.client import config
from intunnel.models import User
from tests.client_install.conftest import HERMETIC, make_venv
from tests.support.tunnel import _Process, free_port, wait_for
from tests.support.web_server import running_web_app


@pytest.fixture(scope="module")
def intunnel39(python39, wheelhouse, tmp_path_factory):
    return str(make_venv(python39, tmp_path_factory.mktemp("py39-login") / "venv", wheelhouse) / "intunnel")


def run(intunnel39, home, *argv) -> _Process:
    return _Process(list(argv), {**HERMETIC, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")},
                    command=(intunnel39,))


def finished(proc) -> tuple[int, str]:
    wait_for(lambda: proc.proc.poll() is not None, 30, message="the client to exit")
    proc._reader.join(5)
    return proc.proc.returncode, "\n".join(proc.lines)


def test_login_and_logout_on_python39(intunnel39, settings, db, tmp_path):
    port = free_port()
    with running_web_app(settings, web_listen=f"127.0.0.1:{port}", device_poll_interval=1) as web:
        alice = accounts.create_user("alice@example.com", "alice", "correct horse battery")
        web_url = web.app.intunnel.settings.web_url
        with run(intunnel39, tmp_path, "login", "--server", web_url, "--machine-name", "old laptop") as proc:
            code = proc.wait_line(r"approve the code ([A-Z]{4}-[A-Z]{4})", timeout=30).group(1)
            deviceflow.approve(deviceflow.find_pending(code), User.get_by_id(alice.id))
            status, out = finished(proc)
        assert status == 0 and "logged in as alice@example.com" in out and "Traceback" not in out, out
        saved = config.load(tmp_path / ".config" / "intunnel" / "config.toml").find(
            web.app.intunnel.settings.relay_url).login
        bearer = {"Authorization": f"Bearer {saved.token}"}
        assert requests.get(web.url + "/api/user/profile", headers=bearer).status_code == 200
        with run(intunnel39, tmp_path, "logout") as proc:
            status, out = finished(proc)
        assert status == 0 and "its API token is revoked" in out, out
        assert requests.get(web.url + "/api/user/profile", headers=bearer).status_code == 401
