"""Custom domains end to end against a real ACME CA: Debian's pebble, HTTP-01 through the
generated nginx on loopback ports, certbot run by the reconciler, a real relay and client.

Two stub DNS servers: the one the reconciler asks (custom_domain_resolver: "does the name point
here?") and the one pebble asks (what the CA sees).  A name the CA sees elsewhere fails its
validation for real.  After every reconcile run nginx -t passes, and every certificate served is
verified against pebble's root, fetched from its management port.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import require_tool
from intunnel import domains, nginxconf, nginxvhost
from intunnel.certs import acme
from bench.procs import descendants
from intunnel.certs.reconcile import RELOAD_SETTLE, Nginx, Reconciler, install
from intunnel.models import CustomDomain
from tests.deploy.nginx_support import free_port, make_self_signed_cert, nginx_test, running_nginx, write_main_config
from tests.support.acme_ca import Pebble, StubDNS
from tests.support.tunnel import ClientThread, HttpUpstream, RelayThread, make_tunnel, wait_for

pytestmark = [pytest.mark.nginx, pytest.mark.slow]

DOMAIN = "localhost"   # the client reaches the relay by this name


class World:
    """nginx + pebble + two stub DNS views + a relay, a tunnel 'myapp' and its connected client."""

    def __init__(self, settings, tmp_path: Path):
        self.stack = contextlib.ExitStack()
        self.tmp = tmp_path
        nginx = require_tool("nginx")
        for tool in ("pebble", "certbot", "openssl"):
            require_tool(tool)
        self.server_dns = self.stack.enter_context(StubDNS({DOMAIN: ["127.0.0.1"]}))
        self.ca_dns = self.stack.enter_context(StubDNS({}))
        http_port, https_port = free_port(), free_port()
        self.https_port = https_port
        acme_root, vhosts, certs = tmp_path / "acme", tmp_path / "domains", tmp_path / "certs"
        acme_root.mkdir()
        vhosts.mkdir()
        self.pebble = self.stack.enter_context(Pebble(tmp_path / "pebble", http_port, self.ca_dns.address))
        cert, key = make_self_signed_cert(tmp_path / "tls", DOMAIN)
        nginx_dir = tmp_path / "nginx"
        base = settings.replace(
            domain=DOMAIN, relay_trust_proxy=True, relay_custom_domain_refresh=0.1,
            tls_cert=str(cert), tls_key=str(key), nginx_http_port=http_port, nginx_https_port=https_port,
            nginx_ipv6=False, nginx_acme_root=str(acme_root), nginx_domain_dir=str(vhosts), cert_dir=str(certs),
            web_listen=f"127.0.0.1:{free_port()}", acme_directory=self.pebble.directory,
            acme_ca_bundle=self.pebble.ca_bundle, custom_domain_resolver=self.server_dns.address,
            custom_domain_addresses=["127.0.0.1"], acme_email="ops@intunnel.test",
            nginx_command=[nginx, "-p", str(nginx_dir), "-e", str(nginx_dir / "error.log"),
                           "-c", str(nginx_dir / "nginx.conf")],
            cert_retry_min=1, nginx_reload_wait=10.0)
        self.upstream = self.stack.enter_context(HttpUpstream())
        self.relay = self.stack.enter_context(RelayThread(base))
        self.settings = base.replace(relay_listen=f"127.0.0.1:{self.relay.port}")
        self.main = write_main_config(nginx_dir, nginxconf.render(self.settings))
        self.nginx = nginx
        assert self.nginx_ok()
        self.nginx_master = self.stack.enter_context(running_nginx(nginx, self.main, https_port)).pid
        self.tunnel = make_tunnel(self.settings, "myapp", self.upstream.port)
        self.stack.enter_context(ClientThread(self.relay.url, self.tunnel.token, self.upstream.port)).wait_connected()
        self.root = self.pebble.root_pem()

    def nginx_ok(self) -> bool:
        checked = nginx_test(self.nginx, self.main)
        assert checked.returncode == 0, checked.stderr
        return True

    def add(self, hostname: str, server_sees="127.0.0.1", ca_sees="127.0.0.1") -> None:
        self.server_dns.names[hostname] = [server_sees]
        self.ca_dns.names[hostname] = [ca_sees]
        domains.add(self.settings, self.tunnel, hostname)

    def reconcile(self, **changes):
        report = Reconciler(self.settings.replace(**changes)).run()
        self.nginx_ok()   # never left invalid
        return report

    def reconcile_command(self) -> dict:
        """What the timer runs: `intunnel-admin certs reconcile --json` with these settings' file."""
        config = self.tmp / "intunnel.toml"
        config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in self.settings.as_dict(redact=False).items()
                                  if v is not None))
        done = subprocess.run([sys.executable, "-m", "intunnel.admin.cli", "certs", "reconcile", "--json",
                               "--config", str(config)], capture_output=True, text=True, timeout=600,
                              env={**os.environ, "INTUNNEL_CONFIG": ""})
        assert done.returncode == 0, done.stderr
        self.nginx_ok()
        return json.loads(done.stdout)

    def status(self, hostname: str) -> str:
        row = CustomDomain.get(CustomDomain.hostname == hostname)
        return domains.view(self.settings, self.tunnel, row)["status"]

    def statuses(self) -> dict[str, str]:
        """Every name's status with its reason: what a failed assertion should show."""
        return {row.hostname: f"{row.state}: {row.reason}" for row in CustomDomain.select()}

    def visit(self, hostname: str, path: str = "/hello"):
        """GET over TLS through nginx, the chain verified against pebble's root for ``hostname``:
        (status, body, the served certificate's serial)."""
        context = ssl.create_default_context(cadata=self.root)
        with socket.create_connection(("127.0.0.1", self.https_port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname=hostname) as tls:
                serial = tls.getpeercert()["serialNumber"]
                tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {hostname}\r\nConnection: close\r\n\r\n".encode())
                response = http.client.HTTPResponse(tls)
                response.begin()
                return response.status, response.read(), serial

    def served(self, hostname: str, unlike_serial: str | None = None):
        """wait_for's predicate: the visit's answer once nginx's reload serves it (new workers
        take over shortly after `nginx -s reload` returns)."""
        try:
            answer = self.visit(hostname)
        except (ssl.SSLError, OSError):
            return None
        return answer if answer[0] == 200 and answer[2] != unlike_serial else None

    def settled(self, probe, message: str):
        """Wait until ``probe()`` has held on every fresh connection for RELOAD_SETTLE seconds; its
        last answer.  nginx's old workers go on accepting for 100 ms after a reload, so one answer
        from the new ones proves nothing about the next connection."""
        since = None

        def held():
            nonlocal since
            answer, now = probe(), time.monotonic()
            if not answer:
                since = None
                return None
            since = now if since is None else since
            return answer if now - since >= RELOAD_SETTLE else None
        return wait_for(held, message=message)

    def workers(self) -> set[int]:
        """nginx's worker processes: a reload replaces every one of them."""
        return set(descendants(self.nginx_master))

    def close(self):
        self.stack.close()


@pytest.fixture
def world(settings, db, tmp_path):
    w = World(settings, tmp_path)
    try:
        yield w
    finally:
        w.close()


def test_issue_serve_renew_remove(world):
    world.add("app.customer.test")
    assert world.status("app.customer.test") == "pending-dns"
    report = world.reconcile_command()   # as the timer runs it
    assert report["issued"] == ["app.customer.test"], (report, world.status("app.customer.test"))
    assert world.status("app.customer.test") == "active"
    # served over TLS with pebble's chain, through nginx and the relay, to the tunnel's app
    status, body, serial = wait_for(lambda: world.served("app.customer.test"), message="the custom domain served")
    assert json.loads(body)["path"] == "/hello"
    assert json.loads(body)["headers"]["Host"] == "app.customer.test"   # the app sees the visitor's Host

    # renewal: due now when renew_before exceeds the certificate's whole life
    report = world.reconcile(cert_renew_before=100 * 365 * 24 * 3600)
    assert report.renewed == ["app.customer.test"], (report, world.statuses())
    assert world.status("app.customer.test") == "active"
    wait_for(lambda: world.served("app.customer.test", unlike_serial=serial), message="the renewed certificate served")

    # nothing due: a run changes nothing
    assert world.reconcile().waiting == ["app.customer.test"]

    # removal: the row goes at once (the relay stops routing it), the vhost and certificate next run
    domains.remove(world.tunnel, "app.customer.test")
    report = world.reconcile()
    assert report.removed == ["app.customer.test"]
    assert not list(Path(world.settings.nginx_domain_dir).glob("*.conf"))
    assert not acme.have_cert(world.settings, "app.customer.test")
    world.settled(lambda: world.served("app.customer.test") is None, message="no longer served")
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        world.visit("app.customer.test")   # the catch-all refuses the handshake


def test_failed_validation_and_broken_certificate_spare_the_others(world):
    world.add("good.customer.test")
    # The server's resolver says it points here; the CA sees another address, where nothing listens.
    world.add("stale.customer.test", ca_sees="::1")   # nginx listens on IPv4 only here
    world.add("nowhere.customer.test", server_sees="192.0.2.7")
    report = world.reconcile()
    assert report.issued == ["good.customer.test"], (report, world.statuses())
    assert report.failed == ["stale.customer.test"], (report, world.statuses())
    stale = world.status("stale.customer.test")
    assert stale.startswith("failed: ") and "::1" in stale, stale
    nowhere = world.status("nowhere.customer.test")
    assert nowhere == "pending-dns", nowhere
    assert "192.0.2.7" in CustomDomain.get(CustomDomain.hostname == "nowhere.customer.test").reason
    wait_for(lambda: world.served("good.customer.test"), message="good served")
    # a failed name is not routed: no vhost on 443, and the relay has no route for it
    assert "stale.customer.test" not in world.relay.relay.custom_hosts

    # The DNS is fixed at the CA's side: the retry (after the backoff) gets it.
    world.ca_dns.names["stale.customer.test"] = ["127.0.0.1"]
    wait_for(lambda: world.reconcile().issued == ["stale.customer.test"], timeout=30, interval=0.5,
             message="the retry after the backoff issues it")
    assert world.status("stale.customer.test") == "active"

    # A certificate broken on disk: its vhost is taken out, the others keep being served.
    key = Path(acme.cert_paths(world.settings, "stale.customer.test")[1]).resolve()
    key.write_text("not a key\n")
    good_serial = world.visit("good.customer.test")[2]
    world.reconcile()
    broken = world.status("stale.customer.test")
    assert broken.startswith("failed: nginx rejected the vhost"), broken
    assert world.visit("good.customer.test")[:2][0] == 200
    assert world.visit("good.customer.test")[2] == good_serial
    wait_for(lambda: "stale.customer.test" not in world.relay.relay.custom_hosts, message="unrouted")


def test_a_vhost_nginx_rejects_is_put_back_and_never_reloaded(world):
    world.add("good.customer.test")
    report = world.reconcile()
    assert report.issued == ["good.customer.test"], (report, world.statuses())
    world.settled(lambda: world.served("good.customer.test"), message="good served")
    workers = world.workers()
    nginx, vhosts = Nginx(world.settings), Path(world.settings.nginx_domain_dir)
    missing = (str(world.tmp / "missing" / "fullchain.pem"), str(world.tmp / "missing" / "privkey.pem"))
    # a new file that fails nginx -t: removed again
    changed, error = install(nginx, vhosts / "new.customer.test.conf",
                             nginxvhost.render(world.settings, "new.customer.test", "myapp", missing))
    assert (changed, error.startswith("nginx rejected the vhost: ")) == (False, True), error
    assert "fullchain.pem" in error and not (vhosts / "new.customer.test.conf").exists()
    # a change to an existing file that fails: the old text is back
    path = vhosts / "good.customer.test.conf"
    before = path.read_text()
    changed, error = install(nginx, path, nginxvhost.render(world.settings, "good.customer.test", "myapp", missing))
    assert not changed and error and path.read_text() == before
    world.nginx_ok()
    assert world.workers() == workers   # never reloaded
    assert world.served("good.customer.test")
