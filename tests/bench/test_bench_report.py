"""The bench's pure parts: wrk report parsing, the ratio table, the target verdicts."""

from __future__ import annotations

import pytest

from bench import load, report

WRK_KEEPALIVE = """\
Running 5s test @ http://127.0.0.1:41211/1k
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   312.45us  401.10us  12.50ms   93.12%
    Req/Sec    61.80k     4.10k   70.11k    71.00%
  Latency Distribution
     50%  245.00us
     75%  310.00us
     90%  520.00us
     99%    1.38ms
  614950 requests in 5.00s, 752.31MB read
Requests/sec: 122990.12
Transfer/sec:    150.46MB
"""

WRK_CLOSE_WITH_ERRORS = """\
Running 5s test @ http://127.0.0.1:41211/1k
  2 threads and 32 connections
  Latency Distribution
     50%    1.20ms
     99%    1.10s
  240000 requests in 5.00s, 300.00MB read
  Socket errors: connect 3, read 120, write 2, timeout 1
  Non-2xx or 3xx responses: 10
Requests/sec:  48000.50
"""


def test_parse_wrk_keepalive():
    r = load.parse_wrk(WRK_KEEPALIVE)
    assert r.rps == pytest.approx(122990.12)
    assert r.p50_ms == pytest.approx(0.245)
    assert r.p99_ms == pytest.approx(1.38)
    assert r.requests == 614950
    assert r.errors == 0


def test_parse_wrk_counts_real_errors_and_converts_seconds():
    r = load.parse_wrk(WRK_CLOSE_WITH_ERRORS)
    assert r.p99_ms == pytest.approx(1100.0)
    # read errors are the server's normal close with Connection: close; the rest count
    assert r.errors == 3 + 2 + 1 + 10


def test_parse_wrk_rejects_garbage():
    with pytest.raises(ValueError):
        load.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused")


RESULTS = {
    "direct": {"ka_rps": 100_000, "ka_p99": 1.0, "close_rps": 40_000, "down_mbs": 2000, "up_mbs": 2000},
    "ssh-R -tt": {"ka_rps": 50_000, "ka_p99": 2.0, "close_rps": 10_000, "down_mbs": 400, "up_mbs": 400,
                  "relay_rss": 20.0, "client_rss": 8.0},
    "intunnel": {"ka_rps": 30_000, "ka_p99": 5.0, "close_rps": 7_000, "down_mbs": 800, "up_mbs": 600,
                 "relay_rss": 30.0, "client_rss": 25.0, "kib_per_agent": 80.0, "restart_s": 1.5},
}


def test_table_cells_carry_both_ratios():
    text = report.table(RESULTS)
    header, _, ka_row = text.splitlines()[:3]
    assert header.split("|")[3:6] == [" direct ", " ssh-R -tt ", " intunnel "]
    assert "30,000 (0.30 / 0.60)" in ka_row
    assert "n/a" in text  # direct has no memory figures


def test_targets_verdicts():
    lines = report.targets_report(RESULTS).splitlines()
    verdict = {line.split(":")[0][2:]: line.rsplit("**", 2)[1] for line in lines}
    assert verdict["keep-alive req/s >= 0.25x direct"] == "met"             # 0.30
    assert verdict["keep-alive p99 <= 4x direct"] == "NOT met"              # 5.0x
    assert verdict["new-connection req/s >= 0.20x direct"] == "NOT met"     # 0.175
    assert verdict["64 MiB upload >= 0.35x direct"] == "NOT met"            # 0.30
    assert verdict["relay + client idle RSS <= 60 MiB"] == "met"            # 55
    assert verdict["relay memory per idle agent <= 64 KiB"] == "NOT met"    # 80
    assert verdict["intunnel-nginx keep-alive req/s >= 0.20x direct"] == "not measured"
    assert verdict["inspector on"] == "not measured"   # no intunnel-no-inspect figures


def test_the_inspectors_cost_is_a_ratio_to_no_inspect():
    results = {**RESULTS, "intunnel-no-inspect": {"ka_rps": 36_000, "close_rps": 10_000}}
    lines = report.targets_report(results).splitlines()
    verdict = {line.split(":", 1)[1].split(":")[0].strip(): line for line in lines if line.startswith("- inspector")}
    assert verdict["keep-alive req/s >= 0.75x --no-inspect"].endswith("0.83 -> **met**")        # 30k / 36k
    assert verdict["new-connection req/s >= 0.75x --no-inspect"].endswith("0.70 -> **NOT met**")  # 7k / 10k
    assert " intunnel-no-inspect " in report.table(results).splitlines()[0]


def test_best_of_keeps_the_better_value_per_figure():
    a = {"ka_rps": 100.0, "ka_p99": 2.0, "down_mbs": 50.0}
    b = {"ka_rps": 120.0, "ka_p99": 3.0}
    assert report.best_of(a, b) == {"ka_rps": 120.0, "ka_p99": 2.0, "down_mbs": 50.0}


def test_ratios_use_the_paired_direct_run_when_there_is_one():
    results = {"direct": {"ka_rps": 100_000},
               "intunnel": {"ka_rps": 30_000, "paired_direct": {"ka_rps": 60_000}}}
    assert "30,000 (0.50 / -)" in report.table(results)
    assert "keep-alive req/s >= 0.25x direct: 0.50 -> **met**" in report.targets_report(results)


def test_route_quantiles_from_two_scrapes():
    from bench.tunnel import histogram_quantile
    inf = float("inf")
    before = [(0.0001, 10), (0.00025, 10), (0.0005, 10), (0.001, 10), (inf, 10)]
    # between the scrapes: 50 observations <= 0.1 ms, 40 in (0.1, 0.25], 9 in (0.25, 0.5], 1 in (0.5, 1]
    after = [(0.0001, 60), (0.00025, 100), (0.0005, 109), (0.001, 110), (inf, 110)]
    assert histogram_quantile(0.5, before, after) == pytest.approx(0.0001)
    assert histogram_quantile(0.9, before, after) == pytest.approx(0.00025)
    assert histogram_quantile(0.99, before, after) == pytest.approx(0.0005)
    assert histogram_quantile(0.5, before, before) != histogram_quantile(0.5, before, before)  # nan: no traffic


def test_bench_settings_are_typed_by_the_settings_table():
    from bench.stack import parse_setting
    assert parse_setting("relay_traffic_flush=2.5") == ("relay_traffic_flush", 2.5)
    assert parse_setting("relay_trust_proxy=on") == ("relay_trust_proxy", True)
    assert parse_setting("relay_traffic_ring=16") == ("relay_traffic_ring", 16)
    for bad in ("relay_traffic_ring", "no_such_setting=1"):
        with pytest.raises(ValueError, match="NAME=VALUE"):
            parse_setting(bad)
