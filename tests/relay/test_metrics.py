"""The relay's Prometheus metrics: the real relay, a real client and local app, real visitors,
its real /metrics listener scraped over HTTP and parsed with prometheus_client's parser."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from intunnel.relay.metrics import REASONS, start_listener
from tests.support.metrics import scrape
from tests.support.rawapps import RawApp
from tests.support.tunnel import (ClientThread, HttpUpstream, RelayProcess, RelayThread, WebSocketUpstream,
                                  free_port, make_tunnel, pattern, tunnel_setup, visit, wait_for)

REQS = "intunnel_relay_requests_total"
REFUSALS = "intunnel_relay_refusals_total"


@contextlib.contextmanager
def relay_metrics(relay_thread: RelayThread):
    """The relay's metrics listener on 127.0.0.1 port 0, on the relay's own loop."""
    server = relay_thread.call(start_listener(("127.0.0.1", 0), relay_thread.relay.registry))
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/metrics"
    finally:
        async def close():
            server.close()
        relay_thread.call(close())


class Delta:
    """What moved between two scrapes."""

    def __init__(self, url):
        self.url = url
        self.before = scrape(url)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.after = scrape(self.url)

    def __call__(self, name, **labels):
        return self.after.value(name, **labels) - self.before.value(name, **labels)


def test_requests_bytes_and_latencies_move_by_what_was_sent(settings, db):
    with tunnel_setup(settings) as t, relay_metrics(t.relay) as url:
        upload = b"u" * (512 * 1024)          # above BULK: the kernel moves most of it
        download = 300 * 1024
        with Delta(url) as d:
            for i in range(3):
                status, _, body = t.get(f"/hello/{i}")
                assert status == 200 and json.loads(body)["path"] == f"/hello/{i}"
            status, _, body = t.get("/upload", method="POST", body=upload)
            assert status == 200 and json.loads(body)["body_length"] == len(upload)
            status, _, body = t.get(f"/download?size={download}")
            assert status == 200 and len(body) == download
        assert d(REQS, class_="2xx") == 5
        for other in ("1xx", "3xx", "4xx", "5xx"):
            assert d(REQS, class_=other) == 0
        assert all(d(REFUSALS, reason=r) == 0 for r in REASONS)
        # every visit is a new connection: each routed once, each completed once
        assert d("intunnel_relay_route_seconds_count") == 5
        assert d("intunnel_relay_request_duration_seconds_count") == 5
        assert d("intunnel_relay_request_duration_seconds_sum") > 0
        assert d("intunnel_relay_visitor_bytes_received_total") >= len(upload) + 5 * len("GET / HTTP/1.1\r\n")
        assert d("intunnel_relay_visitor_bytes_sent_total") >= download + 5 * len("HTTP/1.1 200 OK\r\n")
        after = d.after
        assert after.value("intunnel_relay_agents_connected") == 1
        assert after.value("intunnel_relay_tunnels_active") == 1
        assert after.value("intunnel_db_query_seconds_count", statement="select") >= 1  # the token lookup
        # no label names a tunnel, a host, a token or an address
        assert "myapp" not in after.text and t.tunnel.token not in after.text and "127.0.0.1" not in after.text


def test_pools_and_live_gauges(settings, db):
    with tunnel_setup(settings) as t, relay_metrics(t.relay) as url:
        session = t.relay.relay.sessions["myapp"]
        wait_for(lambda: len(session.idle) >= 1, message="the agent's warm pool")
        samples = scrape(url)
        assert samples.value("intunnel_relay_data_connections", state="idle") == len(session.idle) >= 1
        assert samples.value("intunnel_relay_visitor_connections") == 0
        assert samples.value("intunnel_relay_tunnels_busy") == 0
        # a visitor mid-request holds a slot: busy tunnel, an active data connection
        sock = socket.create_connection(("127.0.0.1", t.relay.port), timeout=10)
        try:
            sock.sendall(f"POST /upload HTTP/1.1\r\nHost: {t.host}\r\nContent-Length: 10\r\n\r\nabc".encode())
            wait_for(lambda: session.visitors == 1, message="the visitor attached")
            samples = scrape(url)
            assert samples.value("intunnel_relay_visitor_connections") == 1
            assert samples.value("intunnel_relay_tunnels_busy") == 1
            assert samples.value("intunnel_relay_data_connections", state="active") == 1
        finally:
            sock.close()
        wait_for(lambda: scrape(url).value("intunnel_relay_visitor_connections") == 0, message="visitor gone")


def test_offline_and_unknown_tunnels_are_refusals(settings, db):
    make_tunnel(settings, "sleepy", 3000)
    with RelayThread(settings) as relay, relay_metrics(relay) as url:
        with Delta(url) as d:
            status, _, _ = visit(relay.port, f"sleepy.{settings.domain}", "/")
            assert status == 503
            status, _, _ = visit(relay.port, f"nosuch.{settings.domain}", "/")
            assert status == 404
            status, _, _ = visit(relay.port, "elsewhere.example", "/")
            assert status == 404
        assert d(REFUSALS, reason="offline") == 1
        assert d(REFUSALS, reason="unknown_tunnel") == 2
        assert d(REQS, class_="5xx") == 1 and d(REQS, class_="4xx") == 2
        assert sum(d(REFUSALS, reason=r) for r in REASONS) == 3


def test_a_full_tunnel_is_refused_for_limits(settings, db):
    with tunnel_setup(settings.replace(relay_max_visitors_per_tunnel=1)) as t, relay_metrics(t.relay) as url:
        session = t.relay.relay.sessions["myapp"]
        slow = threading.Thread(target=t.get, args=("/slow?delay=1.5",), daemon=True)
        with Delta(url) as d:
            slow.start()
            wait_for(lambda: session.visitors == 1, message="the slow visitor holds the only slot")
            status, _, body = t.get("/", headers={"Accept": "application/json"})
            assert status == 503 and json.loads(body)["code"] == "TOO_MANY_CONNECTIONS"
            slow.join(10)
        assert d(REFUSALS, reason="limits") == 1
        assert d(REQS, class_="5xx") == 1 and d(REQS, class_="2xx") == 1


def test_upstream_timeout_and_refused_local_port(settings, db):
    with tunnel_setup(settings.replace(relay_upstream_timeout=0.3)) as t, relay_metrics(t.relay) as url:
        dead = make_tunnel(settings, "dead", free_port())
        with ClientThread(t.relay.url, dead.token, dead.local_port) as client:
            client.wait_connected()
            with Delta(url) as d:
                assert t.get("/slow?delay=1")[0] == 504
                assert visit(t.relay.port, f"dead.{settings.domain}", "/")[0] == 502
        assert d(REFUSALS, reason="upstream_timeout") == 1
        assert d(REFUSALS, reason="local_refused") == 1
        assert d(REQS, class_="5xx") == 2


def test_an_unframable_response_is_counted(settings, db):
    def duplicate_lengths(app, conn, req):
        return conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello")
    with RawApp("bad", duplicate_lengths) as app, tunnel_setup(settings, upstream=app) as t, \
            relay_metrics(t.relay) as url:
        with Delta(url) as d:
            assert t.get("/")[0] == 502
        assert d(REFUSALS, reason="unframable") == 1
        assert d(REQS, class_="5xx") == 1 and d(REQS, class_="2xx") == 0


def test_a_websocket_is_an_upgrade_and_its_bytes_count(settings, db):
    from websockets.sync.client import connect
    with WebSocketUpstream() as ws_up, tunnel_setup(settings, upstream=ws_up) as t, \
            relay_metrics(t.relay) as url:
        message = bytes(range(256)) * 1024   # 256 KiB each way
        with Delta(url) as d:
            sock = socket.create_connection(("127.0.0.1", t.relay.port), timeout=10)
            with connect(f"ws://{t.host}:{t.relay.port}/echo", sock=sock, max_size=None,
                         compression=None) as ws:   # uncompressed: the bytes on the wire are the message
                ws.send(message)
                assert ws.recv(timeout=10) == message
            wait_for(lambda: not t.relay.relay.visitors, message="the spliced visitor closed")
        assert d(REQS, class_="1xx") == 1
        assert d("intunnel_relay_visitor_bytes_received_total") >= len(message)
        assert d("intunnel_relay_visitor_bytes_sent_total") >= len(message)


def test_the_public_listener_never_serves_metrics(settings, db):
    with tunnel_setup(settings) as t, relay_metrics(t.relay) as url:
        # the relay's own host: 404, not the exposition
        status, _, body = visit(t.relay.port, settings.domain, "/metrics")
        assert status == 404 and b"intunnel_relay" not in body
        # a tunnel host: /metrics is the local app's own path
        status, _, body = t.get("/metrics")
        assert status == 200 and json.loads(body)["path"] == "/metrics"
        assert b"intunnel_relay" not in body
        assert scrape(url).value(REQS, class_="2xx") == 1


def test_metrics_listener_takes_bad_input_calmly(settings, db, caplog):
    with RelayThread(settings) as relay, relay_metrics(relay) as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        for garbage in (b"\x00\xff" * 5000, b"GET\r\n\r\n", b"BREW /metrics HTTP/1.1\r\n\r\n", b""):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(garbage)
                s.shutdown(socket.SHUT_WR)
                s.settimeout(5)
                with contextlib.suppress(OSError):
                    while s.recv(65536):
                        pass
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url.replace("/metrics", "/"), timeout=5)
        assert e.value.code == 404
        assert scrape(url).has("intunnel_relay_agents_connected")
    assert "Traceback" not in caplog.text


def test_intunnel_relay_process_serves_metrics_on_loopback(settings, db):
    metrics_port = free_port()
    env = {"INTUNNEL_RELAY_METRICS_LISTEN": f"127.0.0.1:{metrics_port}"}
    with RelayProcess(settings, env=env) as relay:
        relay.wait_line(rf"relay metrics at http://127\.0\.0\.1:{metrics_port}/metrics")
        assert visit(relay.port, f"nosuch.{settings.domain}", "/")[0] == 404
        samples = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        assert samples.value(REFUSALS, reason="unknown_tunnel") == 1
        assert visit(relay.port, settings.domain, "/metrics")[0] == 404
        assert relay.stop() == 0
    assert not any("Traceback" in line for line in relay.lines)


def test_relay_process_without_metrics(settings, db):
    env = {"INTUNNEL_RELAY_METRICS_LISTEN": ""}
    with RelayProcess(settings, env=env) as relay:
        assert relay.stop() == 0
    assert not any("metrics at" in line for line in relay.lines)


@pytest.mark.nginx
def test_behind_the_generated_nginx_no_public_vhost_serves_metrics(settings, db, tmp_path):
    """The deployed shape: nginx (the generated config, TLS) in front of the real web app and the
    relay, each with its metrics listener.  /metrics on the web vhost is the web app's 404, on the
    relay's path its 404, on a tunnel host the local app's own page; nginx has no route to either
    metrics listener."""
    from tests.conftest import require_tool
    from intunnel import nginxconf
    from intunnel.web.metrics import start_listener as start_web_listener, stop_listener
    from tests.deploy.nginx_support import (free_port as nginx_port, make_self_signed_cert, nginx_test,
                                            running_nginx, write_main_config)
    from tests.support.rawapps import RawVisitor, request
    from tests.support.web_server import running_web_app
    nginx = require_tool("nginx")
    require_tool("openssl")
    with running_web_app(settings) as web, tunnel_setup(settings.replace(relay_trust_proxy=True)) as t, \
            relay_metrics(t.relay) as relay_url:
        web_metrics = start_web_listener(("127.0.0.1", 0), web.app.metrics.registry)
        try:
            cert, key = make_self_signed_cert(tmp_path / "tls", settings.domain)
            https_port = nginx_port()
            (tmp_path / "acme").mkdir()
            rendered = nginxconf.render(t.relay.settings.replace(
                tls_cert=str(cert), tls_key=str(key), nginx_http_port=nginx_port(), nginx_https_port=https_port,
                nginx_ipv6=False, nginx_acme_root=str(tmp_path / "acme"), web_listen=f"127.0.0.1:{web.port}"))
            text = "\n".join(rendered.values())
            assert "metrics" not in text
            assert str(web_metrics.effective_port) not in text and relay_url.split(":")[2].split("/")[0] not in text
            main = write_main_config(tmp_path / "nginx", rendered)
            assert nginx_test(nginx, main).returncode == 0
            with running_nginx(nginx, main, https_port):
                def get(host, target):
                    with RawVisitor(https_port, tls_host=host) as v:
                        v.send(request("GET", target, host, [("Connection", "close")]))
                        return v.read_response(timeout=10)
                on_web = get(settings.domain, "/metrics")
                on_relay = get(settings.domain, "/_intunnel/metrics")
                on_tunnel = get(t.host, "/metrics")
            web_samples = scrape(f"http://127.0.0.1:{web_metrics.effective_port}/metrics")
        finally:
            stop_listener(web_metrics)
        relay_samples = scrape(relay_url)
    assert on_web.status == 404 and b"intunnel_" not in on_web.body
    assert on_relay.status == 404 and b"intunnel_" not in on_relay.body
    assert on_tunnel.status == 200 and json.loads(on_tunnel.body)["path"] == "/metrics"
    assert web_samples.value("intunnel_web_requests_total", route="(unmatched)", method="-", status="404") == 1
    assert relay_samples.value(REQS, class_="2xx") == 1


def test_the_readme_documents_every_metric(settings):
    from pathlib import Path
    from intunnel.metrics import db_histogram
    from intunnel.relay.server import Relay
    from intunnel.web.metrics import WebMetrics
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    relay = Relay(settings)
    web = WebMetrics(settings)
    db_histogram(relay.registry)
    names = {f.name for registry in (relay.registry, web.registry) for f in registry.collect()}
    assert len(names) >= 15
    for name in names:
        documented = name.replace("intunnel_relay_visitor_bytes_sent", "..._sent")
        assert f"`{documented}" in readme, name
