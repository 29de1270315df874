"""The reconciler's check that nginx serves the challenge web root, before it asks the CA.

Deployed, the reconciler runs with its unit's UMask=0077 while nginx's workers run as another
user (www-data): a probe only its owner can read is a 403 for ever, and every issuance failed
with "nginx did not serve the challenge" (found by the deploy test against pebble).  The stand-in
for nginx here serves a file only when another user could read it.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import stat
import threading
from pathlib import Path

from intunnel.certs.reconcile import wait_live


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
