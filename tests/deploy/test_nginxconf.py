"""The generated nginx configuration: expected text, rejected input, `nginx -t`, real traffic."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import require_tool
from intunnel import nginxconf
from intunnel.errors import ConfigError
from intunnel.settings import load_settings
from nginx_support import free_port, make_self_signed_cert, nginx_test, running_nginx, write_main_config

EXPECTED = Path(__file__).parent / "expected"
REPO = Path(__file__).resolve().parents[2]
DOMAIN = "intunnel.test"
# Set to regenerate the expected files after an intended template change (then review the diff).
REGENERATE = os.environ.get("INTUNNEL_REGENERATE_EXPECTED") == "1"


def make_settings(**overrides):
    return load_settings(env={"INTUNNEL_CONFIG": ""}, overrides={"domain": "example.com", **overrides})


CASES = {
    "tls": dict(tls_cert="/etc/intunnel/tls/cert.pem", tls_key="/etc/intunnel/tls/key.pem"),
    "tls-custom-ports": dict(tls_cert="/etc/letsencrypt/live/example.com/fullchain.pem",
                             tls_key="/etc/letsencrypt/live/example.com/privkey.pem",
                             nginx_http_port=8081, nginx_https_port=8443, nginx_ipv6=False,
                             web_listen="0.0.0.0:9000", relay_listen="[::1]:9001", tunnel_max_body="100m"),
    "plain": dict(),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_render_matches_expected_files(case):
    rendered = nginxconf.render(make_settings(**CASES[case]))
    assert sorted(rendered) == sorted(nginxconf.FILES)
    for name, text in rendered.items():
        expected = EXPECTED / case / name
        if REGENERATE:
            expected.parent.mkdir(parents=True, exist_ok=True)
            expected.write_text(text)
        assert text == expected.read_text(), f"{case}/{name} differs from the expected file"


def test_top_level_nginx_folder_is_the_packaged_templates():
    assert (REPO / "nginx").resolve() == nginxconf.TEMPLATE_DIR.resolve()
    assert {f"{name}.tpl" for name in nginxconf.FILES} <= {p.name for p in (REPO / "nginx").iterdir()}


@pytest.mark.parametrize("overrides, key", [
    (dict(domain="example.com; include /etc/passwd"), "domain"),
    (dict(domain="-bad-.com"), "domain"),
    (dict(tls_cert="/etc/c.pem"), "tls_key"),
    (dict(tls_cert="/etc/c.pem; x", tls_key="/etc/k.pem"), "tls_cert"),
    (dict(tls_cert="relative.pem", tls_key="/etc/k.pem"), "tls_cert"),
    (dict(tunnel_max_body="10 m"), "tunnel_max_body"),
    (dict(nginx_https_port=0), "nginx_https_port"),
    (dict(nginx_acme_root="/var/www/{x}"), "nginx_acme_root"),
])
def test_bad_settings_fail_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        nginxconf.render(make_settings(**overrides))


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    require_tool("openssl")
    return make_self_signed_cert(tmp_path_factory.mktemp("cert"), DOMAIN)


def tls_mode_settings(mode: str, cert_pair, tmp_path: Path, **extra):
    """Settings as the playbook writes them for each TLS mode (certificate paths differ)."""
    if mode == "off":
        return make_settings(domain=DOMAIN, nginx_acme_root=str(tmp_path), **extra)
    layout = {"certbot-dns": ("letsencrypt/live/intunnel.test/fullchain.pem", "letsencrypt/live/intunnel.test/privkey.pem"),
              "provided": ("tls/operator.crt", "tls/operator.key"),
              "selfsigned": ("tls/selfsigned.crt", "tls/selfsigned.key")}[mode]
    paths = []
    for source, relative in zip(cert_pair, layout):
        target = tmp_path / "etc" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
        paths.append(str(target))
    return make_settings(domain=DOMAIN, tls_cert=paths[0], tls_key=paths[1], nginx_acme_root=str(tmp_path), **extra)


@pytest.mark.nginx
@pytest.mark.parametrize("mode", ["certbot-dns", "provided", "selfsigned", "off"])
def test_nginx_accepts_every_tls_mode(mode, cert, tmp_path):
    nginx = require_tool("nginx")
    files = nginxconf.render(tls_mode_settings(mode, cert, tmp_path))
    result = nginx_test(nginx, write_main_config(tmp_path / "nginx", files))
    assert result.returncode == 0, result.stderr
    # Each file must also pass alone: the playbook validates them one at a time.
    for name, text in files.items():
        alone = nginx_test(nginx, write_main_config(tmp_path / f"alone-{name}", {name: text}))
        assert alone.returncode == 0, alone.stderr


class EchoUpstream(BaseHTTPRequestHandler):
    """Stands in for the web app or the relay: answers with what it received."""

    protocol_version = "HTTP/1.0"
    release = None  # threading.Event set by the test for /stream

    def do_GET(self):
        if self.path == "/stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"first\n")
            self.wfile.flush()
            self.server.release.wait(10)
            self.wfile.write(b"second\n")
            return
        body = json.dumps({"who": self.server.name, "path": self.path,
                           "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def upstreams():
    servers = {}
    for name in ("web", "relay"):
        server = ThreadingHTTPServer(("127.0.0.1", 0), EchoUpstream)
        server.daemon_threads = True
        server.name, server.release = name, threading.Event()
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers[name] = server
    yield servers
    for server in servers.values():
        server.release.set()
        server.shutdown()
        server.server_close()


def request(port, host, path="/", tls_ca=None, headers=None, read_body=True):
    """One request to 127.0.0.1:port with the given Host (and SNI, over TLS)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if tls_ca:
        context = ssl.create_default_context(cafile=str(tls_ca))
        sock = context.wrap_socket(sock, server_hostname=host)
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    response = http.client.HTTPResponse(sock)
    response.begin()
    if read_body:
        response.body = response.read()
        sock.close()
    else:
        response.sock_ = sock
    return response


@pytest.mark.nginx
def test_traffic_is_routed_by_host_over_tls(cert, tmp_path, upstreams):
    nginx = require_tool("nginx")
    http_port, https_port = free_port(), free_port()
    settings = tls_mode_settings(
        "selfsigned", cert, tmp_path, nginx_http_port=http_port, nginx_https_port=https_port, nginx_ipv6=False,
        web_listen=f"127.0.0.1:{upstreams['web'].server_port}",
        relay_listen=f"127.0.0.1:{upstreams['relay'].server_port}")
    (tmp_path / ".well-known" / "acme-challenge").mkdir(parents=True)
    (tmp_path / ".well-known" / "acme-challenge" / "tok").write_text("challenge-answer")
    main = write_main_config(tmp_path / "nginx", nginxconf.render(settings))
    ca = cert[0]
    with running_nginx(nginx, main, https_port):
        # The main domain: the web app, with HSTS and the forwarded headers.
        r = request(https_port, DOMAIN, "/login", tls_ca=ca)
        seen = json.loads(r.body)
        assert r.status == 200 and seen["who"] == "web" and seen["path"] == "/login"
        assert r.getheader("Strict-Transport-Security") == "max-age=63072000"
        assert seen["headers"]["host"] == DOMAIN and seen["headers"]["x-forwarded-proto"] == "https"
        assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
        # The agents' endpoint on the main domain goes to the relay, Upgrade passed on.
        r = request(https_port, DOMAIN, "/_intunnel/agent", tls_ca=ca,
                    headers={"Upgrade": "websocket", "Connection": "Upgrade"})
        seen = json.loads(r.body)
        assert seen["who"] == "relay" and seen["headers"]["host"] == DOMAIN
        assert seen["headers"]["upgrade"] == "websocket" and seen["headers"]["connection"] == "upgrade"
        # A tunnel: the relay, Host kept, no HSTS on tunnels.
        r = request(https_port, f"myapp.{DOMAIN}", "/x?y=1", tls_ca=ca)
        seen = json.loads(r.body)
        assert seen["who"] == "relay" and seen["path"] == "/x?y=1" and seen["headers"]["host"] == f"myapp.{DOMAIN}"
        assert "connection" not in seen["headers"]  # kept alive: the relay moves it between tunnels
        assert r.getheader("Strict-Transport-Security") is None
        # Tunnel responses stream: the first line arrives while the upstream still holds the rest.
        r = request(https_port, f"myapp.{DOMAIN}", "/stream", tls_ca=ca, read_body=False)
        r.sock_.settimeout(3)  # the upstream holds the rest for up to 10 s
        assert r.status == 200 and r.readline() == b"first\n"
        upstreams["relay"].release.set()
        assert r.read() == b"second\n"
        r.sock_.close()
        # Plain HTTP: redirected to HTTPS on the right port, except ACME challenges.
        r = request(http_port, f"myapp.{DOMAIN}", "/a?b=c")
        assert r.status == 301 and r.getheader("Location") == f"https://myapp.{DOMAIN}:{https_port}/a?b=c"
        r = request(http_port, DOMAIN, "/.well-known/acme-challenge/tok")
        assert r.status == 200 and r.body == b"challenge-answer"
        # A name that is not ours: the TLS handshake is refused, and plain HTTP gets no answer.
        with pytest.raises(ssl.SSLError):
            request(https_port, "other.example", tls_ca=ca)
        with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
            request(http_port, "other.example")
