"""The generated nginx config for several relays (``nginx_relays``): its text, ``nginx -t``,
and real nginx placing agents and visitors by consistent hashing (issue 12).

The traffic test puts three echo servers where the relays would be: each answers with its
name, so the test sees where nginx sent a visitor of ``<name>.<domain>`` and an agent naming
``<name>`` in ``X-InTunnel-Tunnel``, against ``support.ketama``'s prediction of nginx's ring.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import require_tool
from intunnel import nginxconf
from intunnel.errors import ConfigError
from intunnel.settings import load_settings
from intunnel.wire.protocol import AGENT_PATH, DATA_PATH, PLACEMENT_HEADER, UPGRADE_TOKEN
from nginx_support import free_port, make_self_signed_cert, nginx_test, running_nginx, write_main_config
from support.ketama import Ring
from test_nginxconf import request as tls_request

DOMAIN = "intunnel.test"
THREE = "10.0.0.1:8080,10.0.0.2:8080,10.0.0.3:8080"


def render(**overrides) -> dict[str, str]:
    return nginxconf.render(load_settings(env={"INTUNNEL_CONFIG": ""}, overrides={"domain": "example.com", **overrides}))


def block(text: str, head: str) -> str:
    """The body of the last ``head { ... }`` block (with TLS, the proxying server comes after the
    redirecting one), up to the ``}`` indented as ``head`` is."""
    found = re.findall(r"^( *)" + re.escape(head) + r" \{\n(.*?)\n\1\}", text, re.S | re.M)
    assert found, f"no block {head!r} in:\n{text}"
    return found[-1][1]


def directives(body: str) -> list[str]:
    return [line.strip() for line in body.splitlines() if line.strip() and not line.strip().startswith("#")]


def servers(relays: list[str]) -> list[str]:
    return [f"server {r} max_fails=1 fail_timeout=10s;" for r in relays]


FAILOVER = ["proxy_connect_timeout 2s;", "proxy_next_upstream error timeout;"]

# nginx_relays -> (the relays as nginx names them, or None: one relay, no balancing, at this address)
CASES = {
    "empty: the one relay at relay_listen": ("", None, "127.0.0.1:8080"),
    "one entry: that relay alone": ("10.0.0.7:9000", None, "10.0.0.7:9000"),
    "two": ("10.0.0.1:8080,10.0.0.2:8080", ["10.0.0.1:8080", "10.0.0.2:8080"], None),
    "three, spaces after commas": ("10.0.0.1:8080, 10.0.0.2:8080, 10.0.0.3:8080",
                                   ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"], None),
    "names and IPv6": ("relay-a.internal:8080,[fd00::2]:8081,0.0.0.0:8082",
                       ["relay-a.internal:8080", "[fd00::2]:8081", "127.0.0.1:8082"], None),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_the_relay_upstreams(case, tls):
    setting, relays, single = CASES[case]
    extra = dict(tls_cert="/etc/c.pem", tls_key="/etc/k.pem") if tls else {}
    files = render(nginx_relays=setting, **extra)
    tunnels, web = files["intunnel-tunnels.conf"], files["intunnel-web.conf"]
    visitors = directives(block(tunnels, "upstream intunnel_relay"))
    agent_location = directives(block(web, "location /_intunnel/"))
    tunnel_location = directives(block(tunnels, "location /"))
    if relays is None:
        assert visitors == [f"server {single};", "keepalive 32;"]
        assert agent_location[0] == f"proxy_pass http://{single};"
        for text in files.values():
            assert "hash" not in text and "max_fails" not in text and "proxy_next_upstream" not in text
        return
    # Visitors: by the tunnel's host; agents: by the subdomain their client names, on the same ring.
    # ... and no pool of idle connections: one to a cut-off host would take a request and hang
    # (tests/tunnel_heavy/test_relays_cross_host.py)
    assert visitors == ["hash $host consistent;", *servers(relays)]
    agents = directives(block(web, "upstream intunnel_relay_agents"))
    assert agents == ["hash $intunnel_relay_key consistent;", *servers(relays)]  # upgraded: never pooled
    key_map = directives(block(web, "map $http_x_intunnel_tunnel $intunnel_relay_key"))
    assert key_map == ['"~^[a-z0-9-]{1,63}$" $http_x_intunnel_tunnel.example.com;', 'default              example.com;']
    assert PLACEMENT_HEADER.lower().replace("-", "_") == "x_intunnel_tunnel"
    assert agent_location[0] == "proxy_pass http://intunnel_relay_agents;"
    assert agent_location[-2:] == FAILOVER and tunnel_location[-2:] == FAILOVER
    assert tunnel_location[1] == "proxy_pass http://intunnel_relay;"
    # The web app keeps its single upstream and nginx's defaults.
    app = directives(block(web, "location /"))
    assert "proxy_pass http://127.0.0.1:8000;" in app and not set(FAILOVER) & set(app)


def test_the_setting_reads_a_comma_list_from_the_environment():
    s = load_settings(env={"INTUNNEL_CONFIG": "", "INTUNNEL_NGINX_RELAYS": "10.0.0.1:8080, 10.0.0.2:8080"})
    assert s.nginx_relays == ["10.0.0.1:8080", "10.0.0.2:8080"]
    assert load_settings(env={"INTUNNEL_CONFIG": ""}).nginx_relays == []


@pytest.mark.parametrize("setting", [
    "10.0.0.1",                             # no port
    "10.0.0.1:0",
    "10.0.0.1:8080,10.0.0.1:8080",          # twice
    "10.0.0.1:8080,relay;include /x:8080",  # directive injection
    "10.0.0.1:8080,relay b:8080",
    "10.0.0.1:8080,-bad-:8080",
])
def test_bad_relay_lists_fail_naming_the_setting(setting):
    with pytest.raises(ConfigError, match="nginx_relays"):
        render(nginx_relays=setting)


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    require_tool("openssl")
    return make_self_signed_cert(tmp_path_factory.mktemp("cert"), DOMAIN)


@pytest.mark.nginx
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_nginx_accepts_the_multi_relay_config_whole_and_file_by_file(tls, cert, tmp_path):
    nginx = require_tool("nginx")
    extra = dict(tls_cert=str(cert[0]), tls_key=str(cert[1])) if tls else {}
    files = render(domain=DOMAIN, nginx_relays=THREE + ",[::1]:8083", nginx_acme_root=str(tmp_path), **extra)
    result = nginx_test(nginx, write_main_config(tmp_path / "nginx", files))
    assert result.returncode == 0, result.stderr
    for name, text in files.items():  # the playbook validates each file alone
        alone = nginx_test(nginx, write_main_config(tmp_path / f"alone-{name}", {name: text}))
        assert alone.returncode == 0, alone.stderr


class Named(BaseHTTPRequestHandler):
    """A stand-in relay: answers every request with its name and what it got, then closes (no
    connection kept by nginx outlives the relay's shutdown)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = json.dumps({"relay": self.server.name, "host": self.headers["Host"],
                           "placement": self.headers.get(PLACEMENT_HEADER)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args):
        pass


def stand_in_relay() -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Named)
    server.daemon_threads = True
    server.name = f"127.0.0.1:{server.server_port}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def three_relays():
    relays = {server.name: server for server in (stand_in_relay() for _ in range(3))}
    yield relays
    for server in relays.values():
        server.shutdown()
        server.server_close()


class Front:
    """The generated config (TLS) in front of ``relays`` (HOST:PORT as nginx names them)."""

    def __init__(self, relays: list[str], tmp_path, cert):
        self.port, self.ca = free_port(), cert[0]
        files = render(domain=DOMAIN, nginx_relays=",".join(relays), tls_cert=str(cert[0]), tls_key=str(cert[1]),
                       nginx_http_port=free_port(), nginx_https_port=self.port, nginx_ipv6=False,
                       nginx_acme_root=str(tmp_path))
        self.main = write_main_config(tmp_path / "nginx", files)
        self.ring = Ring(relays)

    def running(self):
        return running_nginx(require_tool("nginx"), self.main, self.port)

    def visitor(self, name: str) -> str:
        """The relay a visitor of ``<name>.<domain>`` reached."""
        r = tls_request(self.port, f"{name}.{DOMAIN}", "/", tls_ca=self.ca)
        seen = json.loads(r.body)
        assert r.status == 200 and seen["host"] == f"{name}.{DOMAIN}"
        return seen["relay"]

    def agent(self, name: str | None, path: str = AGENT_PATH) -> str:
        """The relay an agent connection naming ``name`` (None: no header) reached."""
        headers = {"Upgrade": UPGRADE_TOKEN, "Connection": "Upgrade"}
        if name is not None:
            headers[PLACEMENT_HEADER] = name
        r = tls_request(self.port, DOMAIN, path, tls_ca=self.ca, headers=headers)
        seen = json.loads(r.body)
        assert r.status == 200 and seen["host"] == DOMAIN and seen["placement"] == name
        return seen["relay"]


NAMES = [f"app{i}" for i in range(24)]


@pytest.mark.nginx
def test_nginx_sends_an_agent_and_its_visitors_to_one_relay_and_past_a_dead_one(cert, tmp_path, three_relays):
    front = Front(list(three_relays), tmp_path, cert)
    ring = front.ring
    with front.running():
        placed = {name: ring.pick(f"{name}.{DOMAIN}") for name in NAMES}
        assert set(placed.values()) == set(three_relays), placed  # 24 names cover all three
        for name in NAMES:
            assert front.visitor(name) == front.agent(name) == front.agent(name, DATA_PATH) == placed[name], name
        # No header, or anything but one DNS label: the main domain's relay, every time (an empty
        # key would be round robin, sending a session's data connections elsewhere).
        unplaced = [front.agent(name) for name in [None, "", "Upper", "a.b", "x" * 64, "a b"] * 3]
        assert set(unplaced) == {ring.pick(DOMAIN)}, unplaced

        dead = placed[NAMES[0]]
        three_relays[dead].shutdown()
        three_relays[dead].server_close()  # connections to it are now refused
        for name in NAMES:  # none fails: nginx skips the dead relay, for agents and visitors alike
            moved = ring.pick(f"{name}.{DOMAIN}", down={dead})
            assert moved != dead and (moved == placed[name]) == (placed[name] != dead)
            assert front.visitor(name) == front.agent(name) == moved, name


@pytest.mark.nginx
def test_a_relay_that_accepts_nothing_is_skipped_after_the_connect_timeout_then_at_once(cert, tmp_path):
    """A relay host cut off answers no SYN.  Stand-in: a listening socket whose accept queue is
    full (the kernel then drops SYNs).  The first visitor and the first agent for its tunnels
    (two upstreams, each learning alone) wait out proxy_connect_timeout and go to the next relay;
    then, for fail_timeout, every request skips it at once."""
    live = [stand_in_relay() for _ in range(2)]
    silent = socket.create_server(("127.0.0.1", 0), backlog=0)
    queued = []
    try:
        while len(queued) < 8:  # connect until the queue is full: then a connection times out
            try:
                queued.append(socket.create_connection(silent.getsockname(), timeout=0.5))
            except TimeoutError:
                break
        assert len(queued) < 8, "the kernel kept accepting connections nobody accepts"
        silent_name = f"127.0.0.1:{silent.getsockname()[1]}"
        front = Front([s.name for s in live] + [silent_name], tmp_path, cert)
        homed = [n for n in NAMES if front.ring.pick(f"{n}.{DOMAIN}") == silent_name]
        assert len(homed) >= 2, homed
        next_relay = {n: front.ring.pick(f"{n}.{DOMAIN}", down={silent_name}) for n in homed}
        with front.running():
            for call in (front.visitor, front.agent):
                started = time.monotonic()
                assert call(homed[0]) == next_relay[homed[0]]
                waited = time.monotonic() - started
                assert 1.5 <= waited <= 2 + 1.5, f"{call.__name__}: the first request took {waited:.2f} s"
                print(f"unresponsive relay: the first {call.__name__} request took {waited:.2f} s")
            started = time.monotonic()
            for name in homed * 3:
                assert front.agent(name) == front.visitor(name) == next_relay[name], name
            took = time.monotonic() - started
            assert took < 0.1 * len(homed) * 3 * 2, f"{took:.2f} s: skipped without waiting"
    finally:
        for s in [silent, *queued]:
            s.close()
        for server in live:
            server.shutdown()
            server.server_close()
