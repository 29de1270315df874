"""The web app's Prometheus metrics: a real app under waitress, its real /metrics listener,
real requests, the exposition parsed with prometheus_client's own parser."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import requests

from intunnel.settings import load_settings
from intunnel.web.metrics import start_listener, stop_listener
from support.backends import database_env
from support.metrics import scrape
from support.tunnel import wait_for
from support.web_server import answers_200, running_web_app

from conftest import PASSWORD, create_user, login_session

REQS = "intunnel_web_requests_total"


@contextlib.contextmanager
def metrics_of(web):
    server = start_listener(("127.0.0.1", 0), web.app.metrics.registry)
    try:
        yield f"http://127.0.0.1:{server.effective_port}/metrics"
    finally:
        stop_listener(server)


@pytest.fixture
def metrics_url(web):
    with metrics_of(web) as url:
        yield url


def test_requests_counted_by_route_rule_method_and_status(web, metrics_url, alice_session):
    before = scrape(metrics_url)
    for _ in range(3):
        assert requests.get(web.url + "/healthz").status_code == 200
    for _ in range(2):
        assert alice_session.get(web.url + "/api/tunnels").status_code == 200
    assert alice_session.get(web.url + "/api/tunnels/987654").status_code == 404
    assert requests.get(web.url + "/no/such/page/4242").status_code == 404
    after = scrape(metrics_url)

    def moved(**labels):
        return after.value(REQS, **labels) - before.value(REQS, **labels)
    assert moved(route="/healthz", method="GET", status="200") == 3
    assert moved(route="/api/tunnels", method="GET", status="200") == 2
    # the rule, never the raw path: no label holds 987654 or 4242
    assert moved(route="/api/tunnels/<id>", method="GET", status="404") == 1
    assert moved(route="(unmatched)", method="-", status="404") == 1
    label_values = {v for (_, labels) in after.samples for _, v in labels}
    assert not any("987654" in v or "4242" in v for v in label_values)
    # every answered request is in the duration histogram, by route
    hist = "intunnel_web_request_duration_seconds_count"
    assert after.value(hist, route="/healthz") - before.value(hist, route="/healthz") == 3
    assert after.value("intunnel_web_request_duration_seconds_sum", route="/healthz") > 0


def test_database_query_latency(web, metrics_url, alice_session):
    before = scrape(metrics_url)
    alice_session.get(web.url + "/api/tunnels")
    after = scrape(metrics_url)
    count = "intunnel_db_query_seconds_count"
    assert after.value(count, statement="select") - before.value(count, statement="select") >= 1
    assert after.value("intunnel_db_query_seconds_bucket", statement="select", le="+Inf") == \
        after.value(count, statement="select")


def test_rate_limit_refusals_by_limit(settings, clock):
    with running_web_app(settings, clock=clock, rate_limit_get=2) as web, metrics_of(web) as url:
        create_user("bob@example.com", "bob")
        with login_session(web, "bob@example.com") as bob:
            before = scrape(url)
            codes = [bob.get(web.url + "/api/tunnels").status_code for _ in range(3)]
            assert codes == [200, 200, 429]
            after = scrape(url)
    limited = "intunnel_web_rate_limited_total"
    assert after.value(limited, limit="get") - before.value(limited, limit="get") == 1
    assert after.value(limited, limit="write") == before.value(limited, limit="write") == 0
    assert after.value(REQS, route="/api/tunnels", method="GET", status="429") == 1


def test_login_throttle_is_counted(settings, clock):
    with running_web_app(settings, clock=clock, login_max_failures=2) as web, metrics_of(web) as url:
        create_user("carol@example.com", "carol")
        codes = [requests.post(web.url + "/login", json={"email": "carol@example.com", "password": "nope"},
                               headers={"Accept": "application/json"}).status_code for _ in range(3)]
        assert codes == [401, 401, 429]
        samples = scrape(url)
    assert samples.value("intunnel_web_rate_limited_total", limit="login") == 1
    assert samples.value(REQS, route="/login", method="POST", status="401") == 2


def test_no_secret_reaches_the_metrics(web, metrics_url):
    create_user("dave@example.com", "dave")
    with login_session(web, "dave@example.com") as dave:
        token = dave.post(web.url + "/api/tunnels", json={"name": "Sec", "subdomain": "secretsub",
                                                          "local_port": 3000}).json()["tunnel"]["token"]
        cookie = dave.cookies.get_dict()
    text = scrape(metrics_url).text
    for secret in [token, PASSWORD, "dave@example.com", "secretsub", *cookie.values()]:
        assert secret not in text


def test_backup_age_from_a_real_backup(web, metrics_url, settings):
    assert not scrape(metrics_url).has("intunnel_backup_last_success_timestamp_seconds")
    started = time.time()
    env = _env(settings)
    admin = Path(sys.executable).with_name("intunnel-admin")
    cmd = [str(admin)] if admin.exists() else [sys.executable, "-m", "intunnel.admin.cli"]
    r = subprocess.run(cmd + ["backup"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    (backup,) = [p for p in settings.backup_path.iterdir() if p.name.startswith("intunnel-")
                 and not p.name.endswith(".tar.gz")]
    samples = scrape(metrics_url)
    stamp = samples.value("intunnel_backup_last_success_timestamp_seconds", default=-1)
    assert stamp == pytest.approx(backup.stat().st_mtime)
    assert started - 1 <= stamp <= time.time() + 1
    assert samples.value("intunnel_backups") == 1


def test_metrics_listener_answers_only_get_metrics(web, metrics_url):
    base = metrics_url.rsplit("/", 1)[0]
    for path, method, code in [("/", "GET", 404), ("/metrics/x", "GET", 404), ("/metrics", "POST", 405)]:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(urllib.request.Request(base + path, method=method, data=b"" if
                                                          method == "POST" else None), timeout=5)
        assert e.value.code == code
    head = urllib.request.urlopen(urllib.request.Request(metrics_url, method="HEAD"), timeout=5)
    assert head.status == 200 and head.read() == b""


def test_the_public_web_port_does_not_serve_metrics(web, metrics_url):
    r = requests.get(web.url + "/metrics")
    assert r.status_code == 404
    assert "intunnel_web_requests" not in r.text


def test_metrics_listener_is_loopback_by_default():
    s = load_settings(env={"INTUNNEL_CONFIG": ""})
    assert s.web_metrics_address == ("127.0.0.1", 9810)
    assert s.relay_metrics_address == ("127.0.0.1", 9811)
    off = load_settings(env={"INTUNNEL_CONFIG": "", "INTUNNEL_WEB_METRICS_LISTEN": ""})
    assert off.web_metrics_address is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(settings, **extra) -> dict:
    """The environment of a real `intunnel`/`intunnel-admin` process on this test's data and database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTUNNEL_")}
    env.update(INTUNNEL_CONFIG="", INTUNNEL_DATA_DIR=str(settings.data_dir), PYTHONUNBUFFERED="1",
               **database_env(settings), **extra)
    return env


def _web_process(settings, web_port: int, metrics_port: int) -> subprocess.Popen:
    env = _env(settings, INTUNNEL_WEB_LISTEN=f"127.0.0.1:{web_port}",
               INTUNNEL_WEB_METRICS_LISTEN=f"127.0.0.1:{metrics_port}")
    return subprocess.Popen([sys.executable, "-m", "intunnel.cli", "web"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_intunnel_web_process_serves_metrics_on_its_own_listener(settings):
    web_port, metrics_port = _free_port(), _free_port()
    proc = _web_process(settings, web_port, metrics_port)
    try:
        wait_for(lambda: answers_200(f"http://127.0.0.1:{web_port}/healthz"), message="the web app serving")
        samples = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        assert samples.value(REQS, route="/healthz", method="GET", status="200") >= 1
        assert requests.get(f"http://127.0.0.1:{web_port}/metrics").status_code == 404
    finally:
        proc.terminate()
        out = proc.communicate(timeout=15)[0]
    assert f"metrics at http://127.0.0.1:{metrics_port}/metrics" in out
    assert "Traceback" not in out


def test_a_busy_metrics_port_is_one_warning_and_the_app_serves_on(settings):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        web_port = _free_port()
        proc = _web_process(settings, web_port, busy.getsockname()[1])
        try:
            wait_for(lambda: answers_200(f"http://127.0.0.1:{web_port}/healthz"), message="the web app serving")
        finally:
            proc.terminate()
            out = proc.communicate(timeout=15)[0]
    assert "Traceback" not in out
    (line,) = [ln for ln in out.splitlines() if "metrics" in ln]
    assert "WARNING" in line and "web_metrics_listen" in line and "cannot listen" in line
