"""bench.relays end to end at a tiny duration: two and three real relays on one PostgreSQL database,
the report's shape, and its section written into a results file between its markers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_tool

REPO = Path(__file__).resolve().parents[2]
OLD = "## Several relays\n\n<!-- relays-bench -->\nold figures\n<!-- /relays-bench -->\n"
API = "## API\n\n<!-- api-bench -->\napi figures\n<!-- /api-bench -->\n"


@pytest.fixture
def pg(db_backend):
    if db_backend != "postgresql":
        pytest.skip("several relays share a PostgreSQL database")


def rps(cell: str) -> float:
    return float(cell.split()[0].replace(",", ""))


def test_relays_bench_reports_paths_hop_and_aggregate(pg, database_url, tmp_path):
    require_tool("wrk")
    require_tool("nginx")
    out = tmp_path / "RESULTS.md"
    out.write_text(f"# Tunnel benchmark results\n\nkeep me\n\n{OLD}\n{API}")
    done = subprocess.run([sys.executable, "-m", "bench.relays", "--duration", "1", "--repeat", "1",
                           "--warmup", "0", "--database-url", database_url, "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]

    text = out.read_text()
    assert "keep me" in text and API in text and "old figures" not in text
    section = re.search(r"## Several relays\n\n<!-- relays-bench -->\n(.*?)<!-- /relays-bench -->\n", text, re.S)
    assert section and section.group(0) in done.stdout
    body = section.group(1)
    assert database_url not in text  # the password-bearing URL is not in the command line shown
    assert re.search(r"\d+ cores .*load average [\d.]+ at start, [\d.]+ at the end", body)
    assert "overhead of more relays, not scale-out" in body

    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in body.splitlines() if line.startswith("| ") and not line.startswith("| ---")}
    paths = [k for k in rows if k.startswith(("direct app (", "direct (", "forwarded ("))]
    assert len(paths) == 3
    for name in paths:  # keep-alive and new-connection req/s, no errors
        assert rps(rows[name][0]) > 0 and rps(rows[name][3]) > 0 and rows[name][6] == "0", rows[name]
    for ratio in ("forwarded / direct", "direct / direct app", "forwarded / direct app"):
        assert all(float(c) > 0 for c in rows[ratio]), rows[ratio]
    # CPU per request: the relay B column is busy only on the forwarded path
    assert [float(c) for c in rows["relay B"]][2] > 0 and float(rows["relay B"][1]) < float(rows["relay B"][2])
    assert all(float(c.strip("*")) > 0 for c in rows["**all of the above**"])
    assert re.search(r"keep-alive \+?-?\d+ µs per request in all \(relay B \d+ µs", body)
    assert re.search(r"relay B attached an upstream through relay A [1-9]\d* times and 0 times locally", body)
    aggregate = [rows[n] for n in ("1", "2", "3")]
    assert [len(r[1].split(" + ")) for r in aggregate] == [1, 2, 3]
    assert all(rps(r[0]) > 0 and r[-1] == "0" for r in aggregate)
    assert all(re.fullmatch(r"\d+\.\d\d / \d+\.\d\d of \d+", r[-2]) for r in aggregate), aggregate
