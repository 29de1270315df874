"""The appliance serves its own client as one file (issue 14, a light client): /download/intunnel.pyz
from a real web app, fetched with the dashboard's own one-line command and run by a plain
``python3.9 -I`` (no venv, no site-packages, no PYTHONPATH) as a real tunnel client against a real
relay, bytes checked; its version is the server's."""

from __future__ import annotations

import hashlib
import html
import re
import shutil
import subprocess
import urllib.request
import zipfile
from pathlib import Path

import pytest

from intunnel import __version__, clientzip
from tests.client_install.conftest import HERMETIC
from tests.conftest import require_tool
from tests.support.tunnel import HttpUpstream, RelayThread, _Process, make_tunnel, pattern_sha256, visit
from tests.web.conftest import PASSWORD, login_session
from support.web_server import running_web_app

pytestmark = [pytest.mark.slow, pytest.mark.db_incidental]


def fetch(url: str, headers: dict | None = None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_the_same_sources_make_the_same_bytes_and_an_old_release_goes(tmp_path):
    old = tmp_path / "download" / "intunnel-0.0.1.pyz"
    old.parent.mkdir()
    old.write_bytes(b"an earlier release")
    path, changed = clientzip.ensure(tmp_path)
    assert changed and path == clientzip.path_in(tmp_path) and not old.exists()
    first = path.read_bytes()
    assert clientzip.ensure(tmp_path) == (path, False)                  # there: served as it is
    assert clientzip.ensure(tmp_path, rebuild=True) == (path, False)    # rebuilt: the same bytes
    assert path.read_bytes() == first
    assert [p.name for p in path.parent.iterdir()] == [path.name]       # no temporary file left
    # Nothing of the build's moment in it (a directory's mtime once made every run differ):
    # sorted names, one time, one mode.
    infos = zipfile.ZipFile(path).infolist()
    assert [i.filename for i in infos] == sorted(i.filename for i in infos)
    assert {(i.date_time, i.external_attr >> 16) for i in infos} == {((1980, 1, 1, 0, 0, 0), 0o644)}


def test_built_from_an_installed_package_beside_others(tmp_path):
    """As deployed: intunnel in a site-packages next to uvloop and the rest (following their imports
    once recursed past Python's limit there); the zipapp holds the same modules as from here."""
    import site
    import sys

    where = tmp_path / "site-packages"
    where.mkdir()
    for entry in Path(site.getsitepackages()[0]).iterdir():
        if not entry.name.startswith(("intunnel", "__editable__", "_intunnel")):
            (where / entry.name).symlink_to(entry)
    shutil.copytree(Path(clientzip.__file__).parent, where / "intunnel",
                    ignore=shutil.ignore_patterns("__pycache__"))
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); from intunnel import clientzip; "
             "print(clientzip.PACKAGE); print(*(p.relative_to(clientzip.PACKAGE) for p in clientzip.client_modules()))")
    out = subprocess.run([sys.executable, "-I", "-c", probe, str(where)], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    package, modules = out.stdout.splitlines()
    assert package == str(where / "intunnel")
    assert modules.split() == [str(p.relative_to(clientzip.PACKAGE)) for p in clientzip.client_modules()]


def test_the_web_app_serves_the_client_zipapp_with_its_version(settings, db, python39, tmp_path):
    with running_web_app(settings) as web:
        status, headers, body = fetch(web.url + "/download/intunnel.pyz")
        assert status == 200
        assert headers["Content-Type"] == "application/zip"
        assert headers["Cache-Control"] == "no-cache" and headers["X-Intunnel-Version"] == __version__
        assert 'filename="intunnel.pyz"' in headers["Content-Disposition"]
        again = fetch(web.url + "/download/intunnel.pyz", {"If-None-Match": headers["ETag"]})
        assert again[0] == 304 and again[2] == b""        # a cache revalidates cheaply
        built = clientzip.path_in(settings.data_dir)
        assert built.read_bytes() == body                  # built into the data dir on first request
        built.unlink()                                     # and again when it went missing
        assert fetch(web.url + "/download/intunnel.pyz")[2] == body
    pyz = tmp_path / "intunnel.pyz"
    pyz.write_bytes(body)
    names = zipfile.ZipFile(pyz).namelist()
    assert "__main__.py" in names and "intunnel/client/cli.py" in names and "tomli/__init__.py" in names
    server_parts = [n for n in names if n.startswith(("intunnel/web/", "intunnel/relay/", "intunnel/admin/"))
                    or n in ("intunnel/models.py", "intunnel/settings.py", "intunnel/embedded.py")]
    assert server_parts == []
    version = subprocess.run([python39, "-I", str(pyz), "--version"], capture_output=True, text=True,
                             env=HERMETIC, cwd=tmp_path, timeout=60)
    assert (version.returncode, version.stdout) == (0, f"intunnel {__version__}\n")


def test_the_dashboards_one_liner_fetches_and_runs_it_as_a_real_tunnel(settings, db, python39, tmp_path):
    require_tool("curl")
    size = 250_000
    with HttpUpstream() as upstream, RelayThread(settings) as relay, \
            running_web_app(settings, relay_listen=f"127.0.0.1:{relay.port}") as web:
        tunnel = make_tunnel(settings, "myapp", upstream.port, username="alice")
        with login_session(web, "alice@example.com", PASSWORD) as s:
            page = s.get(f"{web.url}/tunnels/{tunnel.id}").text
        line = html.unescape(re.search(r'<code id="cmd-pyz">(.*?)</code>', page, re.S).group(1))
        assert line == (f"curl -fsSLO {web.url}/download/intunnel.pyz && python3 intunnel.pyz "
                        f"http {upstream.port} --server http://localhost:{relay.port} --token {tunnel.token}")
        # Exactly that, with this machine's Python 3.9 (isolated: nothing but the file) for python3.
        command = line.replace("&& python3 ", f"&& exec {python39} -I ")
        home = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / ".config")}
        with _Process(["-c", f"cd {tmp_path} && {command} -v"], {**HERMETIC, **home}, command=("bash",)) as client:
            client.wait_line(r"^connected: ", timeout=30)
            status, _, body = visit(relay.port, "myapp.localhost", f"/download?size={size}", timeout=30)
            assert status == 200 and hashlib.sha256(body).hexdigest() == pattern_sha256(size)
            client.wait_line(rf"GET /download\?size={size} -> 200 {size} B ")
            assert client.stop() == 0, "\n".join(client.lines)
    assert (tmp_path / "intunnel.pyz").read_bytes() == clientzip.path_in(settings.data_dir).read_bytes()
