"""The reconciler's check that nginx serves the challenge web root, before it asks the CA.

Deployed, the reconciler runs with its unit's UMask=0077 while nginx's workers run as another
user (www-data): a probe only its owner can read is a 403 for ever, and every issuance failed
with "nginx did not serve the challenge" (found by the deploy test against pebble).  The stand-in
for nginx here serves a file only when another user could read it.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import stat
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from intunnel.certs.reconcile import wait_live
from tests.conftest import require_tool
from tests.deploy.nginx_support import free_port, running_nginx, write_main_config


class OtherUsersFiles(http.server.BaseHTTPRequestHandler):
    root: Path

    def do_GET(self):
        path = self.root / self.path.lstrip("/")
        directories = [p for p in path.parents if p == self.root or self.root in p.parents]
        readable = path.is_file() and bool(path.stat().st_mode & stat.S_IROTH) and \
            all(p.stat().st_mode & stat.S_IXOTH for p in directories)
        body = path.read_bytes() if readable else b"forbidden"
        self.send_response(200 if readable else 403)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def nginx_as_another_user(root: Path):
    handler = type("Handler", (OtherUsersFiles,), {"root": root})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


def test_the_probe_is_readable_by_nginx_workers_under_the_units_umask(settings, tmp_path):
    root = tmp_path / "acme"
    root.mkdir(mode=0o755)
    with nginx_as_another_user(root) as port:
        changed = settings.replace(nginx_acme_root=str(root), nginx_http_port=port, nginx_reload_wait=2.0)
        old = os.umask(0o077)   # intunnel-certs.service's UMask
        try:
            assert wait_live(changed, "app.customer.test")
        finally:
            os.umask(old)
    assert not list((root / ".well-known" / "acme-challenge").iterdir()), "the probe is removed"


@pytest.mark.nginx
def test_after_a_reload_every_new_connection_gets_the_new_vhost(tmp_path):
    """nginx's master lets the old workers go on accepting for 100 ms after the new ones start
    (ngx_master_process_cycle: ngx_msleep(100) before it tells them to shut down), and the kernel
    hands the old ones most connections: one probe answered by the new vhost was no proof, and the
    CA's validation, made right after it, met the old configuration's catch-all (a CI failure
    of the pebble tests).  wait_live returns only when fresh connections keep getting the new one."""
    nginx = require_tool("nginx")
    root, port = tmp_path / "acme", free_port()
    root.mkdir()
    (root / "probe.txt").write_text("probe")
    catch_all = f"server {{ listen 127.0.0.1:{port} default_server; server_name _; return 444; }}\n"
    main = write_main_config(tmp_path / "nginx", {"default.conf": catch_all})
    settings = SimpleNamespace(nginx_acme_root=str(root), nginx_http_port=port, nginx_reload_wait=10.0)
    command = [nginx, "-p", str(main.parent), "-e", str(main.parent / "error.log"), "-c", str(main)]

    def answered(hostname: str) -> bool:
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/probe.txt", headers={"Host": hostname})
            return conn.getresponse().status == 200
        return False

    with running_nginx(nginx, main, port):
        for attempt in range(6):
            hostname = f"name{attempt}.customer.test"
            for old in main.parent.glob("conf.d/name*.conf"):
                old.unlink()
            (main.parent / "conf.d" / f"{hostname}.conf").write_text(
                f"server {{ listen 127.0.0.1:{port}; server_name {hostname}; root {root}; }}\n")
            subprocess.run([*command, "-s", "reload"], check=True, capture_output=True, timeout=30)
            assert wait_live(settings, hostname)
            old_answers = sum(not answered(hostname) for _ in range(30))
            assert old_answers == 0, f"reload {attempt}: {old_answers} of 30 connections met the old configuration"
