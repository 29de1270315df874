"""The API benchmark's pure parts: choosing backends, in-app latency from the access log, the table."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import pytest

from bench import api_bench


def test_parse_backends():
    assert api_bench.parse_backends("sqlite,postgresql") == ("sqlite", "postgresql")
    assert api_bench.parse_backends(" PostgreSQL ,sqlite,postgresql") == ("postgresql", "sqlite")
    for bad in ("", "mysql", "sqlite,pg"):
        with pytest.raises(argparse.ArgumentTypeError):
            api_bench.parse_backends(bad)


def test_in_app_latency_by_method_and_id(tmp_path):
    log = tmp_path / "web.log"
    lines = [f"127.0.0.1 GET /api/tunnels 200 900 {ms}ms user=1" for ms in (1.0, 2.0, 3.0)]
    lines += [f"127.0.0.1 POST /api/tunnels 200 300 {ms}ms user=3" for ms in (10.0, 20.0)]
    lines += [f"127.0.0.1 DELETE /api/tunnels/{i} 200 40 {ms}ms user=3" for i, ms in ((7, 5.0), (8, 7.0))]
    log.write_text("\n".join(lines) + "\n")
    assert api_bench.in_app_latency(log, 0, "/api/tunnels")[0] == pytest.approx(2.0)
    assert api_bench.in_app_latency(log, 0, "POST /api/tunnels")[0] == pytest.approx(15.0)
    assert api_bench.in_app_latency(log, 0, "DELETE /api/tunnels/<id>")[0] == pytest.approx(6.0)
    # the wrk write mix: both methods' lines, 5, 7, 10, 20
    assert api_bench.in_app_latency(log, 0, api_bench.WRITE_MIX)[0] == pytest.approx(8.5)


def test_parse_servers():
    assert api_bench.parse_servers("waitress, cheroot,waitress") == ("waitress", "cheroot")
    for bad in ("", "gunicorn", "cheroot,uwsgi"):
        with pytest.raises(argparse.ArgumentTypeError):
            api_bench.parse_servers(bad)


def test_report_puts_backends_and_servers_side_by_side():
    results = [api_bench.Result(path, backend, 1000 if server == "cheroot" else 500, 0, 1.0, 2.0,
                                30.0 if backend == "postgresql" else 9.0, server)
               for backend in ("postgresql", "sqlite") for path in (api_bench.BASELINE, "/api/tunnels")
               for server in ("waitress", "cheroot")]
    results += [api_bench.Result("/", api_bench.BARE, rps, 0, 1.0, 1.0, 3.0, server)
                for server, runs in (("cheroot", (3000, 5000)), ("waitress", (1000, 1000))) for rps in runs]
    counts = {"sqlite": {("/api/tunnels", "1 tunnel"): 2, ("/api/tunnels", "50 tunnels"): 2},
              "postgresql": {("/api/tunnels", "1 tunnel"): 3, ("/api/tunnels", "50 tunnels"): 3}}
    in_app = {(r.backend, r.server, r.path): (0.5, 1.5) for r in results}
    opts = SimpleNamespace(backends=("sqlite", "postgresql"), servers=("cheroot", "waitress"), duration=5,
                           clients=8, client="wrk", threads=8, warmup=1, tunnels=50)
    text = api_bench.report(results, counts, in_app, opts, "test machine", {"postgresql": "PostgreSQL 15"})
    rows = [line for line in text.splitlines() if line.startswith("| GET")]
    assert [tuple(c.strip() for c in row.split("|")[2:4]) for row in rows[:4]] == [
        ("sqlite", "cheroot"), ("sqlite", "waitress"), ("postgresql", "cheroot"), ("postgresql", "waitress")]
    # ratios to the bare app under the same server, the mean of its runs: 1000 / 4000 and 500 / 1000
    assert rows[0].startswith("| GET /api/tunnels (50 tunnels) | sqlite | cheroot | 1,000 | 0.25 |")
    assert rows[1].startswith("| GET /api/tunnels (50 tunnels) | sqlite | waitress | 500 | 0.50 |")
    assert "| 3 / 3 | NOT met |" in rows[2]
    bare = [line for line in text.splitlines() if line.startswith("| bare")]
    assert [row.split("|")[3].strip() for row in bare] == ["cheroot", "cheroot", "waitress", "waitress"]
    assert "| GET /api/tunnels | sqlite | 1,000 / 500 (2.00x) | 0.25 / 0.50 | 9.0 / 9.0 ms |" in text
    assert "--db sqlite,postgresql --server cheroot,waitress" in text and "PostgreSQL 15" in text


@pytest.mark.parametrize("server", api_bench.SERVERS)
def test_bare_app_serves_under_each_server(tmp_path, server):
    """The bare hello-world app the ratios are taken against starts, answers and stops (SIGTERM)."""
    import http.client
    port = api_bench.free_port()
    with api_bench.web_subprocess(str(tmp_path), port, tmp_path / "bare.log", 2, server=server, bare=True) as proc:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"Hello, world!\n")
        conn.close()
    assert proc.returncode == 0, (tmp_path / "bare.log").read_text()
