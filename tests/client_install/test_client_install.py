"""`pip install intunnel` is the client alone (issue 14, a light client): the wheel without extras in
a fresh Python 3.9 venv, offline, holds no server library, answers --help, says in one line what the
server commands need, and serves a real tunnel through a real relay (bytes checked, the -v log
followed by the standard-library reader)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys

import pytest

from intunnel import __version__
from tests.client_install.conftest import HERMETIC, make_venv, run
from tests.support.tunnel import HttpUpstream, RelayThread, _Process, make_tunnel, pattern_sha256, visit

pytestmark = [pytest.mark.slow, pytest.mark.db_incidental]


class InstalledClient(_Process):
    """``intunnel http ...`` as installed somewhere else (``command``), in a clean environment."""

    def __init__(self, command: tuple, argv: list, home):
        super().__init__(argv, {**HERMETIC, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")},
                         command=command)


def serve_a_tunnel(settings, command: tuple, home) -> list[str]:
    """A real relay and app here, the installed client there: a download through it, byte exact;
    then SIGTERM stops the client.  Returns the client's output."""
    size = 300_000
    with HttpUpstream() as upstream, RelayThread(settings) as relay:
        tunnel = make_tunnel(settings, "myapp", upstream.port)
        argv = ["http", str(upstream.port), "--server", relay.url, "--token", tunnel.token, "-v"]
        with InstalledClient(command, argv, home) as client:
            client.wait_line(r"^connected: ", timeout=30)
            status, _, body = visit(relay.port, "myapp.localhost", f"/download?size={size}", timeout=30)
            assert status == 200 and hashlib.sha256(body).hexdigest() == pattern_sha256(size)
            client.wait_line(rf"GET /download\?size={size} -> 200 {size} B ")
            assert client.stop() == 0, "\n".join(client.lines)
            client.wait_line(r"^stopped$")
            return client.lines


@pytest.fixture(scope="module")
def venv39(python39, wheelhouse, tmp_path_factory):
    return make_venv(python39, tmp_path_factory.mktemp("py39") / "venv", wheelhouse)


def test_the_client_install_holds_the_client_and_nothing_else(venv39):
    listed = json.loads(run([str(venv39 / "pip"), "list", "--format=json", "--disable-pip-version-check"]).stdout)
    names = {p["name"].lower() for p in listed} - {"pip", "setuptools", "wheel"}   # what every venv has
    assert names == {"intunnel", "tomli"}
    version = run([str(venv39 / "python"), "-c", "import sys; print(sys.version_info[:2])"]).stdout
    assert version.strip() == "(3, 9)"


def test_help_and_version_and_the_server_commands_say_what_they_need(venv39):
    out = run([str(venv39 / "intunnel"), "--help"]).stdout
    assert re.search(r"^\s+http\s", out, re.M) and re.search(r"^\s+serve\s+server only", out, re.M)
    assert run([str(venv39 / "intunnel"), "--version"]).stdout.strip() == f"intunnel {__version__}"
    assert "usage: intunnel http" in run([str(venv39 / "intunnel"), "http", "--help"]).stdout
    for argv in (["intunnel", "serve", "--help"], ["intunnel", "web"], ["intunnel", "relay", "-x"],
                 ["intunnel-admin", "user", "list"]):
        result = subprocess.run([str(venv39 / argv[0]), *argv[1:]], capture_output=True, text=True,
                                env=HERMETIC, timeout=60)
        assert result.returncode == 2 and result.stdout == "", (argv, result)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith(f"{argv[0]} {argv[1] + ' ' if argv[0] == 'intunnel' else ''}needs Python 3.11")


def test_a_real_tunnel_through_the_python39_client(venv39, settings, db, tmp_path):
    lines = serve_a_tunnel(settings, (str(venv39 / "intunnel"),), tmp_path)
    assert not any("Traceback" in line for line in lines), lines


def test_on_this_python_a_client_only_install_names_the_server_extra(wheelhouse, tmp_path):
    """Python 3.11 without the [server] extra: the server commands name it (no tomli needed here)."""
    bin_dir = make_venv(sys.executable, tmp_path / "venv", wheelhouse)
    listed = json.loads(run([str(bin_dir / "pip"), "list", "--format=json", "--disable-pip-version-check"]).stdout)
    assert {p["name"].lower() for p in listed} - {"pip", "setuptools", "wheel"} == {"intunnel"}
    result = subprocess.run([str(bin_dir / "intunnel"), "serve", "--help"], capture_output=True, text=True,
                            env=HERMETIC, timeout=60)
    assert (result.returncode, result.stderr) == (2, "intunnel serve needs the server parts: pip install "
                                                     "'intunnel[server]'\n")
